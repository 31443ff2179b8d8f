"""The search snapshot (ragfleet/snapshot/) against a real LanceDB collection and a real Redis:
it answers as the store does, only for the index pointer it was built at, per tenant, and a build
that dies half way leaves nothing that a query would use.

Vectors come from tests.helpers.HashingEmbedder (no torch); the store, the files, the BM25 and the
retrieval path (`querying.retrieve` on an in-process `Resources`) are the real ones.
"""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest

from ragfleet import querying
from ragfleet.resources import Resources
from ragfleet.schemas import QueryPayload
from ragfleet.settings import Settings
from ragfleet.snapshot import Label, Snapshot, write_snapshot
from ragfleet.stores.base import ChunkRecord, chunk_id_for
from ragfleet.stores.lancedb_store import LanceDBStore
from tests.helpers import HashingEmbedder, isolated

WORDS = [
    "cell",
    "protein",
    "gene",
    "expression",
    "tumor",
    "immune",
    "response",
    "mouse",
    "patients",
    "therapy",
    "vitamin",
    "blood",
    "pressure",
    "risk",
    "cancer",
    "receptor",
    "signaling",
    "pathway",
    "neurons",
    "brain",
    "infection",
    "virus",
    "vaccine",
    "dose",
    "trial",
    "randomized",
    "cohort",
    "mortality",
    "insulin",
    "glucose",
    "obesity",
    "diet",
    "exercise",
    "bone",
    "fracture",
    "running",
    "ran",
    "runs",
    "studies",
    "studied",
    "study",
    "increased",
    "increasing",
    "decrease",
    "levels",
    "higher",
    "lower",
    "effects",
]
QUERIES = [
    "tumor immune response in mouse",
    "vitamin D and bone fracture risk",
    "insulin glucose levels with obesity",
    "randomized trial of vaccine dose",
    "running studies increased the effects",
    "brain neurons signaling",
]


def _docs(tenant: str, n: int, seed: int) -> dict[str, list[ChunkRecord]]:
    rng = random.Random(seed)
    emb = HashingEmbedder()
    out: dict[str, list[ChunkRecord]] = {}
    for d in range(n):
        doc_id = f"{tenant}-doc{d}"
        rows = []
        for i in range(rng.randint(1, 3)):
            text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 40))) + "."
            rows.append(_record(tenant, doc_id, i, text, emb, title=None if d % 3 else f"Title {d}"))
        out[doc_id] = rows
    return out


def _record(
    tenant: str, doc_id: str, i: int, text: str, emb: HashingEmbedder, title: str | None = None
) -> ChunkRecord:
    return ChunkRecord(
        chunk_id=chunk_id_for(tenant, doc_id, i),
        doc_id=doc_id,
        tenant=tenant,
        chunk_index=i,
        text=text,
        title=title,
        start=i * 100,
        end=i * 100 + len(text),
        content_hash=f"h-{doc_id}-{i}",
        embedding_model="hashing",
        vector=emb.encode_one(text).tolist(),
        metadata={"source": doc_id, "n": i} if i % 2 else {},
    )


@pytest.fixture
def store(tmp_path: Path) -> LanceDBStore:
    st = LanceDBStore(tmp_path / "lancedb", "chunks", dim=384)
    st.ensure()
    st.replace_documents("a", _docs("a", 60, 1))
    st.replace_documents("b", _docs("b", 30, 2))
    st.optimize()  # every row in the FTS index (rows added after it are searched flat)
    return st


def test_snapshot_search_equals_store_search(store: LanceDBStore, tmp_path: Path) -> None:
    path = write_snapshot(tmp_path / "snap", Label("chunks", 1, 0, "e1"), store.iter_chunks(), 384)
    snap = Snapshot(path)
    emb = HashingEmbedder()
    for q in QUERIES:
        vec = emb.encode_one(q).tolist()
        for mode in ("vector", "fts", "hybrid"):
            want = store.search("a", vector=vec, text=q, mode=mode, top_k=10)
            got = snap.search("a", vector=vec, text=q, mode=mode, top_k=10)
            scale = 2.2 if mode == "fts" else 1.0  # LanceDB's BM25 carries a constant (k1 + 1)
            _same_ranking([(h.chunk_id, h.score) for h in got], [(h.chunk_id, h.score / scale) for h in want])
            by_id = {h.chunk_id: h for h in want}
            for g in got:
                w = by_id.get(g.chunk_id)
                if w is not None:
                    assert (g.doc_id, g.chunk_index, g.text, g.title, g.start, g.end, g.metadata) == (
                        w.doc_id,
                        w.chunk_index,
                        w.text,
                        w.title,
                        w.start,
                        w.end,
                        w.metadata,
                    )


