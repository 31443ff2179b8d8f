"""What every task does the same way: payload validation and retries (a stage's bookkeeping and a
failed job's result are ragfleet.stages')."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from ragfleet import callback_spec
from ragfleet.callback_spec import CallbackRefusedError, CallbackRequest
from ragfleet.resources import Resources, get_resources
from ragfleet.schemas import ErrorCode
from ragfleet.stages import error_result
from ragfleet.stores.base import StoreUnavailableError
from workers.base import RagfleetTask

M = TypeVar("M", bound=BaseModel)


class InvalidPayloadError(Exception):
    def __init__(self, result: dict[str, Any]) -> None:
        super().__init__(result["error"]["message"])
        self.result = result


def parse(task: RagfleetTask, model: type[M], payload: Any, *, kind: str) -> M:
    """Validate; on failure record a failed job with the reason and raise InvalidPayloadError."""
    job_id = str(task.request.id)
    data = dict(payload) if isinstance(payload, dict) else {}
    data.setdefault("job_id", job_id)
    try:
        if not isinstance(payload, dict):
            raise TypeError("payload must be a JSON object")
        parsed = model.model_validate(data)
        if isinstance(parsed, CallbackRequest):  # a callback this deployment does not allow
            callback_spec.check(get_resources().settings, str(data.get("tenant") or "default"), parsed)
        return parsed
    except (ValidationError, TypeError, CallbackRefusedError) as exc:
        res = get_resources()
        jid = str(data.get("job_id") or job_id)
        message = f"invalid payload: {exc}"[:2_000]
        res.jobs.create(jid, kind, tenant=str(data.get("tenant") or "default"))
        res.jobs.fail(jid, ErrorCode.INVALID_PAYLOAD, message)
        raise InvalidPayloadError(error_result(jid, ErrorCode.INVALID_PAYLOAD, message)) from exc


def retry_or_fail(
    task: RagfleetTask, res: Resources, job_id: str, what: str, exc: Exception, *, code: ErrorCode
) -> dict[str, Any]:
    """A transient error: retry with exponential backoff, and past `max_retries` fail the job
    with `code` (retry_after 30 s) and return its error result.

    For the index, delete and feedback jobs that use it, the record is the whole outcome: they
    have no event stream and belong to no batch (queries end through `ragfleet.outcomes`)."""
    if task.request.retries < task.max_retries:
        raise task.retry(exc=exc, countdown=2**task.request.retries) from exc
    message = f"{what} failed: {type(exc).__name__}: {exc}"[:2_000]
    res.jobs.fail(job_id, code, message, retry_after=30)
    return error_result(job_id, code, message)


def store_retry_delay(attempt: int, cap_s: float) -> float:
    """Backoff while the store's primary is down: 0.5, 1, 2, 4 s... capped at `cap_s`, so an update
    lands within `cap_s` of the primary's return, however long it was away."""
    return float(min(cap_s, 0.5 * 2**attempt))


def retry_while_store_down(
    task: RagfleetTask, res: Resources, job_id: str | None, what: str, exc: StoreUnavailableError
) -> dict[str, Any]:
    """The store's primary is unreachable: a write waits for it (nothing is promoted here; that is
    the operator's or the platform's job, docs/scaling.md) and retries with capped backoff for up
    to `store_write_retry_s` of backoff, then fails the job `unavailable`. The rows are replaced
    idempotently (one transaction per call), so an attempt cut off mid-write leaves nothing
    half-done and the retry writes exactly the same chunks."""
    s = res.settings
    attempt = task.request.retries
    waited = sum(store_retry_delay(i, s.store_retry_max_delay_s) for i in range(attempt))
    delay = store_retry_delay(attempt, s.store_retry_max_delay_s)
    if waited + delay <= s.store_write_retry_s:
        raise task.retry(exc=exc, countdown=delay, max_retries=attempt + 1) from exc
    message = f"{what} failed: the store stayed unreachable for {waited:.0f} s: {exc}"[:2_000]
    if job_id is not None:
        res.jobs.fail(job_id, ErrorCode.UNAVAILABLE, message, retry_after=exc.retry_after)
        return error_result(job_id, ErrorCode.UNAVAILABLE, message)
    return {"status": "failed", "error": {"code": ErrorCode.UNAVAILABLE.value, "message": message}}
