"""Retrieval pool: a query's retrieval stage (ragfleet.answering.retrieve), which hands it off to
generation (or, with no LLM provider configured, answers it here: `answering.answers_inline`); and
batches submitted by task name."""

from __future__ import annotations

from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from kombu.exceptions import OperationalError
from redis.exceptions import RedisError

from ragfleet import answering
from ragfleet.batch import submit_payload
from ragfleet.names import Priority, TaskName
from ragfleet.outcomes import fail_job
from ragfleet.resources import get_resources
from ragfleet.schemas import BatchDispatchPayload, ErrorCode, QueryPayload
from ragfleet.stages import error_result
from ragfleet.stores.base import StoreUnavailableError
from tasks._common import InvalidPayloadError, parse
from workers.base import RagfleetTask, task

_TRANSIENT = (RedisError, OperationalError, OSError, RuntimeError, ValueError)


@task(TaskName.QUERY)
def query(self: RagfleetTask, *, payload: dict[str, Any]) -> dict[str, Any]:
    try:
        p = parse(self, QueryPayload, payload, kind="query")
    except InvalidPayloadError as exc:
        return exc.result
    res, job_id = get_resources(), str(p.job_id)
    try:
        out = answering.retrieve(res, p, priority=_priority_of(self))
        if not isinstance(out, answering.Follow):
            return out
        wait = answering.follow_after(res, job_id, out.leader)  # a follower holds no worker meanwhile
        if isinstance(wait, dict):
            return wait
        raise self.retry(countdown=wait, max_retries=10_000)
    except SoftTimeLimitExceeded:
        fail_job(res, job_id, ErrorCode.TIMEOUT, "retrieval exceeded its time limit", retry_after=5)
        return error_result(job_id, ErrorCode.TIMEOUT, "retrieval exceeded its time limit")
    except StoreUnavailableError as exc:
        # no server may answer without serving an older index than the job's (read-after-write):
        # the client is told when to ask again instead of the worker retrying in place
        fail_job(res, job_id, ErrorCode.UNAVAILABLE, str(exc), retry_after=exc.retry_after)
        return error_result(job_id, ErrorCode.UNAVAILABLE, str(exc))
    except _TRANSIENT as exc:
        if self.request.retries < self.max_retries:
            raise self.retry(exc=exc, countdown=0.2 * (2**self.request.retries)) from exc
        message = f"retrieval failed: {type(exc).__name__}: {exc}"
        fail_job(res, job_id, ErrorCode.RETRIEVAL_FAILED, message, retry_after=10)
        return error_result(job_id, ErrorCode.RETRIEVAL_FAILED, message)


def _priority_of(task: RagfleetTask) -> Priority:
    """The generation task inherits the query's priority (interactive before batch)."""
    priority = (task.request.delivery_info or {}).get("priority")
    return Priority(priority) if priority in {int(x) for x in Priority} else Priority.DEFAULT


@task(TaskName.BATCH_DISPATCH)
def batch_dispatch(self: RagfleetTask, *, payload: dict[str, Any]) -> dict[str, Any]:
    """A batch submitted by task name: store its questions, dispatch the first window (ragfleet.batch)."""
    try:
        p = parse(self, BatchDispatchPayload, payload, kind="batch")
    except InvalidPayloadError as exc:
        return exc.result
    res = get_resources()
    return submit_payload(res.redis, res.settings, p)
