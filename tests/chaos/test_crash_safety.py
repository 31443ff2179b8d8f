"""Crash safety: SIGKILL a worker mid-task and the job still ends, correct and exactly once.

Late acks + `reject_on_worker_lost` keep a dead worker's message on the broker; the visibility
timeout brings it back to a live worker; idempotent tasks make the second run harmless; the
redelivery cap parks a message that kills its worker every time. Each test runs its own fleet on
its own Settings (tests/chaos/conftest.py) and prints what it measured (`pytest -s` shows it).
"""

from __future__ import annotations

import random
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest

from ragfleet.chunkers import configured_chunker
from ragfleet.events import JobEvents
from ragfleet.indexing_files import row_hash
from ragfleet.names import TaskName
from ragfleet.producer import enqueue
from ragfleet.redis_conn import get_redis
from ragfleet.schemas import JobStatus
from ragfleet.settings import Settings
from ragfleet.stores.base import chunk_id_for
from tests.chaos.conftest import (
    VISIBILITY_TIMEOUT_S,
    ChaosFleet,
    isolated_settings,
    jobs_for,
    live_store,
    seed_documents,
    sleep_until,
    wait_terminal,
    wait_until,
)
from tests.fleet import SupervisedRetrieval, Worker
from tests.integration.fake_llm_server import FakeLLM

pytestmark = [pytest.mark.chaos, pytest.mark.redis, pytest.mark.workers, pytest.mark.model]

WORDS = [
    "queue",
    "broker",
    "worker",
    "redis",
    "celery",
    "vector",
    "chunk",
    "index",
    "embed",
    "retrieval",
    "answer",
    "cache",
    "lock",
    "lease",
    "replica",
    "shard",
    "tenant",
    "token",
    "latency",
    "throughput",
    "backoff",
    "retry",
    "timeout",
    "ack",
    "message",
]

CORPUS = [
    {"id": "celery", "title": "Celery", "text": "Celery is a distributed task queue. Late acknowledgement "
     "makes a task redelivered if its worker dies."},
    {"id": "lancedb", "title": "LanceDB", "text": "LanceDB is an embedded vector database that stores "
     "vectors on local disk and supports hybrid search."},
    {"id": "redis", "title": "Redis", "text": "Redis is an in-memory data store used as a cache, a "
     "message broker and a lock server."},
]  # fmt: skip


def batch_of_documents(n: int) -> list[dict[str, Any]]:
    """Short documents (embedding dominates the time); every 100th is long enough for several chunks."""
    rng = random.Random(1234)
    docs = []
    for i in range(n):
        length = 520 if i % 100 == 0 else rng.randint(8, 20)
        text = f"Document {i}. " + " ".join(rng.choice(WORDS) for _ in range(length)) + "."
        docs.append({"id": f"doc-{i:04d}", "title": f"Doc {i}", "text": text, "metadata": {"n": i}})
    return docs


def expected_chunks(settings: Settings, docs: list[dict[str, Any]], tenant: str) -> dict[str, dict[int, str]]:
    """What the store must hold: the same chunking (an empty index records the configured chunker)
    and row hashes the indexing service computes."""
    out: dict[str, dict[int, str]] = {}
    chunker = configured_chunker(settings)
    for d in docs:
        chunks = chunker.text(d["text"], d["title"])
        # the document's metadata and what the chunker records on each of its chunks (`doc_chars`)
        meta = {**d["metadata"], **chunker.document_metadata(len(d["text"].rstrip()))}
        out[d["id"]] = {c.index: row_hash(c.text, meta) for c in chunks}
    return out


def deliveries(settings: Settings, task_id: str) -> int:
    return int(get_redis(settings).get(settings.key("deliveries", task_id)) or 0)


