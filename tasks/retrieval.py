"""Retrieval pool: cache lookup, query embedding, search; then hand off to the generation pool."""

from __future__ import annotations

from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from redis.exceptions import RedisError

from ragfleet import querying
from ragfleet.names import Priority, Queue, TaskName
from ragfleet.producer import enqueue
from ragfleet.resources import get_resources
from ragfleet.schemas import ErrorCode, GeneratePayload, JobStatus, QueryPayload
from tasks._common import InvalidPayloadError, error_result, parse, stage
from workers.app import app
from workers.base import RagfleetTask

_s = get_resources().settings


@app.task(
    name=TaskName.QUERY.value,
    bind=True,
    base=RagfleetTask,
    time_limit=_s.query_time_limit_s,
    soft_time_limit=_s.query_time_limit_s - 5,
    max_retries=2,
)
def query(self: RagfleetTask, *, payload: dict[str, Any]) -> dict[str, Any]:
    try:
        p = parse(self, QueryPayload, payload, kind="query")
    except InvalidPayloadError as exc:
        return exc.result
    res = get_resources()
    job_id = str(p.job_id)
    res.jobs.create(job_id, "query", tenant=p.tenant, request_id=p.request_id)
    if res.jobs.is_terminal(job_id):
        return {"job_id": job_id, "status": str(res.jobs.status(job_id))}
    try:
        with stage(res, job_id, "retrieval", Queue.RETRIEVAL.value, JobStatus.RETRIEVING):
            r = querying.retrieve(res, p)
    except SoftTimeLimitExceeded:
        res.jobs.fail(job_id, ErrorCode.TIMEOUT, "retrieval exceeded its time limit", retry_after=5)
        return error_result(job_id, ErrorCode.TIMEOUT, "retrieval exceeded its time limit")
    except (RedisError, OSError, RuntimeError, ValueError) as exc:
        if self.request.retries < self.max_retries:
            raise self.retry(exc=exc, countdown=0.2 * (2**self.request.retries)) from exc
        message = f"retrieval failed: {type(exc).__name__}: {exc}"
        res.jobs.fail(job_id, ErrorCode.RETRIEVAL_FAILED, message, retry_after=10)
        return error_result(job_id, ErrorCode.RETRIEVAL_FAILED, message)

    if r.cached is not None:
        res.jobs.finish(job_id, r.cached.model_dump(mode="json"))
        return {"job_id": job_id, "status": "done", "cached": r.cached.cached}

    res.jobs.set_field(job_id, "sources", [s.model_dump(mode="json") for s in r.sources])
    hand_off = GeneratePayload(
        job_id=job_id,
        question=r.question,
        sources=r.sources,
        index_version=r.index_version,
        cache_key=r.cache_key if p.use_cache else None,
        tenant=p.tenant,
        request_id=p.request_id,
        stream=p.stream,
    )
    priority = (self.request.delivery_info or {}).get("priority")
    enqueue(
        TaskName.GENERATE,
        hand_off.model_dump(mode="json"),
        settings=res.settings,
        job_id=f"{job_id}:gen",
        priority=Priority(priority) if priority in {int(x) for x in Priority} else Priority.DEFAULT,
    )
    return {"job_id": job_id, "status": "generating", "sources": len(r.sources), **r.timings_ms}
