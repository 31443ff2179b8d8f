"""Maintenance pool: the nightly reindex (one at a time, fleet-wide)."""

from __future__ import annotations

from typing import Any

from ragfleet.names import Queue, TaskName
from ragfleet.reindex import ReindexBusyError, run_reindex
from ragfleet.resources import get_resources
from ragfleet.schemas import ErrorCode, JobStatus, ReindexPayload
from tasks._common import InvalidPayloadError, error_result, parse, stage
from workers.app import app
from workers.base import RagfleetTask

_s = get_resources().settings


@app.task(
    name=TaskName.REINDEX.value,
    bind=True,
    base=RagfleetTask,
    time_limit=_s.reindex_time_limit_s,
    soft_time_limit=_s.reindex_time_limit_s - 60,
)
def reindex(self: RagfleetTask, *, payload: dict[str, Any]) -> dict[str, Any]:
    try:
        p = parse(self, ReindexPayload, payload, kind="reindex")
    except InvalidPayloadError as exc:
        return exc.result
    res = get_resources()
    job_id = str(p.job_id)
    res.jobs.create(job_id, "reindex", request_id=p.request_id)

    def progress(done: int, total: int) -> None:
        res.jobs.set_progress(job_id, done=done, total=total)

    try:
        with stage(res, job_id, "reindex", Queue.MAINTENANCE.value, JobStatus.RUNNING):
            report = run_reindex(res, progress=progress)
    except ReindexBusyError as exc:
        out = {"job_id": job_id, "status": "skipped", "reason": str(exc)}
        res.jobs.finish(job_id, out)
        return out
    except RuntimeError as exc:
        res.jobs.fail(job_id, ErrorCode.INTERNAL, f"reindex failed, live index unchanged: {exc}")
        return error_result(job_id, ErrorCode.INTERNAL, str(exc))
    out = {"job_id": job_id, **report.as_dict()}
    res.jobs.finish(job_id, out)
    return out
