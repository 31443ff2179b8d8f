"""pgvector and the collections registry

The shared objects of the PostgreSQL store. Per-collection chunk tables are not here: a reindex
creates one at run time, so their DDL lives in one function, `pg_schema.create_collection_table`.

Revision ID: 0001
Revises:
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("CREATE EXTENSION IF NOT EXISTS vector")
    op.execute(
        """
        CREATE TABLE ragfleet_collections (
            name        text PRIMARY KEY,
            table_name  text NOT NULL UNIQUE,
            dim         integer NOT NULL CHECK (dim > 0),
            created_at  timestamptz NOT NULL DEFAULT now()
        )
        """
    )


def downgrade() -> None:
    # the extension stays: other schemas in the database may use it
    op.execute("DROP TABLE ragfleet_collections")
