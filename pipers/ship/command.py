"""`pipers ship`: the shipper daemon's command line.

Secrets never need the command line: the user name may be given as a flag or
``PIPERS_ES_USER``; the password comes from ``PIPERS_ES_PASSWORD`` or
``--es-password-file``, an API key from ``PIPERS_ES_API_KEY`` or
``--es-api-key-file``.
"""

from __future__ import annotations

import os
import re
from typing import Any

import click

from ..options import DURATION, daemon_options
from ..runner import start
from .bulk import Auth, BulkClient
from .index import IndexNamer
from .shipper import Ship, ShipOptions

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10, "m": 1 << 20,
          "mb": 1 << 20, "mib": 1 << 20, "g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30}


class ByteSize(click.ParamType):
    """``10485760``, ``10MiB``, ``512k`` (binary units)."""

    name = "bytes"

    def convert(self, value: Any, param, ctx) -> int:
        if isinstance(value, int):
            return value
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(value))
        if not m or m.group(2).lower() not in _UNITS:
            self.fail(f"{value!r} is not a size (e.g. 10485760, 512KiB, 10MiB)", param, ctx)
        size = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
        if size < 1:
            self.fail(f"{value!r}: a size must be at least one byte", param, ctx)
        return size


BYTES = ByteSize()


def read_secret(path: str, what: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            secret = f.read().strip()
    except OSError as e:
        raise click.UsageError(f"cannot read the {what} file {path}: {e.strerror}") from None
    if not secret:
        raise click.UsageError(f"the {what} file {path} is empty")
    return secret


def auth_from(user: str | None, password_file: str | None, api_key_file: str | None) -> Auth:
    env = os.environ
    password = read_secret(password_file, "password") if password_file else \
        env.get("PIPERS_ES_PASSWORD") or None
    api_key = read_secret(api_key_file, "API key") if api_key_file else \
        env.get("PIPERS_ES_API_KEY") or None
    if api_key and user:
        raise click.UsageError("give either an API key or a user and password, not both")
    if password and not user:
        raise click.UsageError("a password needs a user (--es-user or PIPERS_ES_USER)")
    return Auth(user=user or None, password=password, api_key=api_key)


def split_urls(values: tuple[str, ...]) -> list[str]:
    return [u for v in values for u in re.split(r"[,\s]+", v) if u]


def failover_from(urls: tuple[str, ...], queue: str, after: float):
    """The shipper's RabbitMQ failover (pipers/mq/failover.py), or None."""
    if not urls:
        return None
    from ..mq.failover import Failover  # pika only for shippers that use it

    try:
        return Failover(urls, queue, after)
    except ValueError as e:
        raise click.UsageError(str(e)) from None


@click.command("ship", context_settings={"default_map": {"max_attempts": 0}})
@daemon_options(queue_out="none")
@click.option("--es-url", "es_url", multiple=True, envvar="PIPERS_ES_URL",
              default=("http://127.0.0.1:9200",), show_default=True,
              help="A node of the cluster (repeat, or comma-separate, for several); "
                   "env PIPERS_ES_URL.")
@click.option("--es-user", envvar="PIPERS_ES_USER", help="Basic auth user; env PIPERS_ES_USER.")
@click.option("--es-password-file", type=click.Path(dir_okay=False),
              help="File holding the password (else env PIPERS_ES_PASSWORD).")
@click.option("--es-api-key-file", type=click.Path(dir_okay=False),
              help="File holding an API key, encoded or id:key (else env PIPERS_ES_API_KEY).")
@click.option("--ca-file", type=click.Path(dir_okay=False, exists=True),
              help="CA bundle to verify the cluster's TLS certificate.")
@click.option("--no-verify-tls", is_flag=True,
              help="Do not verify TLS certificates (verification is on by default).")
@click.option("--request-timeout", type=DURATION, default=60.0, show_default=True,
              help="Seconds to wait for one bulk answer.")
@click.option("--http-compress", is_flag=True, help="gzip request bodies.")
@click.option("--bundle-size", type=click.IntRange(1), default=5000, show_default=True,
              help="Most documents in one bulk request.")
@click.option("--bundle-bytes", type=BYTES, default="10MiB", show_default=True,
              help="Most bytes in one bulk request (a larger document goes alone).")
@click.option("--flush-interval", type=DURATION, default=0.0, show_default=True,
              help="Send a bundle that is not full once its oldest message waited this long "
                   "(0: as soon as no request is under way; bundles still grow under load).")
@click.option("--index-template", metavar="TEMPLATE",
              help="Index name from message fields and its time, e.g. "
                   "'monitoring-{type}-{date:%Y.%m.%d}'.")
@click.option("--default-index", default="pipers", show_default=True,
              help="Index without a template, or when a message lacks a template field.")
@click.option("--time-field", metavar="FIELD",
              help="Message field with its time (epoch s/ms or ISO 8601) for {date}; "
                   "default: the time in the message name.")
@click.option("--archive-dir", type=click.Path(file_okay=False),
              help="Keep delivered messages here instead of deleting them.")
@click.option("--retry-initial-wait", type=DURATION, default=0.5, show_default=True,
              help="First back-off after an outage or refused documents.")
@click.option("--retry-max-wait", type=DURATION, default=60.0, show_default=True,
              help="Cap of the back-off (it doubles, with jitter, up to this).")
@click.option("--failover-mq-url", multiple=True, envvar="PIPERS_FAILOVER_MQ_URL",
              metavar="URL",
              help="RabbitMQ (amqp://...) to publish bundles to during a long outage "
                   "(repeat for other brokers); env PIPERS_FAILOVER_MQ_URL.")
@click.option("--failover-mq-queue", default="pipers-failover", show_default=True,
              metavar="NAME", help="The durable failover queue.")
@click.option("--failover-after", type=DURATION, default=300.0, show_default=True,
              help="Divert to the failover queue once the cluster is unreachable this long.")
def command(**params):
    """Commit messages of --queue-in-dir to Elasticsearch/OpenSearch _bulk."""
    failover = failover_from(params.pop("failover_mq_url"), params.pop("failover_mq_queue"),
                             params.pop("failover_after"))
    urls = split_urls(params.pop("es_url"))
    auth = auth_from(params.pop("es_user"), params.pop("es_password_file"),
                     params.pop("es_api_key_file"))
    http = {
        "auth": auth, "ca_file": params.pop("ca_file"),
        "verify": not params.pop("no_verify_tls"), "timeout": params.pop("request_timeout"),
        "compress": params.pop("http_compress"),
    }
    try:
        BulkClient(urls, **http).close()  # bad URLs are a usage error, before detaching
        namer = IndexNamer(params.pop("index_template"), params.pop("default_index"),
                           params.pop("time_field"))
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    ship = ShipOptions(**{k: params.pop(k) for k in (
        "bundle_size", "bundle_bytes", "flush_interval", "archive_dir",
        "retry_initial_wait", "retry_max_wait")})
    if ship.archive_dir:
        ship.archive_dir = os.path.abspath(ship.archive_dir)
    if ship.retry_initial_wait <= 0 or ship.retry_max_wait <= 0:
        raise click.UsageError("--retry-initial-wait and --retry-max-wait must be positive")
    if not http["verify"]:
        click.echo("pipers ship: warning: TLS certificates are not verified", err=True)
    raise SystemExit(start(
        lambda options, own: Ship(options, lambda: BulkClient(urls, **http), namer, ship,
                                  failover=failover),
        params,
    ))
