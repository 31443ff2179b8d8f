"""Read-after-write on a real streaming replica (issue 18): the session's PostgreSQL 18 + pgvector
(`pg_server`) and a replica made from it with `pg_basebackup -R` (`pg_replica`, tests/pg.py).

The rule under test (ragfleet/stores/postgres_store.py): the index pointer records the primary's WAL
position of the write that moved it; a search reads a replica only once that replica has replayed
up to the position, else the primary; with the primary down and no replica caught up it raises
`StoreUnavailableError`. Replay is paused on the replica (`pg_wal_replay_pause()`) so that the replica
really is behind when it must be, and every test resumes it before it ends.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import psycopg
import pytest

pytestmark = pytest.mark.postgres


def _wait_replayed(replica_url: str, primary_url: str, timeout: float = 15) -> None:
    """Until the replica has replayed everything the primary has written so far."""
    with psycopg.connect(primary_url, autocommit=True) as p:
        row = p.execute("SELECT pg_current_wal_lsn()").fetchone()
        assert row is not None
        target = row[0]
    deadline = time.monotonic() + timeout
    with psycopg.connect(replica_url, autocommit=True) as r:
        while True:
            row = r.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (target,)).fetchone()
            if row and row[0]:
                return
            assert time.monotonic() < deadline, "the replica did not catch up"
            time.sleep(0.02)


def test_the_replica_streams_the_primarys_writes_and_is_in_recovery(pg_server: Any, pg_replica: Any) -> None:
    table = f"rep_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_server.url, autocommit=True) as p:
        p.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, note text)")
        p.execute(f"INSERT INTO {table} VALUES (1, 'written on the primary')")
    try:
        _wait_replayed(pg_replica.url, pg_server.url)
        with psycopg.connect(pg_replica.url) as r:
            assert r.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)
            assert r.execute(f"SELECT note FROM {table}").fetchall() == [("written on the primary",)]
            with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
                r.execute(f"INSERT INTO {table} VALUES (2, 'a replica takes no writes')")
        with psycopg.connect(pg_server.url) as p:
            assert p.execute("SELECT pg_is_in_recovery()").fetchone() == (False,)
    finally:
        with psycopg.connect(pg_server.url, autocommit=True) as p:
            p.execute(f"DROP TABLE {table}")


def _lag(label: str, unit: str) -> float:
    from ragfleet.metrics import _gauge

    gauge = _gauge(f"ragfleet_store_replica_lag_{unit}")
    values = [s.value for m in gauge.collect() for s in m.samples if s.labels.get("replica") == label]
    assert values, f"no lag sample for {label}"
    return float(values[0])


def _text_of_first_hit(store: Any, vec: list[float]) -> str:
    return str(store.search("t", vector=vec, text=None, mode="vector", top_k=1)[0].text)


def test_a_search_reads_the_replica_only_once_it_has_replayed_the_index_position(
    pg_server: Any, pg_replica: Any
) -> None:
    """The whole rule, store side, with replay paused so the replica really is behind: an update's
    position sends searches to the primary (which has it); resumed and caught up, to the replica
    again; with the primary stopped, a behind replica makes the search `StoreUnavailableError` and
    a caught-up one answers. Which server answered is `inet_server_port()`, read with the search."""
    from ragfleet.stores import pg_pool
    from ragfleet.stores.base import StoreUnavailableError
    from ragfleet.stores.postgres_store import PostgresStore
    from tests.contract.test_store_contract import DIM, doc, unit_vectors

    name = f"raw_{uuid.uuid4().hex[:8]}"
    vec = unit_vectors(1, 11)
    store = PostgresStore(pg_server.url, name, dim=DIM, read_urls=[pg_replica.url])
    label = pg_pool.server_label(pg_replica.url)
    store.ensure()
    paused = False
    try:
        store.replace_documents("t", {"d": doc("t", "d", ["first version"], vec)})
        store.read_after(store.wal_position())
        _wait_replayed(pg_replica.url, pg_server.url)
        assert _text_of_first_hit(store, vec[0]) == "first version"
        assert store.last_read_port == pg_replica.port
        assert _lag(label, "bytes") == 0 and _lag(label, "seconds") == 0

        with psycopg.connect(pg_replica.url, autocommit=True) as r:
            r.execute("SELECT pg_wal_replay_pause()")
        paused = True
        store.replace_documents("t", {"d": doc("t", "d", ["second version"], vec)})
        store.read_after(store.wal_position())  # what Resources.live_store does with the pointer
        time.sleep(0.3)  # the replica receives the WAL (replay is paused), and lag accrues
        assert _text_of_first_hit(store, vec[0]) == "second version"
        assert store.last_read_port == pg_server.port  # the replica is behind: the primary answered
        with psycopg.connect(pg_replica.url) as r:  # and the replica really does not have it yet
            assert r.execute(f"SELECT text FROM {store.table}").fetchall() == [("first version",)]
        assert _lag(label, "bytes") > 0 and _lag(label, "seconds") >= 0.3

        pg_server.stop("fast")
        try:
            started = time.monotonic()
            with pytest.raises(StoreUnavailableError, match="no read replica") as err:
                store.search("t", vector=vec[0], text=None, mode="vector", top_k=1)
            assert err.value.retry_after > 0
            assert time.monotonic() - started < 10
            with psycopg.connect(pg_replica.url, autocommit=True) as r:
                r.execute("SELECT pg_wal_replay_resume()")
            paused = False
            deadline = time.monotonic() + 15
            with psycopg.connect(pg_replica.url) as r:
                while r.execute(f"SELECT text FROM {store.table}").fetchall() != [("second version",)]:
                    assert time.monotonic() < deadline
                    time.sleep(0.02)
            # the primary still down: the caught-up replica answers, and sees the update
            assert _text_of_first_hit(store, vec[0]) == "second version"
            assert store.last_read_port == pg_replica.port
        finally:
            pg_server.start()
            pg_server.wait_ready()
        _wait_replayed(pg_replica.url, pg_server.url)
        time.sleep(pg_pool.POSITION_TTL_S)
        assert _text_of_first_hit(store, vec[0]) == "second version"
        assert store.last_read_port == pg_replica.port  # caught up: reads are back on the replica
        assert _lag(label, "bytes") == 0 and _lag(label, "seconds") == 0
    finally:
        if paused:
            with psycopg.connect(pg_replica.url, autocommit=True) as r:
                r.execute("SELECT pg_wal_replay_resume()")
        store.drop()


@pytest.mark.redis
@pytest.mark.model
@pytest.mark.usefixtures("redis_client")  # its teardown deletes the session prefix's keys, ours too
def test_the_index_pointer_carries_the_write_position_and_a_query_job_ends_unavailable(
    pg_server: Any, pg_replica: Any, base_settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the fleet's own code: indexing records the primary's WAL position in the index
    pointer (never lowered); the retrieval stage's `live_store` hands it to the store, so with
    replay paused a query reads the update from the primary; with the primary stopped too, the real
    retrieval task ends the job `unavailable` with `retry_after`, and the job record says why."""
    from pydantic import SecretStr

    import tasks.retrieval
    import workers.base
    from ragfleet import querying
    from ragfleet.indexing import index_documents
    from ragfleet.resources import Resources
    from ragfleet.schemas import QueryPayload

    settings = base_settings.model_copy(
        update={
            "store": "postgres",
            "pg_url": SecretStr(pg_server.url),
            "pg_read_urls": SecretStr(pg_replica.url),
            "collection": f"rw_{uuid.uuid4().hex[:8]}",
            "key_prefix": f"{base_settings.key_prefix}:pgrw{uuid.uuid4().hex[:6]}",
            "cache_enabled": False,
        }
    )
    res = Resources(settings)
    question = QueryPayload(question="Which colour is the fleet's logo?", tenant="t", use_cache=False)

    def index(colour: str) -> None:
        text = f"The fleet's logo is {colour}, chosen by the design team."
        doc = {"id": "logo", "title": "Logo", "text": text}
        assert not index_documents(res, [doc], tenant="t").errors

    index("green")
    first = res.index_state.read()
    assert first.wal_lsn > 0
    with psycopg.connect(pg_server.url) as p:
        row = p.execute("SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint").fetchone()
        assert row is not None and first.wal_lsn <= int(row[0])
    assert res.index_state.bump(1) == first.version + 1  # a lower position never lowers the pointer's
    assert res.index_state.read().wal_lsn == first.wal_lsn
    _wait_replayed(pg_replica.url, pg_server.url)
    store, _ = res.live_store()
    assert "green" in querying.retrieve(res, question).sources[0].text
    assert store.last_read_port == pg_replica.port  # type: ignore[attr-defined]

    with psycopg.connect(pg_replica.url, autocommit=True) as r:
        r.execute("SELECT pg_wal_replay_pause()")
    try:
        index("orange")
        assert res.index_state.read().wal_lsn > first.wal_lsn
        assert "orange" in querying.retrieve(res, question).sources[0].text
        assert store.last_read_port == pg_server.port  # type: ignore[attr-defined]

        monkeypatch.setattr(tasks.retrieval, "get_resources", lambda: res)
        monkeypatch.setattr(workers.base, "get_resources", lambda: res)
        job_id = str(uuid.uuid4())
        payload = {"job_id": job_id, "question": question.question, "tenant": "t", "use_cache": False}
        pg_server.stop("fast")
        try:
            out = tasks.retrieval.query.apply(kwargs={"payload": payload}, task_id=job_id).get()
        finally:
            pg_server.start()
            pg_server.wait_ready()
        assert out["status"] == "failed" and out["error"]["code"] == "unavailable", out
        record = res.jobs.get(job_id)
        assert record is not None and record.error is not None
        assert record.error.code == "unavailable" and record.error.retry_after
        assert "no read replica" in record.error.message
    finally:
        with psycopg.connect(pg_replica.url, autocommit=True) as r:
            r.execute("SELECT pg_wal_replay_resume()")
        res.store(settings.collection).drop()