def test_indexing_worker_sigkilled_mid_batch_indexes_every_document_exactly_once(
    base_settings: Settings, tmp_path: Any, chaos_fleet_factory: Any
) -> None:
    s = isolated_settings(base_settings, tmp_path)
    fleet: ChaosFleet = chaos_fleet_factory(s)
    (first,) = fleet.start("indexing")
    docs = batch_of_documents(1_000)
    expected = expected_chunks(s, docs, "default")
    n_expected = sum(len(v) for v in expected.values())
    assert n_expected > len(docs)  # the long documents give several chunks each

    jobs = jobs_for(s)
    job_id = enqueue(TaskName.INDEX_DOCUMENTS, {"documents": docs, "tenant": "default"}, settings=s)

    def mid_batch() -> bool:
        rec = jobs.get(job_id)
        return rec is not None and 0 < rec.progress.get("done", 0) < rec.progress.get("total", 0)

    assert wait_until(mid_batch, 120, 0.005), f"no partial progress: {jobs.get(job_id)}\n{fleet.logs()}"
    first.kill()
    killed_at, killed_mono = time.time(), time.monotonic()
    before = jobs.get(job_id)
    assert before is not None and before.status == JobStatus.INDEXING
    done_at_kill = before.progress["done"]

    time.sleep(2)  # the dead worker's job stays open, its message unacked on the broker
    rec = jobs.get(job_id)
    assert rec is not None and rec.status == JobStatus.INDEXING

    sleep_until(killed_mono + VISIBILITY_TIMEOUT_S + 0.5)
    (second,) = fleet.start("indexing")
    rec = wait_terminal(s, job_id, 180, fleet)
    assert rec.status == JobStatus.DONE, (rec, fleet.logs())
    redelivered_after = rec.stages["indexing"].started_at - killed_at
    total_after_kill = rec.updated_at - killed_at
    print(
        f"\n[chaos] indexing: killed at done={done_at_kill}/1000; redelivered (task restarted) "
        f"{redelivered_after:.1f} s after SIGKILL (visibility timeout {VISIBILITY_TIMEOUT_S} s); "
        f"job done {total_after_kill:.1f} s after SIGKILL"
    )
    assert rec.stages["indexing"].worker == second.node
    assert deliveries(s, job_id) == 2
    assert redelivered_after >= VISIBILITY_TIMEOUT_S  # restored by the timeout, not by magic

    result = rec.result or {}
    # the second run kept what the first had written and did only the rest
    assert result["documents_unchanged"] >= done_at_kill
    assert result["documents_indexed"] + result["documents_unchanged"] == len(docs)
    assert not result["errors"]

    store = live_store(s)
    try:
        ids = [r.chunk_id for batch in store.iter_chunks() for r in batch]
        dupes = [cid for cid, n in Counter(ids).items() if n > 1]
        assert not dupes, f"duplicate chunk ids: {dupes[:5]}"
        assert len(ids) == store.count("default") == n_expected
        assert set(ids) == {chunk_id_for("default", d, i) for d, m in expected.items() for i in m}
        stored = store.document_hashes("default", [d["id"] for d in docs])
        assert stored == expected  # every document, every chunk, the right content
    finally:
        store.close()


def test_retrieval_worker_sigkilled_mid_query_job_completes_after_redelivery(
    base_settings: Settings, tmp_path: Any, chaos_fleet_factory: Any
) -> None:
    """The whole worker node dies (parent and children): the query comes back after the interactive
    pools' own visibility timeout, found by the replacement's periodic restore sweep, while the
    fleet-wide timeout (sized for a reindex) stays at an hour. The gone-node sweep is off here
    (`node_gone_sweep_s=0`; tests/chaos/test_node_gone.py shows it): this is the last resort."""
    s = isolated_settings(base_settings, tmp_path, visibility_timeout_s=3_600, node_gone_sweep_s=0)
    seed_documents(s, CORPUS)
    fleet: ChaosFleet = chaos_fleet_factory(s)
    slow, _gen = fleet.start("retrieval", "generation", extra_env={"RAGFLEET_CHAOS_DELAY_S": "20"})
    jobs = jobs_for(s)
    job_id = enqueue(TaskName.QUERY, {"question": "Which database stores vectors on local disk?"}, settings=s)
    assert wait_until(lambda: jobs.status(job_id) == JobStatus.RETRIEVING, 30), fleet.logs()
    time.sleep(0.5)  # inside the injected delay: past the cache lookup and the coalescing join
    slow.kill()
    killed_at = time.time()
    r = get_redis(s)
    assert r.hlen(f"{s.broker_key_prefix}unacked:interactive") == 1  # the pool's own unacked hash
    assert r.hlen(f"{s.broker_key_prefix}unacked") == 0
    time.sleep(2)
    assert jobs.status(job_id) == JobStatus.RETRIEVING  # not lost, not failed: waiting for redelivery

    (fresh,) = fleet.start("retrieval")  # at once: the replacement (no delay) sweeps while it runs
    rec = wait_terminal(s, job_id, 90, fleet)
    assert rec.status == JobStatus.DONE, (rec, fleet.logs())
    redelivered_after = rec.stages["retrieval"].started_at - killed_at
    print(
        f"\n[chaos] retrieval: redelivered {redelivered_after:.1f} s after SIGKILL "
        f"(interactive visibility timeout {VISIBILITY_TIMEOUT_S} s, fleet-wide {s.visibility_timeout_s} s); "
        f"job done {rec.updated_at - killed_at:.1f} s after"
    )
    assert VISIBILITY_TIMEOUT_S - 3 < redelivered_after < VISIBILITY_TIMEOUT_S + 30
    assert rec.stages["retrieval"].worker == fresh.node
    assert rec.result is not None and rec.result["sources"][0]["doc_id"] == "lancedb"
    assert "[1]" in rec.result["answer"]
    assert deliveries(s, job_id) == 2


