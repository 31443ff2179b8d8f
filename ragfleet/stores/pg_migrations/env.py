"""Alembic environment for the PostgreSQL store's shared objects (ragfleet/stores/pg_schema.py).

Separate from the feedback store's history (ragfleet/feedback/migrations): its own scripts and its
own version table, `ragfleet_store_alembic_version`, so the two can share one database and upgrade
independently. `pg_schema.migrate` hands in a connection that already holds the store's migration
advisory lock (`config.attributes["connection"]`). Logging is left alone: this runs inside workers.
"""

from __future__ import annotations

from alembic import context

from ragfleet.stores.pg_schema import VERSION_TABLE

config = context.config


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("run the store's migrations with ragfleet.stores.pg_schema.migrate(url)")
    context.configure(connection=connection, target_metadata=None, version_table=VERSION_TABLE)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise RuntimeError("the store's migrations run online only (pg_schema.migrate)")
run_migrations_online()
