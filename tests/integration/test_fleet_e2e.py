"""The spine, end to end: real worker processes per pool, real Redis, real model, real LanceDB."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from ragfleet.names import TaskName
from ragfleet.producer import enqueue
from ragfleet.settings import Settings
from tests.fleet import Fleet
from tests.helpers import ask, index, wait_for, wait_job

pytestmark = [pytest.mark.redis, pytest.mark.workers, pytest.mark.model]

DOCS = [
    {
        "id": "celery",
        "title": "Celery",
        "text": "Celery is a distributed task queue. Workers consume tasks from a "
        "broker such as Redis. Late acknowledgement makes a task redelivered if its worker dies.",
    },
    {
        "id": "lancedb",
        "title": "LanceDB",
        "text": "LanceDB is an embedded vector database. It stores vectors on "
        "local disk and supports full-text and hybrid search without a server.",
        "metadata": {"kind": "store"},
    },
    {
        "id": "redis",
        "title": "Redis",
        "text": "Redis is an in-memory data store. It is used as a cache, a message "
        "broker and a lock server.",
        "metadata": {"kind": "store"},
    },
]


def test_index_then_query_runs_each_stage_on_its_pool(fleet: Fleet, base_settings: Settings) -> None:
    rec = index(base_settings, DOCS)
    assert rec["status"] == "done", rec
    # other test modules index the same DOCS first; either way all three are in the index now
    assert rec["result"]["documents_indexed"] + rec["result"]["documents_unchanged"] == 3
    assert rec["stages"]["indexing"]["worker"] == fleet.workers["indexing"].node

    q = ask(base_settings, "Which database stores vectors on local disk?", use_cache=False)
    assert q["status"] == "done", q
    result = q["result"]
    assert result["sources"][0]["doc_id"] == "lancedb"
    assert "[1]" in result["answer"]
    assert any(quote["text"] in result["sources"][quote["source"] - 1]["text"] for quote in result["quotes"])
    # retrieval ran on the retrieval pool; with no LLM configured the extractive answer is written by
    # the same process at the end of its stage (no hop: tests/integration/test_inline_extractive.py
    # shows the hop, forced, on the generation pool), and the record still has both stages
    assert q["stages"]["retrieval"]["worker"] == fleet.workers["retrieval"].node
    assert q["stages"]["retrieval"]["queue"] == "retrieval"
    assert q["stages"]["generation"]["worker"] == fleet.workers["retrieval"].node
    assert q["stages"]["generation"]["queue"] == "retrieval"
    assert q["stages"]["retrieval"]["pid"] == q["stages"]["generation"]["pid"]
    assert q["stages"]["retrieval"]["ms"] > 0 and q["stages"]["generation"]["ms"] > 0


def test_reingest_embeds_nothing_and_keeps_chunk_count(fleet: Fleet, base_settings: Settings) -> None:
    from ragfleet.resources import Resources

    index(base_settings, DOCS)
    res = Resources(base_settings)
    version_before = res.index_state.version()
    chunks_before = res.store(res.index_state.read().active).count()
    again = index(base_settings, DOCS)
    assert again["result"]["chunks_embedded"] == 0
    assert again["result"]["documents_unchanged"] == 3
    assert again["result"]["chunks_skipped"] >= 3
    assert again["result"]["index_version"] == version_before, "an unchanged re-ingest must not bump"
    assert res.store(res.index_state.read().active).count() == chunks_before


def test_changed_document_replaces_and_delete_removes(fleet: Fleet, base_settings: Settings) -> None:
    index(base_settings, DOCS)
    changed = [{"id": "celery", "title": "Celery", "text": "Celery now uses RabbitMQ for routing keys only."}]
    rec = index(base_settings, changed)
    assert rec["result"]["documents_indexed"] == 1 and rec["result"]["chunks_embedded"] == 1
    q = ask(base_settings, "What does Celery use RabbitMQ for?", use_cache=False, top_k=3)
    celery_src = [s for s in q["result"]["sources"] if s["doc_id"] == "celery"]
    assert celery_src and all("RabbitMQ" in s["text"] for s in celery_src)

    job_id = enqueue(TaskName.DELETE_DOCUMENT, {"doc_id": "celery"}, settings=base_settings)
    assert wait_job(base_settings, job_id)["result"]["documents_deleted"] == 1
    q = ask(base_settings, "What does Celery use RabbitMQ for?", use_cache=False, top_k=5)
    assert all(s["doc_id"] != "celery" for s in q["result"]["sources"])

    job_id = enqueue(TaskName.DELETE_DOCUMENT, {"doc_id": "celery"}, settings=base_settings)
    missing = wait_job(base_settings, job_id)
    assert missing["status"] == "failed" and missing["error"]["code"] == "not_found"


def test_one_bad_document_does_not_sink_its_batch(fleet: Fleet, base_settings: Settings) -> None:
    docs = [
        {"id": "ok-1", "text": "A perfectly fine document about queues."},
        {"id": "blank", "text": "   \n  "},
        {"text": "no id here"},
        {"id": "ok-2", "text": "Another fine document.", "metadata": {"bad=key": 1}},
        {"id": "ok-3", "text": "Third fine document about caching."},
    ]
    rec = index(base_settings, docs)
    assert rec["status"] == "done"
    result = rec["result"]
    assert result["documents_indexed"] == 2
    bad = {(e["index"], e["doc_id"]) for e in result["errors"]}
    assert bad == {(1, "blank"), (2, None), (3, "ok-2")}
    assert all(e["code"] == "invalid_document" and e["message"] for e in result["errors"])


def test_invalid_query_payload_fails_with_error_code(fleet: Fleet, base_settings: Settings) -> None:
    job_id = enqueue(TaskName.QUERY, {"question": "", "top_k": 0}, settings=base_settings)
    rec = wait_job(base_settings, job_id)
    assert rec["status"] == "failed"
    assert rec["error"]["code"] == "invalid_payload"
    assert "question" in rec["error"]["message"]


def test_metadata_filter_and_tenant_scoping(fleet: Fleet, base_settings: Settings) -> None:
    index(base_settings, DOCS)
    index(base_settings, [{"id": "secret", "text": "Tenant B keeps vectors in a private vault."}], tenant="b")
    q = ask(base_settings, "Where are vectors kept?", filters={"kind": "store"}, use_cache=False)
    assert {s["doc_id"] for s in q["result"]["sources"]} <= {"lancedb", "redis"}
    q = ask(base_settings, "private vault", use_cache=False)
    assert all(s["doc_id"] != "secret" for s in q["result"]["sources"])
    qb = ask(base_settings, "private vault", tenant="b", use_cache=False)
    assert [s["doc_id"] for s in qb["result"]["sources"]] == ["secret"]


def test_second_identical_query_is_served_from_cache_until_index_changes(
    fleet: Fleet, base_settings: Settings, tmp_path: Path
) -> None:
    index(base_settings, DOCS)
    q1 = ask(base_settings, "What is Redis used as?")
    q2 = ask(base_settings, "what is   redis used as?")
    assert q2["result"]["cached"] in ("l1", "l2")
    assert q2["result"]["answer"] == q1["result"]["answer"]
    assert "generation" not in q2["stages"]
    index(
        base_settings,
        [{"id": "redis", "title": "Redis", "text": "Redis is also used as a rate limiter store."}],
    )
    q3 = ask(base_settings, "What is Redis used as?")
    assert q3["result"]["cached"] is None
    assert q3["result"]["index_version"] > q2["result"]["index_version"]


def test_a_compaction_keeps_the_answer_cache_and_readers_follow_it(
    fleet: Fleet, base_settings: Settings
) -> None:
    """An optimize rewrites the store's files, not its content: the store generation moves (workers
    reopen their table handle), the index version in every cache key does not."""
    from ragfleet.indexing import maybe_optimize
    from ragfleet.resources import Resources

    tag = uuid.uuid4().hex[:8]
    index(
        base_settings,
        [{"id": f"compaction-{tag}", "title": "Compaction", "text": f"Compaction {tag} folds fragments."}],
    )
    question = f"What does compaction {tag} fold?"
    first = ask(base_settings, question)
    assert first["status"] == "done" and first["result"]["cached"] is None
    res = Resources(base_settings)
    # the indexing worker may be optimizing right now (it does after every tenth write): wait it out
    lock = base_settings.key("lock", "optimize")
    wait_for(lambda: not res.redis.exists(lock), timeout=60, interval=0.1, what="optimize lock released")
    before = res.index_state.read()
    res.redis.set(base_settings.key("index", "optimized_version"), 0)  # due, whatever the worker did
    assert maybe_optimize(res, force=True)
    after = res.index_state.read()
    assert after.version == before.version and after.generation > before.generation
    again = ask(base_settings, question)
    assert (
        again["result"]["cached"] in ("l1", "l2") and again["result"]["answer"] == first["result"]["answer"]
    )
    fresh = ask(base_settings, f"Which fragments does compaction {tag} fold?", use_cache=False)
    assert fresh["status"] == "done" and fresh["result"]["sources"][0]["doc_id"] == f"compaction-{tag}"
