"""Generation pool: the cited answer (LLM gateway or extractive), cached, finishing the job
(ragfleet.answering.generate)."""

from __future__ import annotations

from typing import Any

from celery.exceptions import SoftTimeLimitExceeded

from ragfleet import answering
from ragfleet.names import TaskName
from ragfleet.outcomes import fail_job
from ragfleet.resources import get_resources
from ragfleet.schemas import ErrorCode, GeneratePayload
from ragfleet.stages import error_result
from tasks._common import InvalidPayloadError, parse
from workers.base import RagfleetTask, task


@task(TaskName.GENERATE)
def generate(self: RagfleetTask, *, payload: dict[str, Any]) -> dict[str, Any]:
    try:
        p = parse(self, GeneratePayload, payload, kind="query")
    except InvalidPayloadError as exc:
        return exc.result
    res = get_resources()
    try:
        return answering.generate(res, p)
    except SoftTimeLimitExceeded:
        fail_job(res, p.job_id, ErrorCode.TIMEOUT, "generation exceeded its time limit", retry_after=5)
        return error_result(p.job_id, ErrorCode.TIMEOUT, "generation exceeded its time limit")
