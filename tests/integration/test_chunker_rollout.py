"""A chunker change is rolled out by the blue/green reindex, never by mixing chunk shapes in one index
(ragfleet/chunkers.py). Real Redis (the index state), a real LanceDB store in a temporary directory,
the real indexing and reindex code, the bundled model's real tokenizer; a stand-in encoder
(tests/helpers.HashingEmbedder) so no torch is loaded.

The story: an index built by the word-only chunker before chunkers were recorded (`words-1`: its
windows run past the model's 256 tokens), a fleet upgraded to the token-counting chunker, writes
into the old index, a reindex, writes into the new one, a rollback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ragfleet.chunkers import DOC_CHARS, ChunkerSpec, UnknownChunkerError, build_chunker
from ragfleet.indexing import index_documents
from ragfleet.reindex import run_reindex
from ragfleet.resources import Resources
from ragfleet.settings import Settings
from ragfleet.tokens import token_counter
from tests.helpers import HashingEmbedder, index_status, isolated

pytestmark = pytest.mark.redis

PROSE = (
    "Glycosylation of immunoglobulin G modulates Fc-gamma-RIIIa-dependent cytotoxicity in 17β-estradiol "
    "treated HEK293T cells, whereas phosphatidylinositol-3,4,5-trisphosphate signalling was unaffected. "
)


def doc(i: int, repeat: int = 30) -> dict[str, Any]:
    text = f"Study {i}. " + PROSE * repeat
    return {"id": f"paper-{i}", "title": f"Paper {i} on receptor signalling", "text": text}


def token_counts(res: Resources, collection: str, doc_id: str | None = None) -> list[int]:
    store = res.store(collection)
    store.refresh()
    texts = [c.text for batch in store.iter_chunks() for c in batch if doc_id in (None, c.doc_id)]
    assert texts
    return token_counter(res.settings.embedding_model).counts(texts)


@pytest.fixture
def res(base_settings: Settings, tmp_path: Path) -> Resources:
    r = Resources(isolated(base_settings, "rollout", data_dir=tmp_path))
    r.__dict__["embedder"] = HashingEmbedder()
    return r


def test_a_chunker_change_reaches_the_index_by_reindex_only(res: Resources) -> None:
    s = res.settings
    state = res.index_state
    old = state.read().active
    legacy = ChunkerSpec.legacy(s)
    # an index written before chunkers were recorded: word windows, nothing recorded
    built = index_documents(
        res,
        [doc(i) for i in range(4)],
        tenant="t",
        store=res.store(old),
        chunker=build_chunker(legacy, s.embedding_model),
    )
    assert built.documents_indexed == 4 and state.chunker_of(old) is None
    assert max(token_counts(res, old)) > 254  # what the model cut silently

    # the upgraded fleet writes into it: the index's shapes are kept (and recorded), not mixed
    first = index_documents(res, [doc(10)], tenant="t")
    assert first.documents_indexed == 1
    assert state.chunker_of(old) == legacy != ChunkerSpec.configured(s)
    assert max(token_counts(res, old, "paper-10")) > 254
    again = index_documents(res, [doc(i) for i in range(4)], tenant="t")
    assert again.documents_unchanged == 4 and again.chunks_written == 0  # re-ingest stays idempotent

    status = index_status(s)  # what the operator sees: a chunker change waiting for its reindex
    assert status["chunker"].startswith("words-1") and status["configured_chunker"].startswith("tokens-3")
    assert status["reindex_pending"] is True

    # the reindex re-chunks everything with the configured chunker and records it with the switch
    report = run_reindex(res)
    new = report.new_collection
    assert state.read().active == new
    assert state.chunker_of(new) == ChunkerSpec.configured(s)
    assert report.chunker.startswith("tokens-3") and report.previous_chunker.startswith("words-1")
    assert max(token_counts(res, new)) <= 254
    # tokens-3 records each chunk's document length (the answerer's document-relative position)
    lengths = {d: len(doc(int(d.split("-")[1]))["text"].rstrip()) for d in doc_chars(res, old)}
    assert set(doc_chars(res, old).values()) == {None}  # the old index's rows are as they were
    assert doc_chars(res, new) == lengths
    assert report.chunks_after > report.chunks_before  # the long windows became several chunks
    assert report.chunks_embedded > 0  # new shapes, new vectors

    later = index_documents(res, [doc(11)], tenant="t")
    assert later.documents_indexed == 1 and max(token_counts(res, new, "paper-11")) <= 254
    assert index_documents(res, [doc(1)], tenant="t").documents_unchanged == 1

    # a rollback brings back the old index and, with it, its chunker for writes
    state.rollback()
    assert state.read().active == old
    index_documents(res, [doc(12)], tenant="t")
    assert max(token_counts(res, old, "paper-12")) > 254
    assert doc_chars(res, old)["paper-12"] is None  # written with the old index's chunker: its rows


def doc_chars(res: Resources, collection: str) -> dict[str, Any]:
    store = res.store(collection)
    store.refresh()
    return {c.doc_id: c.metadata.get(DOC_CHARS) for b in store.iter_chunks() for c in b}


def test_an_empty_index_records_the_configured_chunker_on_its_first_write(res: Resources) -> None:
    active = res.index_state.read().active
    assert res.index_state.chunker_of(active) is None
    index_documents(res, [doc(1)], tenant="t")
    assert res.index_state.chunker_of(active) == ChunkerSpec.configured(res.settings)
    assert max(token_counts(res, active)) <= 254


def shapes(res: Resources, collection: str) -> list[tuple[str, int, str, int, int]]:
    store = res.store(collection)
    store.refresh()
    return sorted((c.doc_id, c.chunk_index, c.text, c.start, c.end) for b in store.iter_chunks() for c in b)


def test_a_reindex_with_the_chunker_unchanged_rebuilds_every_chunk_exactly(res: Resources) -> None:
    """Documents are rebuilt from their chunks: a title cut to fit the budget must not leak into them."""
    long_title = {**doc(1), "title": "A title longer than half the token budget " * 20}
    index_documents(res, [doc(0), long_title], tenant="t")
    before = shapes(res, res.index_state.read().active)
    report = run_reindex(res)
    assert report.chunks_embedded == 0 and report.chunker == report.previous_chunker
    assert shapes(res, report.new_collection) == before


def test_a_writer_that_lacks_the_index_chunker_is_refused(res: Resources) -> None:
    active = res.index_state.read().active
    res.index_state.record_chunker(active, ChunkerSpec("tokens-9", 200, 40, 254))
    with pytest.raises(UnknownChunkerError, match="upgrade this worker"):
        index_documents(res, [doc(1)], tenant="t")
    assert res.store(active).count() == 0
