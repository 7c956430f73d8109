"""The one logging setup (config/logs.py): its two formats, the ids bound to a block of code,
and LOG_FORMAT's values."""

from __future__ import annotations

import io
import json
import logging
import sys
import types
from collections.abc import Iterator

import pytest
from environs import EnvValidationError

from config import load_settings, logs


@pytest.fixture
def root() -> Iterator[logging.Logger]:
    """The root logger, given back as it was."""
    logger = logging.getLogger()
    handlers, level = list(logger.handlers), logger.level
    yield logger
    logger.handlers[:] = handlers
    logger.setLevel(level)
    logging.captureWarnings(False)


def written(root: logging.Logger, log_format: str, emit: object) -> str:
    """What the handler ``configure`` installs writes while ``emit`` runs."""
    logs.configure(load_settings({"LOG_FORMAT": log_format, "LOG_LEVEL": "INFO"}), "web")
    (handler,) = root.handlers
    assert isinstance(handler, logging.StreamHandler)
    stream = io.StringIO()
    handler.setStream(stream)
    emit()  # type: ignore[operator]
    return stream.getvalue()


def test_json_lines_carry_the_bound_ids_and_the_extras(root: logging.Logger) -> None:
    log = logging.getLogger("chorus.test")

    def emit() -> None:
        with logs.bound(request_id="r-1", job_id="luid_x", account=None):
            log.info("job %s %s", "luid_x", "RUNNING", extra={"status": "RUNNING"})
        log.debug("below the level: not written")
        log.info("after the block")

    first, second = (json.loads(line) for line in written(root, "json", emit).splitlines())
    assert first["message"] == "job luid_x RUNNING"
    assert first["level"] == "INFO"
    assert first["logger"] == "chorus.test"
    assert first["service"] == "web"
    assert isinstance(first["pid"], int)
    assert first["time"].endswith("+00:00")
    assert (first["request_id"], first["job_id"], first["status"]) == ("r-1", "luid_x", "RUNNING")
    assert "account" not in first  # unknown ids are left out, not written as null
    assert "job_id" not in second and "request_id" not in second


def test_an_extra_given_by_the_call_wins_over_the_bound_one(root: logging.Logger) -> None:
    def emit() -> None:
        with logs.bound(job_id="luid_bound", org_id=7):
            logging.getLogger("chorus.test").info("batch", extra={"job_id": "luid_given"})

    (line,) = (json.loads(text) for text in written(root, "json", emit).splitlines())
    assert (line["job_id"], line["org_id"]) == ("luid_given", 7)


def test_a_traceback_stays_inside_its_one_json_line(root: logging.Logger) -> None:
    def emit() -> None:
        try:
            raise ValueError("boom")
        except ValueError:
            logging.getLogger("chorus.test").exception("it failed")

    (line,) = written(root, "json", emit).splitlines()
    record = json.loads(line)
    assert record["level"] == "ERROR"
    assert "ValueError: boom" in record["exc_info"]


def test_the_plain_format_is_one_line_for_people_with_the_ids_at_its_end(
    root: logging.Logger,
) -> None:
    def emit() -> None:
        with logs.bound(job_id="luid_x", org_id=3):
            logging.getLogger("chorus.test").warning("slow upstream")

    (line,) = written(root, "plain", emit).splitlines()
    assert line.endswith(" WARNING [web] chorus.test: slow upstream job_id=luid_x org_id=3")


def test_add_lasts_until_the_enclosing_block_ends() -> None:
    with logs.bound(job_id="luid_x"):
        logs.add(generation_id="gen-1")
        assert logs.current() == {"job_id": "luid_x", "generation_id": "gen-1"}
    assert logs.current() == {}


def test_configure_leaves_one_handler_however_often_it_runs(root: logging.Logger) -> None:
    settings = load_settings({"LOG_LEVEL": "WARNING"})
    logs.configure(settings, "worker")
    logs.configure(settings, "worker")
    assert len(root.handlers) == 1
    assert root.level == logging.WARNING


def test_log_format_is_json_by_default_and_refuses_anything_but_json_or_plain() -> None:
    assert load_settings({}).log_format == "json"
    assert load_settings({"LOG_FORMAT": "plain"}).log_format == "plain"
    with pytest.raises(EnvValidationError, match="LOG_FORMAT"):
        load_settings({"LOG_FORMAT": "xml"})


def test_a_line_written_while_another_thread_imports_celery_is_still_written(
    root: logging.Logger, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What sys.modules holds while an import of celery._state is under way: a module whose
    # names are not defined yet.
    monkeypatch.setitem(sys.modules, "celery._state", types.ModuleType("celery._state"))
    log = logging.getLogger("chorus.test")
    out = written(root, "json", lambda: log.error("callback failed"))
    assert json.loads(out)["message"] == "callback failed"
