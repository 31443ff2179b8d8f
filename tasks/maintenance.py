"""Maintenance pool: the nightly reindex (one at a time, fleet-wide)."""

from __future__ import annotations

from typing import Any

from ragfleet import indexing, metrics
from ragfleet.names import Queue, TaskName
from ragfleet.reindex import ReindexBusyError, run_reindex
from ragfleet.resources import get_resources
from ragfleet.schemas import ErrorCode, JobStatus, ReindexPayload
from ragfleet.stages import error_result, stage
from tasks._common import InvalidPayloadError, parse
from workers.base import RagfleetTask, task


@task(TaskName.REINDEX)
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
    metrics.beat_heartbeat("reindex", interval_s=86_400)
    metrics.set_index_info(report.version, report.chunks_after)
    return out


@task(TaskName.HEARTBEAT)
def heartbeat(self: RagfleetTask, *, payload: dict[str, Any] | None = None) -> dict[str, Any]:
    """Beat liveness plus the gauges nobody else refreshes: consumers per queue, index version/size."""
    res = get_resources()
    metrics.beat_heartbeat("heartbeat", interval_s=60)
    replies = self.app.control.inspect(timeout=2.0).active_queues() or {}
    per_queue = {q.value: 0 for q in Queue}
    for queues in replies.values():
        for q in queues:
            if q.get("name") in per_queue:
                per_queue[q["name"]] += 1
    for name, n in per_queue.items():
        metrics.set_workers_per_queue(name, n)
    indexing.maybe_optimize(res, force=True)  # the tail of writes since the last optimize
    store, pointer = res.live_store()
    metrics.set_index_info(pointer.version, store.count())
    return {"workers_per_queue": per_queue, "index_version": pointer.version}


@task(TaskName.EVAL_GOLDEN)
def eval_golden(self: RagfleetTask, *, payload: dict[str, Any] | None = None) -> dict[str, Any]:
    """Nightly golden-set evaluation: sets the retrieval-quality gauge that the alert watches."""
    from ragfleet.evaluation import run_golden

    metrics.beat_heartbeat("golden-eval", interval_s=86_400)
    report = run_golden(get_resources())
    if report is None:
        return {"status": "skipped", "reason": "evaluation data set not found on this machine"}
    return {"status": "done", "queries": report.queries, "ndcg_at_10": report.ndcg_at_10}
