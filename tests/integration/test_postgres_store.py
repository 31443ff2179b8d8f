"""The PostgreSQL store beyond the shared contract (tests/contract/): its migrations, the small
tenant that must still get k results, atomic replacement, the statement timeout, read routing and
the per-process pool. Against the session's private PostgreSQL 18 + pgvector (`pg_url`,
tests/pg.py); migration tests get a fresh database each, so they start from nothing.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterator
from urllib.parse import quote

import numpy as np
import psycopg
import pytest
from pydantic import SecretStr

from ragfleet.settings import Settings
from ragfleet.stores import pg_schema
from ragfleet.stores.pg_pool import pools as _pools
from ragfleet.stores.postgres_store import PostgresStore, SearchTimeoutError
from tests.conftest import free_port
from tests.contract.test_store_contract import DIM, FILLER, doc, unit_vectors

pytestmark = pytest.mark.postgres


def _with_db(url: str, db: str) -> str:
    return url.rsplit("/", 1)[0] + f"/{db}"


@pytest.fixture
def fresh_db(pg_url: str) -> Iterator[str]:
    """A new, empty database on the session's server: what a first deployment migrates."""
    name = f"mig_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    yield _with_db(pg_url, name)
    with psycopg.connect(pg_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


@pytest.fixture
def store(pg_url: str) -> Iterator[PostgresStore]:
    s = PostgresStore(pg_url, f"pgtest_{uuid.uuid4().hex[:10]}", dim=DIM)
    s.ensure()
    yield s
    s.drop()


def _schema_state(url: str) -> tuple[list[tuple[str, ...]], list[str], list[str]]:
    with psycopg.connect(url) as conn:
        versions = conn.execute(f"SELECT version_num FROM {pg_schema.VERSION_TABLE}").fetchall()
        exts = [r[0] for r in conn.execute("SELECT extname FROM pg_extension WHERE extname = 'vector'")]
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename"
            )
        ]
    return versions, exts, tables


def test_settings_build_the_postgres_store(pg_url: str) -> None:
    from ragfleet.stores import build_store

    replica = f"postgresql://reader:s3cret@127.0.0.1:{free_port()}/postgres"
    settings = Settings(
        store="postgres",
        pg_url=pg_url,
        pg_read_urls=f" {replica} ,",
        pg_statement_timeout_ms=750,
        pg_pool_size=2,
    )
    assert "s3cret" not in repr(settings)  # URLs may carry passwords: never in a log line
    s = build_store(settings, collection="built", dim=DIM)
    assert isinstance(s, PostgresStore)
    assert (s.url, s.read_urls, s.statement_timeout_ms, s.pool_size) == (pg_url, [replica], 750, 2)
    with pytest.raises(ValueError, match="RAGFLEET_PG_URL"):
        build_store(Settings(store="postgres"), collection="built", dim=DIM)


# -- migrations -----------------------------------------------------------------------------------
def test_migrating_twice_is_a_noop(fresh_db: str) -> None:
    assert pg_schema.migrate(fresh_db) == "0001"
    with psycopg.connect(fresh_db) as conn:  # state the second run must not touch
        conn.execute("INSERT INTO ragfleet_collections (name, table_name, dim) VALUES ('kept', 'rf_kept', 8)")
    first = _schema_state(fresh_db)
    assert pg_schema.migrate(fresh_db) == "0001"
    assert _schema_state(fresh_db) == first
    versions, exts, tables = first
    assert versions == [("0001",)]
    assert exts == ["vector"]
    # its own version table: the feedback store's `alembic_version` is not created or used
    assert tables == ["ragfleet_collections", pg_schema.VERSION_TABLE]
    with psycopg.connect(fresh_db) as conn:
        assert conn.execute("SELECT name FROM ragfleet_collections").fetchall() == [("kept",)]


def test_concurrent_migrators_and_ensures_all_succeed_with_one_schema(fresh_db: str) -> None:
    """Workers starting together: each migrates (under the advisory lock) and ensures the same new
    collection (under the DDL lock). Without the locks, concurrent `CREATE EXTENSION` / `CREATE
    TABLE IF NOT EXISTS` collide on the catalog's unique indexes."""
    n = 6
    barrier = threading.Barrier(n)
    results: list[object] = []

    def worker() -> None:
        try:
            barrier.wait(timeout=30)
            revision = pg_schema.migrate(fresh_db)
            PostgresStore(fresh_db, "chunks_v1", dim=DIM).ensure()
            results.append(revision)
        except Exception as exc:
            results.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(n)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    for t in threads:
        t.join(max(0.1, deadline - time.monotonic()))
    assert results == ["0001"] * n
    versions, exts, tables = _schema_state(fresh_db)
    assert versions == [("0001",)]
    assert exts == ["vector"]
    assert pg_schema.table_name_for("chunks_v1") in tables
    with psycopg.connect(fresh_db) as conn:
        assert conn.execute("SELECT name, dim FROM ragfleet_collections").fetchall() == [("chunks_v1", DIM)]