@dataclass
class HeldQuery:
    """A query whose generation worker is stuck in an LLM call that hangs (a real local server)."""

    llm: FakeLLM
    settings: Settings
    fleet: ChaosFleet
    gen: Worker
    job_id: str


@contextmanager
def generation_holding_a_query(
    base_settings: Settings, tmp_path: Any, chaos_fleet_factory: Any, **update: Any
) -> Iterator[HeldQuery]:
    llm = FakeLLM(answer="Redis is used as a message broker and a cache [1].").start()
    llm.mode, llm.hang_s = "hang", 40.0  # the first call holds the generation worker until it dies
    try:
        s = isolated_settings(
            base_settings,
            tmp_path,
            generator="openai",
            llm_base_url=llm.url,
            llm_timeout_s=45.0,
            llm_max_retries=0,
            **update,
        )
        seed_documents(s, CORPUS)
        fleet: ChaosFleet = chaos_fleet_factory(s)
        _ret, gen = fleet.start("retrieval", "generation")
        jobs = jobs_for(s)
        job_id = enqueue(TaskName.QUERY, {"question": "What is Redis used as?"}, settings=s)
        assert wait_until(lambda: llm.calls >= 1 and jobs.status(job_id) == JobStatus.GENERATING, 30), (
            jobs.get(job_id),
            fleet.logs(),
        )
        yield HeldQuery(llm, s, fleet, gen, job_id)
    finally:
        llm.stop()


def test_generation_worker_sigkilled_mid_generation_job_completes_after_redelivery(
    base_settings: Settings, tmp_path: Any, chaos_fleet_factory: Any
) -> None:
    with generation_holding_a_query(base_settings, tmp_path, chaos_fleet_factory) as held:
        llm, s, fleet, gen, job_id = held.llm, held.settings, held.fleet, held.gen, held.job_id
        jobs = jobs_for(s)
        gen.kill()
        killed_at, killed_mono = time.time(), time.monotonic()
        llm.mode = "ok"  # the provider recovers; only the worker was lost
        time.sleep(2)
        assert jobs.status(job_id) == JobStatus.GENERATING

        sleep_until(killed_mono + VISIBILITY_TIMEOUT_S + 0.5)
        (fresh,) = fleet.start("generation")
        rec = wait_terminal(s, job_id, 60, fleet)
        assert rec.status == JobStatus.DONE, (rec, fleet.logs())
        redelivered_after = rec.stages["generation"].started_at - killed_at
        print(
            f"\n[chaos] generation: redelivered {redelivered_after:.1f} s after SIGKILL "
            f"(visibility timeout {VISIBILITY_TIMEOUT_S} s); "
            f"job done {rec.updated_at - killed_at:.1f} s after"
        )
        assert rec.stages["generation"].worker == fresh.node
        assert rec.result is not None
        assert rec.result["answer"] == llm.answer and not rec.result["degraded"]
        assert llm.calls == 2  # one call per delivery, no more
        assert deliveries(s, f"{job_id}:gen") == 2


def test_generation_node_restarted_under_its_name_requeues_what_it_died_holding_at_once(
    base_settings: Settings, tmp_path: Any, chaos_fleet_factory: Any
) -> None:
    """A whole threads-pool node dies holding a query, and its supervisor restarts it under the
    same `-n` name. The restarted node requeues that message itself as it starts
    (workers/inflight.py), not one visibility timeout later: the timeout is 120 s here, so the
    sweep cannot be what brings it back; nor can the gone-node sweep of the live retrieval node
    (off here, `node_gone_sweep_s=0`, so that the restart is what requeues it)."""
    with generation_holding_a_query(
        base_settings,
        tmp_path,
        chaos_fleet_factory,
        interactive_visibility_timeout_s=120,
        node_gone_sweep_s=0,
    ) as query:
        llm, s, fleet, gen, job_id = query.llm, query.settings, query.fleet, query.gen, query.job_id
        r = get_redis(s)
        held = f"{s.broker_key_prefix}ragfleet.inflight.{gen.node}"
        # the node records the tag it holds, beside kombu's own unacked entry for it
        (tag,) = r.smembers(held)
        assert r.hexists(f"{s.broker_key_prefix}unacked:interactive", tag)
        gen.kill()
        killed_at = time.time()
        llm.mode = "ok"

        restarted = fleet.spawn("generation", node=gen.node).wait_ready()
        rec = wait_terminal(s, job_id, 60, fleet)
        assert rec.status == JobStatus.DONE, (rec, fleet.logs())
        redelivered_after = rec.stages["generation"].started_at - killed_at
        print(
            f"\n[chaos] generation node restarted under its name: redelivered {redelivered_after:.1f} s "
            f"after SIGKILL (interactive visibility timeout {s.interactive_visibility_timeout_s} s)"
        )
        assert redelivered_after < 30
        assert restarted.proc is not None and rec.stages["generation"].pid == restarted.proc.pid
        assert rec.result is not None and rec.result["answer"] == llm.answer
        assert llm.calls == 2  # one call per delivery, no more
        assert deliveries(s, f"{job_id}:gen") == 2  # counted as a redelivery by the cap
        assert "requeued 1 message(s) that the previous run" in restarted.output()
        assert wait_until(lambda: r.scard(held) == 0, 10)  # acked: the node holds nothing now


