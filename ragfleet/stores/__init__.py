"""Vector stores behind one Protocol (`ragfleet.stores.base.VectorStore`).

`build_store()` picks the implementation from Settings and imports its client lazily, so the
weaviate and postgres extras are only needed by deployments that use them.
"""

from __future__ import annotations

from ragfleet.settings import Settings
from ragfleet.stores.base import VectorStore


def build_store(settings: Settings, *, collection: str | None = None, dim: int = 384) -> VectorStore:
    name = collection or settings.collection
    if settings.store == "lancedb":
        from ragfleet.stores.lancedb_store import LanceDBStore

        return LanceDBStore(
            settings.data_dir / "lancedb",
            name,
            dim=dim,
            nprobes=settings.ann_nprobes,
            refine_factor=settings.ann_refine_factor,
            storage_version=settings.lancedb_storage_version,
        )
    if settings.store == "postgres":
        from ragfleet.stores.postgres_store import PostgresStore

        if not settings.pg_url:
            raise ValueError("RAGFLEET_STORE=postgres needs RAGFLEET_PG_URL")
        reads = settings.pg_read_urls.get_secret_value() if settings.pg_read_urls else ""
        return PostgresStore(
            settings.pg_url.get_secret_value(),
            name,
            dim=dim,
            read_urls=[u.strip() for u in reads.split(",") if u.strip()],
            statement_timeout_ms=settings.pg_statement_timeout_ms,
            pool_size=settings.pg_pool_size,
        )
    if settings.store == "weaviate":
        from ragfleet.stores.weaviate_store import WeaviateStore

        if not settings.weaviate_url:
            raise ValueError("RAGFLEET_STORE=weaviate needs RAGFLEET_WEAVIATE_URL")
        key = settings.weaviate_api_key.get_secret_value() if settings.weaviate_api_key else None
        return WeaviateStore(
            settings.weaviate_url, name, dim=dim, grpc_port=settings.weaviate_grpc_port, api_key=key
        )
    raise ValueError(f"unknown store {settings.store!r} (expected lancedb, postgres or weaviate)")