def test_collection_with_another_dimension_is_refused(store: PostgresStore) -> None:
    with pytest.raises(ValueError, match="16-dim"):
        PostgresStore(store.url, store.name, dim=384).ensure()


# -- the small tenant --------------------------------------------------------------------------------
def test_a_tenant_with_one_percent_of_the_rows_gets_k_results_from_the_hnsw_index(pg_url: str) -> None:
    """pgvector's HNSW scan visits `hnsw.ef_search` (40) candidates and then filters: for a tenant
    holding 1 % of the rows that leaves ~0 of k. The store turns on iterative scans, which keep
    going until k rows pass the filter. The planner would pick the tenant's btree for so few rows
    on a small table (exact, and never short); sorts and sequential scans are priced out here so
    that the HNSW path - the one a large table takes - is what runs, and EXPLAIN proves it."""
    dim, big, small, k = 384, 1_980, 20, 10
    forced = pg_url + "?options=" + quote("-c enable_sort=off -c enable_seqscan=off")
    s = PostgresStore(forced, f"tenants_{uuid.uuid4().hex[:8]}", dim=dim)
    s.ensure()
    try:
        rng = np.random.default_rng(7)
        m = rng.normal(size=(big + small, dim)).astype(np.float32)
        m /= np.linalg.norm(m, axis=1, keepdims=True)
        vecs = [row.tolist() for row in m]
        for start in range(0, big, 500):
            part = range(start, min(big, start + 500))
            s.replace_documents(
                "big", {f"b{i}": doc("big", f"b{i}", [f"big row {i}"], [vecs[i]], model="m") for i in part}
            )
        s.replace_documents(
            "small",
            {
                f"s{i}": doc("small", f"s{i}", [f"small row {i}"], [vecs[big + i]], model="m")
                for i in range(small)
            },
        )
        s.optimize()
        assert s.count("small") == small and s.count() == big + small

        q = rng.normal(size=dim).astype(np.float32)
        q /= np.linalg.norm(q)
        literal = "[" + ",".join(repr(float(x)) for x in q) + "]"
        query = (
            f"SELECT chunk_id FROM {s.table} WHERE tenant = 'small' "
            f"ORDER BY vector <=> '{literal}'::vector LIMIT {k}"
        )
        with psycopg.connect(forced) as conn:
            plan = "\n".join(r[0] for r in conn.execute("EXPLAIN " + query))
            assert f"{s.table}_hnsw" in plan, plan
            conn.execute("SET hnsw.iterative_scan = off")
            without = conn.execute(query).fetchall()
        assert len(without) < k  # the failure the setting exists for

        hits = s.search("small", vector=q.tolist(), text=None, mode="vector", top_k=k)
        assert len(hits) == k
        assert all(h.doc_id.startswith("s") for h in hits)
        exact = {f"s{i}" for i in np.argsort(-(m[big:] @ q))[:k]}
        assert len(exact & {h.doc_id for h in hits}) >= k - 1  # approximate, but not short
        hybrid = s.search("small", vector=q.tolist(), text="row", mode="hybrid", top_k=k)
        assert len(hybrid) == k and all(h.doc_id.startswith("s") for h in hybrid)
    finally:
        s.drop()


# -- atomic replace ---------------------------------------------------------------------------------
def test_a_replace_that_fails_midway_leaves_the_old_chunks(store: PostgresStore) -> None:
    old = {
        "d1": doc("t1", "d1", FILLER[:4], unit_vectors(4, 1)),
        "d2": doc("t1", "d2", FILLER[4:6], unit_vectors(2, 2)),
    }
    store.replace_documents("t1", old)
    before = store.document_hashes("t1", ["d1", "d2"])
    bad = doc("t1", "d2", ["A rewritten second document."], [[1.0, 0.0, 0.0]])  # 3 dims, not 16
    new = {"d1": doc("t1", "d1", ["A rewritten first document."], unit_vectors(1, 3)), "d2": bad}
    # d1's old chunks 1-3 are deleted and chunk 0 upserted before d2's row fails
    with pytest.raises(psycopg.errors.DataException, match="dimensions"):
        store.replace_documents("t1", new)
    assert store.document_hashes("t1", ["d1", "d2"]) == before
    assert store.count("t1") == 6
    hits = store.search("t1", vector=old["d1"][3].vector, text=None, mode="vector", top_k=1)
    assert hits[0].chunk_id == old["d1"][3].chunk_id and hits[0].text == FILLER[3]


