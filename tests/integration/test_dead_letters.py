"""Dead letters (ragfleet/dead_letters.py) and the replay transition (ragfleet/jobs.py) on a real Redis:
what is kept, the cap and the TTL, tenant filtering, purge, and a replay that reopens a terminal job
exactly once, under its own id, with its message sent again."""

from __future__ import annotations

import json
import threading
import time
import uuid
from typing import Any

import pytest

from ragfleet import deadlines
from ragfleet.dead_letters import DeadLetters, DeadLetterState, ReplayOutcome
from ragfleet.names import Queue, TaskName
from ragfleet.outcomes import fail_job
from ragfleet.resources import Resources
from ragfleet.schemas import ErrorCode, JobStatus
from ragfleet.settings import Settings
from tests.helpers import api_client, isolated

pytestmark = pytest.mark.redis


@pytest.fixture
def res(base_settings: Settings) -> Resources:
    return Resources(isolated(base_settings, "dlq").model_copy(update={"dead_letter_max": 5}))


@pytest.fixture
def dlq(res: Resources) -> DeadLetters:
    return DeadLetters(res.redis, res.settings)


def failed_query(res: Resources, tenant: str = "t1", code: ErrorCode = ErrorCode.WORKER_LOST) -> str:
    job_id = uuid.uuid4().hex
    res.jobs.create(job_id, "query", tenant=tenant)
    assert fail_job(res, job_id, code, "worker died")
    return job_id


def record(dlq: DeadLetters, job_id: str, **over: Any) -> str:
    fields: dict[str, Any] = {
        "task": TaskName.QUERY.value,
        "task_id": job_id,
        "job_id": job_id,
        "payload": {"job_id": job_id, "question": "What is Redis?", "tenant": "t1"},
        "code": ErrorCode.WORKER_LOST,
        "message": "parked as a poison message",
        "deliveries": 3,
        "node": "retrieval@host",
        "parked": True,
    }
    return dlq.record(**{**fields, **over})


def queued_messages(res: Resources, queue: Queue) -> list[dict[str, Any]]:
    s, out = res.settings, []
    for key in res.redis.scan_iter(f"{s.broker_key_prefix}{queue.value}*"):
        if res.redis.type(key) == "list":
            out += [json.loads(m) for m in res.redis.lrange(key, 0, -1)]
    return out


def test_an_entry_keeps_what_a_replay_and_an_operator_need(res: Resources, dlq: DeadLetters) -> None:
    job_id = failed_query(res, tenant="t-owner")
    created = res.jobs.get(job_id)
    assert created is not None
    entry_id = record(dlq, job_id, payload={"job_id": job_id, "question": "q?", "tenant": "t-payload"})
    entry = dlq.get(entry_id)
    assert entry is not None
    assert (entry.task, entry.queue, entry.job_id, entry.deliveries) == (
        "ragfleet.query",
        "retrieval",
        job_id,
        3,
    )
    assert entry.tenant == "t-owner"  # the job record's tenant (the key decided it), not the payload's
    assert entry.payload == {"job_id": job_id, "question": "q?", "tenant": "t-payload"}
    assert entry.first_seen == pytest.approx(created.created_at)
    assert entry.first_seen <= entry.last_seen <= time.time()
    assert (entry.node, entry.parked, entry.state, entry.code) == (
        "retrieval@host",
        True,
        "parked",
        "worker_lost",
    )
    assert 0 < res.redis.ttl(dlq.entry_key(entry_id)) <= res.settings.dead_letter_ttl_s
    # a listing leaves payloads out (an indexing job's documents could be megabytes)
    (listed,) = dlq.list()
    assert listed.id == entry_id and listed.payload is None
    assert dlq.count() == 1


def test_the_cap_drops_the_oldest_and_the_ttl_hides_expired_entries(res: Resources, dlq: DeadLetters) -> None:
    ids = [record(dlq, uuid.uuid4().hex, now=time.time() - 10 + i) for i in range(7)]
    assert res.settings.dead_letter_max == 5
    assert [e.id for e in dlq.list()] == ids[::-1][:5]  # newest first, the two oldest dropped
    assert all(not res.redis.exists(dlq.entry_key(i)) for i in ids[:2])
    assert dlq.count() == 5
    assert dlq.count_and_recorded() == (5, 7)  # the alert's counter keeps rising at the cap
    # an index member whose hash expired is not counted (past the TTL) and is dropped when read
    res.redis.delete(dlq.entry_key(ids[-1]))
    assert [e.id for e in dlq.list()] == ids[::-1][1:5]
    assert res.redis.zscore(dlq.index_key, ids[-1]) is None
    assert dlq.count(now=time.time() + res.settings.dead_letter_ttl_s + 60) == 0


