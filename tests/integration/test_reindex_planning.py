"""Blue/green reindex (ragfleet/reindex.py, ragfleet/index_state.py) without workers: a real Redis, a
real LanceDB store in a temporary directory, and a stand-in encoder that counts what it encodes.

What is checked is what the reindex decides: which collection it builds from, that unchanged chunks
are copied by content hash (nothing re-embedded), that the pointer moves atomically with a version
bump (no cached answer of the old index survives), that one reindex runs at a time, which
generations it keeps for rollback, and that rollback moves the pointer back. The worker path (two
triggers, queries during the switch) is tests/integration/test_reindex.py.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lancedb
import pytest
from redis.lock import Lock

from ragfleet.chunking import chunk_text
from ragfleet.indexing import index_documents
from ragfleet.reindex import LOCK_TTL_S, ReindexBusyError, _join, run_reindex
from ragfleet.resources import Resources
from ragfleet.settings import Settings
from tests.helpers import HashingEmbedder, isolated

pytestmark = pytest.mark.redis

TOPICS = ["queues", "caches", "vectors", "locks", "brokers", "indexes"]


def corpus(n: int) -> list[dict[str, Any]]:
    return [
        {
            "id": f"doc-{i}",
            "title": f"Note {i}",
            "text": f"Note {i} explains {TOPICS[i % 6]} in a production fleet. "
            f"It covers retries, timeouts and backpressure for {TOPICS[(i + 3) % 6]}.",
            "metadata": {"n": i},
        }
        for i in range(n)
    ]


@pytest.fixture
def res(base_settings: Settings, tmp_path: Path) -> Resources:
    r = Resources(isolated(base_settings, "reindex", data_dir=tmp_path))
    r.__dict__["embedder"] = HashingEmbedder()
    index_documents(r, corpus(12), tenant="a")
    index_documents(r, corpus(5), tenant="b")
    return r


def embedded(res: Resources) -> int:
    calls: int = res.embedder.calls  # type: ignore[attr-defined]
    return calls


def collections(res: Resources) -> set[str]:
    return set(lancedb.connect(str(res.settings.data_dir / "lancedb")).table_names())


def test_a_reindex_copies_every_vector_and_switches_to_the_new_collection(res: Resources) -> None:
    before = res.index_state.read()
    assert before.active == res.settings.collection and before.previous is None
    chunks = res.store(before.active).count()
    encoded = embedded(res)

    report = run_reindex(res)

    assert report.status == "switched"
    assert report.old_collection == before.active
    assert report.new_collection.startswith(f"{res.settings.collection}_v")
    assert report.documents == 17
    assert report.chunks_before == report.chunks_after == chunks
    assert (report.chunks_embedded, report.chunks_copied) == (0, chunks)
    assert embedded(res) == encoded, "unchanged corpus and model: the encoder is not called"
    after = res.index_state.read()
    assert (after.active, after.previous) == (report.new_collection, before.active)
    assert after.version == report.version == before.version + 1, "cache keys of the old index die"
    new = res.store(report.new_collection)
    assert (new.count("a"), new.count("b")) == (12, 5)
    hits = new.search("b", vector=None, text="Note 3 explains locks", mode="fts", top_k=3)
    assert hits and hits[0].doc_id == "doc-3"


def test_a_reindex_while_another_holds_the_lock_is_refused_and_moves_nothing(res: Resources) -> None:
    before = res.index_state.read()
    other = Lock(res.redis, res.settings.key("lock", "reindex"), timeout=LOCK_TTL_S)
    assert other.acquire(blocking=False)
    try:
        with pytest.raises(ReindexBusyError):
            run_reindex(res)
    finally:
        other.release()
    assert res.index_state.read() == before
    assert collections(res) == {res.settings.collection}, "nothing was built"


def test_rollback_moves_the_pointer_back_with_a_new_version(res: Resources) -> None:
    original = res.index_state.read()
    report = run_reindex(res)
    back = res.index_state.rollback()
    assert (back.active, back.previous) == (original.active, report.new_collection)
    assert back.version == report.version + 1, "answers cached under the new index are not served"
    assert res.index_state.read() == back
    forward = res.index_state.rollback()  # a rollback of the rollback is the switch again
    assert (forward.active, forward.previous) == (report.new_collection, original.active)


def test_rollback_without_a_previous_collection_is_refused(res: Resources) -> None:
    before = res.index_state.read()
    with pytest.raises(LookupError):
        res.index_state.rollback()
    assert res.index_state.read() == before


def test_reindexes_keep_only_the_live_collection_and_the_rollback_target(res: Resources) -> None:
    first = run_reindex(res)
    second = run_reindex(res)
    assert second.old_collection == first.new_collection, "each reindex builds from the live collection"
    assert second.dropped == []
    third = run_reindex(res)
    assert third.dropped == [first.new_collection]
    assert collections(res) == {res.settings.collection, second.new_collection, third.new_collection}
    assert third.chunks_embedded == 0 and third.chunks_after == first.chunks_before


def test_documents_are_rebuilt_from_overlapping_chunks_exactly() -> None:
    """The store is the source of truth of a reindex: joining a document's chunks must give back
    its text, or every chunk's content hash changes and the whole corpus is embedded again."""
    text = " ".join(f"Sentence {i} talks about {TOPICS[i % 6]} and why they matter." for i in range(120))
    pieces = chunk_text(text, size=40, overlap=10, title="Title")
    assert len(pieces) > 3
    chunks = [SimpleNamespace(text=c.text, title="Title", start=c.start, end=c.end) for c in pieces]
    assert _join(chunks) == text
