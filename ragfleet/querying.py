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

import numpy as np
import redis

from ragfleet import tracing
from ragfleet.cache import Layer, answer_key_for
from ragfleet.coalesce import Flight
from ragfleet.index_state import IndexPointer
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
    return None if hit is None else _cached_answer(hit)


def _cached_answer(hit: tuple[dict[str, Any], Layer]) -> tuple[Answer, Layer]:
    value, layer = hit
    # a hit links to the run that produced the answer (its `traceparent`, kept with the entry)
    tracing.set_attrs(**{tracing.CACHE_LAYER: layer})
    tracing.link(value.get(tracing.TRACEPARENT), "cached_answer")
    answer = Answer.model_validate(value)
    answer.cached = layer
    return answer, layer


def lookup_and_join(
    res: Resources, p: QueryPayload, key: str, job_id: str
) -> tuple[tuple[Answer, Layer] | None, Flight | None]:
    """The answer cache's two layers and, on a miss, the flight of `key` (coalescing): the Redis
    layer and the join are one round trip. Neither, for a query that asked for no cache."""
    if not p.use_cache:
        return None, None
    local = res.answer_cache.get_local(key)
    if local is not None:
        return _cached_answer(local), None
    if not res.settings.cache_enabled:
        return None, res.coalescer.join(key, job_id)
    return _settle_join(
        res, key, res.coalescer.join_unless_cached(key, job_id, res.answer_cache.redis_key(key))
    )


def _settle_join(
    res: Resources, key: str, joined: Flight | str
) -> tuple[tuple[Answer, Layer] | None, Flight | None]:
    """What a join (with the cache lookup, when the cache is on) came back with: the cached answer
    it found (the Redis layer's hit or miss is counted here), else the flight it joined."""
    if res.settings.cache_enabled:
        hit = res.answer_cache.accept_remote(key, joined if isinstance(joined, str) else None)
        if hit is not None:
            return _cached_answer(hit), None
    assert isinstance(joined, Flight)
    return None, joined


@dataclass(slots=True)
class Prefetch:
    """What the retrieval stage reads in its first round trip, with its job-record start: the index
    pointer, the cached query vector unless this process holds it, and the answer-cache lookup and
    coalescing join under the index version this process saw last (`Resources.last_version`; it
    moves only when the index does). Four round trips of the critical path become one; a guess that
    turns out stale is undone and looked up again under the real version."""

    res: Resources
    question: str
    wants_vector: bool
    vector: np.ndarray[Any, np.dtype[np.float32]] | None = None
    job_id: str = ""
    model: str = ""  # whose cached vector was read: the model this process last saw live
    guess: int | None = None  # the index version the lookup and join were sent under
    guess_key: str = ""
    local_answer: tuple[dict[str, Any], Layer] | None = None
    _queued_vector: bool = False
    _join_at: int = -1
    _join_reply: Any = None

    @classmethod
    def for_query(cls, res: Resources, p: QueryPayload, job_id: str = "") -> Prefetch:
        pre = cls(
            res,
            p.question,
            (p.mode or res.settings.search_mode) in ("vector", "hybrid"),
            job_id=job_id,
            model=res.query_model,
        )
        if pre.wants_vector:
            local = res.vector_cache_for(pre.model).get_local(p.question)
            pre.vector = None if local is None else local[0]
        if job_id and p.use_cache and res.last_version is not None:
            pre.guess = res.last_version
            pre.guess_key = cache_key_for(res, p, pre.guess)
            pre.local_answer = res.answer_cache.get_local(pre.guess_key)
        return pre

    def queue(self, pipe: redis.client.Pipeline) -> None:
        pipe.mget(*self.res.index_state.keys())
        if self.wants_vector and self.vector is None:
            pipe.get(self.res.vector_cache_for(self.model).redis_key(self.question))
            self._queued_vector = True
        if self.guess is not None and self.local_answer is None:
            self._join_at = 1 + int(self._queued_vector)
            enabled = self.res.settings.cache_enabled
            cache_key = self.res.answer_cache.redis_key(self.guess_key) if enabled else None
            self.res.coalescer.queue_join(pipe, self.guess_key, self.job_id, cache_key)

    def accept(self, replies: list[Any]) -> IndexPointer:
        """The pointer; the vector, if Redis had it (`search` then skips the cache)."""
        if self._queued_vector:
            hit = self.res.vector_cache_for(self.model).accept_remote(self.question, replies[1])
            self.vector = None if hit is None else hit[0]
        if self._join_at >= 0:
            self._join_reply = replies[self._join_at]
        return self.res.index_state.parse(replies[0])

    def answer_or_flight(self, version: int) -> tuple[tuple[Answer, Layer] | None, Flight | None] | None:
        """What `lookup_and_join` would return, from the start's round trip, if that was sent under
        `version`; None (a join under another version undone): call `lookup_and_join` now."""
        if self.guess is None or self.guess != version:
            self.release()
            return None
        if self.local_answer is not None:
            return _cached_answer(self.local_answer), None
        if self._join_reply is None:
            return None
        return _settle_join(self.res, self.guess_key, self.res.coalescer.parse_join(self._join_reply))

    def release(self) -> None:
        """Undo the join sent with the start (stale version, or a job that turned out closed)."""
        if self._join_reply is not None:
            flight = self.res.coalescer.parse_join(self._join_reply)
            if isinstance(flight, Flight):
                self.res.coalescer.leave(self.guess_key, flight, self.job_id)
            self._join_reply = None


