"""The one place that reads the environment.

Everything else receives a ``Settings`` object. With nothing set, Chorus runs its embedded
default: a PostgreSQL server of its own with its data under ``./var/pgdata`` (``app.embedded``
starts it; reading settings starts nothing), a Celery broker that needs no server
(``filesystem://``), and the built-in simulator as every upstream.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from environs import Env
from marshmallow import validate
from marshmallow.validate import OneOf, Range

DEFAULT_CATALOG = Path(__file__).with_name("catalog.yaml")
# Threads per gunicorn process: enough that three quarters of them can hold `Prefer: wait`
# requests while the rest serve everything else (README, "Waiting for the result").
DEFAULT_WEB_THREADS = 32
# `Prefer: wait=N` is capped here, as Replicate caps it.
MAX_WAIT_SECONDS = 60
NO_SIGNING_KEY = (
    "SECRET_KEY is not set: Chorus signs its audio links with it, and a default would be "
    "public. Set it to a long random string, e.g. the output of "
    "`python -c 'import secrets; print(secrets.token_urlsafe(32))'` (only `make run` makes "
    "one of its own, kept under ./var)."
)
WAITERS_ERROR = "must be between {min} and WEB_THREADS - 1 ({max}): waiters must leave threads free"
FETCHES_ERROR = (
    "must be between {min} and WEB_THREADS - 1 - WAIT_MAX_WAITERS ({max}): reference fetches "
    "and waiters together must leave a thread free"
)


@dataclass(frozen=True)
class S3Settings:
    """Where and how to reach the audio bucket; credentials None means boto3's default chain."""

    bucket: str
    prefix: str = ""
    endpoint_url: str | None = None
    region: str | None = None
    addressing_style: str = "auto"
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    max_attempts: int = 3


# Seconds to wait after each failed webhook attempt: the first attempt is immediate, and the
# nine attempts span about 45 hours (Standard Webhooks asks for retries over a day or more).
WEBHOOK_SCHEDULE = (5, 60, 300, 1800, 7200, 21600, 43200, 86400)
# Without a scale factor (tests compress time), a schedule must keep trying for a day.
WEBHOOK_MIN_SPAN = 86400


