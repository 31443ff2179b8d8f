"""An expired or revoked message never runs: its job must not stay `queued` until its TTL."""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery, signals

from ragfleet.dead_letters import DeadLetters
from ragfleet.jobs import job_id_of
from ragfleet.outcomes import fail_job
from ragfleet.resources import get_resources
from ragfleet.schemas import ErrorCode


def _revoked(request: Any = None, expired: bool = False, terminated: bool = False, **_: Any) -> None:
    if request is None or not getattr(request, "id", None):
        return
    res = get_resources()
    job_id = str(request.id).removesuffix(":gen")
    redelivered = bool((getattr(request, "delivery_info", None) or {}).get("redelivered"))
    if expired and redelivered:
        # put back by workers/inflight.py (or the visibility sweep) after its node died holding it
        message = (
            "the worker holding this task died (or stopped), and the task expired before another "
            "worker could take it over; retry"
        )
        code = ErrorCode.WORKER_LOST
    elif expired:
        message = "the task expired in the queue before a worker could start it (backlog); retry later"
        code = ErrorCode.TIMEOUT
    else:
        message, code = "the task was revoked", ErrorCode.CANCELLED
    failed = fail_job(res, job_id, code, message, retry_after=(5 if redelivered else 30) if expired else None)
    if failed and code == ErrorCode.WORKER_LOST:  # a dead letter, with its payload, for an operator
        try:
            kwargs = getattr(request, "kwargs", None) or {}
            DeadLetters(res.redis, res.settings).record(
                task=str(getattr(request, "task_name", None) or getattr(request, "name", "")),
                task_id=str(request.id),
                job_id=job_id_of(str(request.id), kwargs),
                payload=kwargs.get("payload") if isinstance(kwargs, dict) else None,
                code=code,
                message=message,
                deliveries=2,  # at least: it was redelivered
                node=str(getattr(request, "hostname", "") or ""),
            )
        except Exception:
            logging.getLogger("ragfleet.worker").exception(
                "could not record the dead letter of %s", request.id
            )


def install(app: Celery) -> None:
    signals.task_revoked.connect(_revoked, weak=False, dispatch_uid="ragfleet.hooks.revoked")