def test_a_tenant_sees_and_purges_only_its_own(res: Resources, dlq: DeadLetters) -> None:
    mine = [record(dlq, uuid.uuid4().hex, tenant="t1") for _ in range(2)]
    theirs = record(dlq, uuid.uuid4().hex, tenant="t2")
    assert {e.id for e in dlq.list(tenant="t1")} == set(mine)
    assert [e.id for e in dlq.list(tenant="t2")] == [theirs]
    assert len(dlq.list(tenant="t1", limit=1)) == 1 and len(dlq.list(tenant="t1", offset=1)) == 1
    assert dlq.purge(tenant="t1") == 2
    assert [e.id for e in dlq.list()] == [theirs]
    assert dlq.purge() == 1
    assert dlq.list() == [] and dlq.count() == 0
    # nothing is left but the recorded counter, which a purge leaves (the alert counts by it)
    assert set(res.redis.scan_iter(f"{res.settings.key('dlq')}*")) == {dlq.recorded_key}


def test_replay_reopens_the_terminal_job_once_under_its_id(res: Resources, dlq: DeadLetters) -> None:
    job_id = failed_query(res)
    entry_id = record(dlq, job_id)
    res.redis.set(res.settings.key("deliveries", job_id), 3)
    before = res.jobs.get(job_id)
    assert before is not None and before.attempt == 1 and before.status == JobStatus.FAILED
    assert dlq.replay(entry_id) == (ReplayOutcome.REPLAYED, 2)
    rec = res.jobs.get(job_id)
    assert rec is not None
    assert (rec.status, rec.attempt, rec.error, rec.result) == (JobStatus.QUEUED, 2, None, None)
    assert [e.type for e in res.events.read(job_id)] == ["error", "replayed"]
    assert res.events.read(job_id)[-1].data == {
        "attempt": 2,
        "dead_letter": entry_id,
        "previous_error": "worker_lost",
    }
    (msg,) = queued_messages(res, Queue.RETRIEVAL)
    assert msg["headers"]["task"] == "ragfleet.query" and msg["headers"]["id"] == job_id
    assert msg["headers"]["expires"]  # a fresh one, from now
    assert not res.redis.exists(res.settings.key("deliveries", job_id))  # the cap counts afresh
    entry = dlq.get(entry_id)
    assert entry is not None and entry.state == DeadLetterState.REPLAYED and entry.replay_attempt == 2
    # a second replay does nothing: no second message, no second reopen
    assert dlq.replay(entry_id) == (ReplayOutcome.ALREADY, None)
    assert len(queued_messages(res, Queue.RETRIEVAL)) == 1
    # the job fails again: a new entry; its replay is attempt 3
    assert fail_job(res, job_id, ErrorCode.INTERNAL, "again")
    assert dlq.replay(record(dlq, job_id, code=ErrorCode.INTERNAL)) == (ReplayOutcome.REPLAYED, 3)