def test_poison_message_is_parked_after_max_redeliveries(
    base_settings: Settings, tmp_path: Any, chaos_fleet_factory: Any
) -> None:
    marker = "POISON-PILL-7f3a"
    # one redelivery: every delivery of a poison message costs a prefork child and its model warm-up
    # (the Procfile's supervised solo nodes: test_supervised_retrieval_nodes_...)
    s = isolated_settings(base_settings, tmp_path, chaos_kill_marker=marker, max_redeliveries=1)
    seed_documents(s, CORPUS)
    fleet: ChaosFleet = chaos_fleet_factory(s)
    (retrieval, _gen) = fleet.start("retrieval-prefork", "generation")
    jobs = jobs_for(s)
    t0 = time.time()
    job_id = enqueue(TaskName.QUERY, {"question": f"What is Redis? {marker}"}, settings=s)
    rec = wait_terminal(s, job_id, 180, fleet)
    parked_after = rec.updated_at - t0
    print(
        f"\n[chaos] poison: parked {parked_after:.1f} s after enqueue, after {rec.attempts} runs "
        f"(max_redeliveries={s.max_redeliveries})"
    )
    assert rec.status == JobStatus.FAILED
    assert rec.error is not None and rec.error.code == "worker_lost"
    assert "parked" in rec.error.message
    # the task body ran max_redeliveries + 1 times; the next delivery parked it without running it
    assert rec.attempts == s.max_redeliveries + 1
    assert deliveries(s, job_id) == s.max_redeliveries + 2
    parked = get_redis(s).lrange(s.key("parked"), 0, -1)
    assert any(f'"job_id": "{job_id}"' in p for p in parked), parked
    events = JobEvents(get_redis(s), s).read(job_id)
    assert [e.type for e in events][-1:] == ["error"]  # a streaming client is told, not left waiting
    # the pool survived its poison: the same worker (main process, new child) still answers
    assert retrieval.proc is not None and retrieval.proc.poll() is None
    ok_id = enqueue(TaskName.QUERY, {"question": "What is Redis used as?"}, settings=s)
    ok = wait_terminal(s, ok_id, 60, fleet)
    assert ok.status == JobStatus.DONE, (ok, fleet.logs())
    assert jobs.status(job_id) == JobStatus.FAILED


def test_an_unhandled_error_and_a_hard_time_limit_each_end_their_job(
    base_settings: Settings, tmp_path: Any, chaos_fleet_factory: Any
) -> None:
    """A job must end even when its task does not: an exception no task handles fails it with
    `internal`; a retrieval stuck where the soft limit cannot reach it is stopped by the hard
    limit (its prefork child killed) and fails with `timeout`. Both tell stream readers, and the
    pool goes on answering. (A supervised solo node past its hard limit: see below.)"""
    error_marker, hang_marker = "BUG-" + uuid.uuid4().hex[:6], "HANG-" + uuid.uuid4().hex[:6]
    s = isolated_settings(
        base_settings,
        tmp_path,
        chaos_error_marker=error_marker,
        chaos_hang_marker=hang_marker,
        query_time_limit_s=8,  # soft 3 s, hard 8 s
    )
    seed_documents(s, CORPUS)
    fleet: ChaosFleet = chaos_fleet_factory(s)
    fleet.start("retrieval-prefork", "generation")
    events = JobEvents(get_redis(s), s)

    bug = enqueue(TaskName.QUERY, {"question": f"What is Redis? {error_marker}"}, settings=s)
    t0 = time.monotonic()
    hang = enqueue(TaskName.QUERY, {"question": f"What is Redis? {hang_marker}"}, settings=s)
    rec = wait_terminal(s, bug, 60, fleet)
    assert rec.status == JobStatus.FAILED and rec.error is not None, rec
    assert rec.error.code == "internal" and "ChaosError" in rec.error.message
    assert [e.type for e in events.read(bug)][-1:] == ["error"]

    rec = wait_terminal(s, hang, 90, fleet)
    stopped_after = time.monotonic() - t0
    print(f"\n[chaos] hang: job failed {stopped_after:.1f} s after enqueue (hard limit 8 s)")
    assert rec.status == JobStatus.FAILED and rec.error is not None, rec
    assert rec.error.code == "timeout" and "hard time limit" in rec.error.message
    assert stopped_after >= 8
    assert [e.type for e in events.read(hang)][-1:] == ["error"]

    ok = wait_terminal(
        s, enqueue(TaskName.QUERY, {"question": "What is Redis used as?"}, settings=s), 90, fleet
    )
    assert ok.status == JobStatus.DONE, (ok, fleet.logs())


