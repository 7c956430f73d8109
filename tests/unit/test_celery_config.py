"""Celery's settings as the Redis and filesystem brokers need them (reliability §1–2)."""

from __future__ import annotations

import pytest

from config import load_settings
from config.celery import QUEUES, SYNC_QUEUE, VISIBILITY_TIMEOUT, celery_config


def test_queues_are_declared_and_split_between_the_two_workers() -> None:
    from app.cli import worker_argv
    from workers import make_celery

    settings = load_settings({"REDIS_URL": "redis://127.0.0.1:6379/13"})
    app = make_celery(settings)
    assert set(app.amqp.queues) == {*QUEUES, SYNC_QUEUE}
    # The job worker never takes held-open sync calls; the sync worker takes nothing else.
    job_argv, sync_argv = worker_argv(settings), worker_argv(settings, sync=True)
    assert job_argv[job_argv.index("-Q") + 1].split(",") == ["chorus.submit", "chorus.poll"]
    assert sync_argv[sync_argv.index("-Q") + 1] == SYNC_QUEUE
    assert sync_argv[sync_argv.index("--pool") + 1] == "threads"
    assert app.conf.task_routes["chorus.sync_submit_jobs"]["queue"] == SYNC_QUEUE
    assert app.conf.task_routes["chorus.tick"]["queue"] == "chorus.sweep"
    assert app.conf.task_routes["chorus.submit_jobs"]["queue"] == "chorus.submit"
    assert app.conf.task_routes["chorus.poll_jobs"]["queue"] == "chorus.poll"


def test_redis_safety_settings() -> None:
    conf = celery_config(load_settings({"REDIS_URL": "redis://127.0.0.1:6379/13"}))
    assert conf["broker_url"] == "redis://127.0.0.1:6379/13"
    assert conf["task_acks_late"] and conf["task_reject_on_worker_lost"]
    assert conf["worker_prefetch_multiplier"] == 1
    assert conf["task_ignore_result"] and conf["result_backend"] is None
    assert conf["broker_transport_options"]["visibility_timeout"] == VISIBILITY_TIMEOUT
    assert conf["task_time_limit"] < VISIBILITY_TIMEOUT
    assert conf["task_serializer"] == "json" and conf["accept_content"] == ["json"]


def test_embedded_default_uses_the_filesystem_broker(tmp_path: object) -> None:
    settings = load_settings({"CHORUS_VAR_DIR": str(tmp_path)})
    conf = celery_config(settings)
    assert conf["broker_url"] == "filesystem://"
    folders = conf["broker_transport_options"]
    assert folders["data_folder_in"] == folders["data_folder_out"]
    assert str(tmp_path) in folders["control_folder"]


def test_refuses_settings_that_would_outlive_the_visibility_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import config.celery as module

    monkeypatch.setattr(module, "TASK_TIME_LIMIT", VISIBILITY_TIMEOUT)
    with pytest.raises(ValueError, match="visibility timeout"):
        module.celery_config(load_settings({}))