@dataclass(frozen=True)
class Settings:
    # Storage and brokers
    var_dir: Path
    # None: the embedded PostgreSQL under var_dir/pgdata (``app.embedded`` gives its URL).
    database_url: str | None
    # Straight to PostgreSQL when database_url names a pooler in transaction mode (PgBouncer):
    # what needs a session of its own (the scheduler's lock and LISTEN, migrations) uses it.
    # None: database_url itself.
    database_direct_url: str | None
    # Prepare the API's hottest statements on the server (off behind a transaction pooler).
    database_prepare: bool
    # Connections each of a process's pools keeps open once idle (it may open more while busy,
    # up to the same maximum): fewer leaves a shared server room for more processes.
    database_pool_idle: int
    redis_url: str | None
    redis_prefix: str
    broker_url: str
    storage_dir: Path
    # Set when STORAGE_URL is s3://…: audio then lives in that bucket, not in storage_dir.
    s3: S3Settings | None
    catalog_file: Path

    # Web
    secret_key: str
    max_content_length: int
    audio_link_ttl: int
    allow_private_urls: bool
    org_max_active_jobs: int
    rate_limit: str
    reference_audio_max_bytes: int
    default_music_category: str
    idempotency_ttl_seconds: int
    idempotency_lock_seconds: int
    wait_max_waiters: int
    wait_recheck_seconds: float
    reference_fetch_concurrency: int
    request_header_timeout: float
    request_body_timeout: float
    # Early-audio listeners one web process follows at once, on its event loop.
    preview_max_listeners: int
    events_keepalive_seconds: float
    events_max_streams: int

    # Job engine
    scheduler_lookahead: float
    scheduler_max_sleep: float
    lease_seconds: float
    claim_batch: int
    io_threads: int
    job_deadline_seconds: float
    submit_max_attempts: int
    poll_strategy: str
    poll_fixed_interval: float
    poll_min_interval: float
    poll_max_interval: float
    invalid_response_limit: int
    audio_max_bytes: int
    upstream_connect_timeout: float
    upstream_read_timeout: float
    # A lyrics call is answered on the web thread: it gets at most this long, all told.
    lyrics_timeout_seconds: float

    # Retention
    retention_days: float
    retention_batch: int
    retention_interval: float
    # Webhooks
    public_url: str
    # PUBLIC_URL was given, rather than guessed from WEB_HOST and PORT (which are the web
    # process's own, and differ per process under honcho).
    public_url_configured: bool
    webhook_timeout: float
    webhook_retry_schedule: tuple[float, ...]
    webhook_schedule_scale: float
    webhook_concurrency: int
    webhook_max_in_flight: int
    webhook_secret_overlap: float

    # Simulator
    sim_url: str
    sim_host: str
    sim_port: int
    sim_latency: float
    sim_jitter: float
    sim_audio_seconds: float | None
    sim_threads: int

    # Processes
    web_host: str
    web_port: int
    web_workers: int
    web_threads: int
    worker_concurrency: int
    sync_concurrency: int
    flower_basic_auth: str | None
    flower_port: int
    # The ops console's logins (user:password, comma-separated); unset, /ops/ is a 404.
    ops_basic_auth: str | None
    log_level: str
    # json (one JSON object a line) or plain (for people: `chorus dev`); config/logs.py.
    log_format: str

    # Metrics (app/metrics.py)
    metrics_enabled: bool
    # The bearer token /metrics asks for; None: /metrics answers 404.
    metrics_token: str | None = field(repr=False)
    metrics_dir: Path
    # A worker's own /metrics server (hosts that share no METRICS_DIR with the web process).
    metrics_port: int | None
    metrics_host: str

    # Credentials are named by environment variable in the catalog; they are read here, once.
    environ: Mapping[str, str] = field(repr=False, default_factory=dict)

    @property
    def embedded(self) -> bool:
        """True when no Redis is configured: the broker is the filesystem transport."""
        return self.broker_url.startswith("filesystem://")

    @property
    def broker_kind(self) -> str:
        """``redis``, ``amqp`` (RabbitMQ) or ``filesystem`` (the embedded default)."""
        return broker_kind(self.broker_url)

    @property
    def pgdata(self) -> Path:
        """The embedded PostgreSQL's data folder (used only when DATABASE_URL is unset)."""
        return self.var_dir / "pgdata"

    @property
    def celery_folders(self) -> dict[str, Path]:
        root = self.var_dir / "celery"
        return {"data": root / "data", "control": root / "control", "processed": root / "processed"}

    def credential(self, env_name: str | None) -> str | None:
        """The secret behind an upstream account's credential variable, or None."""
        if not env_name:
            return None
        return self.environ.get(env_name)


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Parse settings from ``environ`` (default: ``os.environ``), reporting every bad value at once."""
    source = dict(os.environ if environ is None else environ)
    env = _MappingEnv(source, eager=False, expand_vars=True)
    settings = _parse(env, source)
    env.seal()
    return settings


class _MappingEnv(Env):
    """An ``Env`` that reads a given mapping instead of ``os.environ``, so tests can pass a dict."""

    def __init__(self, source: Mapping[str, str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._source = source

    def _get_value(self, env_key: str, default: Any) -> Any:
        return self._source.get(env_key, default)


def _parse(env: Env, source: Mapping[str, str]) -> Settings:
    var_dir = Path(env.str("CHORUS_VAR_DIR", "var")).resolve()
    redis_url = env.str("REDIS_URL", None) or None
    database_url = env.str("DATABASE_URL", None) or None
    broker_url = env.str("CELERY_BROKER_URL", None) or redis_url or "filesystem://"
    # Unset, DATABASE_URL is taken to reach PostgreSQL itself; set (and different), DATABASE_URL
    # is a pooler's, which in transaction mode keeps no prepared statement between transactions.
    database_direct_url = env.str("DATABASE_DIRECT_URL", None) or None
    pooled = database_direct_url is not None and with_driver(database_direct_url) != with_driver(
        database_url or ""
    )
    sim_host = env.str("SIM_HOST", "127.0.0.1")
    sim_port = env.int("SIM_PORT", 8100, validate=Range(min=1, max=65535))
    web_threads = env.int("WEB_THREADS", DEFAULT_WEB_THREADS, validate=Range(min=1))
    # A bad WEB_THREADS is reported at seal(); meanwhile derive from the default.
    threads = web_threads if isinstance(web_threads, int) else DEFAULT_WEB_THREADS
    # Requests held open by `Prefer: wait` sit on gunicorn threads: at most this many, so
    # the others always have threads left.
    wait_max_waiters = env.int(
        "WAIT_MAX_WAITERS",
        threads * 3 // 4,
        validate=Range(min=0, max=threads - 1, error=WAITERS_ERROR),
    )
    waiters = wait_max_waiters if isinstance(wait_max_waiters, int) else threads * 3 // 4
    # Reference tracks fetched at once by one web process, each on a thread for up to 20 s:
    # past this a submit with one is refused at once (503). By default half the threads the
    # waiters leave; with them, at least one thread is always left for everything else.
    reference_fetch_concurrency = env.int(
        "REFERENCE_FETCH_CONCURRENCY",
        max(1, (threads - waiters) // 2),
        validate=Range(min=1, max=max(1, threads - 1 - waiters), error=FETCHES_ERROR),
    )
    storage_dir, s3 = _storage(env, var_dir)
    web_host = env.str("WEB_HOST", "127.0.0.1")
    web_port = env.int("PORT", 8000, validate=Range(min=1, max=65535))
    public_url = env.str("PUBLIC_URL", None) or None
    return Settings(
        var_dir=var_dir,
        database_url=with_driver(database_url) if database_url else None,
        database_direct_url=with_driver(database_direct_url) if database_direct_url else None,
        database_prepare=env.bool("DATABASE_PREPARE", not pooled),
        database_pool_idle=env.int("DATABASE_POOL_IDLE", 10, validate=Range(min=1, max=50)),
        redis_url=redis_url,
        redis_prefix=env.str("REDIS_KEY_PREFIX", ""),
        broker_url=_broker(broker_url),
        storage_dir=storage_dir,
        s3=s3,
        catalog_file=Path(env.str("CATALOG_FILE", str(DEFAULT_CATALOG))),
        # No default: one in the source would let anyone sign audio links (`chorus dev` makes
        # its own under var_dir; the web and webhooks processes refuse to start without one).
        secret_key=env.str("SECRET_KEY", ""),
        max_content_length=env.int("MAX_CONTENT_LENGTH", 1_000_000, validate=Range(min=1024)),
        audio_link_ttl=env.int("AUDIO_LINK_TTL", 3600, validate=Range(min=60)),
        allow_private_urls=env.bool("ALLOW_PRIVATE_URLS", False),
        org_max_active_jobs=env.int("ORG_MAX_ACTIVE_JOBS", 1000, validate=Range(min=1)),
        rate_limit=env.str("RATE_LIMIT", "600 per minute"),
        reference_audio_max_bytes=env.int(
            "REFERENCE_AUDIO_MAX_BYTES", 50_000_000, validate=Range(min=1024)
        ),
        default_music_category=env.str(
            "DEFAULT_MUSIC_CATEGORY", "music_gen", validate=validate.Length(min=1, max=200)
        ),
        idempotency_ttl_seconds=env.int("IDEMPOTENCY_TTL_SECONDS", 86_400, validate=Range(min=60)),
        idempotency_lock_seconds=env.int(
            "IDEMPOTENCY_LOCK_SECONDS", 120, validate=Range(min=MAX_WAIT_SECONDS + 5)
        ),
        wait_max_waiters=wait_max_waiters,
        wait_recheck_seconds=env.float(
            "WAIT_RECHECK_SECONDS", 3.0, validate=Range(min=0.1, max=30)
        ),
        reference_fetch_concurrency=reference_fetch_concurrency,
        # A client gets this long to send a request's headers, then its whole body, or its
        # connection is closed (headers) or answered 408 (body); neither holds a thread meanwhile.
        request_header_timeout=env.float(
            "REQUEST_HEADER_TIMEOUT", 10.0, validate=Range(min=0.1, max=300)
        ),
        request_body_timeout=env.float(
            "REQUEST_BODY_TIMEOUT", 30.0, validate=Range(min=0.1, max=3600)
        ),
        # Early-audio listeners each web process follows at most (then 503), on its event loop,
        # not its threads: each costs a socket and at most a quarter MiB of queued audio.
        preview_max_listeners=env.int("PREVIEW_MAX_LISTENERS", 1000, validate=Range(min=0)),
        # Live event streams: a comment this often keeps proxies from closing an idle one;
        # each web process holds at most EVENTS_MAX_STREAMS (then 503), on its event loop.
        events_keepalive_seconds=env.float(
            "EVENTS_KEEPALIVE_SECONDS", 15.0, validate=Range(min=0.1, max=300)
        ),
        events_max_streams=env.int("EVENTS_MAX_STREAMS", 10_000, validate=Range(min=0)),
        scheduler_lookahead=env.float("SCHEDULER_LOOKAHEAD", 0.5, validate=Range(min=0.05, max=20)),
        scheduler_max_sleep=env.float("SCHEDULER_MAX_SLEEP", 5.0, validate=Range(min=0.1, max=300)),
        lease_seconds=env.float("LEASE_SECONDS", 10.0, validate=Range(min=1)),
        claim_batch=env.int("CLAIM_BATCH", 500, validate=Range(min=1)),
        io_threads=env.int("IO_THREADS", 32, validate=Range(min=1, max=512)),
        job_deadline_seconds=env.float("JOB_DEADLINE_SECONDS", 900.0, validate=Range(min=1)),
        submit_max_attempts=env.int("SUBMIT_MAX_ATTEMPTS", 5, validate=Range(min=1)),
        poll_strategy=env.str("POLL_STRATEGY", "adaptive", validate=OneOf(["adaptive", "fixed"])),
        poll_fixed_interval=env.float("POLL_FIXED_INTERVAL", 10.0, validate=Range(min=0.1)),
        poll_min_interval=env.float("POLL_MIN_INTERVAL", 0.5, validate=Range(min=0.05)),
        poll_max_interval=env.float("POLL_MAX_INTERVAL", 30.0, validate=Range(min=0.1)),
        invalid_response_limit=env.int("INVALID_RESPONSE_LIMIT", 5, validate=Range(min=1)),
        audio_max_bytes=env.int("AUDIO_MAX_BYTES", 100_000_000, validate=Range(min=1024)),
        upstream_connect_timeout=env.float(
            "UPSTREAM_CONNECT_TIMEOUT", 5.0, validate=Range(min=0.1)
        ),
        upstream_read_timeout=env.float("UPSTREAM_READ_TIMEOUT", 15.0, validate=Range(min=0.1)),
        lyrics_timeout_seconds=env.float(
            "LYRICS_TIMEOUT_SECONDS", 30.0, validate=Range(min=0.1, max=600)
        ),
        retention_days=env.float("RETENTION_DAYS", 30.0, validate=Range(min=0)),
        retention_batch=env.int("RETENTION_BATCH", 500, validate=Range(min=1, max=10_000)),
        retention_interval=env.float("RETENTION_INTERVAL", 3600.0, validate=Range(min=1)),
        public_url=(public_url or f"http://{web_host}:{web_port}").rstrip("/"),
        public_url_configured=public_url is not None,
        webhook_timeout=env.float("WEBHOOK_TIMEOUT", 10.0, validate=Range(min=0.1, max=15)),
        webhook_retry_schedule=_schedule(
            env.str("WEBHOOK_RETRY_SCHEDULE", ",".join(f"{s:g}" for s in WEBHOOK_SCHEDULE))
        ),
        webhook_schedule_scale=env.float(
            "WEBHOOK_SCHEDULE_SCALE", 1.0, validate=Range(min=0, max=1, min_inclusive=False)
        ),
        webhook_concurrency=env.int("WEBHOOK_CONCURRENCY", 16, validate=Range(min=1, max=256)),
        webhook_max_in_flight=env.int("WEBHOOK_MAX_IN_FLIGHT", 500, validate=Range(min=1)),
        webhook_secret_overlap=env.float("WEBHOOK_SECRET_OVERLAP", 86400.0, validate=Range(min=0)),
        sim_url=env.str("SIM_URL", f"http://{sim_host}:{sim_port}"),
        sim_host=sim_host,
        sim_port=sim_port,
        sim_latency=env.float("SIM_LATENCY", 2.0, validate=Range(min=0)),
        sim_jitter=env.float("SIM_JITTER", 0.5, validate=Range(min=0)),
        sim_audio_seconds=env.float("SIM_AUDIO_SECONDS", None),
        sim_threads=env.int("SIM_THREADS", 256, validate=Range(min=1)),
        web_host=web_host,
        web_port=web_port,
        web_workers=env.int("WEB_CONCURRENCY", 2, validate=Range(min=1)),
        web_threads=web_threads,
        worker_concurrency=env.int("WORKER_CONCURRENCY", 2, validate=Range(min=1)),
        sync_concurrency=env.int("SYNC_CONCURRENCY", 100, validate=Range(min=1, max=2000)),
        flower_basic_auth=env.str("FLOWER_BASIC_AUTH", None) or None,
        flower_port=env.int("FLOWER_PORT", 5555, validate=Range(min=1, max=65535)),
        ops_basic_auth=env.str("OPS_BASIC_AUTH", None) or None,
        log_level=env.str("LOG_LEVEL", "INFO"),
        log_format=env.str("LOG_FORMAT", "json", validate=OneOf(["json", "plain"])),
        metrics_enabled=env.bool("METRICS_ENABLED", True),
        metrics_token=env.str("METRICS_TOKEN", None) or None,
        metrics_dir=Path(env.str("METRICS_DIR", str(var_dir / "metrics"))).resolve(),
        metrics_port=env.int("METRICS_PORT", None, validate=Range(min=1, max=65535)),
        metrics_host=env.str("METRICS_HOST", "127.0.0.1"),
        environ=dict(source),
    )


def _storage(env: Env, var_dir: Path) -> tuple[Path, S3Settings | None]:
    """``STORAGE_URL``: ``file:///path`` (a local folder) or ``s3://bucket/prefix``.

    Unset, audio goes to the folder ``STORAGE_DIR`` (default ``$CHORUS_VAR_DIR/audio``).
    """
    storage_dir = Path(env.str("STORAGE_DIR", str(var_dir / "audio"))).resolve()
    url = env.str("STORAGE_URL", None) or ""
    endpoint = env.str("S3_ENDPOINT_URL", None) or None
    region = env.str("S3_REGION", None) or env.str("AWS_DEFAULT_REGION", None) or None
    # Path-style suits S3-compatible stores on a bare host (MinIO, Ceph, a local stand-in).
    style = env.str(
        "S3_ADDRESSING_STYLE",
        "path" if endpoint else "auto",
        validate=OneOf(["auto", "path", "virtual"]),
    )
    access_key = env.str("AWS_ACCESS_KEY_ID", None) or None
    secret_key = env.str("AWS_SECRET_ACCESS_KEY", None) or None
    session_token = env.str("AWS_SESSION_TOKEN", None) or None
    connect_timeout = env.float("STORAGE_CONNECT_TIMEOUT", 5.0, validate=Range(min=0.1))
    read_timeout = env.float("STORAGE_READ_TIMEOUT", 30.0, validate=Range(min=0.1))
    max_attempts = env.int("STORAGE_MAX_ATTEMPTS", 3, validate=Range(min=1, max=20))
    scheme, _, rest = url.partition("://")
    if not url:
        return storage_dir, None
    if scheme == "file" and rest:
        return Path(rest).resolve(), None
    if scheme == "s3" and rest.split("/", 1)[0]:
        bucket, _, prefix = rest.partition("/")
        return storage_dir, S3Settings(
            bucket=bucket,
            prefix=prefix.strip("/"),
            endpoint_url=endpoint,
            region=region,
            addressing_style=style,
            access_key_id=access_key,
            secret_access_key=secret_key,
            session_token=session_token,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            max_attempts=max_attempts,
        )
    raise ValueError(f"STORAGE_URL must be file:///path or s3://bucket[/prefix], not {url!r}")


# What Celery's URL schemes name, for the brokers Chorus is tested on (tests/e2e run on each).
BROKER_SCHEMES = {
    "redis": "redis",
    "rediss": "redis",
    "amqp": "amqp",
    "amqps": "amqp",
    "pyamqp": "amqp",
    "filesystem": "filesystem",
}
BROKER_ERROR = (
    "CELERY_BROKER_URL must be redis:// or rediss:// (Redis), amqp:// or amqps:// (RabbitMQ), "
    "or left unset (REDIS_URL's Redis, else the embedded filesystem:// broker), not {url!r}"
)


def broker_kind(url: str) -> str:
    return BROKER_SCHEMES[url.partition("://")[0].lower()]


def _broker(url: str) -> str:
    """Only the brokers whose transports Chorus was proven on: another kombu transport (SQS,
    a database) might lose a message or hold one past a lease in ways never tested here."""
    scheme, sep, _ = url.partition("://")
    if not sep or scheme.lower() not in BROKER_SCHEMES:
        # The URL may hold a password: name its scheme only.
        raise ValueError(BROKER_ERROR.format(url=f"{scheme}://…" if sep else "(no scheme)"))
    return url


def _schedule(text: str) -> tuple[float, ...]:
    """``WEBHOOK_RETRY_SCHEDULE``: seconds after each failed attempt, comma-separated."""
    try:
        delays = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError as exc:
        raise ValueError(f"WEBHOOK_RETRY_SCHEDULE: not a list of seconds: {text!r}") from exc
    if not delays or min(delays) < 0:
        raise ValueError("WEBHOOK_RETRY_SCHEDULE: give at least one delay, none negative")
    if sum(delays) < WEBHOOK_MIN_SPAN:
        # A receiver down for a night must still get its events.
        raise ValueError(f"WEBHOOK_RETRY_SCHEDULE must span at least {WEBHOOK_MIN_SPAN} s")
    return delays


def with_driver(url: str) -> str:
    """Pin psycopg2 for driver-less Postgres URLs (SQLAlchemy 2.1 would pick psycopg 3)."""
    for scheme in ("postgres://", "postgresql://"):
        if url.startswith(scheme):
            return "postgresql+psycopg2://" + url[len(scheme) :]
    return url
