"""The job record's writes on the query's critical path, against the real Redis: what each one
writes, that it writes nothing to a terminal job, and how many round trips it costs (each is ~0.2 ms
and a context switch on a 2-core node, so the count is part of the contract)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import redis
from redis.connection import Connection

from ragfleet.coalesce import Flight
from ragfleet.events import JobEvents, end_key, end_ttl_s, finish_query
from ragfleet.index_state import IndexPointer
from ragfleet.jobs import JobCreate, JobStore, parse_record
from ragfleet.schemas import JobStatus, StageTiming
from ragfleet.settings import Settings


@pytest.fixture
def store(base_settings: Settings, redis_client: redis.Redis) -> tuple[JobStore, JobEvents, redis.Redis]:
    client = redis.Redis.from_url(base_settings.redis_url, decode_responses=True)
    return JobStore(client, base_settings), JobEvents(client, base_settings), client


@contextmanager
def round_trips(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Counts what is sent to Redis: one send per command, or per pipeline (however many commands)."""
    sent: list[int] = []
    original: Callable[..., None] = Connection.send_packed_command

    def counting(self: Connection, command: Any, check_health: bool = True) -> None:
        sent.append(1)
        original(self, command, check_health)

    with monkeypatch.context() as m:
        m.setattr(Connection, "send_packed_command", counting)
        yield sent


def events_of(events: JobEvents, job_id: str) -> list[tuple[str, dict[str, Any]]]:
    return [(e.type, e.data) for e in events.read(job_id)]


def test_first_stage_creates_and_starts_the_record_in_one_round_trip(
    store: tuple[JobStore, JobEvents, redis.Redis], monkeypatch: pytest.MonkeyPatch
) -> None:
    jobs, _, client = store
    job_id = uuid.uuid4().hex
    client.ping()  # a connection exists before counting
    with round_trips(monkeypatch) as sent:
        timing, is_open, _ = jobs.stage_start(
            job_id, "retrieval", "retrieval", JobStatus.RETRIEVING, create=JobCreate("query", tenant="t1")
        )
    assert len(sent) == 1 and is_open
    rec = jobs.get(job_id)
    assert rec is not None and rec.kind == "query" and rec.tenant == "t1"
    assert rec.status == JobStatus.RETRIEVING
    assert client.hget(jobs.key(job_id), "attempts:retrieval") == "1"
    stage = json.loads(client.hget(jobs.key(job_id), "stage:retrieval") or "{}")
    assert stage["started_at"] == timing.started_at

    # a redelivery: the record is kept (created_at too), the attempt is counted
    created = rec.created_at
    start = (job_id, "retrieval", "retrieval", JobStatus.RETRIEVING)
    _, again, _ = jobs.stage_start(*start, create=JobCreate("query"))
    rec2 = jobs.get(job_id)
    assert again and rec2 is not None and rec2.created_at == created and rec2.tenant == "t1"
    assert client.hget(jobs.key(job_id), "attempts:retrieval") == "2"


