"""An example function for `pipers run`: one message in, several out.

    pipers run --queue-in-dir q/in --queue-out-dir q/out --function docs/examples/split.py:split

A message {"host": "h1", "samples": [{"cpu": 3}, {"cpu": 5}]} becomes two messages,
{"host": "h1", "cpu": 3} and {"host": "h1", "cpu": 5}, named after the input
(NAME.0, NAME.1). A message without samples is forwarded as it is.
"""


def split(message):
    samples = message.pop("samples", None)
    if samples is None:
        return message
    return [{**message, **sample} for sample in samples]  # [] would drop the message