def _same_ranking(got: list[tuple[str, float]], want: list[tuple[str, float]]) -> None:
    """Same scores rank by rank, and the same ids wherever the score is not tied (the order among
    equal scores is either engine's choice, also at the top-k cut)."""
    assert len(got) == len(want)
    for (_, gs), (_, ws) in zip(got, want, strict=True):
        assert gs == pytest.approx(ws, rel=1e-3, abs=1e-4)
    for i, (cid, score) in enumerate(want):
        ties = [c for c, s in want if abs(s - score) <= 1e-4 * max(1.0, abs(score))]
        if len(ties) == 1 and (i + 1 < len(want) or len(want) < 10):
            assert got[i][0] == cid, (i, got, want)


def test_tenant_isolation_on_the_snapshot(store: LanceDBStore, tmp_path: Path) -> None:
    snap = Snapshot(write_snapshot(tmp_path / "snap", Label("chunks", 1, 0, "e1"), store.iter_chunks(), 384))
    emb = HashingEmbedder()
    for q in QUERIES:
        vec = emb.encode_one(q).tolist()
        for tenant in ("a", "b"):
            hits = snap.search(tenant, vector=vec, text=q, mode="hybrid", top_k=100)
            assert hits and all(h.chunk_id.startswith(f"{tenant}/") for h in hits)
        assert snap.search("c", vector=vec, text=q, mode="hybrid", top_k=10) == []


def _resources(base_settings: Settings, tmp_path: Path) -> Resources:
    settings = isolated(base_settings, "snap", data_dir=tmp_path / "data", embedding_model="hashing")
    res = Resources(settings)
    res.__dict__["embedder"] = HashingEmbedder()
    return res


def test_an_index_update_is_seen_although_a_snapshot_exists(base_settings: Settings, tmp_path: Path) -> None:
    res = _resources(base_settings, tmp_path)
    store, _ = res.live_store()
    store.replace_documents("default", _docs("default", 20, 3))
    res.index_state.bump()
    assert res.snapshots is not None
    built = res.snapshots.build_now()
    assert built is not None
    ask = QueryPayload(question="zebrafish regeneration", use_cache=False)
    r = querying.retrieve(res, ask)
    assert res.snapshot_for(r.index_version) is not None  # the snapshot answered this version
    assert not any(s.doc_id == "new-doc" for s in r.sources)

    # a write and its version bump, as the indexing pool does them
    emb = HashingEmbedder()
    new = _record("default", "new-doc", 0, "zebrafish fin regeneration after injury", emb)
    store.replace_documents("default", {"new-doc": [new]})
    res.index_state.bump()
    r = querying.retrieve(res, ask)
    assert (built / "meta.json").exists()  # the old snapshot is still there ...
    assert res.snapshot_for(r.index_version) is None  # ... and does not answer the new version
    assert r.sources[0].doc_id == "new-doc"

    # once rebuilt at the new pointer, the snapshot answers it, with the new document
    assert res.snapshots.build_now() is not None
    assert not built.exists()  # the old snapshot was removed
    r = querying.retrieve(res, ask)
    assert res.snapshot_for(r.index_version) is not None
    assert r.sources[0].doc_id == "new-doc"


