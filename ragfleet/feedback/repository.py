"""Engines, sessions and schema migrations for the feedback database.

One engine per process and URL, built on first use: a prefork child must never reuse the sockets
or SQLite handles of the parent it was forked from, so the cache is keyed by pid as well.

SQLite is the single-host default and several worker processes write to it, so every connection
runs in WAL mode (readers never block the writer) with a busy timeout (a writer waits for the lock
instead of failing), and every transaction starts with `BEGIN IMMEDIATE`: with pysqlite's default
deferred transactions a read-then-write transaction can fail at once with "database is locked" when
another process committed in between, whatever the busy timeout says.
"""

from __future__ import annotations

import fcntl
import os
import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

_HERE = Path(__file__).resolve().parent
ALEMBIC_INI = _HERE / "alembic.ini"
MIGRATIONS = _HERE / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 30_000
# pg_advisory_lock key: one migrator at a time per database, whichever process starts first
_PG_MIGRATION_LOCK = zlib.crc32(b"ragfleet.feedback.migrations")

_lock = threading.Lock()
_engines: dict[tuple[str, int], Engine] = {}
_factories: dict[tuple[str, int], sessionmaker[Session]] = {}
_schema_ready: set[tuple[str, int]] = set()


def _sqlite_on_connect(dbapi_conn: Any, _record: Any) -> None:
    # autocommit at the driver level: SQLAlchemy's "begin" hook below decides how transactions start
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    try:
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA synchronous=NORMAL")
    finally:
        cur.close()


def _sqlite_on_begin(conn: Connection) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def _sqlite_file(url: str) -> Path | None:
    db = make_url(url).database
    return Path(db) if db and db != ":memory:" and not db.startswith("file:") else None


def build_engine(url: str) -> Engine:
    """A new engine (callers own it); most code wants the per-process `get_engine`."""
    if is_sqlite(url):
        path = _sqlite_file(url)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
        event.listen(engine, "connect", _sqlite_on_connect)
        event.listen(engine, "begin", _sqlite_on_begin)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5, pool_recycle=1_800)


def get_engine(url: str) -> Engine:
    key = (url, os.getpid())
    with _lock:
        engine = _engines.get(key)
        if engine is None:
            engine = _engines[key] = build_engine(url)
        return engine


def get_session_factory(url: str) -> sessionmaker[Session]:
    key = (url, os.getpid())
    engine = get_engine(url)
    with _lock:
        factory = _factories.get(key)
        if factory is None:
            # rows are handed out after commit (CLI, task results): keep their loaded attributes
            factory = _factories[key] = sessionmaker(engine, expire_on_commit=False)
        return factory


def dispose_engines() -> None:
    """Close this process's pools (tests; a process about to exit)."""
    with _lock:
        for (_, pid), engine in list(_engines.items()):
            if pid == os.getpid():
                engine.dispose()
        _engines.clear()
        _factories.clear()
        _schema_ready.clear()


# --- migrations ----------------------------------------------------------------------------------


def alembic_config(url: str, connection: Connection | None = None) -> Config:
    """The packaged migrations bound to `url` (works from an installed wheel, whatever the cwd)."""
    cfg = Config(str(ALEMBIC_INI))
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))  # configparser interpolation
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


@contextmanager
def _migration_connection(url: str) -> Iterator[Connection]:
    """A connection that holds the database's migration lock, so concurrent starters migrate once."""
    engine = build_engine(url)
    try:
        if is_sqlite(url):
            path = _sqlite_file(url)
            lock_path = path.with_name(path.name + ".migrate.lock") if path else None
            with _file_lock(lock_path), engine.connect() as conn:
                yield conn
            return
        with engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
                conn.commit()
            try:
                yield conn
            finally:
                if conn.dialect.name == "postgresql":
                    conn.rollback()
                    conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _PG_MIGRATION_LOCK})
                    conn.commit()
    finally:
        engine.dispose()


@contextmanager
def _file_lock(path: Path | None) -> Iterator[None]:
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def upgrade_to_head(url: str) -> str | None:
    """Apply every pending migration; safe to call from many processes at once. Returns the revision."""
    with _migration_connection(url) as conn:
        command.upgrade(alembic_config(url, conn), "head")
        conn.commit()
        return MigrationContext.configure(conn).get_current_revision()


def downgrade_to(url: str, revision: str = "base") -> str | None:
    with _migration_connection(url) as conn:
        command.downgrade(alembic_config(url, conn), revision)
        conn.commit()
        with _lock:
            _schema_ready.discard((url, os.getpid()))
        return MigrationContext.configure(conn).get_current_revision()


def current_revision(url: str) -> str | None:
    engine = build_engine(url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def ensure_schema(url: str) -> None:
    """Migrate once per process: a worker that started while the database was down heals on first use."""
    key = (url, os.getpid())
    if key in _schema_ready:
        return
    upgrade_to_head(url)
    with _lock:
        _schema_ready.add(key)
