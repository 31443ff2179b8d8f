"""Feedback pool: record ratings of answered queries; aggregate them on a beat schedule.

The rated job's id travels in the payload (`payload.job_id`), the feedback job's own id is the
Celery task id: producers must send with `task_id` set to a fresh id (the API and
`ragfleet.producer.enqueue(..., job_id=...)` do), never with the rated job's id.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, TypeVar

from celery.exceptions import SoftTimeLimitExceeded
from pydantic import BaseModel, ValidationError
from redis.exceptions import RedisError
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from ragfleet import metrics
from ragfleet.feedback import repository, service
from ragfleet.logs import get_logger
from ragfleet.names import Queue, TaskName
from ragfleet.resources import Resources, get_resources
from ragfleet.schemas import AggregatePayload, ErrorCode, FeedbackPayload, JobStatus
from ragfleet.stages import error_result, stage
from tasks._common import InvalidPayloadError, retry_or_fail
from workers.base import RagfleetTask, task

M = TypeVar("M", bound=BaseModel)
log = get_logger("ragfleet.feedback")
AGGREGATE_SCHEDULE = "feedback-aggregate"
AGGREGATE_INTERVAL_S = 300.0
_RETRYABLE = (OperationalError, RedisError, OSError)


def _parse(task: RagfleetTask, model: type[M], payload: Any) -> M:
    """Like tasks._common.parse, but the job record is always the task's own: in a feedback payload
    `job_id` names the *rated* job, whose record must never be touched."""
    job_id = str(task.request.id)
    try:
        if not isinstance(payload, dict):
            raise TypeError("payload must be a JSON object")
        return model.model_validate(payload)
    except (ValidationError, TypeError) as exc:
        res = get_resources()
        message = f"invalid payload: {exc}"[:2_000]
        tenant = payload.get("tenant") if isinstance(payload, dict) else None
        res.jobs.create(job_id, "feedback", tenant=str(tenant or "default"))
        res.jobs.fail(job_id, ErrorCode.INVALID_PAYLOAD, message)
        raise InvalidPayloadError(error_result(job_id, ErrorCode.INVALID_PAYLOAD, message)) from exc


def _sessions(res: Resources) -> sessionmaker[Session]:
    url = res.settings.feedback_db_url
    repository.ensure_schema(url)
    return repository.get_session_factory(url)


@task(TaskName.FEEDBACK_RECORD)
def record(self: RagfleetTask, *, payload: dict[str, Any]) -> dict[str, Any]:
    try:
        p = _parse(self, FeedbackPayload, payload)
    except InvalidPayloadError as exc:
        return exc.result
    res = get_resources()
    job_id = str(self.request.id)
    res.jobs.create(job_id, "feedback", tenant=p.tenant, request_id=p.request_id)
    try:
        with stage(res, job_id, "feedback", Queue.FEEDBACK.value, JobStatus.RUNNING):
            out = service.record_feedback(_sessions(res), res.jobs, p, feedback_id=job_id)
    except service.FeedbackError as exc:
        res.jobs.fail(job_id, exc.code, exc.message)
        return error_result(job_id, exc.code, exc.message)
    except SoftTimeLimitExceeded:
        message = "recording feedback exceeded its time limit"
        res.jobs.fail(job_id, ErrorCode.TIMEOUT, message)
        return error_result(job_id, ErrorCode.TIMEOUT, message)
    except _RETRYABLE as exc:
        return retry_or_fail(self, res, job_id, "recording feedback", exc, code=ErrorCode.UNAVAILABLE)
    res.jobs.finish(job_id, out)
    return {"job_id": job_id, **out}


@task(TaskName.FEEDBACK_AGGREGATE)
def aggregate(self: RagfleetTask, *, payload: dict[str, Any] | None = None) -> dict[str, Any]:
    try:
        p = _parse(self, AggregatePayload, payload if payload is not None else {})
    except InvalidPayloadError as exc:
        return exc.result
    res = get_resources()
    job_id = str(self.request.id)
    res.jobs.create(job_id, "feedback", request_id=p.request_id)
    try:
        with stage(res, job_id, "aggregate", Queue.FEEDBACK.value, JobStatus.RUNNING):
            out = service.aggregate(
                _sessions(res),
                datetime.now(UTC),
                window_s=p.window_s,
                min_count=p.min_count,
                threshold=p.threshold,
                webhook_url=res.settings.feedback_alert_webhook,
            )
    except SoftTimeLimitExceeded:
        message = "feedback aggregation exceeded its time limit"
        res.jobs.fail(job_id, ErrorCode.TIMEOUT, message)
        return error_result(job_id, ErrorCode.TIMEOUT, message)
    except _RETRYABLE as exc:
        return retry_or_fail(self, res, job_id, "feedback aggregation", exc, code=ErrorCode.UNAVAILABLE)
    # the heartbeat says the schedule ran, so only after the gauges are fresh
    metrics.beat_heartbeat(AGGREGATE_SCHEDULE, interval_s=AGGREGATE_INTERVAL_S)
    res.jobs.finish(job_id, out)
    return {"job_id": job_id, **out}
