"""Alembic environment for the feedback database.

`upgrade_to_head` hands in a connection that already holds the migration lock
(`config.attributes["connection"]`); the `alembic` command line gets its URL from `-x url=...`,
`sqlalchemy.url`, or Settings. Logging is left alone: this runs inside workers.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from ragfleet.feedback.models import Base
from ragfleet.feedback.repository import build_engine

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
    if url:
        return url
    from ragfleet.settings import get_settings

    return get_settings().feedback_db_url


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite cannot ALTER most things
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_offline() -> None:
    context.configure(
        url=_url(), target_metadata=target_metadata, literal_binds=True, dialect_opts={"paramstyle": "named"}
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = build_engine(_url())
    try:
        with engine.connect() as conn:
            _run(conn)
            conn.commit()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
