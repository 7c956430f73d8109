"""RabbitMQ for the tests that run Chorus on it: a virtual host of a run's own on the shared
server, so no other run (another xdist worker, another person's suite) sees its queues.

The server is TEST_AMQP_URL's (default: the machine's RabbitMQ, guest on 127.0.0.1:5672).
A virtual host is made and removed with ``rabbitmqctl``, which must run on the server's
machine with the rights to its Erlang cookie (root, or the rabbitmq user); without it the
tests that need one are skipped, and say why.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import quote, urlsplit, urlunsplit

from config.celery import ALL_QUEUES

TIMEOUT = 60


def rabbitmqctl(*args: str) -> str:
    """Run ``rabbitmqctl ARGS`` (each call starts an Erlang VM: about a second)."""
    binary = shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"
    done = subprocess.run(
        [binary, "--quiet", *args], capture_output=True, text=True, timeout=TIMEOUT
    )
    if done.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)}: {done.stderr.strip() or done.stdout}")
    return done.stdout


def unavailable(base_url: str) -> str | None:
    """Why a private virtual host cannot be had on ``base_url``'s server, or None."""
    if shutil.which("rabbitmqctl") is None and not shutil.which("/usr/sbin/rabbitmqctl"):
        return "rabbitmqctl is not installed (Debian's rabbitmq-server provides it)"
    host = urlsplit(base_url).hostname or "127.0.0.1"
    if host not in {"127.0.0.1", "localhost", "::1"}:
        return f"TEST_AMQP_URL's RabbitMQ ({host}) is not on this machine, where rabbitmqctl runs"
    return None


@contextmanager
def private_vhost(base_url: str, name: str) -> Iterator[str]:
    """A virtual host ``name`` on ``base_url``'s server for its user; yields the broker URL
    that names it. Deleted after, with every queue and message in it."""
    parts = urlsplit(base_url)
    user = parts.username or "guest"
    with_vhost = urlunsplit(parts._replace(path="/" + quote(name, safe="")))
    # Kept as it is if a killed run left it (the server says nothing then): ``purge`` empties
    # its queues before each test.
    rabbitmqctl("add_vhost", name)
    try:
        rabbitmqctl("set_permissions", "-p", name, user, ".*", ".*", ".*")
        yield with_vhost
    finally:
        rabbitmqctl("delete_vhost", name)


def purge(url: str) -> None:
    """Drop every message waiting in Chorus's queues on ``url`` (those not yet declared have
    none): messages an earlier test's processes left must not reach the next test's."""
    from amqp.exceptions import NotFound
    from kombu import Connection

    with Connection(url, connect_timeout=5) as conn:
        channel = conn.channel()
        for queue in ALL_QUEUES:
            try:
                channel.queue_purge(queue)
            except NotFound:
                # The channel closed on it; py-amqp opens it again for the next queue.
                continue


def drop_connections(vhost: str) -> None:
    """Close every client connection to ``vhost``, as a broker restart would (the shared
    server itself is never restarted)."""
    rabbitmqctl("close_all_connections", "--vhost", vhost, "a Chorus test drops connections")


def vhost_of(url: str) -> str:
    from urllib.parse import unquote

    return unquote(urlsplit(url).path.lstrip("/")) or "/"


def unacknowledged(vhost: str) -> int:
    """Messages delivered to consumers of ``vhost`` and not acknowledged yet."""
    out = rabbitmqctl("list_queues", "-p", vhost, "--no-table-headers", "messages_unacknowledged")
    return sum(int(n) for n in out.split() if n.isdigit())
