"""Task metrics from Celery's signals (queue wait, run time, failures, retries, in-progress).

Moved here unchanged from the old single-module `ragfleet/metrics.py`; its home is workers/ (issue
20: the core imports no Celery signals), where the integrator moves it.
"""

from __future__ import annotations

import os
import time
from typing import Any

from ragfleet.metrics.recorders import observe_task, observe_task_wait, task_failed, task_retried
from ragfleet.metrics.registry import _gauge, mark_dead
from ragfleet.metrics.spec import ENQUEUED_AT_HEADER

# --- Celery signals ------------------------------------------------------------------------------------

_task_started: dict[str, float] = {}
_installed = False


def _header(request: Any, name: str) -> Any:
    """Custom message headers become attributes of `task.request` (protocol 2)."""
    value = getattr(request, name, None)
    if value is None:
        headers = getattr(request, "headers", None) or {}
        value = headers.get(name) if isinstance(headers, dict) else None
    return value


def _eta_timestamp(request: Any) -> float | None:
    from datetime import datetime

    eta = getattr(request, "eta", None)
    if not eta:
        return None
    try:
        return datetime.fromisoformat(str(eta)).timestamp()
    except ValueError:
        return None


def _on_before_publish(headers: dict[str, Any] | None = None, **_: Any) -> None:
    if headers is not None:
        headers[ENQUEUED_AT_HEADER] = time.time()  # overwritten on retry: wait is per attempt


def _on_prerun(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    if task is None or task_id is None:
        return
    _task_started[task_id] = time.perf_counter()
    _gauge("ragfleet_tasks_in_progress").labels(task=task.name).inc()
    enqueued = _header(task.request, ENQUEUED_AT_HEADER)
    if enqueued is None:
        return
    try:
        ref = float(enqueued)
    except (TypeError, ValueError):
        return
    eta = _eta_timestamp(task.request)
    if eta is not None:
        ref = max(ref, eta)  # a countdown is not queueing delay
    queue = (getattr(task.request, "delivery_info", None) or {}).get("routing_key") or "unknown"
    observe_task_wait(task.name, str(queue), time.time() - ref)


def _on_postrun(task_id: str | None = None, task: Any = None, state: str | None = None, **_: Any) -> None:
    if task is None or task_id is None:
        return
    started = _task_started.pop(task_id, None)
    if started is None:
        return
    _gauge("ragfleet_tasks_in_progress").labels(task=task.name).dec()
    observe_task(task.name, str(state or "UNKNOWN"), time.perf_counter() - started)


def _on_failure(sender: Any = None, exception: BaseException | None = None, **_: Any) -> None:
    name = getattr(sender, "name", None) or "unknown"
    task_failed(name, type(exception).__name__ if exception is not None else "unknown")


def _on_retry(sender: Any = None, **_: Any) -> None:
    task_retried(getattr(sender, "name", None) or "unknown")


def _on_process_shutdown(pid: int | None = None, **_: Any) -> None:
    mark_dead(pid or os.getpid())


def install_celery_metrics() -> None:
    """Connect task metrics to Celery's signals; idempotent. Call it in producers too: the publish hook
    stamps `ragfleet_enqueued_at` into the headers so the worker can measure queue wait."""
    global _installed
    if _installed:
        return
    from celery import signals

    signals.before_task_publish.connect(
        _on_before_publish, weak=False, dispatch_uid="ragfleet.metrics.publish"
    )
    signals.task_prerun.connect(_on_prerun, weak=False, dispatch_uid="ragfleet.metrics.prerun")
    signals.task_postrun.connect(_on_postrun, weak=False, dispatch_uid="ragfleet.metrics.postrun")
    signals.task_failure.connect(_on_failure, weak=False, dispatch_uid="ragfleet.metrics.failure")
    signals.task_retry.connect(_on_retry, weak=False, dispatch_uid="ragfleet.metrics.retry")
    signals.worker_process_shutdown.connect(
        _on_process_shutdown, weak=False, dispatch_uid="ragfleet.metrics.process_shutdown"
    )
    _installed = True
