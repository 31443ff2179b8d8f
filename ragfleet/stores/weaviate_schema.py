"""The Weaviate side of `WeaviateStore`'s contract: the collection's definition and the mapping
between Weaviate objects and `ChunkRecord` / `SearchHit`.

What must stay true (tests/contract/ runs the same suite against LanceDB and Weaviate):
- vectors are self-provided in one named vector `default` with cosine distance, so a vector hit's
  score is `1 - distance`, the scale LanceDB reports;
- identifier-like properties (tenant, doc_id, tags, hashes) use FIELD tokenization: with WORD a
  `key=value` tag would be split into `key` and `value`, and equality filters would match single
  words;
- only `text` is searched with BM25 (`SEARCH_PROPS`), the field LanceDB's FTS indexes.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

from ragfleet.schemas import MetadataValue
from ragfleet.stores.base import ChunkRecord, SearchHit, tags_for

if TYPE_CHECKING:
    from weaviate import WeaviateClient

VECTOR_NAME = "default"
RETURN_PROPS = [
    "chunk_id",
    "doc_id",
    "tenant",
    "chunk_index",
    "text",
    "title",
    "start_char",
    "end_char",
    "content_hash",
    "embedding_model",
    "metadata_json",
]
HIT_PROPS = ["chunk_id", "doc_id", "chunk_index", "text", "title", "start_char", "end_char", "metadata_json"]
SEARCH_PROPS = ["text"]  # the same field LanceDB's FTS indexes, so both stores rank on the same text


def collection_name_for(name: str) -> str:
    """`chunks_v3` -> `Ragfleet_chunks_v3`: a valid, namespaced Weaviate class name.

    Characters outside `[0-9A-Za-z_]` become `_`, so `a-b` and `a_b` map to the same class: pick
    logical names that differ in more than punctuation.
    """
    if not name:
        raise ValueError("collection name is empty")
    return "Ragfleet_" + re.sub(r"[^0-9A-Za-z_]", "_", name)


def create_collection(client: WeaviateClient, collection_name: str, *, logical_name: str, dim: int) -> None:
    """The collection every replica agrees on; see the module docstring for why each property is
    tokenized the way it is."""
    from weaviate.classes.config import (
        Configure,
        DataType,
        Property,
        Tokenization,
        VectorDistances,
    )

    def key(name: str, dtype: Any = DataType.TEXT) -> Property:
        return Property(
            name=name,
            data_type=dtype,
            tokenization=Tokenization.FIELD,
            index_filterable=True,
            index_searchable=False,
        )

    def plain(name: str, dtype: Any, *, filterable: bool = False) -> Property:
        return Property(name=name, data_type=dtype, index_filterable=filterable, index_searchable=False)

    client.collections.create(
        collection_name,
        description=f"ragfleet chunks ({logical_name}, dim {dim})",
        vector_config=Configure.Vectors.self_provided(
            name=VECTOR_NAME,
            vector_index_config=Configure.VectorIndex.hnsw(distance_metric=VectorDistances.COSINE),
        ),
        properties=[
            key("chunk_id"),
            key("doc_id"),
            key("tenant"),
            key("content_hash"),
            key("embedding_model"),
            key("tags", DataType.TEXT_ARRAY),
            plain("chunk_index", DataType.INT, filterable=True),
            Property(
                name="text",
                data_type=DataType.TEXT,
                tokenization=Tokenization.WORD,
                index_filterable=False,
                index_searchable=True,
            ),
            Property(
                name="title",
                data_type=DataType.TEXT,
                tokenization=Tokenization.WORD,
                index_filterable=False,
                index_searchable=True,
            ),
            plain("start_char", DataType.INT),
            plain("end_char", DataType.INT),
            plain("metadata_json", DataType.TEXT),
        ],
    )


def to_properties(r: ChunkRecord) -> dict[str, Any]:
    props: dict[str, Any] = {
        "chunk_id": r.chunk_id,
        "doc_id": r.doc_id,
        "tenant": r.tenant,
        "chunk_index": r.chunk_index,
        "text": r.text,
        "start_char": r.start,
        "end_char": r.end,
        "content_hash": r.content_hash,
        "embedding_model": r.embedding_model,
        "tags": tags_for(r.metadata),
        "metadata_json": json.dumps(r.metadata, sort_keys=True),
    }
    if r.title is not None:
        props["title"] = r.title
    return props


def similarity(o: Any) -> float:
    """Cosine similarity (higher is better): Weaviate reports cosine distance = 1 - similarity."""
    distance = o.metadata.distance
    if distance is None:
        raise RuntimeError("Weaviate returned a vector hit without a distance")
    return 1.0 - float(distance)


def vector_of(o: Any) -> list[float] | None:
    vecs = o.vector or {}
    vec = vecs.get(VECTOR_NAME)
    if vec is None and vecs:
        vec = next(iter(vecs.values()))
    return [float(x) for x in vec] if vec is not None else None


def metadata_of(p: dict[str, Any]) -> dict[str, MetadataValue]:
    raw = p.get("metadata_json")
    return json.loads(raw) if raw else {}


def to_hit(o: Any, score: float) -> SearchHit:
    p = o.properties
    return SearchHit(
        chunk_id=str(p["chunk_id"]),
        doc_id=str(p["doc_id"]),
        chunk_index=int(p["chunk_index"]),
        text=str(p.get("text") or ""),
        title=p.get("title"),
        start=int(p.get("start_char") or 0),
        end=int(p.get("end_char") or 0),
        score=score,
        metadata=metadata_of(p),
    )


def to_record(o: Any) -> ChunkRecord:
    p = o.properties
    return ChunkRecord(
        chunk_id=str(p["chunk_id"]),
        doc_id=str(p["doc_id"]),
        tenant=str(p["tenant"]),
        chunk_index=int(p["chunk_index"]),
        text=str(p.get("text") or ""),
        title=p.get("title"),
        start=int(p.get("start_char") or 0),
        end=int(p.get("end_char") or 0),
        content_hash=str(p.get("content_hash") or ""),
        embedding_model=str(p.get("embedding_model") or ""),
        vector=vector_of(o) or [],
        metadata=metadata_of(p),
    )
