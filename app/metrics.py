"""Chorus's Prometheus instruments, and how a process's samples reach the scrape.

Every process of the topology writes its samples to files under ``METRICS_DIR`` (prometheus_
client's multiprocess mode): ``bind`` gives each process a folder of its own,
``<host>-<process>-<pid>``, before prometheus_client is imported, and its children
(gunicorn's workers, Celery's pool) write there too, one file per pid. The web process's
``/metrics`` sums every folder of the deployment, so counters written by a worker process that
has since died still count, and gauges of the "live" modes drop a process once it is gone
(``sweep``). ``chorus release`` and ``chorus dev`` empty ``METRICS_DIR`` before a deployment
starts. With ``METRICS_ENABLED=false``, no folder is bound and every instrument writes to
memory that nothing reads.

Labels are low-cardinality names Chorus itself chooses (routes, models, accounts, codes),
never ids or raw paths.
"""

from __future__ import annotations

import contextlib
import glob
import hmac
import os
import re
import shutil
import socket
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import Metric
    from prometheus_client.registry import Collector

ENV = "PROMETHEUS_MULTIPROC_DIR"
# Live gauges of these modes are kept only while their process lives (prometheus_client).
_LIVE = re.compile(r"^gauge_live[a-z]+_(\d+)\.db$")


def folder_name(process: str, pid: int | None = None) -> str:
    return f"{socket.gethostname()}-{process}-{pid or os.getpid()}"


def bind(root: Path, process: str, environ: dict[str, str] | os._Environ[str]) -> Path:
    """Point ``environ`` (a child's, or this process's before prometheus_client is imported)
    at a fresh folder of this process under ``root``."""
    folder = root / folder_name(process)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    environ[ENV] = str(folder)
    return folder


