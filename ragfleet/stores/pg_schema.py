"""The PostgreSQL store's schema: who owns which DDL.

- **Alembic** (ragfleet/stores/pg_migrations, version table `ragfleet_store_alembic_version`) owns
  the objects every collection shares: the `vector` extension and the `ragfleet_collections`
  registry. `migrate(url)` runs under a session advisory lock, so workers starting together
  migrate once and the others wait, then find the database at head (a no-op).
- **`create_collection_table`** owns the per-collection DDL: one chunks table per collection,
  i.e. per index version. A blue/green reindex writes a new collection (`chunks_v<ts>_<hex>`,
  ragfleet/reindex.py), the Redis pointer moves to it, and the old one stays for rollback until it
  is dropped - exactly as LanceDB keeps a table and Weaviate a class per version. A table per
  version (rather than one table with a collection column) keeps each version's HNSW and GIN
  indexes built from its own rows only, makes the drop of an old version a `DROP TABLE` (no
  millions of dead tuples to vacuum), and lets ANALYZE/VACUUM/REINDEX run per version. Changing
  that DDL means a new collection (a reindex), never an ALTER of a live one.

What must stay true: the table name is derived from the collection name alone
(`table_name_for`), and every identifier reaches SQL through `psycopg.sql.Identifier`.
"""

from __future__ import annotations

import hashlib
import re
import threading
from pathlib import Path
from typing import Any

from psycopg import sql

VERSION_TABLE = "ragfleet_store_alembic_version"
REGISTRY = "ragfleet_collections"
MIGRATIONS = Path(__file__).with_name("pg_migrations")
# pg_advisory_lock keys: 64-bit, distinct from the feedback store's migration lock
MIGRATION_LOCK = 0x7261_6766_7374_0001  # "ragfst" + 1
DDL_LOCK = 0x7261_6766_7374_0002
FTS_CONFIG = "english"  # the stemming configuration of the tsvector column (and of every query)

_lock = threading.Lock()
_migrated: set[tuple[str, int]] = set()


def sqlalchemy_url(url: str) -> str:
    """`postgresql://...` as SQLAlchemy's psycopg 3 dialect spells it (Alembic needs an engine)."""
    for prefix in ("postgresql+psycopg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    raise ValueError("pg_url must start with postgresql:// (a libpq URL)")


def migrate(url: str) -> str | None:
    """Bring the shared objects to head; safe from many processes at once. Returns the revision."""
    from alembic import command
    from alembic.config import Config
    from alembic.runtime.migration import MigrationContext
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    engine = create_engine(sqlalchemy_url(url), poolclass=NullPool)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": MIGRATION_LOCK})
            conn.commit()
            try:
                cfg = Config()
                cfg.set_main_option("script_location", str(MIGRATIONS))
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "head")
                conn.commit()
                revision: str | None = MigrationContext.configure(
                    conn, opts={"version_table": VERSION_TABLE}
                ).get_current_revision()
                return revision
            finally:
                conn.rollback()
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": MIGRATION_LOCK})
                conn.commit()
    finally:
        engine.dispose()


def ensure_migrated(url: str, pid: int) -> None:
    """Migrate once per process and URL: a worker that started while PostgreSQL was down heals on
    first use, and one that already checked costs nothing."""
    key = (url, pid)
    if key in _migrated:
        return
    migrate(url)
    with _lock:
        _migrated.add(key)


def table_name_for(collection: str) -> str:
    """A valid, unique PostgreSQL identifier (<= 63 bytes) for a collection name."""
    slug = re.sub(r"[^a-z0-9_]", "_", collection.lower())[:40]
    digest = hashlib.sha256(collection.encode()).hexdigest()[:8]
    return f"rf_chunks_{slug}_{digest}"


