"""Task metrics from Celery's signals (runtime, queue wait, failures, retries, in progress), and
each node's `/metrics` endpoint.

The recorders are ragfleet.metrics'; this only connects them. Queue wait is measured from the
`ragfleet_enqueued_at` header the producer stamps (ragfleet.task_headers) and this worker stamps on
what Celery publishes for it (a retry is measured from its own publish).
"""

from __future__ import annotations

import os
import time
from datetime import datetime
from typing import Any

from celery import Celery, signals

from ragfleet import metrics
from ragfleet.settings import get_settings
from ragfleet.task_headers import ENQUEUED_AT_HEADER, add_enqueued_at

_task_started: dict[str, float] = {}


def _header(request: Any, name: str) -> Any:
    """Custom message headers become attributes of `task.request` (protocol 2)."""
    value = getattr(request, name, None)
    if value is None:
        headers = getattr(request, "headers", None) or {}
        value = headers.get(name) if isinstance(headers, dict) else None
    return value


def _eta_timestamp(request: Any) -> float | None:
    eta = getattr(request, "eta", None)
    if not eta:
        return None
    try:
        return datetime.fromisoformat(str(eta)).timestamp()
    except ValueError:
        return None


def _on_before_publish(headers: dict[str, Any] | None = None, **_: Any) -> None:
    if headers is not None:
        add_enqueued_at(headers)


def _on_prerun(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    if task is None or task_id is None:
        return
    _task_started[task_id] = time.perf_counter()
    metrics.task_in_progress(task.name, +1)
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
    metrics.observe_task_wait(task.name, str(queue), time.time() - ref)


def _on_postrun(task_id: str | None = None, task: Any = None, state: str | None = None, **_: Any) -> None:
    if task is None or task_id is None:
        return
    started = _task_started.pop(task_id, None)
    if started is None:
        return
    metrics.task_in_progress(task.name, -1)
    metrics.observe_task(task.name, str(state or "UNKNOWN"), time.perf_counter() - started)


def _on_failure(sender: Any = None, exception: BaseException | None = None, **_: Any) -> None:
    name = getattr(sender, "name", None) or "unknown"
    metrics.task_failed(name, type(exception).__name__ if exception is not None else "unknown")


def _on_retry(sender: Any = None, **_: Any) -> None:
    metrics.task_retried(getattr(sender, "name", None) or "unknown")


def _on_process_shutdown(pid: int | None = None, **_: Any) -> None:
    metrics.mark_dead(pid or os.getpid())


def _after_setup(sender: str, **_: Any) -> None:
    """The node's main process: one metrics directory per node (its prefork children write there,
    it serves what they write), and its `/metrics` port (RAGFLEET_METRICS_PORT + offset + shift)."""
    s = get_settings()
    if s.metrics_dir is not None:
        metrics.configure_multiproc(s.metrics_dir / sender.replace("@", "_"), wipe=True)
    if s.metrics_port:
        metrics.start_worker_metrics_server(s.metrics_port + s.metrics_port_offset + s.metrics_port_shift)


def install_task_signals() -> None:
    """The task and publish hooks alone (idempotent): what a test's own Celery app needs."""
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


def install(app: Celery) -> None:
    install_task_signals()
    signals.celeryd_after_setup.connect(_after_setup, weak=False, dispatch_uid="ragfleet.hooks.metrics.setup")