def test_retrieval_stage_reads_pointer_and_query_vector_with_its_start(
    base_settings: Settings, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stage's first round trip also brings the index pointer and the cached query vector
    (`Prefetch`), and the cache lookup and the coalescing join are a second one: two round trips
    before the search, where five were sequential."""
    import numpy as np

    from ragfleet.querying import Prefetch, lookup_and_join
    from ragfleet.resources import Resources
    from ragfleet.schemas import QueryPayload

    settings = base_settings.model_copy(
        update={"key_prefix": f"{base_settings.key_prefix}-pre{uuid.uuid4().hex[:6]}"}
    )
    writer, reader = Resources(settings), Resources(settings)  # two processes: no shared local layer
    question = f"what does the prefetch read? {uuid.uuid4().hex[:6]}"
    vec = np.arange(384, dtype=np.float32) / 384
    writer.embedding_cache.put(question, vec)
    writer.redis.set(writer.index_state.version_key, 7)
    p = QueryPayload(job_id=uuid.uuid4().hex, question=question)
    pre = Prefetch.for_query(reader, p)
    reader.coalescer.join_unless_cached("warm", "warm", "warm")  # connected, script loaded in Redis
    try:
        with round_trips(monkeypatch) as sent:
            _, is_open, replies = reader.jobs.stage_start(
                p.job_id,
                "retrieval",
                "retrieval",
                JobStatus.RETRIEVING,
                create=JobCreate("query"),
                reads=pre.queue,
            )
            pointer = pre.accept(replies)
            cached, flight = lookup_and_join(reader, p, f"answer-{p.job_id}", p.job_id)
        assert len(sent) == 2 and is_open
        assert pointer.version == 7 and pointer.active == settings.collection
        assert pre.vector is not None and np.array_equal(pre.vector, vec)
        assert cached is None and flight is not None and flight.role == "leader"
        assert reader.jobs.status(p.job_id) == JobStatus.RETRIEVING

        # the answer cached under that key: found in the same script, and no flight is joined
        writer.answer_cache.put("answered", {"question": question, "answer": "yes [1]", "sources": []})
        cached, flight = lookup_and_join(reader, p, "answered", "another-job")
        assert cached is not None and cached[1] == "l2" and cached[0].answer == "yes [1]"
        assert flight is None and not redis_client.exists(settings.key("flight", "answered"))

        # Once the process has seen the version, the lookup and the join ride in the start too.
        reader.live_store(pointer)
        from ragfleet.querying import cache_key_for

        def start(job_id: str) -> tuple[Prefetch, IndexPointer]:
            q = QueryPayload(job_id=job_id, question=question)
            pre = Prefetch.for_query(reader, q, job_id)
            *_, replies = reader.jobs.stage_start(
                job_id,
                "retrieval",
                "retrieval",
                JobStatus.RETRIEVING,
                create=JobCreate("query"),
                reads=pre.queue,
            )
            return pre, pre.accept(replies)

        second = uuid.uuid4().hex
        with round_trips(monkeypatch) as sent:
            pre2, pointer2 = start(second)
            found = pre2.answer_or_flight(pointer2.version)
        assert len(sent) == 1 and found is not None
        assert found[0] is None and found[1] is not None and found[1] == Flight("leader", second)

        # The index moved: the join sent under the old version is undone, and nothing was found.
        writer.redis.set(writer.index_state.version_key, 8)
        third = uuid.uuid4().hex
        pre3, pointer3 = start(third)
        assert pointer3.version == 8 and pre3.guess == 7
        stale_followers = settings.key("flight", cache_key_for(reader, p, 7), "followers")
        assert third in redis_client.smembers(stale_followers)  # it joined second's flight under 7...
        assert pre3.answer_or_flight(pointer3.version) is None
        assert third not in redis_client.smembers(stale_followers)  # ...and left it: no answer of 7
        cached, flight = lookup_and_join(reader, p, cache_key_for(reader, p, 8), third)
        assert cached is None and flight is not None and flight.role == "leader"
    finally:
        for key in redis_client.scan_iter(f"{settings.key_prefix}:*"):
            redis_client.delete(key)


def test_a_cancelled_job_is_not_reopened_by_its_first_stage(
    store: tuple[JobStore, JobEvents, redis.Redis],
) -> None:
    jobs, _, _ = store
    job_id = uuid.uuid4().hex
    jobs.create(job_id, "query")
    assert jobs.cancel(job_id)
    start = (job_id, "retrieval", "retrieval", JobStatus.RETRIEVING)
    _, is_open, _ = jobs.stage_start(*start, create=JobCreate("query"))
    assert not is_open
    assert jobs.status(job_id) == JobStatus.CANCELLED


def test_finish_writes_result_fields_and_done_with_latency_in_one_round_trip(
    store: tuple[JobStore, JobEvents, redis.Redis], monkeypatch: pytest.MonkeyPatch, base_settings: Settings
) -> None:
    jobs, events, client = store
    job_id = uuid.uuid4().hex
    jobs.create(job_id, "query")
    answer = {"answer": "Yes [1].", "sources": [{"n": 1}], "usage": {"provider": "x"}, "degraded": False}
    cache_key = f"{jobs.key(job_id)}:cache-probe"
    timing = StageTiming(worker="w", queue="generation", pid=1, started_at=1.0, ms=1.5).model_dump_json()
    pipe = client.pipeline(transaction=False)
    pipe.set(cache_key, "cached", ex=60)  # queued by the caller: sent in the same round trip
    with round_trips(monkeypatch) as sent:
        latency = finish_query(
            jobs, events, job_id, answer, replay=False, fields={"stage:generation": timing}, pipe=pipe
        )
    assert len(sent) == 1
    assert client.get(cache_key) == "cached"
    rec = jobs.get(job_id)
    assert rec is not None and rec.status == JobStatus.DONE and rec.result == answer
    assert latency == pytest.approx((rec.updated_at - rec.created_at) * 1000, abs=0.01)
    assert rec.stages["generation"].ms == 1.5
    [(type_, data)] = events_of(events, job_id)
    assert type_ == "done"
    [(_, end)] = client.xrange(end_key(base_settings, job_id))  # what a long poll waits on
    assert end.pop("type") == "done"
    assert parse_record(end) == rec  # the finished record rides in the entry that wakes the poll
    assert 0 < client.ttl(end_key(base_settings, job_id)) <= end_ttl_s(base_settings)
    assert data["latency_ms"] == pytest.approx(latency, abs=0.01)
    assert data["usage"] == {"provider": "x"} and data["degraded"] is False
    assert data["cached"] is None and data["coalesced_with"] is None


def test_replayed_answer_streams_sources_and_text_before_done(
    store: tuple[JobStore, JobEvents, redis.Redis],
) -> None:
    jobs, events, _ = store
    job_id = uuid.uuid4().hex
    jobs.create(job_id, "query")
    answer = {"answer": "cached text", "sources": [{"n": 1, "doc_id": "d"}], "cached": "l2"}
    assert finish_query(jobs, events, job_id, answer, replay=True) is not None
    got = events_of(events, job_id)
    assert [t for t, _ in got] == ["sources", "answer_chunk", "done"]
    assert got[0][1] == {"sources": [{"n": 1, "doc_id": "d"}]}
    assert got[1][1] == {"text": "cached text"} and got[2][1]["cached"] == "l2"


def test_finish_of_a_terminal_or_missing_job_writes_nothing(
    store: tuple[JobStore, JobEvents, redis.Redis], base_settings: Settings
) -> None:
    jobs, events, client = store
    job_id = uuid.uuid4().hex
    jobs.create(job_id, "query")
    assert jobs.cancel(job_id)
    assert finish_query(jobs, events, job_id, {"answer": "late"}, replay=True) is None
    assert jobs.status(job_id) == JobStatus.CANCELLED and jobs.get(job_id).result is None  # type: ignore[union-attr]
    assert events_of(events, job_id) == []
    assert client.exists(end_key(base_settings, job_id)) == 0

    gone = uuid.uuid4().hex
    assert finish_query(jobs, events, gone, {"answer": "x"}, replay=False) is None
    assert client.exists(jobs.key(gone), events.key(gone)) == 0  # no record without a TTL


def test_an_error_event_also_ends_the_job_for_long_polls(
    store: tuple[JobStore, JobEvents, redis.Redis], base_settings: Settings
) -> None:
    _, events, client = store
    job_id = uuid.uuid4().hex
    events.emit(job_id, "sources", {"sources": []})
    assert client.exists(end_key(base_settings, job_id)) == 0
    events.emit(job_id, "error", {"code": "timeout", "message": "m"})
    assert [f for _, f in client.xrange(end_key(base_settings, job_id))] == [{"type": "error"}]
    assert client.ttl(end_key(base_settings, job_id)) > 0


def test_a_stage_that_starts_with_its_end_is_one_round_trip_and_leaves_a_cancelled_job_alone(
    base_settings: Settings, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The extractive generation stage (`stage(start_with_end=True)`): its start is recorded with
    the finish, and the finish, not a read before the work, is what keeps a cancelled job cancelled."""
    import os

    from ragfleet.resources import Resources
    from ragfleet.stages import stage

    res = Resources(base_settings)
    answer = {"answer": "Yes [1].", "sources": [], "usage": {}, "degraded": False}
    job_id = uuid.uuid4().hex
    res.jobs.create(job_id, "query")
    with stage(res, job_id, "retrieval", "retrieval", JobStatus.RETRIEVING) as run:
        run.status = JobStatus.GENERATING  # the hand-off: the job is generation's from here on
    assert res.jobs.status(job_id) == JobStatus.GENERATING
    res.redis.ping()  # a connection exists before counting
    generation = (job_id, "generation", "generation", JobStatus.GENERATING)
    with round_trips(monkeypatch) as sent, stage(res, *generation, start_with_end=True) as run:
        assert run.open
        run.answer = answer
    assert len(sent) == 1
    rec = res.jobs.get(job_id)
    assert rec is not None and rec.status == JobStatus.DONE and rec.result == answer
    assert rec.attempts == 2  # one retrieval, one generation
    gen = rec.stages["generation"]
    assert gen.queue == "generation" and gen.pid == os.getpid() and gen.ms is not None
    assert rec.created_at <= gen.started_at <= rec.updated_at
    assert run.latency_ms == pytest.approx((rec.updated_at - rec.created_at) * 1000, abs=0.01)

    cancelled = uuid.uuid4().hex
    res.jobs.create(cancelled, "query")
    with stage(res, cancelled, "generation", "generation", JobStatus.GENERATING, start_with_end=True) as run:
        assert res.jobs.cancel(cancelled)  # while the answer is written
        run.answer = answer
    assert run.latency_ms is None
    rec = res.jobs.get(cancelled)
    assert rec is not None and rec.status == JobStatus.CANCELLED and rec.result is None
    assert "generation" not in rec.stages and rec.attempts == 0
    assert events_of(res.events, cancelled) == []
