"""A query's two stages as the pools run them: retrieval (cache, coalescing, search, hand-off to the
generation queue) and generation (the cited answer, cached, finishing the job and its followers).

With no LLM provider configured (`answers_inline`), the retrieval node runs the generation stage
itself, right after its own: the extractive answer costs ~1 ms of CPU, the queue hop ~4 ms of
latency and a publish + consume. The job's record, events, cache entry, followers, metrics and
callbacks are those of the hop; the generation pool exists for I/O-bound LLM calls (fallback,
circuit breakers) and keeps them whenever a provider is configured.

What a task adds around them (tasks/retrieval.py, tasks/generation.py) is Celery's part only:
payload parsing, retries of transient errors, and the soft time limit.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import redis

from ragfleet import metrics, querying, tracing
from ragfleet.callbacks import record_fields
from ragfleet.jobs import JobCreate
from ragfleet.names import Priority, Queue, TaskName
from ragfleet.outcomes import fail_job, finish_with_answer
from ragfleet.producer import enqueue_on
from ragfleet.resources import Resources
from ragfleet.schemas import ErrorCode, GeneratePayload, JobStatus, QueryPayload
from ragfleet.stages import error_result, stage


@dataclass(frozen=True, slots=True)
class Follow:
    """This query joined an identical one in flight (`leader`): it waits for that answer."""

    leader: str


def answers_inline(res: Resources) -> bool:
    """Whether this process answers a query at the end of its retrieval stage instead of handing it
    to the generation pool: no LLM provider to call (Settings.inline_extractive says why)."""
    return res.settings.inline_extractive and res.gateway.in_process


def retrieve(res: Resources, p: QueryPayload, *, priority: Priority) -> dict[str, Any] | Follow:
    """The retrieval stage; its end hands the job off to generation at `priority`, in its last round
    trip, or (`answers_inline`) runs the generation stage here, whose end sends both stages' ends in
    one round trip. Raises what the task retries (Redis, the broker, the store)."""
    job_id = str(p.job_id)
    # A producer that enqueues by task name has created no record: the stage creates it (in its
    # first round trip; a no-op when the API or a redelivery did already).
    # The record keeps the trace context of whoever created it (ragfleet.tracing): a follower links to it.
    # A callback it asked for is checked and built here (tasks._common.parse refused a bad one).
    extra = tracing.record_fields()
    if p.callback_url or p.callback_task:
        extra = {**(extra or {}), **record_fields(res.settings, job_id, p.tenant, p)}
    # its deadline with it: a hand-off lost with a killed generation worker ends `lost`, not hanging
    create = JobCreate("query", tenant=p.tenant, request_id=p.request_id, extra=extra, deadline=True)
    # the index pointer, the cached query vector, the answer cache and the coalescing join come
    # with the stage's first round trip (see querying.Prefetch)
    pre = querying.Prefetch.for_query(res, p, job_id)
    start = (res, job_id, "retrieval", Queue.RETRIEVAL.value, JobStatus.RETRIEVING)
    with stage(*start, create=create, reads=pre.queue) as run:
        pointer = pre.accept(run.reads)
        if not run.open:  # cancelled before it ran, or answered by another delivery
            pre.release()
            return {"job_id": job_id, "status": str(res.jobs.status(job_id))}
        store, pointer = res.live_store(pointer)
        tracing.set_attrs(**{tracing.INDEX_VERSION: pointer.version})
        key = querying.cache_key_for(res, p, pointer.version)
        found = pre.answer_or_flight(pointer.version)
        cached, flight = found if found is not None else querying.lookup_and_join(res, p, key, job_id)
        if cached is not None:
            finish_with_answer(res, job_id, cached[0].model_dump(mode="json"), replay=True)
            _observe_total(res, job_id)
            return {"job_id": job_id, "status": "done", "cached": cached[1]}
        if flight is not None:
            metrics.coalesced(flight.role)
            tracing.set_attrs(**{tracing.COALESCE_ROLE: flight.role})
            if flight.role == "follower":
                _link_to_leader(res, flight.leader)
                return Follow(flight.leader)
        res.coalescer.count_run(run.pipe)
        # called through the module: tests/faults wraps `querying.search` to inject its faults here
        r = querying.search(res, p, store, pointer.version, key, run.pipe, pre)
        if p.use_cache:
            res.coalescer.renew(key, job_id, run.pipe)
        sources = [s.model_dump(mode="json") for s in r.sources]
        run.fields["sources"] = sources
        run.events.append(("sources", {"sources": sources, "index_version": r.index_version}))
        gen = GeneratePayload(
            job_id=job_id,
            question=r.question,
            sources=r.sources,
            index_version=r.index_version,
            cache_key=r.cache_key if p.use_cache else None,
            tenant=p.tenant,
            request_id=p.request_id,
            stream=p.stream,
        )
        inline = answers_inline(res)

        def hand_off_on(pipe: Any) -> None:
            # The generation task's message is the stage end's last command: the record says
            # `sources` before a generation worker can pop it, and a broker that is down fails
            # the whole round trip (the task retries) instead of leaving the job `retrieving`.
            enqueue_on(
                pipe,
                TaskName.GENERATE,
                gen.model_dump(mode="json"),
                settings=res.settings,
                job_id=f"{job_id}:gen",
                priority=priority,
            )

        run.then = None if inline else hand_off_on
        run.defer = inline  # sent with the generation stage's end, below
        run.status = JobStatus.GENERATING  # from the hand-off on: queued for, then in, generation
    metrics.observe_stage("retrieval", run.seconds)
    out = {"job_id": job_id, "status": "generating", "sources": len(r.sources), **r.timings_ms}
    if inline:
        # a child span stands for the generation task's (its attributes: provider, tokens, ...)
        attrs: dict[str, Any] = {tracing.JOB_ID: job_id, "ragfleet.inline": True}
        with tracing.span("inline ragfleet.generate", **attrs):
            out |= generate(res, gen, after=run.pipe)
    return out


def follow_after(res: Resources, job_id: str, leader: str) -> float | dict[str, Any]:
    """How long a follower waits before it runs again (without holding a worker: one lock TTL), or
    its error result once the query's deadline has passed.

    On wake-up the task runs from the top: a finished leader has made this job terminal (or left a
    cached answer); a dead leader's lock has lapsed, and this job becomes the new leader.
    """
    rec = res.jobs.get(job_id)
    deadline = (rec.created_at if rec else time.time()) + res.settings.query_expires_s
    if time.time() >= deadline:
        message = f"coalesced with {leader}, which did not answer before the deadline"
        fail_job(res, job_id, ErrorCode.TIMEOUT, message, retry_after=5)
        return error_result(job_id, ErrorCode.TIMEOUT, message)
    res.jobs.set_field(job_id, "coalesced_with", leader)
    return min(res.settings.coalesce_lock_ttl_s, max(0.5, deadline - time.time()))


def generate(
    res: Resources, p: GeneratePayload, *, after: redis.client.Pipeline | None = None
) -> dict[str, Any]:
    """The generation stage: the answer finishes the job in the stage's last round trip.

    `after`: the retrieval stage's end, deferred on its pipeline (`answers_inline`): it goes out
    first in that round trip, and the stage is recorded as run from the retrieval queue."""

    def on_chunk(text: str) -> None:  # an LLM's stream: each piece reaches readers at once
        res.events.emit(p.job_id, "answer_chunk", {"text": text})

    # The extractive answer costs less than the stage's start round trip: it starts with its end
    # (a job cancelled meanwhile stays cancelled: the finish is atomic). An LLM call starts first.
    queue = (Queue.GENERATION if after is None else Queue.RETRIEVAL).value
    start = (res, p.job_id, "generation", queue, JobStatus.GENERATING)
    with stage(*start, start_with_end=res.gateway.in_process, pipe=after) as run:
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
    latency_ms = run.latency_ms
    metrics.observe_stage("generation", run.seconds)
    u = result.usage
    metrics.record_usage(u.provider, u.prompt_tokens, u.completion_tokens, u.cost_usd)
    tracing.set_attrs(
        **{
            tracing.INDEX_VERSION: p.index_version,
            tracing.PROVIDER: u.provider,
            tracing.MODEL: u.model,
            tracing.INPUT_TOKENS: u.prompt_tokens,
            tracing.OUTPUT_TOKENS: u.completion_tokens,
            tracing.COST: u.cost_usd,
            "ragfleet.degraded": result.degraded,
        }
    )
    if latency_ms is not None:
        metrics.observe_stage("total", max(0.0, latency_ms / 1000))
    if p.cache_key:
        # single flight: every follower that joined while we ran gets this same answer
        for follower in res.coalescer.complete(p.cache_key, p.job_id):
            finish_with_answer(res, follower, {**out, "coalesced_with": p.job_id}, replay=True)
    return {"job_id": p.job_id, "status": "done", "degraded": result.degraded}


def _link_to_leader(res: Resources, leader: str) -> None:
    """A coalesced follower's span links to the trace of the leader whose answer it will get (the
    leader's record keeps its `traceparent`); one HGET, only with tracing on."""
    if tracing.enabled():
        traceparent = res.redis.hget(res.jobs.key(leader), tracing.TRACEPARENT)
        tracing.link(traceparent if isinstance(traceparent, str) else None, "coalesced_leader")


def _observe_total(res: Resources, job_id: str) -> None:
    rec = res.jobs.get(job_id)
    if rec is not None:
        metrics.observe_stage("total", max(0.0, rec.updated_at - rec.created_at))