def create_collection_table(conn: Any, collection: str, dim: int) -> str:
    """Create the collection's chunks table and indexes if missing, register it; returns its name.

    Runs in the caller's transaction under a transaction advisory lock: two processes ensuring the
    same new collection would otherwise race on `CREATE ... IF NOT EXISTS` (a unique violation in
    the catalog). The columns:
    - `vector vector(dim)` with an HNSW index (cosine): the dense leg;
    - `tsv`, generated from `text` with the English stemming configuration, GIN-indexed: the
      full-text leg (`FTS_CONFIG`; queries must use the same configuration);
    - `tenant` + `doc_id` (btree): every read is scoped to a tenant, writes address documents;
    - `metadata jsonb`: the caller's values, returned in hits; `tags text[]` (GIN): the same
      values as `key=value` strings (`base.tags_for`), which filters match - so a filter selects
      the same chunks here as in LanceDB and Weaviate (`2024` and `"2024"` alike);
    - `(embedding_model, content_hash)` (btree): the embedding cache's lookup.
    """
    table = table_name_for(collection)
    t = sql.Identifier(table)
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (DDL_LOCK,))
    row = conn.execute(
        sql.SQL("SELECT table_name, dim FROM {} WHERE name = %s").format(sql.Identifier(REGISTRY)),
        (collection,),
    ).fetchone()
    if row is not None and int(row[1]) != dim:
        raise ValueError(f"collection {collection!r} holds {row[1]}-dim vectors, not {dim}")
    statements: list[sql.Composable] = [
        sql.SQL(
            """CREATE TABLE IF NOT EXISTS {t} (
                chunk_id        text PRIMARY KEY,
                tenant          text NOT NULL,
                doc_id          text NOT NULL,
                chunk_index     integer NOT NULL,
                text            text NOT NULL,
                title           text,
                start_char      integer NOT NULL DEFAULT 0,
                end_char        integer NOT NULL DEFAULT 0,
                content_hash    text NOT NULL DEFAULT '',
                embedding_model text NOT NULL DEFAULT '',
                metadata        jsonb NOT NULL DEFAULT '{{}}'::jsonb,
                tags            text[] NOT NULL DEFAULT '{{}}',
                vector          vector({dim}) NOT NULL,
                tsv             tsvector GENERATED ALWAYS AS (to_tsvector({cfg}::regconfig, text)) STORED
            )"""
        ).format(t=t, dim=sql.Literal(dim), cfg=sql.Literal(FTS_CONFIG)),
        sql.SQL("CREATE INDEX IF NOT EXISTS {i} ON {t} (tenant, doc_id)").format(
            i=sql.Identifier(f"{table}_tenant_doc"), t=t
        ),
        sql.SQL("CREATE INDEX IF NOT EXISTS {i} ON {t} USING hnsw (vector vector_cosine_ops)").format(
            i=sql.Identifier(f"{table}_hnsw"), t=t
        ),
        sql.SQL("CREATE INDEX IF NOT EXISTS {i} ON {t} USING gin (tsv)").format(
            i=sql.Identifier(f"{table}_tsv"), t=t
        ),
        sql.SQL("CREATE INDEX IF NOT EXISTS {i} ON {t} USING gin (tags)").format(
            i=sql.Identifier(f"{table}_tags"), t=t
        ),
        sql.SQL("CREATE INDEX IF NOT EXISTS {i} ON {t} (embedding_model, content_hash)").format(
            i=sql.Identifier(f"{table}_hash"), t=t
        ),
    ]
    for stmt in statements:
        conn.execute(stmt)
    register = "INSERT INTO {} (name, table_name, dim) VALUES (%s, %s, %s) ON CONFLICT (name) DO NOTHING"
    conn.execute(sql.SQL(register).format(sql.Identifier(REGISTRY)), (collection, table, dim))
    return table


def drop_collection_table(conn: Any, collection: str) -> None:
    """Drop the collection's table and its registry row (the other half of the DDL above)."""
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (DDL_LOCK,))
    conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(table_name_for(collection))))
    conn.execute(sql.SQL("DELETE FROM {} WHERE name = %s").format(sql.Identifier(REGISTRY)), (collection,))


def collections(conn: Any) -> list[str]:
    """Registered collection names (for reindex cleanup and `ragfleet` status)."""
    rows = conn.execute(sql.SQL("SELECT name FROM {} ORDER BY name").format(sql.Identifier(REGISTRY)))
    return [str(r[0]) for r in rows.fetchall()]
