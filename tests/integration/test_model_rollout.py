"""An embedding model change reaches the index by the blue/green reindex only, and every process embeds
questions and chunks with the live collection's model from the switch on (ragfleet/index_model.py).

Real Redis (the index state and the query-vector cache), a real LanceDB store in a temporary directory,
the real indexing, retrieval and reindex code, and both real ONNX encoders: the fp32 model and its
per-channel int8 id (other vectors: cosine ~0.99 to fp32's). Two `Resources` stand for two worker
processes over the same index: one configured with fp32 (not restarted), one with int8pc (upgraded).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ragfleet import querying
from ragfleet.indexing import index_documents
from ragfleet.reindex import run_reindex
from ragfleet.resources import Resources
from ragfleet.schemas import QueryPayload
from ragfleet.settings import Settings
from ragfleet.tokens import BUNDLED_INT8_PC, BUNDLED_MODEL
from tests.helpers import index_status, isolated

pytestmark = [pytest.mark.redis, pytest.mark.model]

TOPICS = ["message queues", "answer caches", "vector search", "distributed locks", "rate limits", "tracing"]
QUESTION = "How do distributed locks expire?"


def corpus(n: int, start: int = 0) -> list[dict[str, Any]]:
    return [
        {
            "id": f"doc-{i}",
            "title": f"Note {i} on {TOPICS[i % 6]}",
            "text": f"Note {i} explains {TOPICS[i % 6]} in a production fleet: retries, timeouts and "
            f"backpressure, and how {TOPICS[(i + 2) % 6]} interact with them under load.",
        }
        for i in range(start, start + n)
    ]


def rows(res: Resources, collection: str) -> dict[str, tuple[str, np.ndarray[Any, Any], str]]:
    """chunk_id -> (embedding model, vector, text) as stored."""
    store = res.store(collection)
    store.refresh()
    return {
        c.chunk_id: (c.embedding_model, np.asarray(c.vector, dtype=np.float32), c.text)
        for batch in store.iter_chunks()
        for c in batch
    }


def retrieve(res: Resources) -> tuple[list[str], list[float]]:
    r = querying.retrieve(res, QueryPayload(question=QUESTION, use_cache=False, top_k=5))
    return [s.chunk_id for s in r.sources], [s.score for s in r.sources]


@pytest.fixture
def fleet(base_settings: Settings, tmp_path: Path) -> tuple[Resources, Resources]:
    """(a process configured with fp32, one configured with int8pc), same prefix, same data dir."""
    fp32 = isolated(base_settings, "model", data_dir=tmp_path, embedding_model=BUNDLED_MODEL)
    int8 = fp32.model_copy(update={"embedding_model": BUNDLED_INT8_PC})
    return Resources(fp32), Resources(int8)


def test_a_model_change_reaches_the_index_by_reindex_only(fleet: tuple[Resources, Resources]) -> None:
    old_proc, new_proc = fleet
    state = old_proc.index_state
    index_documents(old_proc, corpus(12), tenant="default")
    c0 = state.read().active
    assert state.model_of(c0) == BUNDLED_MODEL  # recorded with the empty index's first write
    before = retrieve(old_proc)
    fp32_enc, int8_enc = old_proc.embedder_for(BUNDLED_MODEL), new_proc.embedder_for(BUNDLED_INT8_PC)

    # the upgraded process searches the live index with the index's model, not its own
    assert retrieve(new_proc) == before
    assert new_proc.vector_cache_for(BUNDLED_MODEL).get(QUESTION) is not None
    assert new_proc.vector_cache_for(BUNDLED_INT8_PC).get(QUESTION) is None
    # ... and writes into it with that model: one index, one model's vectors
    index_documents(new_proc, corpus(1, start=40), tenant="default")
    live = rows(new_proc, c0)
    assert {m for m, _, _ in live.values()} == {BUNDLED_MODEL}
    added = [(v, t) for m, v, t in live.values() if t.startswith("Note 40")]
    assert len(added) == 1
    assert float(added[0][0] @ fp32_enc.encode_one(added[0][1])) > 0.9999

    status = index_status(new_proc.settings)  # what the operator sees: a model change waiting
    assert (status["model"], status["configured_model"]) == (BUNDLED_MODEL, BUNDLED_INT8_PC)
    assert status["reindex_pending"] is True

    # the reindex embeds every chunk with the configured model and records it with the switch
    report = run_reindex(new_proc)
    c1 = report.new_collection
    assert (report.model, report.previous_model) == (BUNDLED_INT8_PC, BUNDLED_MODEL)
    assert report.chunks_embedded == report.chunks_after == len(live) and report.chunks_copied == 0
    assert state.read().active == c1 and state.model_of(c1) == BUNDLED_INT8_PC
    rebuilt = rows(new_proc, c1)
    assert {m for m, _, _ in rebuilt.values()} == {BUNDLED_INT8_PC}
    # (dynamic int8 scales activations per forward pass: a chunk's vector moves a little with its batch)
    some = next(iter(rebuilt.values()))
    assert float(some[1] @ int8_enc.encode_one(some[2])) > 0.97

    # both processes, the fp32-configured one not restarted, now embed questions with int8pc
    after_new, after_old = retrieve(new_proc), retrieve(old_proc)
    assert after_old == after_new
    assert old_proc.vector_cache_for(BUNDLED_INT8_PC).get(QUESTION) is not None
    assert after_new[1] != before[1]  # other vectors, other scores: int8pc's, not fp32's
    q = int8_enc.encode_one(QUESTION)
    dense = sorted(rebuilt, key=lambda cid: -float(rebuilt[cid][1] @ q))
    assert after_new[0][0] in dense[:3]  # the int8pc query's nearest rows lead the hybrid ranking
    # writes into the new index carry its model, from either process
    index_documents(old_proc, corpus(1, start=41), tenant="default")
    assert {m for m, _, _ in rows(old_proc, c1).values()} == {BUNDLED_INT8_PC}

    # a rollback brings back the old index with its own model, for questions and writes alike
    state.rollback()
    assert state.read().active == c0
    assert retrieve(new_proc)[0] == retrieve(old_proc)[0] == before[0]
    index_documents(new_proc, corpus(1, start=42), tenant="default")
    assert {m for m, _, _ in rows(new_proc, c0).values()} == {BUNDLED_MODEL}


def test_an_index_written_before_models_were_recorded_keeps_the_model_of_its_rows(
    fleet: tuple[Resources, Resources], tmp_path: Path
) -> None:
    old_proc, _ = fleet
    index_documents(old_proc, corpus(4), tenant="default")
    active = old_proc.index_state.read().active
    old_proc.redis.delete(old_proc.settings.key("index", "model", active))  # as an older fleet left it
    upgraded = Resources(old_proc.settings.model_copy(update={"embedding_model": BUNDLED_INT8_PC}))
    assert upgraded.model_of(upgraded.index_state.read()) == BUNDLED_MODEL  # read from its rows
    assert upgraded.index_state.model_of(active) == BUNDLED_MODEL  # and recorded
    # an empty index takes the configured model
    empty = Resources(
        isolated(old_proc.settings, "empty", embedding_model=BUNDLED_INT8_PC, data_dir=tmp_path / "empty")
    )
    assert empty.model_of(empty.index_state.read()) == BUNDLED_INT8_PC