def reset(root: Path) -> None:
    """Empty the deployment's metrics folder: a new deployment starts from zero."""
    if root.is_dir():
        for child in root.iterdir():
            shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink()
    root.mkdir(parents=True, exist_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep(root: Path) -> None:
    """Forget the live gauges of this host's processes that are gone (a worker killed without
    its exit hook): pids are only meaningful on the host that wrote them."""
    from prometheus_client import multiprocess

    host = socket.gethostname() + "-"
    for folder in root.glob(f"{glob.escape(host)}*"):
        for path in folder.glob("gauge_live*_*.db"):
            found = _LIVE.match(path.name)
            if found and not _alive(int(found.group(1))):
                multiprocess.mark_process_dead(int(found.group(1)), str(folder))


def bind_here(root: Path, process: str) -> Path:
    """``bind`` for this very process, which may have imported prometheus_client already
    (``chorus scheduler`` runs in the command's own process)."""
    from prometheus_client import values

    folder = bind(root, process, os.environ)
    # Label children made from now on take file-backed values; every instrument the
    # scheduler writes has labels, so none was made before.
    values.ValueClass = values.get_value_class()
    return folder


class Folders:
    """The samples of the process folders under ``root`` (all of them, or the one named
    ``only``), merged as one (a collector)."""

    def __init__(self, root: Path, only: str = "*") -> None:
        self.root = root
        self.only = only

    def collect(self) -> Iterable[Metric]:
        from prometheus_client.multiprocess import MultiProcessCollector

        sweep(self.root)
        pattern = os.path.join(glob.escape(str(self.root)), self.only, "*.db")
        return MultiProcessCollector.merge(sorted(glob.glob(pattern)), accumulate=True)


def render(source: Path | Folders | None, *collectors: Collector) -> tuple[bytes, str]:
    """The exposition of the processes under ``source`` (of this process alone when None:
    its metrics are kept in memory) and of ``collectors``."""
    from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
    from prometheus_client.exposition import CONTENT_TYPE_LATEST

    registry = CollectorRegistry()
    if isinstance(source, Path):
        source = Folders(source)
    registry.register(source if source is not None else _Default(REGISTRY))
    for collector in collectors:
        registry.register(collector)
    return generate_latest(registry), CONTENT_TYPE_LATEST


class _Default:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterable[Metric]:
        return self.registry.collect()


def bound_root(settings_root: Path) -> Path | None:
    """``settings_root`` when this process writes its samples to files, else None."""
    return settings_root if os.environ.get(ENV) else None


def authorized(header: str | None, token: str | None) -> int:
    """The status an ask for metrics gets: 404 when no token is configured (metrics are never
    served without one), 401 without the right bearer token, else 200."""
    if not token:
        return 404
    scheme, _, given = (header or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        given.strip().encode(), token.encode()
    ):
        return 401
    return 200


# prometheus_client chooses between in-memory and file-backed values when it is imported:
# ``bind`` must have run by then in a process that writes to the folder.
from prometheus_client import Counter, Gauge, Histogram  # noqa: E402

# Requests answered in well under a second are the rule; a `Prefer: wait` may hold 60 s.
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
UPSTREAM_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

HTTP_REQUESTS = Counter(
    "chorus_http_requests",
    "HTTP requests answered, by route (the URL rule, not the path) and status.",
    ["method", "route", "status"],
)
HTTP_LATENCY = Histogram(
    "chorus_http_request_duration_seconds",
    "Time to answer an HTTP request, by route.",
    ["method", "route"],
    buckets=HTTP_BUCKETS,
)
JOBS_ACCEPTED = Counter(
    "chorus_jobs_accepted",
    "Jobs accepted by the API (stored QUEUED, their price held), by model and surface.",
    ["model", "surface"],
)
JOB_CHANGES = Counter(
    "chorus_job_status_changes",
    "Jobs that entered a status (RUNNING: sent upstream; SUCCEEDED, FAILED, CANCELLED: "
    "ended), by model and error code (empty when none).",
    ["model", "status", "error_code"],
)
UPSTREAM_CALLS = Counter(
    "chorus_upstream_calls",
    "Calls to upstream accounts, by operation and outcome code (ok, or the error's code).",
    ["account", "operation", "code"],
)
UPSTREAM_LATENCY = Histogram(
    "chorus_upstream_call_duration_seconds",
    "Time an upstream call took (a batched status call counts once).",
    ["account", "operation"],
    buckets=UPSTREAM_BUCKETS,
)
WEBHOOK_ATTEMPTS = Counter(
    "chorus_webhook_attempts",
    "Webhook delivery attempts, by what the attempt left the delivery as "
    "(delivered, pending: to be retried, dead, disabled, lost: settled elsewhere).",
    ["outcome"],
)
WEBHOOK_LATENCY = Histogram(
    "chorus_webhook_attempt_duration_seconds",
    "Time a webhook attempt took, until the receiver answered or the attempt failed.",
    ["result"],
    buckets=HTTP_BUCKETS,
)
MONEY_OPERATIONS = Counter(
    "chorus_money_operations",
    "Holds taken at submit, and captures and releases when jobs end, by currency.",
    ["kind", "currency"],
)
MONEY_AMOUNT = Counter(
    "chorus_money_amount_minor",
    "Amounts held, captured and released, in minor units of the currency.",
    ["kind", "currency"],
)
WAITERS = Gauge(
    "chorus_wait_waiters",
    "Requests holding a `Prefer: wait` slot now, summed over the live web processes.",
    multiprocess_mode="livesum",
)
WAIT_CAPACITY = Gauge(
    "chorus_wait_capacity",
    "`Prefer: wait` slots (WAIT_MAX_WAITERS), summed over the live web processes.",
    multiprocess_mode="livesum",
)
WAITS_REFUSED = Counter(
    "chorus_wait_refused",
    "`Prefer: wait` requests answered at once because their process held its cap.",
)


@contextlib.contextmanager
def timed(histogram: Histogram, *labels: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        histogram.labels(*labels).observe(time.perf_counter() - started)


def count_money(kind: str, entries: Iterable[tuple[str | None, int]]) -> None:
    """Count ``(currency, amount)`` money movements of one kind; free jobs move nothing."""
    for currency, amount in entries:
        if currency and amount:
            MONEY_OPERATIONS.labels(kind, currency).inc()
            MONEY_AMOUNT.labels(kind, currency).inc(amount)
