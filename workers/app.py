"""The worker-side Celery app. Start a pool with e.g.

    celery -A workers.app worker -Q retrieval -n retrieval@%h --pool prefork -c 2

Reliability defaults (see README "Reliability"): late acks + reject_on_worker_lost, so a task whose
worker dies is redelivered rather than lost; prefetch 1, so a dying worker holds at most one
unacked message per process; a visibility timeout above the longest time limit, so Redis does not
redeliver a task that is still running; a redelivery cap (workers.base) so a message that kills
its worker every time is parked instead of looping forever.
"""

from __future__ import annotations

from celery import Celery
from kombu.entity import Queue as KQueue

from ragfleet.names import PRIORITY_STEPS, TASK_QUEUES, Queue
from ragfleet.settings import Settings, get_settings
from workers import kombu_patches

TASK_MODULES = [
    "tasks.retrieval",
    "tasks.generation",
    "tasks.indexing",
    "tasks.feedback",
    "tasks.maintenance",
]


# Pools that consume only these queues run on `interactive_transport_options`.
INTERACTIVE_QUEUES = frozenset({Queue.RETRIEVAL.value, Queue.GENERATION.value})


def interactive_transport_options(s: Settings) -> dict[str, object]:
    """kombu Redis options for a pool that serves only queries: its own unacked hash, index and
    mutex (`unacked:interactive`...), so its short visibility timeout never restores a background
    pool's long task, and a restore sweep every few seconds instead of kombu's ~100 s (interval x
    throttle), so a dead node's query comes back about one timeout after it died."""
    vt = s.interactive_visibility_timeout_s
    return {
        "visibility_timeout": vt,
        "unacked_key": "unacked:interactive",
        "unacked_index_key": "unacked_index:interactive",
        "unacked_mutex_key": "unacked_mutex:interactive",
        "unacked_restore_interval": max(1, min(10, vt // 4)),
        "unacked_restore_throttle": 1,
    }


def create_app(settings: Settings | None = None) -> Celery:
    s = settings or get_settings()
    kombu_patches.install()  # survive losing Redis with messages unacked; in-flight sets (see module)
    app = Celery("ragfleet", broker=s.broker, backend=s.backend, include=TASK_MODULES)
    transport: dict[str, object] = {
        "visibility_timeout": s.visibility_timeout_s,
        "queue_order_strategy": "priority",
        "priority_steps": list(PRIORITY_STEPS),
        "socket_timeout": 5,
        "socket_connect_timeout": 5,
        "health_check_interval": 10,
        "retry_on_timeout": True,
    }
    if s.broker_key_prefix:
        transport["global_keyprefix"] = s.broker_key_prefix
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        event_serializer="json",
        result_accept_content=["json"],
        timezone="UTC",
        enable_utc=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=1,
        task_track_started=True,
        task_send_sent_event=True,
        worker_send_task_events=True,
        result_expires=s.result_ttl_s,
        result_extended=True,
        result_backend_transport_options={"global_keyprefix": s.broker_key_prefix}
        if s.broker_key_prefix
        else {},
        broker_transport_options=transport,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,  # workers wait out a Redis outage, then resume
        broker_heartbeat=0,
        task_default_queue=Queue.RETRIEVAL.value,
        task_queues=[KQueue(q.value, routing_key=q.value) for q in Queue],  # type: ignore[no-untyped-call]
        task_routes={name.value: {"queue": queue.value} for name, queue in TASK_QUEUES.items()},
        task_time_limit=s.index_time_limit_s,
        task_soft_time_limit=s.index_time_limit_s - 30,
        worker_max_tasks_per_child=None,
        worker_cancel_long_running_tasks_on_connection_loss=False,
        worker_hijack_root_logger=False,
    )
    from workers.beat import beat_schedule

    app.conf.beat_schedule = beat_schedule(s)
    app.conf.redbeat_redis_url = s.redis_url
    app.conf.redbeat_key_prefix = s.key("redbeat") + ":"
    app.conf.redbeat_lock_timeout = 60
    app.conf.beat_max_loop_interval = 10
    return app


app = create_app()

from ragfleet.logs import install_celery_logging, install_celery_request_id  # noqa: E402
from ragfleet.metrics import install_celery_metrics  # noqa: E402

install_celery_logging(process="celery", level=get_settings().log_level)
install_celery_request_id()
install_celery_metrics()

import workers.signals  # noqa: E402,F401  (connects per-process hooks to this app)