def test_supervised_retrieval_nodes_restart_after_a_poison_message_and_a_hard_time_limit(
    base_settings: Settings, tmp_path: Any, chaos_fleet_factory: Any
) -> None:
    """The Procfile's retrieval pool: supervisord (infra/supervisor/retrieval.conf) running solo
    nodes. A solo node has no parent to replace it, so what the prefork parent did is done by
    supervisord (it restarts the node under its name) and by the node itself (it requeues at once
    what it died holding, workers/inflight.py). A poison message kills the node on every delivery
    and is parked after the redelivery cap; a query stuck past the hard limit fails with `timeout`
    and the node exits so that a fresh one replaces it. The pool answers afterwards. The
    visibility timeout is 120 s here: no sweep brings anything back within the test."""
    poison, hang = "POISON-" + uuid.uuid4().hex[:6], "HANG-" + uuid.uuid4().hex[:6]
    s = isolated_settings(
        base_settings,
        tmp_path,
        chaos_kill_marker=poison,
        chaos_hang_marker=hang,
        max_redeliveries=1,
        query_time_limit_s=8,  # soft 3 s (blocked by the hang marker), hard 8 s
        interactive_visibility_timeout_s=120,
    )
    seed_documents(s, CORPUS)
    fleet: ChaosFleet = chaos_fleet_factory(s)
    retrieval = SupervisedRetrieval(s, fleet.log_dir, nodes=1).start()
    try:
        fleet.start("generation")
        (node,) = retrieval.nodes
        retrieval.wait_started(node)
        events = JobEvents(get_redis(s), s)

        t0 = time.time()
        bad = enqueue(TaskName.QUERY, {"question": f"What is Redis? {poison}"}, settings=s)
        rec = wait_terminal(s, bad, 120, fleet)
        parked_after, runs = rec.updated_at - t0, rec.attempts
        assert rec.status == JobStatus.FAILED and rec.error is not None, rec
        assert rec.error.code == "worker_lost" and "parked" in rec.error.message, rec
        assert runs == s.max_redeliveries + 1  # each run killed its node
        retrieval.wait_started(node, times=s.max_redeliveries + 2)  # restarted after each death
        assert [e.type for e in events.read(bad)][-1:] == ["error"]

        t1 = time.monotonic()
        stuck = enqueue(TaskName.QUERY, {"question": f"What is Redis? {hang}"}, settings=s)
        rec = wait_terminal(s, stuck, 60, fleet)
        stopped_after = time.monotonic() - t1
        assert rec.status == JobStatus.FAILED and rec.error is not None, rec
        assert rec.error.code == "timeout" and "hard time limit" in rec.error.message, rec
        assert 8 <= stopped_after < 20
        retrieval.wait_started(node, times=s.max_redeliveries + 3)  # the stuck node was replaced
        assert "exiting: this solo node's only thread is stuck" in retrieval.output()

        ok = enqueue(TaskName.QUERY, {"question": "What is Redis used as?"}, settings=s)
        done = wait_terminal(s, ok, 60, fleet)
        assert done.status == JobStatus.DONE, (done, retrieval.output()[-3000:])
        assert get_redis(s).get(s.key("deliveries", stuck)) == "2"  # the stuck one came back once...
        assert jobs_for(s).status(stuck) == JobStatus.FAILED  # ...found its job over, and did nothing
        print(
            f"\n[chaos] supervised solo retrieval: poison parked {parked_after:.1f} s after enqueue "
            f"({runs} runs), hung query failed {stopped_after:.1f} s after enqueue (hard limit 8 s)"
        )
    finally:
        retrieval.stop()
