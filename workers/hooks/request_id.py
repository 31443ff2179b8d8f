"""The request id through Celery: stamped on what a worker publishes, bound around each task.

A task binds the id its message carries (the `ragfleet_request_id` header, else the payload's
`request_id`), so its log lines and the next stage's message carry it too; the binding ends with
the task, so a thread of the pool never leaks one task's id into the next.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from contextvars import Token
from typing import Any, Final

import structlog
from celery import Celery, signals

from ragfleet.logs import REQUEST_ID_HEADER, bind_request_id, reset_request_id
from ragfleet.task_headers import add_request_id

_task_tokens: dict[str, Token[str | None]] = {}
_TASK_FIELDS: Final = ("job_id", "task", "queue")


def _on_before_publish(headers: MutableMapping[str, Any] | None = None, **_: Any) -> None:
    if headers is not None:
        add_request_id(headers)


def _request_id_for(task: Any, kwargs: Any) -> str | None:
    request = getattr(task, "request", None)
    rid = getattr(request, REQUEST_ID_HEADER, None)
    if not rid:
        headers = getattr(request, "headers", None)
        if isinstance(headers, dict):
            rid = headers.get(REQUEST_ID_HEADER)
    if not rid and isinstance(kwargs, dict):
        payload = kwargs.get("payload")
        if isinstance(payload, dict):
            rid = payload.get("request_id")
    return str(rid) if rid else None


def _on_prerun(task_id: str | None = None, task: Any = None, kwargs: Any = None, **_: Any) -> None:
    if task_id is None:
        return
    _task_tokens[task_id] = bind_request_id(_request_id_for(task, kwargs))
    delivery = getattr(getattr(task, "request", None), "delivery_info", None) or {}
    structlog.contextvars.bind_contextvars(
        job_id=task_id, task=getattr(task, "name", None), queue=delivery.get("routing_key")
    )


def _on_postrun(task_id: str | None = None, **_: Any) -> None:
    if task_id is None:
        return
    token = _task_tokens.pop(task_id, None)
    if token is not None:
        reset_request_id(token)
    structlog.contextvars.unbind_contextvars(*_TASK_FIELDS)


def install(app: Celery | None = None) -> None:
    """Idempotent. `app` is unused: Celery's task signals are process-wide."""
    signals.before_task_publish.connect(_on_before_publish, weak=False, dispatch_uid="ragfleet.logs.publish")
    signals.task_prerun.connect(_on_prerun, weak=False, dispatch_uid="ragfleet.logs.prerun")
    signals.task_postrun.connect(_on_postrun, weak=False, dispatch_uid="ragfleet.logs.postrun")
