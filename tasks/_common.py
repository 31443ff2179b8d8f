"""What every task does the same way: payload validation, job bookkeeping, error codes."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from ragfleet.resources import Resources, get_resources
from ragfleet.schemas import ErrorCode, JobStatus
from workers.base import RagfleetTask

M = TypeVar("M", bound=BaseModel)


class InvalidPayloadError(Exception):
    def __init__(self, result: dict[str, Any]) -> None:
        super().__init__(result["error"]["message"])
        self.result = result


def error_result(job_id: str, code: ErrorCode, message: str) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "status": JobStatus.FAILED.value,
        "error": {"code": code.value, "message": message},
    }


def parse(task: RagfleetTask, model: type[M], payload: Any, *, kind: str) -> M:
    """Validate; on failure record a failed job with the reason and raise InvalidPayloadError."""
    job_id = str(task.request.id)
    data = dict(payload) if isinstance(payload, dict) else {}
    data.setdefault("job_id", job_id)
    try:
        if not isinstance(payload, dict):
            raise TypeError("payload must be a JSON object")
        return model.model_validate(data)
    except (ValidationError, TypeError) as exc:
        res = get_resources()
        jid = str(data.get("job_id") or job_id)
        message = f"invalid payload: {exc}"[:2_000]
        res.jobs.create(jid, kind, tenant=str(data.get("tenant") or "default"))
        res.jobs.fail(jid, ErrorCode.INVALID_PAYLOAD, message)
        raise InvalidPayloadError(error_result(jid, ErrorCode.INVALID_PAYLOAD, message)) from exc


@contextmanager
def stage(
    res: Resources, job_id: str, name: str, queue: str, status: JobStatus
) -> Iterator[dict[str, float]]:
    timing: dict[str, float] = {}
    started = res.jobs.stage_start(job_id, name, queue, status)
    t0 = time.perf_counter()
    try:
        yield timing
    finally:
        timing["ms"] = res.jobs.stage_end(job_id, name, started)
        timing["seconds"] = time.perf_counter() - t0
