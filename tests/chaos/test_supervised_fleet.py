"""README command 1's fleet survives `kill -9` of any one of its processes (issue 22, part 1).

The fleet is the generated infra/supervisor/fleet.conf under a daemonized supervisord
(tests/supervised.py), on this test's own Redis prefix, fleet dir and ports. Under a steady query
load over HTTP, each kind of process is SIGKILLed in turn: the API launcher, a retrieval node,
generation, the indexing node's prefork parent, feedback, maintenance, beat. Each must be back
within 30 s (a worker: its warm marker set again by the new process; the API: /healthz; beat: the
RedBeat lock held by a new owner), a parent's children must die with it (no orphan keeps the port
or the queue), and the load sees no failed query: a query the dead process held is requeued and
answered (workers/inflight.py). The only errors allowed are refused connections while the API
itself restarts (a client retries those; nothing was submitted), and a query whose message the
killed node took off its queue but had not yet recorded (kombu's BRPOP-to-unacked window): that
one must end `failed` with `lost` at its deadline (ragfleet.deadlines), never hang; this fleet's
query expiry and deadline grace are short so that its deadline falls within the load's wait. Then
every pool answers a job, `ragfleet ps` counts each restart, and scripts/stop.sh stops everything,
leaving no process.

The restart times are printed (`-s`): the closing note of issue 22 quotes them.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from ragfleet.names import TaskName
from ragfleet.producer import client_app, enqueue
from ragfleet.settings import Settings
from tests.chaos.conftest import delete_prefix, isolated_settings
from tests.helpers import wait_job
from tests.supervised import SupervisedFleet, children, proc_alive
from workers.roles import WORKER_ROLES

pytestmark = [pytest.mark.chaos, pytest.mark.redis, pytest.mark.workers, pytest.mark.model]

BACK_WITHIN_S = 30.0  # the bound, asserted at the end
OBSERVE_S = 150.0  # how long a restart is waited for, so that a slow one is measured, not just failed
DOCS = [
    {"doc_id": "pools", "title": "Pools", "text": "Retrieval nodes embed the question and search the index."},
    {"doc_id": "kill", "title": "Killed workers", "text": "A task whose worker is killed is redelivered."},
    {"doc_id": "beat", "title": "Beat", "text": "Beat schedules the nightly reindex under a Redis lock."},
]


@dataclass
class Load:
    """One thread asking over HTTP, one query after another, each waited for to its end."""

    url: str
    done: int = 0
    failed: list[dict[str, Any]] = field(default_factory=list)
    refused: list[float] = field(default_factory=list)  # when a connection was refused (API down)
    last_done_job: str = ""
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as http:
            i = 0
            while not self.stop.is_set():
                i += 1
                try:
                    self._one(http, f"what happens when a worker is killed ({i})?")
                except httpx.TransportError:
                    self.refused.append(time.monotonic())
                    time.sleep(0.2)

    def _one(self, http: httpx.Client, question: str) -> None:
        resp = http.post("/v1/queries", params={"wait": 20}, json={"question": question, "use_cache": False})
        resp.raise_for_status()
        record = resp.json()
        deadline = time.monotonic() + 45  # a restart is back within 30 s and requeues what it held
        while record.get("status") not in ("done", "failed", "cancelled") and time.monotonic() < deadline:
            got = http.get(f"/v1/jobs/{record['job_id']}")
            got.raise_for_status()
            record = got.json()
            time.sleep(0.1)
        if record["status"] == "done":
            self.done += 1
            self.last_done_job = record["job_id"]
        else:
            self.failed.append(record)


@pytest.fixture
def fleet(base_settings: Settings, tmp_path: Path) -> Iterator[SupervisedFleet]:
    # a lost query's deadline (expiry + grace, 45 s) within the load's wait for it (20 s + 45 s), and
    # the expiry above the longest restart (30 s), so that no requeued query expires
    settings = isolated_settings(
        base_settings, tmp_path, rate_limit="100000/minute", query_expires_s=40, query_deadline_grace_s=5.0
    )
    f = SupervisedFleet(settings, tmp_path / "fleet")
    try:
        yield f.start()
    finally:
        f.kill_everything()
        f.redis.close()
        delete_prefix(settings.redis_url, settings.key_prefix)


def _where(fleet: SupervisedFleet, job_id: str) -> list[str]:
    """The broker keys whose content names `job_id` (a queue list, kombu's unacked hash, a node's
    in-flight set): where a query that never ended is stuck."""
    r = fleet.redis
    found = []
    for key in r.scan_iter(f"{fleet.settings.broker_key_prefix}*", count=1000):
        kind = r.type(key)
        if kind == "list":
            values = r.lrange(key, 0, -1)
        elif kind == "hash":
            values = list(r.hvals(key))
        elif kind == "set":
            values = list(r.smembers(key))
        else:
            continue
        if any(job_id in v for v in values):
            found.append(f"{kind} {key}")
    return found


def _waited_on(rec: dict[str, Any]) -> str:
    """The pool a job's message waited on when it was lost: generation once retrieval has run."""
    return "generation" if "retrieval" in (rec.get("stages") or {}) else "retrieval"