def embed_question(
    res: Resources,
    question: str,
    pipe: redis.client.Pipeline | None = None,
    prefetched: Prefetch | None = None,
    model: str | None = None,
) -> tuple[list[float], Layer | None]:
    """The query vector by `model` (the live index's: ragfleet/index_model.py; default the
    configured one): from the cache (looked up here, or by `prefetched` when it read the same
    model's), else encoded and cached."""
    model = model or res.settings.embedding_model
    if prefetched is not None and prefetched.model != model:
        prefetched = None  # it read another model's cache (the live index changed model meanwhile)
    if prefetched is not None and prefetched.vector is not None:
        return prefetched.vector.tolist(), "l2"
    cache = res.vector_cache_for(model)
    hit = cache.get(question) if prefetched is None else None
    if hit is not None:
        return hit[0].tolist(), hit[1]
    vec = res.embedder_for(model).encode_one(question)
    cache.put(question, vec, pipe)
    return vec.tolist(), None


def search(
    res: Resources,
    p: QueryPayload,
    store: VectorStore,
    index_version: int,
    key: str,
    pipe: redis.client.Pipeline | None = None,
    prefetched: Prefetch | None = None,
) -> Retrieval:
    """Embed (cached) and search. Cache writes go on `pipe` when given: a task sends them with its
    stage's end instead of spending a round trip on them mid-query. With `prefetched`, the vector
    cache was read already."""
    s = res.settings
    timings: dict[str, float] = {}
    mode = p.mode or s.search_mode
    vector: list[float] | None = None
    if mode in ("vector", "hybrid"):
        t1 = time.perf_counter()
        # the model of the index `live_store` returned (the caller's `store`)
        model = res.model_of(res.last_pointer) if res.last_pointer is not None else s.embedding_model
        vector, _ = embed_question(res, p.question, pipe, prefetched, model)
        timings["embed_ms"] = (time.perf_counter() - t1) * 1000
    t2 = time.perf_counter()
    # the snapshot answers only when built at exactly the pointer this query read (else: the store)
    snap = None if p.filters else res.snapshot_for(index_version)
    top_k = min(p.top_k, s.max_top_k)
    if snap is not None:
        hits = snap.search(
            p.tenant,
            vector=vector,
            text=p.question,
            mode=mode,
            top_k=top_k,
            dense_weight=s.hybrid_dense_weight,
            candidates=s.hybrid_candidates,
        )
    else:
        hits = store.search(
            p.tenant,
            vector=vector,
            text=p.question,
            mode=mode,
            top_k=top_k,
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
        entry = result.model_dump(mode="json")
        traced = tracing.record_fields()  # Answer ignores the extra field when a hit is read back
        res.answer_cache.put(cache_key, {**entry, **traced} if traced else entry, pipe)
    return result


def run_inline(res: Resources, p: QueryPayload) -> dict[str, Any]:
    """The whole pipeline in one process: the baseline the fleet's overhead is measured against."""
    r = retrieve(res, p)
    if r.cached is not None:
        return r.cached.model_dump(mode="json")
    return answer(
        res, question=r.question, sources=r.sources, index_version=r.index_version, cache_key=r.cache_key
    ).model_dump(mode="json")
