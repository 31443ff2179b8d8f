"""Weaviate as the fleet's shared, server-side store (weaviate-client v4, HTTP + gRPC).

Choices that keep it interchangeable with the embedded LanceDB store (tests/contract/ checks both):
- vectors are self-provided (no server vectorizer) in one named vector `default` with cosine distance,
  so `score = 1 - distance` in vector mode, the same scale LanceDB reports.
- tenants are a filterable property, not Weaviate multi-tenancy: every read and delete adds a
  `tenant == ...` filter, and the embedding cache (`vectors_by_hash`) can look across tenants.
- identifier-like properties (tenant, doc_id, tags, hashes) use FIELD tokenization: with the default
  WORD tokenization a `key=value` tag would be split into `key` and `value`, and equality filters
  would match on single words.
- object UUIDs are `generate_uuid5(chunk_id)`, so re-sending a chunk overwrites it in place;
  `chunk_id` carries the tenant (`chunk_id_for`), so two tenants never share a UUID.

Collection names: Weaviate class names must match `[A-Z][_0-9A-Za-z]*`, so the logical name
(`chunks_v3`) becomes `Ragfleet_chunks_v3`; any other character becomes `_` (see `collection_name_for`).

Weaviate has no multi-object transactions, so `replace_documents` is not atomic the way LanceDB's
single merge_insert commit is: it upserts the new chunks first and only then deletes the stale ones,
so a reader never sees a document vanish, and a crash in between leaves stale chunks that the next
replace of that document removes (the call is idempotent).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from ragfleet.schemas import MetadataValue, SearchMode
from ragfleet.stores.base import ChunkRecord, SearchHit, tags_for
from ragfleet.stores.weaviate_schema import (
    HIT_PROPS,
    RETURN_PROPS,
    SEARCH_PROPS,
    VECTOR_NAME,
    collection_name_for,
    create_collection,
    similarity,
    to_hit,
    to_properties,
    to_record,
    vector_of,
)

if TYPE_CHECKING:
    from weaviate import WeaviateClient
    from weaviate.collections import Collection
    from weaviate.collections.classes.filters import _Filters

WRITE_BATCH = 200  # objects per gRPC batch request: well under the server's message size limit
PAGE = 1_000  # offset paging; offset + limit must stay under QUERY_MAXIMUM_RESULTS (10 000 by default)
_ID_GROUP = 50  # documents per filtered read, so one read stays far below QUERY_MAXIMUM_RESULTS
_DELETE_GROUP = 500


def _endpoint(url: str) -> tuple[str, int, bool]:
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"Weaviate URL must be http(s)://host[:port], got {url!r}")
    secure = parts.scheme == "https"
    return parts.hostname, parts.port or (443 if secure else 80), secure


class WeaviateStore:
    stems = False  # Weaviate's BM25 tokenizes words but does not stem

    def __init__(
        self,
        url: str,
        name: str,
        *,
        dim: int,
        grpc_port: int = 50051,
        api_key: str | None = None,
    ) -> None:
        """Configuration only: the client connects on first use, so building a store (in the API
        process, at import time of a worker) needs no reachable server."""
        self.url = url
        self.name = name
        self.collection_name = collection_name_for(name)
        self.dim = dim
        self.grpc_port = grpc_port
        self._host, self._http_port, self._secure = _endpoint(url)
        self._api_key = api_key
        self._client: WeaviateClient | None = None
        self._ready = False
        self._lock = threading.RLock()

    # -- connection ------------------------------------------------------------------------------
    def _connect(self) -> WeaviateClient:
        if self._client is None:
            with self._lock:
                if self._client is None:
                    import weaviate
                    from weaviate.classes.init import AdditionalConfig, Timeout

                    self._client = weaviate.connect_to_custom(
                        http_host=self._host,
                        http_port=self._http_port,
                        http_secure=self._secure,
                        grpc_host=self._host,
                        grpc_port=self.grpc_port,
                        grpc_secure=self._secure,
                        auth_credentials=self._api_key,
                        additional_config=AdditionalConfig(timeout=Timeout(init=10, query=30, insert=120)),
                        # the init checks also ask pypi.org for the latest client version, which
                        # stalls worker start-up on hosts without internet; ensure() probes gRPC instead
                        skip_init_checks=True,
                    )
        return self._client

    def _coll(self) -> Collection[Any, Any]:
        if not self._ready:
            self.ensure()
        return self._connect().collections.use(self.collection_name)

    def ensure(self) -> None:
        with self._lock:
            client = self._connect()
            if not client.collections.exists(self.collection_name):
                from weaviate.exceptions import UnexpectedStatusCodeError

                try:
                    create_collection(client, self.collection_name, logical_name=self.name, dim=self.dim)
                except UnexpectedStatusCodeError:
                    # another process created it between exists() and create()
                    if not client.collections.exists(self.collection_name):
                        raise
            # one gRPC round trip: a wrong gRPC port fails here, at start-up, not in the first query
            client.collections.use(self.collection_name).query.fetch_objects(limit=1, return_properties=[])
            self._ready = True

    def refresh(self) -> None:
        """Reads always go to the server, so there is no snapshot to move."""

    def optimize(self) -> None:
        """The server maintains HNSW and the inverted index as objects arrive."""

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
            self._client = None
            self._ready = False

    def drop(self) -> None:
        with self._lock:
            self._connect().collections.delete(self.collection_name)
            self._ready = False

    # -- filters ---------------------------------------------------------------------------------
    @staticmethod
    def _tenant_filter(tenant: str, filters: dict[str, MetadataValue] | None = None) -> _Filters:
        from weaviate.classes.query import Filter

        parts = [Filter.by_property("tenant").equal(tenant)]
        tags = tags_for(filters or {})
        if tags:
            parts.append(Filter.by_property("tags").contains_all(tags))
        return Filter.all_of(parts) if len(parts) > 1 else parts[0]

    @staticmethod
    def _docs_filter(tenant: str, doc_ids: list[str]) -> _Filters:
        from weaviate.classes.query import Filter

        return Filter.all_of(
            [Filter.by_property("tenant").equal(tenant), Filter.by_property("doc_id").contains_any(doc_ids)]
        )

    def _fetch_all(
        self, where: _Filters, properties: list[str], *, include_vector: bool = False
    ) -> list[Any]:
        """All objects matching `where`, paged by offset (filtered reads cannot use the cursor API)."""
        coll = self._coll()
        out: list[Any] = []
        offset = 0
        while True:
            res = coll.query.fetch_objects(
                filters=where,
                limit=PAGE,
                offset=offset,
                return_properties=properties,
                include_vector=include_vector,
            )
            out.extend(res.objects)
            if len(res.objects) < PAGE:
                return out
            offset += PAGE

    # -- writes ----------------------------------------------------------------------------------
    @staticmethod
    def uuid_for(chunk_id: str) -> str:
        from weaviate.util import generate_uuid5

        return str(generate_uuid5(chunk_id))

    def replace_documents(self, tenant: str, docs: dict[str, list[ChunkRecord]]) -> int:
        if not docs:
            return 0
        from weaviate.classes.data import DataObject

        coll = self._coll()
        records = [r for rows in docs.values() for r in rows]
        for doc_id, rows in docs.items():
            for r in rows:
                # stale-chunk cleanup is scoped by (tenant, doc_id): a mislabelled row would escape it
                if (r.tenant, r.doc_id) != (tenant, doc_id):
                    raise ValueError(f"chunk {r.chunk_id!r} is not in document {tenant!r}/{doc_id!r}")
        new_ids = {self.uuid_for(r.chunk_id) for r in records}
        old_ids: set[str] = set()
        doc_ids = list(docs)
        for i in range(0, len(doc_ids), _ID_GROUP):
            where = self._docs_filter(tenant, doc_ids[i : i + _ID_GROUP])
            old_ids.update(str(o.uuid) for o in self._fetch_all(where, ["chunk_id"]))

        for i in range(0, len(records), WRITE_BATCH):
            part = records[i : i + WRITE_BATCH]
            res = coll.data.insert_many(
                [
                    DataObject(
                        properties=to_properties(r),
                        uuid=self.uuid_for(r.chunk_id),
                        vector={VECTOR_NAME: list(r.vector)},
                    )
                    for r in part
                ]
            )
            if res.has_errors:
                first = next(iter(res.errors.values()))
                raise RuntimeError(
                    f"Weaviate rejected {len(res.errors)} of {len(part)} chunks "
                    f"(first: {first.message}); the document stays as it was before this call"
                    " plus any chunks already written, and re-sending it is safe"
                )

        self._delete_ids(sorted(old_ids - new_ids))
        return len(records)

    def _delete_ids(self, ids: list[str]) -> int:
        from weaviate.classes.query import Filter

        coll = self._coll()
        deleted = 0
        for i in range(0, len(ids), _DELETE_GROUP):
            res = coll.data.delete_many(where=Filter.by_id().contains_any(ids[i : i + _DELETE_GROUP]))
            if res.failed:
                raise RuntimeError(f"Weaviate failed to delete {res.failed} stale chunks")
            deleted += int(res.successful)
        return deleted

    def delete_document(self, tenant: str, doc_id: str) -> int:
        from weaviate.classes.query import Filter

        coll = self._coll()
        where = Filter.all_of(
            [Filter.by_property("tenant").equal(tenant), Filter.by_property("doc_id").equal(doc_id)]
        )
        deleted = 0
        while True:  # one call deletes at most QUERY_MAXIMUM_RESULTS objects
            res = coll.data.delete_many(where=where)
            if res.failed:
                raise RuntimeError(f"Weaviate failed to delete {res.failed} chunks of {doc_id!r}")
            deleted += int(res.successful)
            if res.matches == 0 or res.successful == 0:
                return deleted

    # -- reads -----------------------------------------------------------------------------------
    def document_hashes(self, tenant: str, doc_ids: list[str]) -> dict[str, dict[int, str]]:
        out: dict[str, dict[int, str]] = {}
        for i in range(0, len(doc_ids), _ID_GROUP):
            where = self._docs_filter(tenant, doc_ids[i : i + _ID_GROUP])
            for o in self._fetch_all(where, ["doc_id", "chunk_index", "content_hash"]):
                p = o.properties
                out.setdefault(str(p["doc_id"]), {})[int(p["chunk_index"])] = str(p.get("content_hash") or "")
        return out

    def vectors_by_hash(self, hashes: list[str], embedding_model: str) -> dict[str, list[float]]:
        from weaviate.classes.query import Filter

        out: dict[str, list[float]] = {}
        uniq = sorted(set(hashes))
        for i in range(0, len(uniq), 200):
            where = Filter.all_of(
                [
                    Filter.by_property("embedding_model").equal(embedding_model),
                    Filter.by_property("content_hash").contains_any(uniq[i : i + 200]),
                ]
            )
            for o in self._fetch_all(where, ["content_hash"], include_vector=True):
                vec = vector_of(o)
                if vec is not None:
                    out.setdefault(str(o.properties["content_hash"]), vec)
        return out

    def count(self, tenant: str | None = None) -> int:
        coll = self._coll()
        where = self._tenant_filter(tenant) if tenant is not None else None
        res = coll.aggregate.over_all(total_count=True, filters=where)
        return int(res.total_count or 0)

    def iter_chunks(self, batch_size: int = 1_000) -> Iterator[list[ChunkRecord]]:
        batch: list[ChunkRecord] = []
        for o in self._coll().iterator(
            include_vector=True, return_properties=RETURN_PROPS, cache_size=batch_size
        ):
            batch.append(to_record(o))
            if len(batch) >= batch_size:
                yield batch
                batch = []
        if batch:
            yield batch

    def search(
        self,
        tenant: str,
        *,
        vector: list[float] | None,
        text: str | None,
        mode: SearchMode,
        top_k: int,
        filters: dict[str, MetadataValue] | None = None,
        dense_weight: float = 0.5,
        candidates: int = 50,
    ) -> list[SearchHit]:
        from weaviate.classes.query import HybridFusion, MetadataQuery

        coll = self._coll()
        where = self._tenant_filter(tenant, filters)
        has_text = bool(text and text.strip())
        if mode in ("vector", "hybrid") and vector is None:
            raise ValueError(f"{mode} search needs a query vector")
        if mode == "fts" and not has_text:
            return []
        if mode == "vector" or (mode == "hybrid" and not has_text):
            res = coll.query.near_vector(
                near_vector=list(vector or []),
                target_vector=VECTOR_NAME,
                limit=top_k,
                filters=where,
                return_properties=HIT_PROPS,
                return_metadata=MetadataQuery(distance=True),
            )
            return [to_hit(o, similarity(o)) for o in res.objects]
        if mode == "fts":
            res = coll.query.bm25(
                query=str(text),
                query_properties=SEARCH_PROPS,
                limit=top_k,
                filters=where,
                return_properties=HIT_PROPS,
                return_metadata=MetadataQuery(score=True),
            )
            return [to_hit(o, float(o.metadata.score or 0.0)) for o in res.objects]
        if mode == "hybrid":
            # relative-score fusion min-max normalises each signal over the candidates it sees, so a
            # wider pool than top_k makes the normalisation (and the fused order) closer to LanceDB's
            res = coll.query.hybrid(
                query=str(text),
                vector=list(vector or []),
                target_vector=VECTOR_NAME,
                alpha=dense_weight,
                fusion_type=HybridFusion.RELATIVE_SCORE,
                query_properties=SEARCH_PROPS,
                limit=max(top_k, candidates),
                filters=where,
                return_properties=HIT_PROPS,
                return_metadata=MetadataQuery(score=True),
            )
            hits = [to_hit(o, float(o.metadata.score or 0.0)) for o in res.objects]
            hits.sort(key=lambda h: h.score, reverse=True)
            return hits[:top_k]
        raise ValueError(f"unknown search mode {mode!r}")
