"""Celery's configuration, derived from Settings (never from the environment directly)."""

from __future__ import annotations

from typing import Any

from kombu import Queue

from config.settings import Settings

SUBMIT_QUEUE = "chorus.submit"
POLL_QUEUE = "chorus.poll"
# Synchronous upstream calls (MiniMax) that hold a thread for minutes: their own queue,
# consumed by a thread-pool worker, so they never occupy the slots other jobs need.
SYNC_QUEUE = "chorus.sync"
# Webhook deliveries: their own queue, so a backlog of them never sits in front of job steps.
# The tasks only hand claims to a thread pool and return, so a slow receiver holds a thread,
# never a worker slot.
WEBHOOKS_QUEUE = "chorus.webhooks"
# What `chorus worker` consumes; `chorus worker --webhooks` takes WEBHOOKS_QUEUE and
# `chorus worker --sync` SYNC_QUEUE.
QUEUES = (SUBMIT_QUEUE, POLL_QUEUE)
ALL_QUEUES = (*QUEUES, WEBHOOKS_QUEUE, SYNC_QUEUE)

# Every task finishes well inside this; a message unacked for longer is presumed lost and
# redelivered, which the job leases make harmless.
TASK_TIME_LIMIT = 240
VISIBILITY_TIMEOUT = 600
# RabbitMQ closes the channel of a consumer that holds a delivery unacknowledged this long
# (its `consumer_timeout`, 30 minutes by default; docker-compose.yml sets it). With late
# acks a message is held from its arrival (up to SCHEDULER_LOOKAHEAD before its ETA) until
# its task returns: within the task time limit for job steps, within the account's
# read_timeout (10 minutes in the shipped catalogs) for the sync worker's held-open calls,
# whose thread pool enforces no time limit. A server set lower would close channels under
# working tasks: each closing gives their messages back, and the leases make the repeats
# harmless, but every worker on it would keep reconnecting.
RABBITMQ_CONSUMER_TIMEOUT = 1800
# The filesystem broker (embedded mode) looks for new messages this often, in seconds: each
# hop from the scheduler to a worker waits up to this long (kombu's default is a second).
EMBEDDED_POLLING_INTERVAL = 0.1
EMBEDDED_TRANSPORT = "workers.broker:Transport"
# A redis:// broker's transport: kombu's, with channels that can be closed after a lost broker
# (see the module), so a worker outlives a Redis restart. Other schemes keep kombu's own.
REDIS_TRANSPORT = "workers.redis_broker:Transport"


def broker_transport(settings: Settings) -> str | None:
    if settings.embedded:
        # kombu's filesystem transport, fixed to publish each message whole.
        return EMBEDDED_TRANSPORT
    if settings.broker_url.startswith("redis://"):
        return REDIS_TRANSPORT
    return None


def celery_config(settings: Settings) -> dict[str, Any]:
    lookahead = settings.scheduler_lookahead
    if lookahead + TASK_TIME_LIMIT >= min(VISIBILITY_TIMEOUT, RABBITMQ_CONSUMER_TIMEOUT):
        # A countdown or task outliving the visibility timeout runs twice, forever (reliability
        # §1.2); one outliving RabbitMQ's consumer timeout has its channel closed under it.
        raise ValueError("task time limit plus countdowns must stay under the visibility timeout")
    transport: dict[str, Any] = {
        "visibility_timeout": VISIBILITY_TIMEOUT,
        # Producers give up instead of hanging when the broker is down; the rows wait.
        "max_retries": 3,
        "socket_timeout": 5,
        "socket_connect_timeout": 5,
        "retry_on_timeout": True,
    }
    if settings.redis_prefix:
        # Several Chorus installations (or test runs) can share one Redis database.
        transport["global_keyprefix"] = settings.redis_prefix
    if settings.broker_kind == "amqp":
        transport = {
            # Publisher confirms: a publish returns once RabbitMQ has the message, so the
            # scheduler never counts as sent a message the broker dropped as it went down (it
            # would cost that job a lease's wait). One round trip per message; the scheduler
            # sends up to 50 jobs in one.
            "confirm_publish": True,
            "max_retries": 3,
        }
        # The rest is Celery's default on amqp and what production needs: queues durable and
        # messages persistent (a RabbitMQ restart keeps them); prefetch (multiplier 1) is raised
        # by Celery for each message held for its ETA, which is at most SCHEDULER_LOOKAHEAD
        # away, so no delivery waits unacked near the consumer timeout; a lost connection
        # gives a worker's unacked messages back at once (Redis waits for the visibility
        # timeout), and the job leases make those repeats harmless.
    if settings.embedded:
        folders = settings.celery_folders
        transport = {
            "data_folder_in": str(folders["data"]),
            "data_folder_out": str(folders["data"]),
            "control_folder": str(folders["control"]),
            "processed_folder": str(folders["processed"]),
            "store_processed": False,
            "polling_interval": EMBEDDED_POLLING_INTERVAL,
        }
    return {
        "broker_url": settings.broker_url,
        "broker_transport": broker_transport(settings),
        "broker_transport_options": transport,
        "broker_connection_retry_on_startup": True,
        "result_backend": None,
        "task_ignore_result": True,
        "task_serializer": "json",
        "accept_content": ["json"],
        # Late acks + requeue on a lost worker: a message survives a killed worker.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_time_limit": TASK_TIME_LIMIT,
        "task_soft_time_limit": TASK_TIME_LIMIT - 30,
        # A step under way when the broker connection drops runs to its end: its writes are
        # guarded by its lease, and its message, given back or redelivered, finds the lease
        # moved on and does nothing. (Cancelling could not stop it anyway: pool processes
        # ignore SIGTERM, and a thread cannot be cancelled.)
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "worker_hijack_root_logger": False,
        "task_queues": [Queue(name) for name in ALL_QUEUES],
        "task_default_queue": SUBMIT_QUEUE,
        "task_routes": {
            "chorus.submit_jobs": {"queue": SUBMIT_QUEUE},
            "chorus.poll_jobs": {"queue": POLL_QUEUE},
            "chorus.sync_submit_jobs": {"queue": SYNC_QUEUE},
            # Maintenance the scheduler sends now and then: a worker's poll slot, briefly.
            "chorus.purge_idempotency_keys": {"queue": POLL_QUEUE},
            "chorus.purge_expired": {"queue": POLL_QUEUE},
            "chorus.webhooks.deliver": {"queue": WEBHOOKS_QUEUE},
        },
        "timezone": "UTC",
        "enable_utc": True,
    }