def test_another_pointer_at_the_same_version_never_reads_this_ones_snapshot(
    base_settings: Settings, tmp_path: Path
) -> None:
    """Versions repeat: a second key prefix over the same data dir (what CI's tests do), or a Redis
    that lost the pointer's keys, counts from 1 again. A snapshot built under one pointer must not
    answer the other's equal version: the label carries the pointer's epoch."""
    first = _resources(base_settings, tmp_path)
    store, _ = first.live_store()
    store.replace_documents("default", _docs("default", 20, 3))
    first.index_state.bump()
    assert first.snapshots is not None and first.snapshots.build_now() is not None

    second = _resources(base_settings, tmp_path)  # same data dir, a pointer of its own
    assert second.index_state.read().version == 0
    emb = HashingEmbedder()
    new = _record("default", "new-doc", 0, "zebrafish fin regeneration after injury", emb)
    st2, _ = second.live_store()
    st2.replace_documents("default", {"new-doc": [new]})
    second.index_state.bump()
    assert second.index_state.read().version == first.index_state.read().version  # the same number
    ask = QueryPayload(question="zebrafish regeneration", use_cache=False)
    r = querying.retrieve(second, ask)
    assert second.snapshot_for(r.index_version) is None  # not the first pointer's snapshot
    assert r.sources[0].doc_id == "new-doc"
    assert second.snapshots is not None and second.snapshots.build_now() is not None
    r = querying.retrieve(second, ask)
    assert second.snapshot_for(r.index_version) is not None and r.sources[0].doc_id == "new-doc"


def test_a_build_that_dies_half_way_leaves_no_snapshot(base_settings: Settings, tmp_path: Path) -> None:
    res = _resources(base_settings, tmp_path)
    store, _ = res.live_store()
    store.replace_documents("default", _docs("default", 20, 4))
    res.index_state.bump()
    res.index_state.ensure_epoch()
    pointer = res.index_state.read()
    root = res.settings.data_dir / "snapshots"
    # a real process killed in the middle of writing the snapshot of this pointer
    script = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from ragfleet.snapshot import Label, write_snapshot\n"
        "from ragfleet.stores.lancedb_store import LanceDBStore\n"
        "st = LanceDBStore(Path(sys.argv[1]), sys.argv[2], dim=384)\n"
        "def batches():\n"
        "    yield from st.iter_chunks(batch_size=5)\n"
        "    os._exit(9)\n"
        "label = Label(sys.argv[2], int(sys.argv[4]), 0, sys.argv[5])\n"
        "write_snapshot(Path(sys.argv[3]), label, batches(), 384)\n"
    )
    args = [
        str(res.settings.data_dir / "lancedb"),
        pointer.active,
        str(root),
        str(pointer.version),
        pointer.epoch,
    ]
    done = subprocess.run([sys.executable, "-c", script, *args], check=False)
    assert done.returncode == 9
    assert list((root / pointer.active).glob(".tmp-*"))  # its half-written files
    assert not (
        root / pointer.active / Label(pointer.active, pointer.version, 0, pointer.epoch).dirname
    ).exists()
    r = querying.retrieve(res, QueryPayload(question="tumor immune response", use_cache=False))
    assert r.sources and res.snapshot_for(r.index_version) is None  # the store answered

    assert res.snapshots is not None and res.snapshots.build_now() is not None
    assert not list((root / pointer.active).glob(".tmp-*"))  # the next builder cleared them
    r = querying.retrieve(res, QueryPayload(question="tumor immune response", use_cache=False))
    assert r.sources and res.snapshot_for(r.index_version) is not None


_READER = """
import json, sys
from ragfleet import querying
from ragfleet.resources import Resources
from ragfleet.schemas import QueryPayload
from ragfleet.settings import Settings
from tests.helpers import HashingEmbedder

res = Resources(Settings())
res.__dict__["embedder"] = HashingEmbedder()
for line in sys.stdin:
    r = querying.retrieve(res, QueryPayload(question=line.strip(), use_cache=False))
    used = res.snapshot_for(r.index_version) is not None
    print(json.dumps({"top": r.sources[0].doc_id, "version": r.index_version, "snapshot": used}), flush=True)
"""


