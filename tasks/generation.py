"""Generation pool: write the cited answer (LLM gateway or extractive), cache it, finish the job."""

from __future__ import annotations

from typing import Any

from celery.exceptions import SoftTimeLimitExceeded

from ragfleet import metrics, querying
from ragfleet.names import Queue, TaskName
from ragfleet.outcomes import fail_job, finish_with_answer
from ragfleet.resources import get_resources
from ragfleet.schemas import ErrorCode, GeneratePayload, JobStatus
from tasks._common import InvalidPayloadError, error_result, parse, stage
from workers.base import RagfleetTask, task


@task(TaskName.GENERATE)
def generate(self: RagfleetTask, *, payload: dict[str, Any]) -> dict[str, Any]:
    try:
        p = parse(self, GeneratePayload, payload, kind="query")
    except InvalidPayloadError as exc:
        return exc.result
    res = get_resources()

    def on_chunk(text: str) -> None:  # an LLM's stream: each piece reaches readers at once
        res.events.emit(p.job_id, "answer_chunk", {"text": text})

    try:
        # The extractive answer costs less than the stage's start round trip: it starts with its end
        # (a job cancelled meanwhile stays cancelled: the finish is atomic). An LLM call starts first.
        with stage(
            res,
            p.job_id,
            "generation",
            Queue.GENERATION.value,
            JobStatus.GENERATING,
            start_with_end=res.gateway.in_process,
        ) as run:
            if not run.open:  # cancelled, or answered by another delivery: no work, no second answer
                return {"job_id": p.job_id, "status": str(res.jobs.status(p.job_id))}

            def on_whole(text: str) -> None:  # written just before `done`, in the finish's round trip
                res.events.emit_to(run.pipe, p.job_id, "answer_chunk", {"text": text})

            result = querying.answer(
                res,
                question=p.question,
                sources=p.sources,
                index_version=p.index_version,
                cache_key=p.cache_key,
                on_chunk=on_chunk,
                on_whole=on_whole,
                pipe=run.pipe,
            )
            out = result.model_dump(mode="json")
            run.answer = out  # the stage's end finishes the job: result, timing, cache entry, `done`
    except SoftTimeLimitExceeded:
        fail_job(res, p.job_id, ErrorCode.TIMEOUT, "generation exceeded its time limit", retry_after=5)
        return error_result(p.job_id, ErrorCode.TIMEOUT, "generation exceeded its time limit")
    latency_ms = run.latency_ms
    metrics.observe_stage("generation", run.seconds)
    u = result.usage
    metrics.record_usage(u.provider, u.prompt_tokens, u.completion_tokens, u.cost_usd)
    if latency_ms is not None:
        metrics.observe_stage("total", max(0.0, latency_ms / 1000))
    if p.cache_key:
        # single flight: every follower that joined while we ran gets this same answer
        for follower in res.coalescer.complete(p.cache_key, p.job_id):
            finish_with_answer(res, follower, {**out, "coalesced_with": p.job_id}, replay=True)
    return {"job_id": p.job_id, "status": "done", "degraded": result.degraded}
