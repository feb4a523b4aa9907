"""The RabbitMQ hop: `mq-publish` hands a queue's messages to a broker, `mq-consume`
writes them back into a queue directory on another host (or later, on the same one).
"""