# -- statement timeout ------------------------------------------------------------------------------
def test_a_search_past_the_statement_timeout_raises_a_clear_error(pg_url: str) -> None:
    s = PostgresStore(pg_url, f"timeout_{uuid.uuid4().hex[:8]}", dim=DIM, statement_timeout_ms=300)
    s.ensure()
    try:
        rows = doc("t1", "d1", FILLER[:2], unit_vectors(2, 5))
        s.replace_documents("t1", {"d1": rows})
        with psycopg.connect(pg_url) as blocker:
            blocker.execute(f"LOCK TABLE {s.table} IN ACCESS EXCLUSIVE MODE")  # a stuck DDL, say
            started = time.monotonic()
            with pytest.raises(SearchTimeoutError, match=r"statement timeout \(300 ms"):
                s.search("t1", vector=rows[0].vector, text="revenue", mode="hybrid", top_k=3)
            assert time.monotonic() - started < 5
            blocker.rollback()
        # the connection went back to the pool usable: the next search answers
        assert s.search("t1", vector=rows[0].vector, text=None, mode="vector", top_k=1)[0].chunk_id == (
            rows[0].chunk_id
        )
    finally:
        s.drop()


# -- read routing -----------------------------------------------------------------------------------
def test_searches_read_the_first_replica_that_answers_else_the_primary(pg_url: str, fresh_db: str) -> None:
    """The "replica" is another database on the same server holding different rows for the same
    collection, so the answer shows which server was read. A URL nobody listens on stands for a
    replica that is down: it is skipped, and reads fall back to the primary."""
    name = f"route_{uuid.uuid4().hex[:8]}"
    vec = unit_vectors(1, 6)
    primary = PostgresStore(pg_url, name, dim=DIM)
    replica = PostgresStore(fresh_db, name, dim=DIM)
    primary.replace_documents("t", {"on-primary": doc("t", "on-primary", ["primary row"], vec)})
    replica.replace_documents("t", {"on-replica": doc("t", "on-replica", ["replica row"], vec)})
    dead = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres?connect_timeout=1"
    try:

        def answered_by(read_urls: list[str]) -> str:
            s = PostgresStore(pg_url, name, dim=DIM, read_urls=read_urls)
            return s.search("t", vector=vec[0], text=None, mode="vector", top_k=1)[0].doc_id

        assert answered_by([]) == "on-primary"
        assert answered_by([fresh_db]) == "on-replica"
        assert answered_by([dead, fresh_db]) == "on-replica"
        started = time.monotonic()
        assert answered_by([dead]) == "on-primary"
        assert answered_by([dead]) == "on-primary"
        assert time.monotonic() - started < 4  # the dead replica is skipped, not retried per query
        # writes and the indexer's reads never go to a replica
        s = PostgresStore(pg_url, name, dim=DIM, read_urls=[fresh_db])
        assert s.document_hashes("t", ["on-primary", "on-replica"]).keys() == {"on-primary"}
    finally:
        primary.drop()
        replica.drop()


def test_a_replica_that_drops_the_connection_mid_query_hands_the_search_to_the_primary(
    pg_url: str, fresh_db: str
) -> None:
    """The "replica" database's table is locked so the search waits there; its backend is then
    terminated, as a replica that crashes mid-query would: the same search call answers from the
    primary instead of raising."""
    name = f"midq_{uuid.uuid4().hex[:8]}"
    vec = unit_vectors(1, 8)
    primary = PostgresStore(pg_url, name, dim=DIM)
    replica = PostgresStore(fresh_db, name, dim=DIM)
    primary.replace_documents("t", {"on-primary": doc("t", "on-primary", ["primary row"], vec)})
    replica.replace_documents("t", {"on-replica": doc("t", "on-replica", ["replica row"], vec)})
    reader = PostgresStore(pg_url, name, dim=DIM, read_urls=[fresh_db], statement_timeout_ms=20_000)
    answers: list[object] = []
    try:
        with psycopg.connect(fresh_db) as blocker:
            blocker.execute(f"LOCK TABLE {replica.table} IN ACCESS EXCLUSIVE MODE")
            t = threading.Thread(
                target=lambda: answers.append(
                    reader.search("t", vector=vec[0], text=None, mode="vector", top_k=1)[0].doc_id
                )
            )
            t.start()
            with psycopg.connect(pg_url, autocommit=True) as admin:
                deadline = time.monotonic() + 10
                killed = 0
                while not killed and time.monotonic() < deadline:
                    row = admin.execute(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE datname = %s AND wait_event_type = 'Lock'",
                        (fresh_db.rsplit("/", 1)[1],),
                    ).fetchone()
                    killed = int(row[0]) if row else 0
                    time.sleep(0.05)
            assert killed == 1
            t.join(10)
            blocker.rollback()
        assert answers == ["on-primary"]
    finally:
        primary.drop()
        replica.drop()


