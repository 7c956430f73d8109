"""Celery's settings as the Redis, RabbitMQ and filesystem brokers need them (reliability §1–2)."""

from __future__ import annotations

import pytest

from config import load_settings
from config.celery import (
    ALL_QUEUES,
    EMBEDDED_TRANSPORT,
    POLL_QUEUE,
    QUEUES,
    RABBITMQ_CONSUMER_TIMEOUT,
    REDIS_TRANSPORT,
    SYNC_QUEUE,
    VISIBILITY_TIMEOUT,
    WEBHOOKS_QUEUE,
    broker_transport,
    celery_config,
)
from workers import make_celery
from workers.redis_broker import Transport


def test_queues_are_declared_and_split_between_the_three_workers() -> None:
    from app.cli.processes import worker_argv
    from workers import make_celery

    settings = load_settings({"REDIS_URL": "redis://127.0.0.1:6379/13"})
    app = make_celery(settings)
    assert set(app.amqp.queues) == set(ALL_QUEUES) == {*QUEUES, WEBHOOKS_QUEUE, SYNC_QUEUE}
    # Each queue has exactly one kind of worker: jobs, held-open sync calls, webhooks.
    job, sync, hooks = (
        worker_argv(settings),
        worker_argv(settings, sync=True),
        worker_argv(settings, webhooks=True),
    )
    assert job[job.index("-Q") + 1].split(",") == ["chorus.submit", "chorus.poll"]
    assert sync[sync.index("-Q") + 1] == SYNC_QUEUE
    assert sync[sync.index("--pool") + 1] == "threads"
    assert hooks[hooks.index("-Q") + 1] == WEBHOOKS_QUEUE
    routes = app.conf.task_routes
    assert routes["chorus.sync_submit_jobs"]["queue"] == SYNC_QUEUE
    assert routes["chorus.submit_jobs"]["queue"] == "chorus.submit"
    assert routes["chorus.poll_jobs"]["queue"] == "chorus.poll"
    assert routes["chorus.webhooks.deliver"]["queue"] == WEBHOOKS_QUEUE
    # Maintenance rides on the poll queue; nothing is routed to a queue no worker takes.
    assert routes["chorus.purge_idempotency_keys"]["queue"] == POLL_QUEUE
    assert routes["chorus.purge_expired"]["queue"] == POLL_QUEUE
    assert {r["queue"] for r in routes.values()} <= set(ALL_QUEUES)


def test_there_is_no_beat_and_no_tick() -> None:
    from workers import make_celery

    app = make_celery(load_settings({"REDIS_URL": "redis://127.0.0.1:6379/13"}))
    app.loader.import_default_modules()
    assert not app.conf.beat_schedule
    assert "chorus.tick" not in app.tasks
    assert "chorus.webhooks.sweep" not in app.tasks
    assert "chorus.submit_jobs" in app.tasks and "chorus.webhooks.deliver" in app.tasks


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
    # A hop through the folder broker costs a tenth of a second, not kombu's default second.
    assert folders["polling_interval"] <= 0.1


def test_refuses_settings_that_would_outlive_the_visibility_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import config.celery as module

    monkeypatch.setattr(module, "TASK_TIME_LIMIT", VISIBILITY_TIMEOUT)
    with pytest.raises(ValueError, match="visibility timeout"):
        module.celery_config(load_settings({}))


def test_a_redis_broker_gets_the_transport_that_outlives_a_restart(tmp_path: object) -> None:
    def transport(**env: str) -> str | None:
        return broker_transport(load_settings({"CHORUS_VAR_DIR": str(tmp_path), **env}))

    assert transport(REDIS_URL="redis://127.0.0.1:6379/0") == REDIS_TRANSPORT
    app = make_celery(load_settings({"REDIS_URL": "redis://127.0.0.1:6379/13"}))
    with app.connection_for_write() as conn:
        assert isinstance(conn.transport, Transport)
    # Other brokers keep kombu's own transports; the embedded default has its folder broker.
    assert transport(REDIS_URL="rediss://cache.example:6380/0") is None
    assert transport(CELERY_BROKER_URL="amqp://guest@127.0.0.1//") is None
    assert transport() == EMBEDDED_TRANSPORT


def test_rabbitmq_confirms_publishes_and_stays_inside_its_consumer_timeout() -> None:
    settings = load_settings({"CELERY_BROKER_URL": "amqp://guest:guest@127.0.0.1:5672//"})
    conf = celery_config(settings)
    assert conf["broker_url"].startswith("amqp://") and conf["broker_transport"] is None
    options = conf["broker_transport_options"]
    assert options["confirm_publish"] is True
    # Redis's options mean nothing to py-amqp: none is passed on.
    assert "visibility_timeout" not in options and "socket_timeout" not in options
    assert conf["task_acks_late"] and conf["worker_prefetch_multiplier"] == 1
    # A message is held unacked from before its ETA until its task returns: well inside.
    assert settings.scheduler_lookahead + conf["task_time_limit"] < RABBITMQ_CONSUMER_TIMEOUT
    # Durable queues: a RabbitMQ restart keeps what waits in them.
    assert all(queue.durable for queue in conf["task_queues"])