def test_concurrent_replays_of_one_entry_send_one_message(res: Resources, dlq: DeadLetters) -> None:
    job_id = failed_query(res)
    entry_id = record(dlq, job_id)
    outcomes: list[ReplayOutcome] = []
    barrier = threading.Barrier(8)

    def replay() -> None:
        barrier.wait()
        outcomes.append(DeadLetters(res.redis, res.settings).replay(entry_id)[0])

    threads = [threading.Thread(target=replay) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == sorted([ReplayOutcome.REPLAYED] + [ReplayOutcome.ALREADY] * 7)
    assert len(queued_messages(res, Queue.RETRIEVAL)) == 1
    rec = res.jobs.get(job_id)
    assert rec is not None and rec.attempt == 2


def test_only_a_replay_moves_a_terminal_job(res: Resources, dlq: DeadLetters) -> None:
    job_id = failed_query(res)
    # every ordinary write refuses a terminal job
    assert not res.jobs.set_status(job_id, JobStatus.QUEUED)
    assert not res.jobs.finish(job_id, {"answer": "late"})
    assert not res.jobs.cancel(job_id)
    assert res.jobs.status(job_id) == JobStatus.FAILED
    # an open job is not replayed (it runs already); nothing is sent
    open_id = uuid.uuid4().hex
    res.jobs.create(open_id, "query", tenant="t1")
    assert dlq.replay(record(dlq, open_id)) == (ReplayOutcome.JOB_OPEN, None)
    assert res.jobs.status(open_id) == JobStatus.QUEUED and queued_messages(res, Queue.RETRIEVAL) == []
    # an entry without a payload (a message that carried none) has nothing to send
    assert dlq.replay(record(dlq, job_id, payload=None)) == (ReplayOutcome.NOT_REPLAYABLE, None)
    assert res.jobs.status(job_id) == JobStatus.FAILED
    with pytest.raises(KeyError):
        dlq.replay(uuid.uuid4().hex)


def test_a_replay_of_a_job_whose_record_is_gone_resends_the_message(res: Resources, dlq: DeadLetters) -> None:
    job_id = uuid.uuid4().hex
    entry_id = record(dlq, job_id, tenant="t1")
    assert dlq.replay(entry_id) == (ReplayOutcome.REPLAYED, None)
    assert res.jobs.get(job_id) is None  # the task's first stage creates it, as for any task sent by name
    assert [m["headers"]["id"] for m in queued_messages(res, Queue.RETRIEVAL)] == [job_id]


# --- the admin routes -------------------------------------------------------------------------------

ADMIN, KEY_1, KEY_2 = (f"{n}-{uuid.uuid4().hex[:8]}" for n in ("admin", "t1", "t2"))


def test_admin_routes_admin_sees_all_a_tenant_only_its_own(res: Resources, dlq: DeadLetters) -> None:
    s = res.settings.model_copy(
        update={"api_keys": f"{KEY_1}:t1,{KEY_2}:t2", "admin_keys": ADMIN, "rate_limit": "10000/minute"}
    )
    job_1, job_2 = failed_query(res, tenant="t1"), failed_query(res, tenant="t2", code=ErrorCode.INTERNAL)
    e1 = record(dlq, job_1)
    e2 = record(dlq, job_2, code=ErrorCode.INTERNAL, parked=False, deliveries=1)
    admin, t1, t2 = ({"Authorization": f"Bearer {k}"} for k in (ADMIN, KEY_1, KEY_2))
    url = "/v1/admin/dead-letters"
    with api_client(s) as c:
        listed = c.get(url, headers=admin)
        assert listed.status_code == 200, listed.text
        assert [e["id"] for e in listed.json()["items"]] == [e2, e1]
        assert all(e["payload"] is None for e in listed.json()["items"])
        assert [e["id"] for e in c.get(url, headers=admin, params={"tenant": "t1"}).json()["items"]] == [e1]
        assert [e["id"] for e in c.get(url, headers=t1).json()["items"]] == [e1]
        assert c.get(url, headers=t1, params={"tenant": "t2"}).status_code == 403
        assert c.get(url).status_code == 401
        shown = c.get(f"{url}/{e1}", headers=t1)
        assert shown.status_code == 200 and shown.json()["payload"]["question"] == "What is Redis?"
        assert c.get(f"{url}/{e1}", headers=t2).status_code == 403
        assert c.get(f"{url}/{uuid.uuid4().hex}", headers=admin).status_code == 404
        # a tenant replays its own, not another's; the replay keeps the job id
        assert c.post(f"{url}/{e2}/replay", headers=t1).status_code == 403
        replayed = c.post(f"{url}/{e1}/replay", headers=t1)
        assert replayed.status_code == 202, replayed.text
        assert replayed.json() == {"dead_letter": e1, "job_id": job_1, "outcome": "replayed", "attempt": 2}
        assert replayed.headers["location"] == f"/v1/jobs/{job_1}"
        polled = c.get(f"/v1/jobs/{job_1}", headers=t1).json()
        assert (polled["status"], polled["attempt"], polled["error"]) == ("queued", 2, None)
        again = c.post(f"{url}/{e1}/replay", headers=admin)
        assert again.status_code == 409 and again.json()["outcome"] == "already_replayed"
        assert len(queued_messages(res, Queue.RETRIEVAL)) == 1
        # purge: admin only
        assert c.delete(url, headers=t1).status_code == 403
        assert c.delete(url, headers=t2).status_code == 403
        assert c.get(url, headers=admin).json()["items"] != []
        assert c.delete(url, headers=admin).json() == {"purged": 2}
        assert c.get(url, headers=admin).json()["items"] == []


def test_the_gauge_reads_the_count_at_scrape_time(res: Resources, dlq: DeadLetters) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from ragfleet.metrics import DeadLettersCollector

    registry = CollectorRegistry()
    registry.register(DeadLettersCollector(dlq))
    assert b"ragfleet_dead_letters 0.0" in generate_latest(registry)
    for _ in range(3):
        record(dlq, uuid.uuid4().hex)
    assert b"ragfleet_dead_letters 3.0" in generate_latest(registry)
    assert b"ragfleet_dead_letters_recorded_total 3.0" in generate_latest(registry)
    dlq.purge()
    scraped = generate_latest(registry)
    assert b"ragfleet_dead_letters 0.0" in scraped and b"ragfleet_dead_letters_recorded_total 3.0" in scraped
    dead = DeadLetters(
        res.redis.__class__.from_url("redis://127.0.0.1:1", socket_connect_timeout=0.2), res.settings
    )
    broken = CollectorRegistry()
    broken.register(DeadLettersCollector(dead))
    assert b"ragfleet_dead_letters " not in generate_latest(broken)  # no sample, not a failed scrape


# --- where they are recorded: the task base class (workers/base.py) ---------------------------------


def test_the_task_base_records_a_parked_message_and_an_internal_failure(
    res: Resources, dlq: DeadLetters, monkeypatch: pytest.MonkeyPatch
) -> None:
    from celery import Celery

    import workers.base

    monkeypatch.setattr(workers.base, "get_resources", lambda: res)
    app = Celery("dlq-test", set_as_current=False)

    @app.task(bind=True, base=workers.base.RagfleetTask, name="ragfleet.query", shared=False)
    def boom(self: Any, *, payload: dict[str, Any]) -> None:
        raise RuntimeError("a bug")

    # an exception no task handled: the job ends `internal`, and a dead letter keeps its payload
    job_id = uuid.uuid4().hex
    res.jobs.create(job_id, "query", tenant="t-bug")
    payload = {"job_id": job_id, "question": "q?", "tenant": "t-bug"}
    boom.apply(kwargs={"payload": payload}, task_id=job_id)
    rec = res.jobs.get(job_id)
    assert rec is not None and rec.error is not None and rec.error.code == "internal"
    (entry,) = dlq.list()
    full = dlq.get(entry.id)
    assert full is not None
    assert (full.code, full.parked, full.deliveries, full.tenant) == ("internal", False, 1, "t-bug")
    assert (full.task, full.queue, full.job_id, full.payload) == (
        "ragfleet.query",
        "retrieval",
        job_id,
        payload,
    )
    # a late duplicate failure of the same job fails nothing, so it records nothing
    boom.apply(kwargs={"payload": payload}, task_id=job_id)
    assert len(dlq.list()) == 1

    # the redelivery cap parks a message: failed `worker_lost`, recorded as parked, the old list kept too
    parked_id = uuid.uuid4().hex
    res.jobs.create(parked_id, "query", tenant="t-bug")
    parked_payload = {"job_id": parked_id, "question": "poison?"}
    boom.push_request(
        id=parked_id,
        kwargs={"payload": parked_payload},
        hostname="retrieval@node-7",
        delivery_info={"routing_key": "retrieval", "redelivered": True},
    )
    try:
        out = boom.park(5)
    finally:
        boom.pop_request()
    assert out["error"]["code"] == "worker_lost"
    newest = dlq.list()[0]
    assert (newest.job_id, newest.parked, newest.deliveries, newest.node) == (
        parked_id,
        True,
        5,
        "retrieval@node-7",
    )
    assert (dlq.get(newest.id) or newest).payload == parked_payload
    assert any(parked_id in p for p in res.redis.lrange(res.settings.key("parked"), 0, -1))


def test_a_replayed_query_gets_a_deadline_from_the_replay(res: Resources, dlq: DeadLetters) -> None:
    """The old deadline (from its first submission) could otherwise fail the replay `lost` while it
    runs: the replay's MULTI sets a fresh one, its message's expiry from now plus the grace."""
    job_id = failed_query(res)
    res.redis.zadd(deadlines.key(res.settings), {job_id: time.time() + 1})  # the first run's, due soon
    assert dlq.replay(record(dlq, job_id))[0] == ReplayOutcome.REPLAYED
    fresh = deadlines.deadline_of(res.settings, time.time())
    assert res.redis.zscore(deadlines.key(res.settings), job_id) == pytest.approx(fresh, abs=2)
