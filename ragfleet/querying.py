"""The query pipeline's two stages, as plain functions the tasks (and benchmarks) call.

`retrieve` runs on the retrieval pool: cache lookup, query embedding (cached), search. `answer`
runs on the generation pool: the LLM gateway (or the extractive answerer) writes the cited answer,
which is cached under the index version the sources came from.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis

from ragfleet.cache import Layer, answer_key_for
from ragfleet.resources import Resources
from ragfleet.schemas import Answer, QueryPayload, Source
from ragfleet.stores.base import VectorStore


@dataclass(slots=True)
class Retrieval:
    question: str
    sources: list[Source]
    index_version: int
    cache_key: str
    cached: Answer | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)


def cache_key_for(res: Resources, p: QueryPayload, index_version: int) -> str:
    return answer_key_for(res.settings, p, index_version)


def lookup_cached(res: Resources, p: QueryPayload, index_version: int) -> tuple[Answer, Layer] | None:
    if not p.use_cache:
        return None
    hit = res.answer_cache.get(cache_key_for(res, p, index_version))
    if hit is None:
        return None
    value, layer = hit
    answer = Answer.model_validate(value)
    answer.cached = layer
    return answer, layer


def embed_question(
    res: Resources, question: str, pipe: redis.client.Pipeline | None = None
) -> tuple[list[float], Layer | None]:
    hit = res.embedding_cache.get(question)
    if hit is not None:
        return hit[0].tolist(), hit[1]
    vec = res.embedder.encode_one(question)
    res.embedding_cache.put(question, vec, pipe)
    return vec.tolist(), None


def search(
    res: Resources,
    p: QueryPayload,
    store: VectorStore,
    index_version: int,
    key: str,
    pipe: redis.client.Pipeline | None = None,
) -> Retrieval:
    """Embed (cached) and search. Cache writes go on `pipe` when given: a task sends them with its
    stage's end instead of spending a round trip on them mid-query."""
    s = res.settings
    timings: dict[str, float] = {}
    mode = p.mode or s.search_mode
    vector: list[float] | None = None
    if mode in ("vector", "hybrid"):
        t1 = time.perf_counter()
        vector, _ = embed_question(res, p.question, pipe)
        timings["embed_ms"] = (time.perf_counter() - t1) * 1000
    t2 = time.perf_counter()
    hits = store.search(
        p.tenant,
        vector=vector,
        text=p.question,
        mode=mode,
        top_k=min(p.top_k, s.max_top_k),
        filters=p.filters,
        dense_weight=s.hybrid_dense_weight,
        candidates=s.hybrid_candidates,
    )
    timings["search_ms"] = (time.perf_counter() - t2) * 1000
    sources = [
        Source(
            n=i + 1,
            doc_id=h.doc_id,
            chunk_id=h.chunk_id,
            title=h.title,
            text=h.text,
            score=round(h.score, 6),
            start=h.start,
            end=h.end,
            metadata=h.metadata,
        )
        for i, h in enumerate(hits)
    ]
    return Retrieval(p.question, sources, index_version, key, None, timings)


def retrieve(res: Resources, p: QueryPayload) -> Retrieval:
    """Cache lookup, then search: what one process does when it is not coalescing."""
    t0 = time.perf_counter()
    store, pointer = res.live_store()
    key = cache_key_for(res, p, pointer.version)
    cached = lookup_cached(res, p, pointer.version)
    if cached is not None:
        timings = {"cache_ms": (time.perf_counter() - t0) * 1000}
        return Retrieval(p.question, cached[0].sources, pointer.version, key, cached[0], timings)
    return search(res, p, store, pointer.version, key)


def answer(
    res: Resources,
    *,
    question: str,
    sources: list[Source],
    index_version: int,
    cache_key: str | None,
    on_chunk: Callable[[str], None] | None = None,
    on_whole: Callable[[str], None] | None = None,
    pipe: redis.client.Pipeline | None = None,
) -> Answer:
    """Generate (gateway: provider fallback, breaker, degradation) and cache the answer; with `pipe`,
    the cache write is queued there (the task sends it in the round trip that finishes the job).
    `on_chunk` / `on_whole`: see `LLMGateway.generate`."""
    outcome = res.gateway.generate(question, sources, on_chunk=on_chunk, on_whole=on_whole)
    result = Answer(
        question=question,
        answer=outcome.answer,
        quotes=outcome.quotes,
        sources=sources,
        degraded=outcome.degraded,
        index_version=index_version,
        usage=outcome.usage,
    )
    # Degraded answers are not cached: once the provider is back, users should get the real answer.
    if cache_key and not result.degraded:
        res.answer_cache.put(cache_key, result.model_dump(mode="json"), pipe)
    return result


def run_inline(res: Resources, p: QueryPayload) -> dict[str, Any]:
    """The whole pipeline in one process: the baseline the fleet's overhead is measured against."""
    r = retrieve(res, p)
    if r.cached is not None:
        return r.cached.model_dump(mode="json")
    return answer(
        res, question=r.question, sources=r.sources, index_version=r.index_version, cache_key=r.cache_key
    ).model_dump(mode="json")
