"""A rolling restart of every pool under load loses no job and runs none twice to a second result.

Graceful drain (workers/drain.py): SIGTERM to a node stops it taking messages; what it holds
finishes within `drain_grace_s`, or is handed back to its queue and finishes on another node. Here
one node of each pool runs under a steady load of queries and document updates; each is replaced
as a rollout does it (the new node started, the old one sent SIGTERM), one pool after the other. The
indexing node is stopped in the middle of a batch that needs far longer than the grace: it must be
handed back, not lost, not failed, and not counted as a worker death.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

import pytest

from ragfleet.events import JobEvents
from ragfleet.names import TaskName
from ragfleet.producer import enqueue
from ragfleet.redis_conn import get_redis
from ragfleet.schemas import JobStatus
from ragfleet.settings import Settings
from tests.chaos.conftest import (
    ChaosFleet,
    isolated_settings,
    jobs_for,
    live_store,
    seed_documents,
    wait_terminal,
    wait_until,
)
from tests.chaos.test_crash_safety import (
    CORPUS,
    batch_of_documents,
    deliveries,
    expected_chunks,
    generation_holding_a_query,
)
from tests.fleet import Worker

pytestmark = [pytest.mark.chaos, pytest.mark.redis, pytest.mark.workers, pytest.mark.model]

GRACE_S = 3.0
QUERY_DELAY_S = "0.2"  # each query holds its retrieval node a while: some are in flight at SIGTERM
# per chunk embedded: the batch's 206 chunks take 8 s more than the encoder needs, on any machine. The
# real encoder alone got fast enough (ONNX) to finish the batch within the grace now and then, and
# the node then exited without a hand-back
EMBED_DELAY_S = "0.04"
POOLS = ("retrieval", "generation", "indexing", "feedback", "maintenance")


class Load:
    """Queries (retrieval, then generation) every 0.4 s and a document update every 1.6 s."""

    def __init__(self, s: Settings) -> None:
        self.s = s
        self.queries: list[str] = []
        self.updates: list[tuple[str, dict[str, Any]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        i = 0
        while not self._stop.wait(0.4):
            question = f"Which database stores vectors on local disk? ({i})"  # distinct: no cache hit
            self.queries.append(enqueue(TaskName.QUERY, {"question": question}, settings=self.s))
            if i % 4 == 0:
                doc = {"id": f"upd-{i}", "title": f"Update {i}", "text": f"Update {i} is about redis locks."}
                job = enqueue(TaskName.INDEX_DOCUMENT_SINGLE, {"document": doc}, settings=self.s)
                self.updates.append((job, doc))
            i += 1


def _sigterm(w: Worker) -> float:
    assert w.proc is not None
    w.proc.terminate()
    return time.monotonic()


def _exited_after(w: Worker, since: float, timeout: float) -> float:
    assert w.proc is not None
    w.proc.wait(timeout)
    return time.monotonic() - since


def test_a_rolling_restart_of_every_pool_under_load_ends_every_job_done_once(
    base_settings: Settings, tmp_path: Any, chaos_fleet_factory: Any
) -> None:
    # the default visibility timeouts: nothing here may come back by kombu's visibility sweep
    s = isolated_settings(
        base_settings,
        tmp_path,
        drain_grace_s=GRACE_S,
        visibility_timeout_s=3_600,
        interactive_visibility_timeout_s=300,
    )
    seed_documents(s, CORPUS)
    fleet: ChaosFleet = chaos_fleet_factory(s)
    env = {"RAGFLEET_CHAOS_DELAY_S": QUERY_DELAY_S, "RAGFLEET_CHAOS_EMBED_DELAY_S": EMBED_DELAY_S}
    old = dict(zip(POOLS, fleet.start(*POOLS, extra_env=env), strict=True))
    jobs = jobs_for(s)
    docs = batch_of_documents(200)  # with EMBED_DELAY_S, far longer than the grace
    exits: dict[str, float] = {}

    with Load(s) as load:
        batch = enqueue(TaskName.INDEX_DOCUMENTS, {"documents": docs, "tenant": "default"}, settings=s)

        def running() -> bool:  # the batch started on the old node: far from done at SIGTERM
            rec = jobs.get(batch)
            return rec is not None and rec.status == JobStatus.INDEXING

        assert wait_until(running, 120, 0.01), f"batch not started: {jobs.get(batch)}\n{fleet.logs()}"
        # indexing: old node drained mid-batch while its replacement warms up
        new = {"indexing": fleet.spawn("indexing", env)}
        exits["indexing"] = _exited_after(old["indexing"], _sigterm(old["indexing"]), GRACE_S + 20)
        new |= {p: fleet.spawn(p, env) for p in POOLS if p != "indexing"}
        for w in new.values():
            w.wait_ready()
        for pool in POOLS[:2] + POOLS[3:]:  # the others one by one, each once its replacement serves
            signalled_at = _sigterm(old[pool])
            stopped_at = time.time()
            exits[pool] = _exited_after(old[pool], signalled_at, GRACE_S + 20)
            if pool == "retrieval":
                # took nothing new after SIGTERM but what its blocking pop already in flight brings:
                # Celery's handler only sets a flag, which its event loop reads once per turn, and the
                # solo node's poll resumes after the signal, so the one message that pop returns (kombu
                # reads one per turn) still runs, within the grace, like anything the node held
                late = [
                    j
                    for j in load.queries
                    if (rec := jobs.get(j)) is not None
                    and "retrieval" in rec.stages
                    and rec.stages["retrieval"].worker == old[pool].node
                    and rec.stages["retrieval"].started_at > stopped_at + 0.3
                ]
                assert len(late) <= 1, late
            time.sleep(1.0)  # load keeps flowing between two pools

    everything = [*load.queries, *(j for j, _ in load.updates), batch]
    ends = {j: wait_terminal(s, j, 120, fleet) for j in everything}
    bad = {j: (r.status, r.error) for j, r in ends.items() if r.status != JobStatus.DONE}
    print(
        f"\n[chaos] rolling restart: {len(load.queries)} queries, {len(load.updates)} updates, 1 batch of "
        f"{len(docs)} documents; old nodes exited after SIGTERM in "
        + ", ".join(f"{p} {t:.1f} s" for p, t in exits.items())
        + f" (grace {GRACE_S:g} s); batch done {ends[batch].result}"
    )
    assert not bad, (bad, fleet.logs())

    # the batch was handed back by the draining node (not lost, not a death) and finished elsewhere
    assert GRACE_S <= exits["indexing"] < GRACE_S + 10, exits
    drained = [ln for ln in old["indexing"].output().splitlines() if "still held after" in ln]
    assert len(drained) == 1 and batch in drained[0], old["indexing"].output()[-3000:]
    assert ends[batch].stages["indexing"].worker == new["indexing"].node
    assert deliveries(s, batch) == 0  # a hand-back does not count against the redelivery cap
    # the other old nodes finished what they held within the grace and exited by themselves
    for pool in POOLS:
        if pool != "indexing":
            assert exits[pool] < GRACE_S, exits
            assert "drained: everything it held finished" in old[pool].output(), old[pool].output()[-2000:]
    # queries were answered both before and after the restart, by old and new nodes
    workers = Counter(ends[j].stages["retrieval"].worker for j in load.queries)
    assert old["retrieval"].node in workers and new["retrieval"].node in workers, workers

    # no job ran twice to a second result: one terminal event each, and the index holds each chunk once
    events = JobEvents(get_redis(s), s)
    for j in load.queries:  # (index jobs write no events; their records are terminal once, the same way)
        terminal = [e for e in events.read(j, count=1_000) if e.type in ("done", "error")]
        assert len(terminal) == 1, (j, terminal)
    expected = expected_chunks(s, docs, "default")
    store = live_store(s)
    try:
        ids = [r.chunk_id for chunk_batch in store.iter_chunks() for r in chunk_batch]
        assert not [c for c, n in Counter(ids).items() if n > 1]
        assert store.document_hashes("default", [d["id"] for d in docs]) == expected
        assert store.document_hashes("default", [d["id"] for _, d in load.updates]).keys() == {
            d["id"] for _, d in load.updates
        }
    finally:
        store.close()


def test_a_threads_node_stuck_past_the_grace_hands_its_query_back_to_another_node(
    base_settings: Settings, tmp_path: Any, chaos_fleet_factory: Any
) -> None:
    """A threads pool cannot stop a running call: its node hands the message back and exits."""
    with generation_holding_a_query(
        base_settings,
        tmp_path,
        chaos_fleet_factory,
        drain_grace_s=GRACE_S,
        interactive_visibility_timeout_s=300,
    ) as held:
        s, fleet, gen, job_id = held.settings, held.fleet, held.gen, held.job_id
        other = fleet.spawn("generation").wait_ready()
        held.llm.mode = "ok"  # the next call answers; the held one still hangs
        exited = _exited_after(gen, _sigterm(gen), GRACE_S + 10)
        rec = wait_terminal(s, job_id, 60, fleet)
        print(
            f"\n[chaos] threads node stuck past the grace: exited {exited:.1f} s after SIGTERM, "
            f"job {rec.status.value}"
        )
        assert rec.status == JobStatus.DONE, (rec, fleet.logs())
        assert GRACE_S <= exited < GRACE_S + 5
        assert rec.stages["generation"].worker == other.node
        assert rec.result is not None and rec.result["answer"] == held.llm.answer
        assert held.llm.calls == 2  # the stuck call and the answered one: no third
        assert deliveries(s, f"{job_id}:gen") == 0  # handed back, not counted as a worker death
        drained = [ln for ln in gen.output().splitlines() if "still held after" in ln]
        assert len(drained) == 1 and f"{job_id}:gen" in drained[0], gen.output()[-2000:]
