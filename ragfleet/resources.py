"""Heavy per-process resources (model, stores, Redis clients, gateway), built once and lazily.

Workers call `warm_up()` from `worker_process_init`, so the first task does not pay for loading
the model; anything else (CLI, tests, benchmarks) gets the same objects on first use. Never build
these at import time: a forked child would inherit the parent's sockets and file handles.
"""

from __future__ import annotations

import logging
import threading
from functools import cached_property
from typing import TYPE_CHECKING

from redis import Redis

from ragfleet.cache import AnswerCache, EmbeddingCache
from ragfleet.coalesce import Coalescer
from ragfleet.events import JobEvents
from ragfleet.index_state import IndexPointer, IndexState
from ragfleet.jobs import JobStore
from ragfleet.redis_conn import get_redis
from ragfleet.settings import Settings, get_settings
from ragfleet.stores import build_store
from ragfleet.stores.base import StoreUnavailableError, VectorStore, WalPositioned
from ragfleet.tokens import BUNDLED_MODELS

log = logging.getLogger("ragfleet.store")

if TYPE_CHECKING:
    from ragfleet.embedding import Embedder
    from ragfleet.generation.gateway import LLMGateway
    from ragfleet.snapshot import Snapshot, SnapshotManager


class Resources:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._stores: dict[str, VectorStore] = {}
        self._seen_version: dict[str, tuple[int, int]] = {}  # collection -> (version, generation)
        self.last_version: int | None = None  # the index version of the last `live_store`
        self.last_pointer: IndexPointer | None = None  # the pointer of the last `live_store`
        # the encoder's threads, when this process's pool sets its own (the indexing pool: workers/hooks)
        self.embedding_threads: int | None = None
        self._lock = threading.Lock()
        # encoders and query-vector caches of models other than the configured one (a live index
        # pinned to another model: ragfleet/index_model.py), and each collection's model, by epoch
        self._embedders: dict[str, Embedder] = {}
        self._vector_caches: dict[str, EmbeddingCache] = {}
        self._models: dict[tuple[str, str], str] = {}

    @cached_property
    def redis(self) -> Redis:
        return get_redis(self.settings)

    @cached_property
    def redis_bytes(self) -> Redis:
        return get_redis(self.settings, decode=False)

    @cached_property
    def jobs(self) -> JobStore:
        return JobStore(self.redis, self.settings)

    @cached_property
    def index_state(self) -> IndexState:
        return IndexState(self.redis, self.settings)

    @cached_property
    def answer_cache(self) -> AnswerCache:
        return AnswerCache(self.redis, self.settings)

    @cached_property
    def events(self) -> JobEvents:
        return JobEvents(self.redis, self.settings)

    @cached_property
    def coalescer(self) -> Coalescer:
        return Coalescer(self.redis, self.settings, lock_ttl_s=self.settings.coalesce_lock_ttl_s)

    @cached_property
    def embedder(self) -> Embedder:
        """The configured model's encoder: what a reindex embeds with (`embedder_for` the live one)."""
        from ragfleet.embedding import Embedder

        return Embedder(self.settings, threads=self.embedding_threads)

    @cached_property
    def embedding_cache(self) -> EmbeddingCache:
        return EmbeddingCache(self.redis, self.settings, self.settings.embedding_model)

    def embedder_for(self, model: str) -> Embedder:
        """The encoder of `model`, built once per process. Another model than the configured one is
        loaded only while the live index is pinned to it; it stays until the process restarts (one
        encoder more: ~50-110 MB)."""
        if model == self.settings.embedding_model:
            return self.embedder
        with self._lock:
            enc = self._embedders.get(model)
            if enc is None:
                from ragfleet.embedding import Embedder

                enc = self._embedders[model] = Embedder(
                    self.settings, threads=self.embedding_threads, model=model
                )
            return enc

    def vector_cache_for(self, model: str) -> EmbeddingCache:
        """The query-vector cache of `model` (its keys name the model: no vector crosses over)."""
        if model == self.settings.embedding_model:
            return self.embedding_cache
        with self._lock:
            cache = self._vector_caches.get(model)
            if cache is None:
                cache = self._vector_caches[model] = EmbeddingCache(self.redis, self.settings, model)
            return cache

    def model_of(self, pointer: IndexPointer) -> str:
        """The model that embeds for `pointer`'s live collection (ragfleet/index_model.py): one GET the
        first time this process meets the collection, none after (a collection's model never changes;
        keyed by the pointer's epoch too, since collection names restart when the pointer's keys are
        lost)."""
        key = (pointer.epoch, pointer.active)
        model = self._models.get(key)
        if model is None:
            from ragfleet.index_model import live_model

            model = live_model(
                self.index_state, pointer.active, self.store(pointer.active), self.settings.embedding_model
            )
            self._models[key] = model
        return model

    @property
    def query_model(self) -> str:
        """The model this process last saw live (the configured one before it has looked): what a
        query's first round trip reads the cached vector of, before the pointer is back."""
        pointer = self.last_pointer
        if pointer is None:
            return self.settings.embedding_model
        return self._models.get((pointer.epoch, pointer.active), self.settings.embedding_model)

    @cached_property
    def gateway(self) -> LLMGateway:
        from ragfleet.generation.gateway import LLMGateway

        return LLMGateway(self.settings, self.redis_bytes)

    @cached_property
    def snapshots(self) -> SnapshotManager | None:
        """The search snapshot layer above the store; None where it is off or cannot mirror the store."""
        if not self.settings.search_snapshot or self.settings.store != "lancedb":
            return None
        from ragfleet.snapshot import SnapshotManager

        return SnapshotManager(
            self.settings.data_dir / "snapshots",
            open_store=lambda c: build_store(self.settings, collection=c, dim=self.embedding_dim),
            read_pointer=self._pointer_with_epoch,
            dim=self.embedding_dim,
            delay_s=self.settings.search_snapshot_delay_s,
            ann_min_rows=self.settings.snapshot_ann_min_rows,
            ann_candidates=self.settings.snapshot_ann_candidates,
        )

    def _pointer_with_epoch(self) -> IndexPointer:
        """The pointer, its epoch made first if missing (what a snapshot is labelled with)."""
        self.index_state.ensure_epoch()
        return self.index_state.read()

    def snapshot_for(self, index_version: int) -> Snapshot | None:
        """The snapshot built at exactly the pointer of this process's last `live_store`, when that
        pointer is the one at `index_version`; None: search the store."""
        pointer = self.last_pointer
        mgr = self.snapshots
        if mgr is None or pointer is None or pointer.version != index_version:
            return None
        return mgr.for_pointer(pointer)

    def store(self, collection: str) -> VectorStore:
        with self._lock:
            st = self._stores.get(collection)
            if st is None:
                st = build_store(self.settings, collection=collection, dim=self.embedding_dim)
                st.ensure()
                self._stores[collection] = st
            return st

    @property
    def embedding_dim(self) -> int:
        return 384 if self.settings.embedding_model in BUNDLED_MODELS else self.embedder.dim

    def live_store(self, pointer: IndexPointer | None = None) -> tuple[VectorStore, IndexPointer]:
        """The active collection, refreshed if the fleet's index version or store generation moved
        since we last looked (`pointer`: as just read by the caller, in a round trip of its own).
        A store with replicas is told the pointer's WAL position: what it answers from then on is
        never older than `pointer.version`."""
        pointer = pointer or self.index_state.read()
        st = self.store(pointer.active)
        seen = (pointer.version, pointer.generation)
        if self._seen_version.get(pointer.active) != seen:
            st.refresh()
            self._seen_version[pointer.active] = seen
        if pointer.wal_lsn and isinstance(st, WalPositioned):
            st.read_after(pointer.wal_lsn)  # read-after-write: no replica behind this version
        self.last_version = pointer.version
        self.last_pointer = pointer
        return st, pointer

    def warm_up(self, *, model: bool = True) -> None:
        """Load the model and open the live collection. A store that does not answer does not
        stop the worker: it starts, reports the store down (ragfleet/store_health.py), and the
        first task after the store is back opens it (nothing is cached from a failed attempt)."""
        live = self.settings.embedding_model
        try:
            _, pointer = self.live_store()
            live = self.model_of(pointer)  # the live index's model is the one to load
        except StoreUnavailableError as exc:
            log.error("warm-up: the store is unreachable, starting without it: %s", exc)
        if model:
            enc = self.embedder_for(live)
            enc.warm_up()
            enc.encode_one("warm up")
        _ = self.gateway  # its modules imported now: a retrieval node may answer inline (answering)


_resources: Resources | None = None
_rlock = threading.Lock()


def get_resources(settings: Settings | None = None) -> Resources:
    global _resources
    if _resources is None or (settings is not None and settings is not _resources.settings):
        with _rlock:
            if _resources is None or (settings is not None and settings is not _resources.settings):
                _resources = Resources(settings or get_settings())
    return _resources


def reset_resources() -> None:
    """After fork: the child must build its own clients and handles."""
    global _resources
    _resources = None