def test_another_process_sees_the_update_and_shares_the_snapshot(
    base_settings: Settings, tmp_path: Path
) -> None:
    """A second retrieval process maps the snapshot this one built; after a write and its bump, its
    next query sees the new document (from the store) although that snapshot is still on disk."""
    import json

    from tests.conftest import settings_env

    res = _resources(base_settings, tmp_path)
    store, _ = res.live_store()
    store.replace_documents("default", _docs("default", 20, 5))
    res.index_state.bump()
    assert res.snapshots is not None and res.snapshots.build_now() is not None
    env = settings_env(res.settings.model_copy(update={"search_snapshot_delay_s": 60.0}))
    reader = subprocess.Popen(
        [sys.executable, "-c", _READER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
    )
    assert reader.stdin is not None and reader.stdout is not None

    def ask(question: str) -> dict[str, object]:
        assert reader.stdin is not None and reader.stdout is not None
        reader.stdin.write(question + "\n")
        reader.stdin.flush()
        got: dict[str, object] = json.loads(reader.stdout.readline())
        return got

    try:
        first = ask("zebrafish fin regeneration")
        assert first["snapshot"] is True and first["top"] != "new-doc"
        new = _record("default", "new-doc", 0, "zebrafish fin regeneration after injury", HashingEmbedder())
        store.replace_documents("default", {"new-doc": [new]})
        version = res.index_state.bump()
        after = ask("zebrafish fin regeneration")
        assert after == {"top": "new-doc", "version": version, "snapshot": False}
    finally:
        reader.stdin.close()
        reader.wait(timeout=30)


def test_the_background_builder_catches_up_once_the_version_settles(
    base_settings: Settings, tmp_path: Path
) -> None:
    """No build call: the query that found no snapshot asks for one; the store answers meanwhile."""
    from tests.helpers import wait_for

    res = _resources(base_settings, tmp_path)
    res.settings = res.settings.model_copy(update={"search_snapshot_delay_s": 0.2})
    store, _ = res.live_store()
    store.replace_documents("default", _docs("default", 20, 6))
    version = res.index_state.bump()
    ask = QueryPayload(question="vaccine trial dose", use_cache=False)
    first = querying.retrieve(res, ask)
    assert first.index_version == version and first.sources

    def built() -> object:  # each look is a query: it reads the pointer afresh, as the next query would
        querying.retrieve(res, ask)
        return res.snapshot_for(version)

    snap = wait_for(built, timeout=60, what="a snapshot at the settled version")
    assert snap.label.version == version
    again = querying.retrieve(res, ask)
    assert [s.chunk_id for s in again.sources] == [s.chunk_id for s in first.sources]


def test_past_the_ann_threshold_a_graph_answers_close_to_exact(
    base_settings: Settings, tmp_path: Path
) -> None:
    """With `snapshot_ann_min_rows` lowered to 2,000, the snapshot carries an HNSW graph; the queries
    are answered from the snapshot (not the store), with top-10s that overlap the store's exact
    ones by >= 0.9, per tenant (a tenant under 5 % of the rows is scanned exactly: the same top-10)."""
    res = _resources(base_settings, tmp_path)
    res.settings = res.settings.model_copy(update={"snapshot_ann_min_rows": 2_000})
    store, _ = res.live_store()
    store.replace_documents("a", _docs("a", 1_100, 8))
    store.replace_documents("b", _docs("b", 25, 9))
    store.optimize()
    res.index_state.bump()
    assert store.count() >= 2_000
    assert res.snapshots is not None and res.snapshots.ann_min_rows == 2_000
    built = res.snapshots.build_now()
    assert built is not None and (built / "ann.usearch").exists()
    emb = HashingEmbedder()
    overlaps: dict[str, list[float]] = {"a": [], "b": []}
    for q in QUERIES:
        for tenant in ("a", "b"):
            r = querying.retrieve(res, QueryPayload(question=q, tenant=tenant, top_k=10, use_cache=False))
            snap = res.snapshot_for(r.index_version)
            assert snap is not None and snap.ann is not None  # the snapshot's graph answered
            vec = emb.encode_one(q).tolist()
            for mode in ("vector", "hybrid"):
                want = [h.chunk_id for h in store.search(tenant, vector=vec, text=q, mode=mode, top_k=10)]
                got = [h.chunk_id for h in snap.search(tenant, vector=vec, text=q, mode=mode, top_k=10)]
                assert len(got) == len(want) == 10
                overlaps[tenant].append(len(set(got) & set(want)) / 10)
            assert [s.chunk_id for s in r.sources] == got  # the retrieval path returned the snapshot's
    assert sum(overlaps["a"]) / len(overlaps["a"]) >= 0.9, overlaps["a"]
    assert min(overlaps["b"]) >= 0.9, overlaps["b"]  # exact scan of its rows (ties aside)
