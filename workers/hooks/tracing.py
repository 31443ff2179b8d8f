"""Tracing in the workers (ragfleet.tracing): the tracer set up where the pool runs its tasks, and a
span around every task, a child of the trace context its message carries.

Where the provider is made: a prefork child after the fork (`worker_process_init`: an export
thread made in the parent would not exist in the child), a solo or threads worker once when it is
set up (`celeryd_after_setup`; the solo pool also sends `worker_process_init`, earlier, from the
main process, which is skipped). Each flushes its spans when it goes
away (`worker_process_shutdown`, `worker_shutdown`).

The context comes from the message's `traceparent` header: ours put it there on every enqueue path
(ragfleet.task_headers), and so may a producer's own `send_task(..., headers={"traceparent": ...})`.
One that does not parse is ignored (the task starts a new trace). What this worker publishes
through Celery itself (retries, `send_task` from a task) gets the current context too.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping
from typing import Any, Final

from celery import Celery, signals

from ragfleet import tracing
from workers.hooks import node

_started: dict[str, Any] = {}  # task id -> what tracing.start_span returned (one per running task)
_HEADERS: Final = (tracing.TRACEPARENT, tracing.TRACESTATE)
_main_pid = os.getpid()  # the worker's main process imports the app (and this) before any fork


def _role(queues: Any = None) -> str:
    """The queues this node consumes (`retrieval`, `generation`, ...): the process's role."""
    return "+".join(sorted(queues or node.current.queues)) or node.current.name.split("@")[0]


def _after_setup(sender: str = "", instance: Any = None, **_: Any) -> None:
    queues = instance.app.amqp.queues.consume_from.keys() if instance is not None else None
    if "prefork" not in str(getattr(instance, "pool_cls", "prefork")).lower():
        tracing.setup(_role(queues))


def _process_init(**_: Any) -> None:
    # The solo pool sends this signal too, from the main process and before the node is set up:
    # there `_after_setup` does it, once the queues are known.
    if os.getpid() != _main_pid:
        tracing.setup(_role())


def _shutdown(**_: Any) -> None:
    tracing.shutdown()


def _carrier(request: Any) -> dict[str, Any]:
    """The message's trace headers: Celery puts a message's custom headers on the request, or (for
    some producers) under `request.headers`."""
    out = {h: getattr(request, h, None) for h in _HEADERS}
    headers = getattr(request, "headers", None)
    if isinstance(headers, Mapping):
        for h in _HEADERS:
            out[h] = out[h] or headers.get(h)
    return out


def _on_prerun(task_id: str | None = None, task: Any = None, kwargs: Any = None, **_: Any) -> None:
    if task_id is None or not tracing.enabled():
        return
    request = getattr(task, "request", None)
    payload = kwargs.get("payload") if isinstance(kwargs, dict) else None
    payload = payload if isinstance(payload, dict) else {}
    delivery = getattr(request, "delivery_info", None) or {}
    _started[task_id] = tracing.start_span(
        f"run {getattr(task, 'name', 'task')}",
        parent=tracing.extract(_carrier(request)),
        kind=tracing.SpanKind.CONSUMER,
        **{
            tracing.JOB_ID: str(payload.get("job_id") or task_id),
            tracing.TENANT: payload.get("tenant"),
            tracing.RETRY_COUNT: int(getattr(request, "retries", 0) or 0),
            "messaging.system": "celery",
            "messaging.destination.name": delivery.get("routing_key"),
            "messaging.message.id": task_id,
        },
    )


def _error_code(retval: Any) -> str | None:
    """A failed job's code: tasks return `{"error": {"code": ...}}` (ragfleet.stages.error_result)."""
    error = retval.get("error") if isinstance(retval, dict) else None
    return str(error.get("code")) if isinstance(error, dict) and error.get("code") else None


def _on_postrun(task_id: str | None = None, retval: Any = None, state: str | None = None, **_: Any) -> None:
    started = _started.pop(task_id, None) if task_id is not None else None
    if started is not None and state:
        started[0].set_attribute("celery.state", state)
    tracing.end_span(started, error=_error_code(retval))


def _on_failure(task_id: str | None = None, exception: BaseException | None = None, **_: Any) -> None:
    started = _started.get(task_id) if task_id is not None else None
    if started is not None and exception is not None:
        started[0].record_exception(exception)
        started[0].set_attribute(tracing.ERROR_CODE, "internal")


def _on_before_publish(headers: MutableMapping[str, Any] | None = None, **_: Any) -> None:
    if headers is not None:
        tracing.inject(headers)


def install(app: Celery | None = None) -> None:
    """Idempotent; after `node` (it reads the pool and queues `node` records)."""
    uid = "ragfleet.hooks.tracing"
    signals.celeryd_after_setup.connect(_after_setup, weak=False, dispatch_uid=f"{uid}.setup")
    signals.worker_process_init.connect(_process_init, weak=False, dispatch_uid=f"{uid}.process")
    signals.worker_process_shutdown.connect(_shutdown, weak=False, dispatch_uid=f"{uid}.process_shutdown")
    signals.worker_shutdown.connect(_shutdown, weak=False, dispatch_uid=f"{uid}.shutdown")
    signals.task_prerun.connect(_on_prerun, weak=False, dispatch_uid=f"{uid}.prerun")
    signals.task_postrun.connect(_on_postrun, weak=False, dispatch_uid=f"{uid}.postrun")
    signals.task_failure.connect(_on_failure, weak=False, dispatch_uid=f"{uid}.failure")
    signals.before_task_publish.connect(_on_before_publish, weak=False, dispatch_uid=f"{uid}.publish")
