"""The deadline sweep (ragfleet.deadlines, `ragfleet.outcomes.fail_lost`) against the real Redis: a
query whose message was lost (taken off its queue by a worker killed before kombu recorded it; here
the message is deleted, which leaves Redis in the same state) ends `failed` with `lost` once its
deadline has passed, and not before; a finished job is left alone; concurrent sweepers fail a job
once; the API's MULTI and the retrieval stage's create both register the deadline."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid

import pytest
import redis
import redis.asyncio

from ragfleet import deadlines
from ragfleet.jobs import JobCreate
from ragfleet.names import TASK_QUEUES, Priority, TaskName, priority_list
from ragfleet.outcomes import fail_lost
from ragfleet.resources import Resources
from ragfleet.schemas import ErrorCode, JobStatus
from ragfleet.settings import Settings
from ragfleet.submission import NewJob, submit_job, submit_job_async
from tests.helpers import isolated
from workers.inflight import NodeKeeper

pytestmark = pytest.mark.redis


@pytest.fixture
def settings(base_settings: Settings) -> Settings:
    return isolated(base_settings, "deadline", query_expires_s=30, query_deadline_grace_s=15.0)


@pytest.fixture
def res(settings: Settings) -> Resources:
    return Resources(settings)


def query(job_id: str | None = None) -> NewJob:
    job_id = job_id or uuid.uuid4().hex
    return NewJob(TaskName.QUERY, "query", {"question": "what is lost?", "job_id": job_id}, job_id, "default")


def lose_messages(res: Resources) -> None:
    """What a worker killed between BRPOP and kombu's unacked entry leaves: the message nowhere."""
    s = res.settings
    lists = [s.broker_key_prefix + priority_list(TASK_QUEUES[TaskName.QUERY].value, int(p)) for p in Priority]
    assert sum(res.redis.llen(k) for k in lists) > 0  # the message was there
    res.redis.delete(*lists)


def test_a_query_whose_message_is_lost_ends_lost_at_its_deadline(res: Resources) -> None:
    s = res.settings
    job_id = submit_job(res.redis, res.jobs, query(), s)
    lose_messages(res)
    created = res.jobs.get(job_id)
    assert created is not None and created.status is JobStatus.QUEUED
    due = deadlines.deadline_of(s, created.created_at)
    assert fail_lost(res, now=due - 1) == []  # not before its deadline: it may still run
    assert res.jobs.status(job_id) is JobStatus.QUEUED
    assert fail_lost(res, now=due + 1) == [job_id]
    rec = res.jobs.get(job_id)
    assert rec is not None and rec.status is JobStatus.FAILED and rec.error is not None
    assert (rec.error.code, rec.error.message) == (ErrorCode.LOST, deadlines.LOST_MESSAGE)
    # a stream reader (and a long poll) is told: the terminal `error` event
    events = [e for e in res.events.read(job_id) if e.type == "error"]
    assert [e.data["code"] for e in events] == ["lost"]
    assert res.redis.zscore(deadlines.key(s), job_id) is None
    assert fail_lost(res, now=due + 100) == []  # taken once


def test_a_finished_job_is_only_dropped_from_the_set(res: Resources) -> None:
    s = res.settings
    done = submit_job(res.redis, res.jobs, query(), s)
    cancelled = submit_job(res.redis, res.jobs, query(), s)
    assert res.jobs.finish(done, {"answer": "kept"})
    assert res.jobs.cancel(cancelled)
    assert fail_lost(res, now=time.time() + 3_600) == []
    rec = res.jobs.get(done)
    assert rec is not None and rec.status is JobStatus.DONE and rec.result == {"answer": "kept"}
    assert res.jobs.status(cancelled) is JobStatus.CANCELLED
    assert res.redis.zcard(deadlines.key(s)) == 0


def test_concurrent_sweepers_fail_each_job_once(settings: Settings, res: Resources) -> None:
    ids = [submit_job(res.redis, res.jobs, query(), settings) for _ in range(60)]
    later = time.time() + 3_600
    results: list[list[str]] = []
    start = threading.Barrier(4)

    def sweeper() -> None:
        own = Resources(settings)  # each its own clients, as each node's keeper thread has
        start.wait()
        results.append(fail_lost(own, now=later, batch=7))

    threads = [threading.Thread(target=sweeper) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    failed = [j for r in results for j in r]
    assert len(results) == 4 and sorted(failed) == sorted(ids)  # every job, each by one sweeper
    for job_id in ids:
        assert [e.data["code"] for e in res.events.read(job_id) if e.type == "error"] == ["lost"]


def test_the_api_path_registers_the_deadline_with_the_record(settings: Settings, res: Resources) -> None:
    async def submit() -> tuple[str, str]:
        client = redis.asyncio.Redis.from_url(settings.redis_url, decode_responses=True)
        try:
            q = await submit_job_async(client, res.jobs, query(), settings)
            doc_id = uuid.uuid4().hex
            doc = NewJob(TaskName.INDEX_DOCUMENTS, "index", {"documents": []}, doc_id, "default")
            return q, await submit_job_async(client, res.jobs, doc, settings)
        finally:
            await client.aclose()

    job_id, doc_job = asyncio.run(submit())
    rec = res.jobs.get(job_id)
    assert rec is not None
    score = res.redis.zscore(deadlines.key(settings), job_id)
    assert score == pytest.approx(rec.created_at + 30 + 15.0, abs=1.0)
    assert res.redis.zscore(deadlines.key(settings), doc_job) is None  # only queries have one
    # a redelivery's create (the retrieval stage of an API job) keeps the first deadline
    create = JobCreate("query", deadline=True)
    res.jobs.stage_start(job_id, "retrieval", "retrieval", JobStatus.RETRIEVING, create=create)
    assert res.redis.zscore(deadlines.key(settings), job_id) == score


@pytest.mark.model  # the stage goes on to embed the question
def test_the_retrieval_stage_registers_the_deadline_of_a_job_sent_by_name(res: Resources) -> None:
    """A producer that enqueues by task name creates no record: the retrieval stage does, with the
    deadline, in its first round trip (ragfleet.answering.retrieve passes `deadline=True`)."""
    from ragfleet.answering import retrieve
    from ragfleet.schemas import QueryPayload

    job_id = uuid.uuid4().hex
    payload = QueryPayload.model_validate({"question": "what is lost?", "job_id": job_id})
    out = retrieve(res, payload, priority=Priority.DEFAULT)  # an empty index: no sources
    assert out["status"] == "done"  # no LLM configured: answered at the end of the stage (inline)
    rec = res.jobs.get(job_id)
    assert rec is not None
    score = res.redis.zscore(deadlines.key(res.settings), job_id)
    assert score == pytest.approx(rec.created_at + 30 + 15.0, abs=1.0)


def test_each_nodes_keeper_runs_the_sweep(settings: Settings, res: Resources) -> None:
    """The sweep's runner: a node's keeper thread (workers/inflight.py) fails a due lost query."""
    job_id = submit_job(res.redis, res.jobs, query(), settings)
    lose_messages(res)
    res.redis.zadd(deadlines.key(settings), {job_id: time.time() - 1})  # due now
    keeper = NodeKeeper(settings, f"sweeper@{uuid.uuid4().hex[:6]}", lambda: None, frozenset())
    assert keeper.sweep_deadlines() == 1
    assert res.jobs.status(job_id) is JobStatus.FAILED
