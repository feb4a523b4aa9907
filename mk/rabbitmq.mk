# RabbitMQ for the mq-publish / mq-consume tests and demos: Debian's rabbitmq-server,
# run privately (own node name, cookie, ports on 127.0.0.1, data and logs under
# $(BUILD)/rabbitmq/) by tests/rabbitmq_fixture.py. See docs/mq.md.
#
#   make rabbitmq-deps     install rabbitmq-server (and Erlang) from Debian when missing
#   make rabbitmq-start    start a private broker (idempotent), print its URL
#   make rabbitmq-status   is it up?
#   make rabbitmq-stop     stop it and its epmd (data in $(RABBITMQ_BASE) is kept)
#
# Knobs: RABBITMQ_PORT (AMQP port, default 5679), RABBITMQ_BASE.

RABBITMQ_SERVER := /usr/lib/rabbitmq/bin/rabbitmq-server
RABBITMQ_BASE   ?= $(BUILD)/rabbitmq/dev
RABBITMQ_PORT   ?= 5679
RABBITMQ_PY      = PIPERS_BUILD=$(abspath $(BUILD)) $(PY) -m tests.rabbitmq_fixture

.PHONY: rabbitmq-deps rabbitmq-start rabbitmq-status rabbitmq-stop

rabbitmq-deps:
	@if [ -x $(RABBITMQ_SERVER) ]; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
	    echo "installing rabbitmq-server from Debian"; \
	    apt-get -o DPkg::Lock::Timeout=300 update -q && \
	    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -q \
	        --no-install-recommends rabbitmq-server; \
	else \
	    echo "rabbitmq-server is missing; as root run: apt-get update &&" \
	         "apt-get install -y --no-install-recommends rabbitmq-server" >&2; \
	    exit 1; \
	fi

rabbitmq-start: venv rabbitmq-deps
	$(RABBITMQ_PY) start --base $(RABBITMQ_BASE) --port $(RABBITMQ_PORT)

rabbitmq-status: venv
	$(RABBITMQ_PY) status --base $(RABBITMQ_BASE)

rabbitmq-stop: venv
	$(RABBITMQ_PY) stop --base $(RABBITMQ_BASE)