def _kill(fleet: SupervisedFleet, name: str) -> tuple[float, int, list[int]]:
    """SIGKILL process `name` (supervisord's name) alone, not its children: (when, pid, children)."""
    pid = fleet.pid(name)
    kids = children(pid)
    t0 = time.monotonic()
    os.kill(pid, signal.SIGKILL)  # the one process, not its group: what the OOM killer does
    return t0, pid, kids


@pytest.mark.timeout(600)  # a fleet start, seven restarts and a drained stop
def test_the_supervised_fleet_restarts_any_killed_process_under_load(fleet: SupervisedFleet) -> None:
    nodes = [f"retrieval{n}" for n in range(fleet.retrieval_nodes)]
    pools = [r.name for r in WORKER_ROLES if not r.supervised]  # generation, indexing, feedback, ...
    workers = [*nodes, *pools]
    fleet.wait(lambda: all(fleet.warm(fleet.node(w)) for w in workers), 240, "every node warm")
    fleet.wait(fleet.api_up, 60, "the API")
    fleet.wait(fleet.beat_lock, 60, "beat's lock")
    s = fleet.settings
    first = wait_job(s, enqueue(TaskName.INDEX_DOCUMENTS, {"documents": DOCS}, settings=s), 60)
    assert first["status"] == "done", first

    load = Load(fleet.api_url)
    thread = threading.Thread(target=load.run, daemon=True)
    thread.start()
    fleet.wait(lambda: load.done >= 3, 60, "the load answering")

    back: dict[str, float] = {}
    refused_during_api: list[float] = []

    # the API launcher: its uvicorn workers die with it, the restarted one binds the same port
    t0, pid, kids = _kill(fleet, "api")
    assert len(kids) >= 2, kids
    fleet.wait(lambda: not any(proc_alive(k) for k in kids if k != pid), 10, "the API's workers gone")
    fleet.wait(lambda: fleet.pid("api") not in (0, pid) and fleet.api_up(), OBSERVE_S, "the API back")
    back["api"] = time.monotonic() - t0
    done_before = load.done
    fleet.wait(lambda: load.done > done_before, OBSERVE_S, "a query answered after the API restart")
    refused_during_api = list(load.refused)
    assert "address already in use" not in fleet.log("api").lower()

    killed_at: dict[str, float] = {}
    # then every worker and beat, one at a time: each back before the next is killed, so each
    # restart is timed alone; the load keeps asking throughout
    for name in (nodes[0], *pools, "beat"):
        lock = fleet.beat_lock()
        if name != "beat":
            fleet.redis.delete(fleet.settings.key("warm", fleet.node(name)))
        t0, pid, kids = _kill(fleet, name)
        killed_at[name.rstrip("0123456789")] = time.time()  # wall clock, as the job record's
        if name == "indexing":  # the prefork parent's pool child dies with it
            assert kids, "the indexing node had no pool child"
            fleet.wait(lambda k=kids: not any(proc_alive(c) for c in k), 10, "indexing's child gone")

        def up(n: str = name, held: str | None = lock) -> bool:
            if n == "beat":  # the restarted beat holds the RedBeat lock: the dead one's expired
                return fleet.beat_lock() not in (None, held)
            return fleet.warm(fleet.node(n))

        fleet.wait(up, OBSERVE_S, f"{name} back")
        back[name.rstrip("0123456789")] = time.monotonic() - t0
    print(f"\nrestart times (SIGKILL -> back), s: {', '.join(f'{k} {v:.1f}' for k, v in back.items())}")
    done_before = load.done
    fleet.wait(lambda: load.done > done_before, OBSERVE_S, "a query answered after the restarts")

    # every pool answers: a document indexed, a rating recorded, a maintenance task run (a result)
    s = fleet.settings
    indexed = wait_job(
        s, enqueue(TaskName.INDEX_DOCUMENTS, {"documents": [{**DOCS[0], "doc_id": "again"}]}, settings=s), 60
    )
    assert indexed["status"] == "done", indexed
    rated = httpx.post(
        f"{fleet.api_url}/v1/feedback", json={"job_id": load.last_done_job, "rating": 5}, timeout=10
    )
    assert rated.status_code == 202, rated.text
    assert wait_job(s, rated.json()["job_id"], 60)["status"] == "done"
    # every node consumes its queues again (a broker round trip to each: the workers answer)
    replies = client_app(s).control.inspect(timeout=5).active_queues() or {}
    consuming = {node: sorted(q["name"] for q in queues) for node, queues in replies.items()}
    expected = {fleet.node(n): [n.rstrip("0123456789")] for n in workers}
    assert consuming == expected, consuming

    load.stop.set()
    thread.join(120)
    print(f"load: {load.done} queries answered, {len(load.failed)} failed, {len(load.refused)} refused")
    # A query whose message Redis handed to the killed node's BRPOP before kombu recorded it in the
    # unacked hash is in no broker key: nothing can restore it. The window includes the dying
    # process's exit: its socket stays open (and Redis keeps serving its BRPOP) while the kernel
    # frees its memory. Seen here in 7 of 10 runs before the deadline sweep (docs/reliability.md).
    # Such a query must end `failed` with `lost` at its deadline, not hang; it is allowed only if it
    # was created from 5 s before to 1 s after the kill of the pool it waited on (generation once
    # its retrieval stage ran) and is found nowhere in the broker. Any other failure, and any query
    # that did not end, fails the test.
    lost = [
        rec
        for rec in load.failed
        if rec["status"] == "failed"
        and (rec.get("error") or {}).get("code") == "lost"
        and -1 <= killed_at.get(_waited_on(rec), -1e9) - rec["created_at"] < 5
        and not _where(fleet, rec["job_id"])
    ]
    if lost:
        print(f"lost in kombu's BRPOP-to-unacked window, failed `lost`: {[r['job_id'] for r in lost]}")
    failed = [r for r in load.failed if r not in lost]
    assert failed == [], (killed_at, [(rec, _where(fleet, rec["job_id"])) for rec in failed[:3]])
    assert len(lost) <= 2  # at most the one message each killed query-path node held
    # refused connections only while the API itself was down
    assert load.refused == refused_during_api, "connections refused while the API was up"
    assert all(v < BACK_WITHIN_S for v in back.values()), back

    status = fleet.status()
    for name in ("api", nodes[0], *pools, "beat"):
        assert (status[name].state, status[name].restarts, status[name].unexpected_exits) == (
            "RUNNING",
            1,
            1,
        ), status[name]
    assert all(status[n].restarts == 0 for n in nodes[1:])

    stopped = fleet.stop()
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert "fleet stopped" in stopped.stdout
    assert fleet.session_pids() == []
