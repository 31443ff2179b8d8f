"""LanceDB's side of the store contract: the table's schema, the SQL filters, and the mapping
between rows and `ChunkRecord` / `SearchHit`.

What must stay true: every user value in a filter goes through `sql_literal` (a doc id or tenant
with a quote must not change the query), and tags are stored as `tags_for(metadata)` so that the
`array_has_all` filter and Weaviate's `contains_all` select the same chunks (tests/contract/).
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa

from ragfleet.schemas import MetadataValue
from ragfleet.stores.base import ChunkRecord, SearchHit, tags_for

HIT_COLUMNS = ["chunk_id", "doc_id", "chunk_index", "text", "title", "start", "end", "metadata"]


def sql_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def sql_in_list(values: list[str]) -> str:
    return "(" + ", ".join(sql_literal(v) for v in values) + ")"


def table_schema(dim: int) -> pa.Schema:
    return pa.schema(
        [
            pa.field("chunk_id", pa.string(), nullable=False),
            pa.field("doc_id", pa.string(), nullable=False),
            pa.field("tenant", pa.string(), nullable=False),
            pa.field("chunk_index", pa.int32(), nullable=False),
            pa.field("text", pa.string(), nullable=False),
            pa.field("title", pa.string()),
            pa.field("start", pa.int32()),
            pa.field("end", pa.int32()),
            pa.field("content_hash", pa.string()),
            pa.field("embedding_model", pa.string()),
            pa.field("tags", pa.list_(pa.string())),
            pa.field("metadata", pa.string()),
            pa.field("vector", pa.list_(pa.float32(), dim)),
        ]
    )


def to_table(records: list[ChunkRecord], dim: int) -> pa.Table:
    """Records as the Arrow table `merge_insert` takes (tags and metadata as the filters read them)."""
    return pa.Table.from_pylist(
        [
            {
                "chunk_id": r.chunk_id,
                "doc_id": r.doc_id,
                "tenant": r.tenant,
                "chunk_index": r.chunk_index,
                "text": r.text,
                "title": r.title,
                "start": r.start,
                "end": r.end,
                "content_hash": r.content_hash,
                "embedding_model": r.embedding_model,
                "tags": tags_for(r.metadata),
                "metadata": json.dumps(r.metadata, sort_keys=True),
                "vector": r.vector,
            }
            for r in records
        ],
        schema=table_schema(dim),
    )


def tenant_where(tenant: str, filters: dict[str, MetadataValue] | None) -> str:
    """The SQL filter for one tenant's rows that carry every tag of `filters`."""
    where = f"tenant = {sql_literal(tenant)}"
    tags = tags_for(filters or {})
    if tags:
        where += f" AND array_has_all(tags, [{', '.join(sql_literal(t) for t in tags)}])"
    return where


def to_hit(row: dict[str, Any], score: float) -> SearchHit:
    return SearchHit(
        chunk_id=row["chunk_id"],
        doc_id=row["doc_id"],
        chunk_index=int(row["chunk_index"]),
        text=row["text"],
        title=row.get("title"),
        start=int(row.get("start") or 0),
        end=int(row.get("end") or 0),
        score=float(score),
        metadata=json.loads(row["metadata"]) if row.get("metadata") else {},
    )


def to_record(row: dict[str, Any]) -> ChunkRecord:
    return ChunkRecord(
        chunk_id=row["chunk_id"],
        doc_id=row["doc_id"],
        tenant=row["tenant"],
        chunk_index=int(row["chunk_index"]),
        text=row["text"],
        title=row.get("title"),
        start=int(row.get("start") or 0),
        end=int(row.get("end") or 0),
        content_hash=row.get("content_hash") or "",
        embedding_model=row.get("embedding_model") or "",
        vector=list(row["vector"]),
        metadata=json.loads(row["metadata"]) if row.get("metadata") else {},
    )
