"""`ragfleet index copy` (ragfleet/index_copy.py): a LanceDB index moves into PostgreSQL as it is.

Every row arrives with its vector bit for bit (nothing re-embedded), each document whole even when
the source returns its chunks in different read batches, the pointer's version moves with the
primary's WAL position, and copying again changes nothing.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import SecretStr
from typer.testing import CliRunner

from ragfleet.index_copy import copy_lancedb_to_postgres
from ragfleet.index_state import IndexState
from ragfleet.redis_conn import get_redis
from ragfleet.settings import Settings, get_settings
from ragfleet.stores.lancedb_store import LanceDBStore
from ragfleet.stores.postgres_store import PostgresStore
from tests.conftest import settings_env
from tests.contract.test_store_contract import DIM, doc, unit_vectors

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


def _rows(store: Any) -> dict[str, tuple[Any, ...]]:
    return {
        r.chunk_id: (r.doc_id, r.tenant, r.chunk_index, r.text, r.title, r.start, r.end, r.content_hash,
                     r.embedding_model, r.metadata, np.asarray(r.vector, dtype=np.float32).tobytes())
        for rows in store.iter_chunks() for r in rows
    }  # fmt: skip


@pytest.mark.usefixtures("redis_client")
def test_index_copy_moves_every_row_with_its_vector_and_bumps_the_pointer(
    pg_url: str, base_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = f"copy_{uuid.uuid4().hex[:8]}"
    settings = base_settings.model_copy(
        update={
            "store": "postgres",
            "pg_url": SecretStr(pg_url),
            "data_dir": tmp_path,
            "collection": name,
            "key_prefix": f"{base_settings.key_prefix}:copy{uuid.uuid4().hex[:6]}",
        }
    )
    source = LanceDBStore(tmp_path / "lancedb", name, dim=DIM)
    source.ensure()
    vectors = unit_vectors(84, 3)
    used = 0
    for tenant, docs in (("a", 30), ("b", 5)):
        batch = {}
        for i in range(docs):
            n = 1 + i % 4  # 73 chunks in tenant a, 11 in b
            texts = [f"{tenant} document {i} part {k} about topic {i * 7 + k}" for k in range(n)]
            rows = vectors[used : used + n]
            used += n
            batch[f"d{i}"] = doc(tenant, f"d{i}", texts, rows, metadata={"n": n, "t": tenant})
        source.replace_documents(tenant, batch)
    want = _rows(source)
    state = IndexState(get_redis(settings), settings)
    before = state.read()
    target = PostgresStore(pg_url, name, dim=DIM)
    try:
        # read batches of 7 rows: documents of up to 4 chunks straddle them and must still land whole
        report = copy_lancedb_to_postgres(settings, batch_size=7)
        assert (report.collection, report.documents, report.documents_changed_during_copy) == (name, 35, 0)
        assert report.chunks_read == report.chunks_written == report.chunks_in_target == len(want) == 84
        assert _rows(target) == want  # every field, and the vectors bit for bit
        vec = np.frombuffer(want["a/d5#0"][10], dtype=np.float32).tolist()
        hit = target.search("a", vector=vec, text=None, mode="vector", top_k=1)[0]
        assert (hit.chunk_id, hit.text) == ("a/d5#0", want["a/d5#0"][3])
        after = state.read()
        assert after.active == name and after.version == before.version + 1
        assert after.wal_lsn == report.wal_lsn == target.wal_position() > 0  # nothing written since

        # the command line, again: a replacement per document, so nothing doubles
        for key, value in settings_env(settings).items():
            if key.startswith("RAGFLEET_"):
                monkeypatch.setenv(key, value)
        get_settings.cache_clear()
        from ragfleet.cli import app

        out = CliRunner().invoke(app, ["index", "copy", "--from", str(tmp_path / "lancedb")])
        assert out.exit_code == 0, out.output
        again = json.loads(out.stdout[out.stdout.index("{") :])
        assert again["chunks_in_target"] == 84 and again["version"] == after.version + 1
        assert _rows(target) == want

        missing = CliRunner().invoke(app, ["index", "copy", "--collection", "no_such_collection"])
        assert missing.exit_code == 2 and "no LanceDB collection 'no_such_collection'" in missing.output
    finally:
        get_settings.cache_clear()
        target.drop()
