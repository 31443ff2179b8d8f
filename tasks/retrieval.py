"""Retrieval pool: cache lookup, coalescing, query embedding, search; then hand off to generation."""

from __future__ import annotations

import time
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from kombu.exceptions import OperationalError
from redis.exceptions import RedisError

from ragfleet import metrics, querying
from ragfleet.jobs import JobCreate
from ragfleet.names import Priority, Queue, TaskName
from ragfleet.outcomes import fail_job, finish_with_answer
from ragfleet.producer import enqueue_on
from ragfleet.resources import get_resources
from ragfleet.schemas import BatchDispatchPayload, ErrorCode, GeneratePayload, JobStatus, QueryPayload
from tasks._common import InvalidPayloadError, error_result, parse, stage
from workers.base import RagfleetTask, task


@task(TaskName.QUERY)
def query(self: RagfleetTask, *, payload: dict[str, Any]) -> dict[str, Any]:
    try:
        p = parse(self, QueryPayload, payload, kind="query")
    except InvalidPayloadError as exc:
        return exc.result
    res = get_resources()
    job_id = str(p.job_id)
    # A producer that enqueues by task name has created no record: the stage creates it (in its
    # first round trip; a no-op when the API or a redelivery did already).
    create = JobCreate("query", tenant=p.tenant, request_id=p.request_id)
    start = (res, job_id, "retrieval", Queue.RETRIEVAL.value, JobStatus.RETRIEVING)
    try:
        # the index pointer, the cached query vector, the answer cache and the coalescing join come
        # with the stage's first round trip (see querying.Prefetch)
        pre = querying.Prefetch.for_query(res, p, job_id)
        with stage(*start, create=create, reads=pre.queue) as run:
            pointer = pre.accept(run.reads)
            if not run.open:  # cancelled before it ran, or answered by another delivery
                pre.release()
                return {"job_id": job_id, "status": str(res.jobs.status(job_id))}
            store, pointer = res.live_store(pointer)
            key = querying.cache_key_for(res, p, pointer.version)
            found = pre.answer_or_flight(pointer.version)
            cached, flight = found if found is not None else querying.lookup_and_join(res, p, key, job_id)
            if cached is not None:
                finish_with_answer(res, job_id, cached[0].model_dump(mode="json"), replay=True)
                _observe_total(res, job_id)
                return {"job_id": job_id, "status": "done", "cached": cached[1]}
            if flight is not None:
                metrics.coalesced(flight.role)
                if flight.role == "follower":
                    return _follow(self, job_id, flight.leader)
            res.coalescer.count_run(run.pipe)
            r = querying.search(res, p, store, pointer.version, key, run.pipe, pre)
            if p.use_cache:
                res.coalescer.renew(key, job_id, run.pipe)
            sources = [s.model_dump(mode="json") for s in r.sources]
            run.fields["sources"] = sources
            run.events.append(("sources", {"sources": sources, "index_version": r.index_version}))
            hand_off = GeneratePayload(
                job_id=job_id,
                question=r.question,
                sources=r.sources,
                index_version=r.index_version,
                cache_key=r.cache_key if p.use_cache else None,
                tenant=p.tenant,
                request_id=p.request_id,
                stream=p.stream,
            ).model_dump(mode="json")
            priority = _priority_of(self)

            def hand_off_on(pipe: Any) -> None:
                # The generation task's message is the stage end's last command: the record says
                # `sources` before a generation worker can pop it, and a broker that is down fails
                # the whole round trip (retried below) instead of leaving the job `retrieving`.
                enqueue_on(
                    pipe,
                    TaskName.GENERATE,
                    hand_off,
                    settings=res.settings,
                    job_id=f"{job_id}:gen",
                    priority=priority,
                )

            run.then = hand_off_on
            run.status = JobStatus.GENERATING  # from the hand-off on: queued for, then in, generation
        metrics.observe_stage("retrieval", run.seconds)
    except SoftTimeLimitExceeded:
        fail_job(res, job_id, ErrorCode.TIMEOUT, "retrieval exceeded its time limit", retry_after=5)
        return error_result(job_id, ErrorCode.TIMEOUT, "retrieval exceeded its time limit")
    except (RedisError, OperationalError, OSError, RuntimeError, ValueError) as exc:
        if self.request.retries < self.max_retries:
            raise self.retry(exc=exc, countdown=0.2 * (2**self.request.retries)) from exc
        message = f"retrieval failed: {type(exc).__name__}: {exc}"
        fail_job(res, job_id, ErrorCode.RETRIEVAL_FAILED, message, retry_after=10)
        return error_result(job_id, ErrorCode.RETRIEVAL_FAILED, message)

    return {"job_id": job_id, "status": "generating", "sources": len(r.sources), **r.timings_ms}


def _priority_of(task: RagfleetTask) -> Priority:
    """The generation task inherits the query's priority (interactive before batch)."""
    priority = (task.request.delivery_info or {}).get("priority")
    return Priority(priority) if priority in {int(x) for x in Priority} else Priority.DEFAULT


def _observe_total(res: Any, job_id: str) -> None:
    rec = res.jobs.get(job_id)
    if rec is not None:
        metrics.observe_stage("total", max(0.0, rec.updated_at - rec.created_at))


def _follow(task: RagfleetTask, job_id: str, leader: str) -> dict[str, Any]:
    """Wait for the leader without holding a worker: check back after one lock TTL.

    On wake-up the task runs from the top: a finished leader has made this job terminal (or left a
    cached answer); a dead leader's lock has lapsed, and this job becomes the new leader.
    """
    res = get_resources()
    rec = res.jobs.get(job_id)
    deadline = (rec.created_at if rec else time.time()) + res.settings.query_expires_s
    if time.time() >= deadline:
        message = f"coalesced with {leader}, which did not answer before the deadline"
        fail_job(res, job_id, ErrorCode.TIMEOUT, message, retry_after=5)
        return error_result(job_id, ErrorCode.TIMEOUT, message)
    res.jobs.set_field(job_id, "coalesced_with", leader)
    countdown = min(res.settings.coalesce_lock_ttl_s, max(0.5, deadline - time.time()))
    raise task.retry(countdown=countdown, max_retries=10_000)


@task(TaskName.BATCH_DISPATCH)
def batch_dispatch(self: RagfleetTask, *, payload: dict[str, Any]) -> dict[str, Any]:
    """A batch submitted by task name: store its questions, dispatch the first window (ragfleet.batch)."""
    from ragfleet.batch import submit_payload

    try:
        p = parse(self, BatchDispatchPayload, payload, kind="batch")
    except InvalidPayloadError as exc:
        return exc.result
    res = get_resources()
    return submit_payload(res.redis, res.settings, p)
