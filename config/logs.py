"""Logging for every Chorus process, set up here and nowhere else.

``configure`` gives the root logger one handler on stderr: JSON lines (``LOG_FORMAT=json``,
the default) or a plain human format (``LOG_FORMAT=plain``, what ``chorus dev`` uses). Each
line carries the ids known where it was written: the request's id, and the job, org, upstream
account and generation it is about (``bound`` sets them for a block of code), plus the Celery
task's name and id in a worker.

python-json-logger rather than structlog: it is a formatter for the standard library's
``logging``, so every logger already writing in Chorus's processes (Chorus's own, gunicorn's
error and access logs, Celery's worker and task logs, Flower's tornado, alembic) comes out
as JSON through the same handler, with no call site changed. structlog would give Chorus's
own lines an API of their own and still need this very bridge for everyone else's.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator, Mapping
from contextvars import ContextVar, Token
from types import MappingProxyType
from typing import Any

from pythonjsonlogger.json import JsonFormatter

from config.settings import Settings

# The ids a line may carry, in the order the plain format prints them.
FIELDS = (
    "request_id",
    "job_id",
    "org_id",
    "account",
    "generation_id",
    "delivery_id",
    "task_name",
    "task_id",
)
LOG_FORMATS = ("json", "plain")

_NOTHING: Mapping[str, Any] = MappingProxyType({})
_context: ContextVar[Mapping[str, Any]] = ContextVar("chorus_log_fields", default=_NOTHING)


def _known(fields: Mapping[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in fields.items() if value is not None}


def bind(**fields: Any) -> Token[Mapping[str, Any]]:
    """Add ``fields`` to every line this context writes until ``unbind`` (None: not known)."""
    return _context.set({**_context.get(), **_known(fields)})


def unbind(token: Token[Mapping[str, Any]]) -> None:
    _context.reset(token)


def add(**fields: Any) -> None:
    """Add ``fields`` to the bound ones until the enclosing ``bound`` block (or ``unbind``)
    ends: what was learnt along the way (the request's org, the job's generation id)."""
    bind(**fields)


@contextlib.contextmanager
def bound(**fields: Any) -> Iterator[None]:
    """``bind`` for a block: the lines written inside it carry ``fields``."""
    token = bind(**fields)
    try:
        yield
    finally:
        unbind(token)


def current() -> Mapping[str, Any]:
    """The fields bound now."""
    return _context.get()


def _celery_task() -> Any:
    # Only a worker has Celery's task stack loaded; other processes never import it for this.
    # The module may be one another thread is still importing (the web process imports Celery
    # on its first submit), with none of its names defined yet.
    state = sys.modules.get("celery._state")
    get_current_task = getattr(state, "get_current_task", None)
    return get_current_task() if get_current_task is not None else None


class ContextFilter(logging.Filter):
    """Puts the bound fields (and, in a worker, the running task) on each record; a field
    the call gave itself (``extra=``) wins."""

    def filter(self, record: logging.LogRecord) -> bool:
        fields = dict(_context.get())
        task = _celery_task()
        if task is not None and task.request.id is not None:
            fields.setdefault("task_name", task.name)
            fields.setdefault("task_id", task.request.id)
        for name, value in fields.items():
            if not hasattr(record, name):
                setattr(record, name, value)
        return True


class PlainFormatter(logging.Formatter):
    """One human line: time, level, process, logger, message, then the ids as ``name=value``."""

    def __init__(self, service: str) -> None:
        super().__init__(f"%(asctime)s %(levelname)s [{service}] %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        ids = " ".join(f"{n}={getattr(record, n)}" for n in FIELDS if hasattr(record, n))
        if not ids:
            return line
        head, newline, rest = line.partition("\n")
        return f"{head} {ids}{newline}{rest}"


def formatter(log_format: str, service: str) -> logging.Formatter:
    if log_format == "plain":
        return PlainFormatter(service)
    return JsonFormatter(
        "{levelname}{name}{message}{process}",
        style="{",
        rename_fields={"levelname": "level", "name": "logger", "process": "pid"},
        static_fields={"service": service},
        timestamp="time",
    )


def configure(settings: Settings, service: str) -> None:
    """Route every logger of this process through one stderr handler in ``LOG_FORMAT``, at
    ``LOG_LEVEL``; ``service`` names the process (``web``, ``worker``, ``scheduler``…)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(ContextFilter())
    handler.setFormatter(formatter(settings.log_format, service))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
    # Python's warnings become log lines too, so nothing reaches stderr unformatted.
    logging.captureWarnings(True)
