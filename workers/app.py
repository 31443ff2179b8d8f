"""The worker-side Celery app: built from Settings, with the worker's hooks installed from `HOOKS`.

Each role's command line is in workers/roles.py (the Procfile is rendered from it), e.g.

    celery -A workers.app worker -Q generation -n generation@%h --pool threads -c 8

The task modules (`TASK_MODULES`, shared_task style: they build no app) are imported by the worker
when it starts (`include`); their names, limits and queues come from ragfleet.names.TASKS.

Reliability defaults (see docs/reliability.md): late acks + reject_on_worker_lost, so a task whose
worker dies is redelivered rather than lost; prefetch 1, so a dying worker holds at most one
unacked message per process; a visibility timeout above the longest time limit, so Redis does not
redeliver a task that is still running; a redelivery cap (workers.base) so a message that kills
its worker every time is parked instead of looping forever.
"""

from __future__ import annotations

from collections.abc import Callable

from celery import Celery
from kombu.entity import Queue as KQueue

from ragfleet.names import PRIORITY_STEPS, TASKS, Queue
from ragfleet.settings import Settings, get_settings
from workers import kombu_patches
from workers.beat import beat_schedule
from workers.hooks import (
    drain,
    feedback_schema,
    heartbeat,
    inflight,
    interactive,
    lifeline,
    logs,
    metrics,
    node,
    request_id,
    revoked,
    time_limits,
    tracing,
    warmup,
)

# one task module per queue (tasks/<queue>.py), imported by the worker at start
TASK_MODULES = [f"tasks.{q.value}" for q in Queue]

# The worker's Celery wiring, installed in this order (workers/hooks/__init__.py says why it matters).
HOOKS: tuple[Callable[[Celery], None], ...] = (
    node.install,
    tracing.install,  # right after node (it reads the pool): a task's span opens before others log
    lifeline.install,  # before the warm-up: a child that dies with its parent need not load a model
    logs.install,
    request_id.install,
    metrics.install,
    interactive.install,
    time_limits.install,
    inflight.install,
    drain.install,
    warmup.install,
    revoked.install,
    feedback_schema.install,
    heartbeat.install,  # last in worker_ready: the node beats once warm
)


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
        task_routes={name.value: {"queue": spec.queue.value} for name, spec in TASKS.items()},
        task_time_limit=s.index_time_limit_s,
        task_soft_time_limit=s.index_time_limit_s - 30,
        worker_max_tasks_per_child=None,
        worker_cancel_long_running_tasks_on_connection_loss=False,
        worker_hijack_root_logger=False,
    )
    app.conf.beat_schedule = beat_schedule(s)
    app.conf.redbeat_redis_url = s.redis_url
    app.conf.redbeat_key_prefix = s.key("redbeat") + ":"
    app.conf.redbeat_lock_timeout = s.beat_lock_timeout_s
    app.conf.beat_max_loop_interval = s.beat_max_interval_s
    return app


app = create_app()
for install in HOOKS:
    install(app)
