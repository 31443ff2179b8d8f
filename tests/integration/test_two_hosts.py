"""Two machines, simulated (issue 18): two sets of workers that share nothing but Redis, PostgreSQL
and the blob directory, as docs/scaling.md tells an operator to run the pools on several hosts.

Host A runs the indexing and generation pools and the HTTP API; host B runs the retrieval pool and,
later, an indexing pool of its own. Each host has its own data directory, HOME and metrics
directory, and node names that say which host they are on (`<pool>@host-a`); the store is the real
PostgreSQL (`pg_url`), the broker and job records the real Redis; the blob directory is the one
path both hosts mount (`RAGFLEET_BLOB_DIR`, docs/scaling.md). Every stage of a job records the node
that ran it, so the test reads from the job records which host did what instead of trusting the
routing.
"""

from __future__ import annotations

import signal
import uuid
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from ragfleet.names import Queue
from ragfleet.producer import client_app
from ragfleet.settings import Settings
from tests import parsing_corpus as corpus
from tests.fleet import POOLS, Worker
from tests.helpers import api_client, ask, index, isolated, wait_job

pytestmark = [pytest.mark.redis, pytest.mark.workers, pytest.mark.model, pytest.mark.postgres]

TENANT = f"hosts-{uuid.uuid4().hex[:6]}"
QUESTION = "Which port does the ledger service listen on?"


def host_settings(shared: Settings, root: Path, host: str) -> tuple[Settings, dict[str, str]]:
    """One host's view: the shared Redis prefix, store and blob dir; its own disk and HOME."""
    home = root / host / "home"
    for d in ("data", "metrics", "home"):
        (root / host / d).mkdir(parents=True)
    s = shared.model_copy(update={"data_dir": root / host / "data", "metrics_dir": root / host / "metrics"})
    return s, {"HOME": str(home)}


def worker(pool: str, host: str, settings: Settings, env: dict[str, str], logs: Path) -> Worker:
    queues, kind, conc = POOLS[pool]
    return Worker(pool, queues, kind, conc, settings, logs, env, node=f"{pool}@{host}").start()


def steer(control: Any, *, cancel: str, add: str | None = None) -> None:
    """Move the indexing queue between hosts with Celery's remote control, and check the replies."""
    queue = Queue.INDEXING.value
    if add is not None:
        replies = control.add_consumer(queue, destination=[add], reply=True, timeout=10)
        assert [list(r) for r in replies] == [[add]] and "ok" in replies[0][add], replies
    replies = control.cancel_consumer(queue, destination=[cancel], reply=True, timeout=10)
    assert [list(r) for r in replies] == [[cancel]] and "ok" in replies[0][cancel], replies


def node_of(record: dict[str, Any], stage: str) -> str:
    return str(record["stages"][stage]["worker"])


def ledger(port: int) -> dict[str, str]:
    text = f"The ledger service listens on port {port}; the billing team owns it and pages on errors."
    return {"id": "runbooks/ledger", "title": "Ledger service", "text": text}


def test_pools_on_two_hosts_share_one_index_and_never_answer_stale(
    base_settings: Settings, pg_url: str, redis_client: Any, tmp_path_factory: pytest.TempPathFactory
) -> None:
    root = tmp_path_factory.mktemp("two-hosts")
    blobs = root / "shared-blobs"  # the one path both hosts mount
    shared = isolated(
        base_settings,
        "hosts",
        store="postgres",
        pg_url=SecretStr(pg_url),
        collection=f"hosts_{uuid.uuid4().hex[:8]}",
        blob_dir=blobs,
        cache_enabled=True,
        api_keys=f"k-{TENANT}:{TENANT}",
    )
    a, a_env = host_settings(shared, root, "host-a")
    b, b_env = host_settings(shared, root, "host-b")
    logs = root / "logs"
    logs.mkdir()
    workers = [
        worker("indexing", "host-a", a, a_env, logs),
        worker("generation", "host-a", a, a_env, logs),
        worker("retrieval", "host-b", b, b_env, logs),
        worker("indexing", "host-b", b, b_env, logs),
    ]
    control = client_app(shared).control
    try:
        for w in workers:
            w.wait_ready(120)
        # B's indexing pool stops taking work (an operator's `celery control cancel_consumer`): for
        # now only A's indexes, with both started at once, so the test waits for one warm-up only
        steer(control, cancel="indexing@host-b")

        # indexed on A, found on B; then every update on A is answered on B, cache on, never stale
        for port in (7101, 7102, 7103):
            rec = index(a, [ledger(port)], tenant=TENANT)
            assert rec["status"] == "done" and rec["result"]["documents_indexed"] == 1, rec
            assert node_of(rec, "indexing") == "indexing@host-a"
            for repeat in (False, True):  # the repeat is what a stale cache entry would answer
                q = ask(b, QUESTION, tenant=TENANT, use_cache=True)
                assert q["status"] == "done", q
                assert (q["result"].get("cached") is not None) == repeat, q["result"]
                assert f"port {port}" in q["result"]["answer"], (port, q["result"])
                assert q["result"]["sources"][0]["doc_id"] == "runbooks/ledger"
                assert node_of(q, "retrieval") == "retrieval@host-b", q["stages"]

        # a file uploaded through A's API is parsed by B's indexing pool, through the shared blob dir
        steer(control, cancel="indexing@host-a", add="indexing@host-b")
        deck = corpus.pptx(root / "deck.pptx")
        with api_client(a, headers={"X-API-Key": f"k-{TENANT}"}) as api:
            resp = api.post(
                "/v1/documents/files",
                files=[("files", ("quarterly.pptx", deck.read_bytes()))],
                data={"id": "decks/q3"},
            )
            assert resp.status_code == 202, resp.text
        assert any(p.is_file() for p in blobs.rglob("*")), "the upload is not in the shared blob dir"
        rec = wait_job(a, resp.json()["job_id"], timeout=90)
        assert rec["status"] == "done" and rec["result"]["documents_indexed"] == 1, rec
        assert node_of(rec, "indexing") == "indexing@host-b"
        q = ask(b, "Which office should be mentioned with the results?", tenant=TENANT, use_cache=False)
        top = q["result"]["sources"][0]
        assert (top["doc_id"], top["metadata"]["source"]) == ("decks/q3", "quarterly.pptx"), q["result"]
        assert "Lisbon" in top["text"]
    finally:
        for w in workers:  # SIGTERM all at once: their warm shutdowns overlap
            if w.proc and w.proc.poll() is None:
                w.proc.send_signal(signal.SIGTERM)
        for w in workers:
            w.stop()
        from ragfleet.resources import Resources

        Resources(shared).store(shared.collection).drop()