# -- processes --------------------------------------------------------------------------------------
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_builds_its_own_pool_and_the_parent_keeps_working(store: PostgresStore) -> None:
    rows = doc("t1", "d1", FILLER[:2], unit_vectors(2, 7))
    store.replace_documents("t1", {"d1": rows})
    parent_pool = _pools[(os.getpid(), store.url)]
    pid = os.fork()
    if pid == 0:  # the prefork child: search, then leave without running the parent's atexit
        ok = False
        try:
            hits = store.search("t1", vector=rows[0].vector, text=None, mode="vector", top_k=1)
            mine = _pools.get((os.getpid(), store.url))
            ok = hits[0].chunk_id == rows[0].chunk_id and mine is not None and mine is not parent_pool
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    hits = store.search("t1", vector=rows[1].vector, text=None, mode="vector", top_k=1)
    assert hits[0].chunk_id == rows[1].chunk_id
    assert _pools[(os.getpid(), store.url)] is parent_pool


# -- blue/green reindex ---------------------------------------------------------------------------
@pytest.mark.redis
@pytest.mark.model
@pytest.mark.usefixtures("redis_client")  # its teardown deletes the session prefix's keys, ours too
def test_a_reindex_writes_a_new_table_switches_to_it_and_rolls_back(
    pg_url: str, base_settings: Settings
) -> None:
    """ragfleet/reindex.py on this store: the new index version is a new table, filled from the old
    one's vectors by content hash (nothing re-embedded), and the pointer moves; rollback moves it
    back to the old table, which still answers."""
    from ragfleet.indexing import index_documents
    from ragfleet.reindex import run_reindex
    from ragfleet.resources import Resources

    settings = base_settings.model_copy(
        update={
            "store": "postgres",
            "pg_url": SecretStr(pg_url),
            "collection": f"rx_{uuid.uuid4().hex[:8]}",
            "key_prefix": f"{base_settings.key_prefix}:pgrx{uuid.uuid4().hex[:6]}",
        }
    )
    res = Resources(settings)
    docs = [
        {"id": f"doc-{i}", "title": f"Note {i}", "text": f"Note {i} explains {topic} in a fleet of workers."}
        for i, topic in enumerate(["queues", "caches", "vectors", "locks", "brokers", "indexes"])
    ]
    assert not index_documents(res, docs, tenant="t").errors
    old = res.index_state.read().active
    old_store = res.store(old)
    report = run_reindex(res, verify_sample=6)
    again = None
    try:
        assert report.status == "switched" and report.old_collection == old
        assert report.chunks_embedded == 0 and report.chunks_copied == report.chunks_after > 0
        live, pointer = res.live_store()
        assert pointer.active == report.new_collection != old
        assert isinstance(live, PostgresStore) and live.table != old_store.table
        with psycopg.connect(pg_url) as conn:
            names = {r[0] for r in conn.execute("SELECT name FROM ragfleet_collections")}
        assert {old, report.new_collection} <= names
        vec = res.embedder.encode_one("How are caches explained?").tolist()
        assert live.search("t", vector=vec, text="caches", mode="hybrid", top_k=1)[0].doc_id == "doc-1"

        assert res.index_state.rollback().active == old
        back, _ = res.live_store()
        assert back.search("t", vector=vec, text="caches", mode="hybrid", top_k=1)[0].doc_id == "doc-1"

        # the next reindex keeps the live version and its predecessor, and its cleanup drops the
        # older generation's table and registry row, as LanceDB drops its table
        again = run_reindex(res, verify_sample=6)
        assert again.dropped == [report.new_collection]
        with psycopg.connect(pg_url) as conn:
            names = {r[0] for r in conn.execute("SELECT name FROM ragfleet_collections")}
            gone = conn.execute("SELECT to_regclass(%s)", (live.table,)).fetchone()
        assert {old, again.new_collection} <= names and report.new_collection not in names
        assert gone == (None,)
    finally:
        for name in (old, report.new_collection, *([again.new_collection] if again else [])):
            res.store(name).drop()