@pytest.mark.redis
@pytest.mark.model
@pytest.mark.usefixtures("redis_client")
def test_a_reindex_with_replay_paused_verifies_and_serves_from_the_primary(
    pg_server: Any, pg_replica: Any, base_settings: Any
) -> None:
    """A blue/green reindex creates a new table the paused replica has not got: its verify searches
    and the first queries after the switch must read the primary (the switch carries the new table's
    WAL position), not fail on a missing table or answer from nothing."""
    from pydantic import SecretStr

    from ragfleet import querying
    from ragfleet.indexing import index_documents
    from ragfleet.reindex import run_reindex
    from ragfleet.resources import Resources
    from ragfleet.schemas import QueryPayload

    settings = base_settings.model_copy(
        update={
            "store": "postgres",
            "pg_url": SecretStr(pg_server.url),
            "pg_read_urls": SecretStr(pg_replica.url),
            "collection": f"rr_{uuid.uuid4().hex[:8]}",
            "key_prefix": f"{base_settings.key_prefix}:pgrr{uuid.uuid4().hex[:6]}",
            "cache_enabled": False,
        }
    )
    res = Resources(settings)
    docs = [
        {"id": f"doc-{i}", "title": f"Note {i}", "text": f"Note {i} explains {topic} in a fleet of workers."}
        for i, topic in enumerate(["queues", "caches", "vectors", "locks"])
    ]
    assert not index_documents(res, docs, tenant="t").errors
    old = res.index_state.read()
    _wait_replayed(pg_replica.url, pg_server.url)
    with psycopg.connect(pg_replica.url, autocommit=True) as r:
        r.execute("SELECT pg_wal_replay_pause()")
    new = None
    try:
        report = run_reindex(res, verify_sample=4)
        new = report.new_collection
        assert report.status == "switched"
        pointer = res.index_state.read()
        assert pointer.active == new and pointer.wal_lsn > old.wal_lsn
        live, _ = res.live_store()
        with psycopg.connect(pg_replica.url) as r:  # the replica has no such table yet
            assert r.execute("SELECT to_regclass(%s)", (live.table,)).fetchone() == (None,)  # type: ignore[attr-defined]
        q = QueryPayload(question="How are caches explained?", tenant="t", use_cache=False)
        assert querying.retrieve(res, q).sources[0].doc_id == "doc-1"
        assert live.last_read_port == pg_server.port  # type: ignore[attr-defined]
    finally:
        with psycopg.connect(pg_replica.url, autocommit=True) as r:
            r.execute("SELECT pg_wal_replay_resume()")
        for name in {old.active, new} - {None}:
            res.store(str(name)).drop()
