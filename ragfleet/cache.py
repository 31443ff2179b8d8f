"""Two-layer answer cache (in-process LRU + Redis) and the query-embedding cache.

Keys include the fleet's index version, so a write to the index makes every older entry
unreachable at once (no scan, no invalidation race): stale answers simply stop being looked up and
expire by TTL. Light module on purpose: the API process uses it too, answering repeated questions
without a round trip through the queues.
"""

from __future__ import annotations

import hashlib
import json
import threading
import unicodedata
from typing import Any, Literal

import numpy as np
import redis
from cachetools import TTLCache

from ragfleet import metrics
from ragfleet.settings import Settings

Layer = Literal["l1", "l2"]


def normalize_question(question: str) -> str:
    """Case, Unicode form and whitespace do not change the answer; punctuation can, so it stays."""
    return " ".join(unicodedata.normalize("NFKC", question).casefold().split())


def answer_key(
    *,
    question: str,
    tenant: str,
    top_k: int,
    mode: str,
    filters: dict[str, Any],
    index_version: int,
    generator: str,
) -> str:
    blob = json.dumps(
        [normalize_question(question), tenant, top_k, mode, filters, index_version, generator],
        sort_keys=True,
        ensure_ascii=False,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


class AnswerCache:
    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self._r = client
        self._s = settings
        self._l1: TTLCache[str, dict[str, Any]] = TTLCache(
            maxsize=settings.cache_l1_size, ttl=settings.cache_l1_ttl_s
        )
        self._lock = threading.Lock()

    def redis_key(self, key: str) -> str:
        return self._s.key("cache", "answer", key)

    def get(self, key: str) -> tuple[dict[str, Any], Layer] | None:
        if not self._s.cache_enabled:
            return None
        local = self.get_local(key)
        if local is not None:
            return local
        return self.accept_remote(key, self._r.get(self.redis_key(key)))

    def get_local(self, key: str) -> tuple[dict[str, Any], Layer] | None:
        """The in-process layer alone. With `accept_remote`, a caller on redis.asyncio (the API's
        event loop) does the Redis half itself: same layers, same metrics, no thread."""
        if not self._s.cache_enabled:
            return None
        with self._lock:
            hit = self._l1.get(key)
        metrics.cache_event("l1", hit is not None)
        return (hit, "l1") if hit is not None else None

    def accept_remote(self, key: str, raw: str | bytes | None) -> tuple[dict[str, Any], Layer] | None:
        """What the Redis layer held for `key` (None: a miss); a hit is kept in the local layer."""
        metrics.cache_event("l2", raw is not None)
        if raw is None:
            return None
        value: dict[str, Any] = json.loads(raw)
        with self._lock:
            self._l1[key] = value
        return value, "l2"

    def put(self, key: str, value: dict[str, Any], pipe: redis.client.Pipeline | None = None) -> None:
        """Store in both layers; with `pipe`, the Redis write is queued for the caller's round trip."""
        if not self._s.cache_enabled:
            return
        (pipe or self._r).set(self.redis_key(key), json.dumps(value), ex=self._s.cache_l2_ttl_s)
        with self._lock:
            self._l1[key] = value

    def clear_local(self) -> None:
        with self._lock:
            self._l1.clear()


class EmbeddingCache:
    """Query vectors by (model, normalized question): the second-hottest thing after answers."""

    def __init__(self, client: redis.Redis, settings: Settings, model_id: str) -> None:
        self._r = client
        self._s = settings
        self._model = model_id
        self._l1: TTLCache[str, np.ndarray[Any, np.dtype[np.float32]]] = TTLCache(
            maxsize=settings.cache_l1_size * 4, ttl=settings.cache_l2_ttl_s
        )
        self._lock = threading.Lock()

    def redis_key(self, question: str) -> str:
        digest = hashlib.sha256(f"{self._model}\0{normalize_question(question)}".encode()).hexdigest()
        return self._s.key("cache", "qvec", digest)

    def get(self, question: str) -> tuple[np.ndarray[Any, np.dtype[np.float32]], Layer] | None:
        local = self.get_local(question)
        if local is not None:
            return local
        return self.accept_remote(question, self._r.get(self.redis_key(question)))

    def get_local(self, question: str) -> tuple[np.ndarray[Any, np.dtype[np.float32]], Layer] | None:
        """The in-process layer alone (a hit is counted; a miss is counted by `accept_remote`, which
        takes what the caller read from Redis in a round trip it had to make anyway)."""
        with self._lock:
            vec = self._l1.get(self.redis_key(question))
        if vec is None:
            return None
        metrics.cache_event("embedding", True)
        return vec, "l1"

    def accept_remote(
        self, question: str, raw: str | bytes | None
    ) -> tuple[np.ndarray[Any, np.dtype[np.float32]], Layer] | None:
        key = self.redis_key(question)
        metrics.cache_event("embedding", raw is not None)
        if raw is None:
            return None
        arr = np.frombuffer(bytes.fromhex(raw) if isinstance(raw, str) else raw, dtype=np.float32)
        with self._lock:
            self._l1[key] = arr
        return arr, "l2"

    def put(
        self,
        question: str,
        vec: np.ndarray[Any, np.dtype[np.float32]],
        pipe: redis.client.Pipeline | None = None,
    ) -> None:
        """Store in both layers; with `pipe`, the Redis write is queued for the caller's round trip."""
        key = self.redis_key(question)
        arr = np.asarray(vec, dtype=np.float32)
        (pipe or self._r).set(key, arr.tobytes().hex(), ex=self._s.cache_l2_ttl_s)
        with self._lock:
            self._l1[key] = arr


def answer_key_for(settings: Settings, payload: Any, index_version: int) -> str:
    """The one place the answer-cache key of a query is built (API fast path and retrieval pool)."""
    return answer_key(
        question=payload.question,
        tenant=payload.tenant,
        top_k=payload.top_k,
        mode=payload.mode or settings.search_mode,
        filters=payload.filters,
        index_version=index_version,
        generator=settings.generator + ":" + settings.llm_providers,
    )
