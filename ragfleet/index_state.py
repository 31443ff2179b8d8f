"""Which collection is live, and the fleet-wide index version.

Every index write bumps the version; cache keys include it, so an answer computed before a write is
never served after it. The version is bumped *after* the store commit: a reader that sees version v
and refreshes its store handle is guaranteed to see the writes of v.

On a store with a write-ahead log (PostgreSQL, `wal_lsn`): the pointer also records the primary's WAL
position of the writes that moved it, raised (never lowered) in the same atomic step as the version,
so that a reader that sees version v knows how far a replica must have replayed to hold v's writes
(ragfleet/stores/postgres_store.py). LanceDB has none: the position stays 0.

A reindex builds a new collection (`<base>_v<n>`) and switches `active` atomically (MULTI), keeping
the previous one for rollback. Each collection's chunker and embedding model are recorded beside the
pointer (`<prefix>:index:chunker:<collection>`, ragfleet/chunkers.py; `<prefix>:index:model:<collection>`,
ragfleet/index_model.py), set by the same MULTI that makes a reindexed collection live, so an index
never holds two chunkers' shapes or two models' vectors, and questions are embedded by the model that
embedded the index they search.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import redis

from ragfleet.chunkers import ChunkerSpec
from ragfleet.settings import Settings


@dataclass(frozen=True, slots=True)
class IndexPointer:
    version: int  # what the index holds: in every answer-cache key
    active: str
    previous: str | None
    generation: int = 0  # how the store is laid out (compaction): readers reopen when it moves
    wal_lsn: int = 0  # the primary's WAL position covering this version's writes; 0: none known
    # a random token made once per pointer (`IndexState.ensure_epoch`): versions restart when the pointer's
    # keys are lost (a Redis without persistence, another key prefix over the same data dir), so what is
    # derived from the index on disk (the search snapshots) is labelled with it as well as the version
    epoch: str = ""


# Raise the WAL position to at least ARGV[1] (never lower it: two writers may bump in either order)
# and bump the version, atomically: a reader's MGET sees both or neither. Positions are compared as
# Lua numbers (doubles): exact up to 2^53 bytes of WAL, 8 PiB.
_BUMP_WITH_LSN = """
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
local new = tonumber(ARGV[1])
if new > cur then redis.call('SET', KEYS[1], ARGV[1]) end
return redis.call('INCR', KEYS[2])
"""


class IndexState:
    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self._r = client
        self._s = settings
        self.version_key = settings.key("index", "version")  # read on redis.asyncio by the API
        self._active = settings.key("index", "active")
        self._previous = settings.key("index", "previous")
        self._generation = settings.key("index", "generation")
        self._wal_lsn = settings.key("index", "wal_lsn")
        self._epoch = settings.key("index", "epoch")

    def read(self) -> IndexPointer:
        return self.parse(self._r.mget(*self.keys()))

    def keys(self) -> tuple[str, str, str, str, str, str]:
        """What to MGET, in order, for `parse`: a stage reads the pointer in its first round trip."""
        return self.version_key, self._active, self._previous, self._generation, self._wal_lsn, self._epoch

    def parse(self, values: list[Any]) -> IndexPointer:
        version, active, previous, generation, wal_lsn, epoch = values
        return IndexPointer(
            version=int(version or 0),
            active=str(active) if active else self._s.collection,
            previous=str(previous) if previous else None,
            generation=int(generation or 0),
            wal_lsn=int(wal_lsn or 0),
            epoch=epoch.decode() if isinstance(epoch, bytes) else str(epoch or ""),
        )

    def ensure_epoch(self) -> str:
        """The pointer's epoch, made now if it has none (SET NX: concurrent callers agree on one)."""
        self._r.set(self._epoch, uuid.uuid4().hex[:12], nx=True)
        value = self._r.get(self._epoch)
        return value.decode() if isinstance(value, bytes) else str(value or "")

    def bump_generation(self) -> int:
        """After a compaction: the same content, new files. Readers reopen their handle; the
        answer cache, keyed by `version`, keeps every entry."""
        return int(self._r.incr(self._generation))

    def version(self) -> int:
        return int(self._r.get(self.version_key) or 0)

    def bump(self, wal_lsn: int | None = None) -> int:
        """The index moved. `wal_lsn`: the primary's WAL position after the write's commit (a store
        with a write-ahead log); the pointer's position is raised to it with the version."""
        if wal_lsn is None:
            return int(self._r.incr(self.version_key))
        return int(self._r.eval(_BUMP_WITH_LSN, 2, self._wal_lsn, self.version_key, int(wal_lsn)))

    def chunker_of(self, collection: str) -> ChunkerSpec | None:
        """The chunker `collection` was built with; None: not recorded (ragfleet/chunkers.py)."""
        raw = self._r.get(self._chunker_key(collection))
        return ChunkerSpec.from_json(raw) if raw else None

    def record_chunker(self, collection: str, spec: ChunkerSpec) -> ChunkerSpec:
        """Record `spec` unless a chunker is recorded already (another writer was first); returns the
        recorded one."""
        key = self._chunker_key(collection)
        self._r.set(key, spec.to_json(), nx=True)
        raw = self._r.get(key)
        return ChunkerSpec.from_json(raw) if raw else spec

    def _chunker_key(self, collection: str) -> str:
        return self._s.key("index", "chunker", collection)

    def model_of(self, collection: str) -> str | None:
        """The embedding model `collection`'s vectors were made by; None: not recorded
        (ragfleet/index_model.py)."""
        raw = self._r.get(self._model_key(collection))
        return None if raw is None else (raw.decode() if isinstance(raw, bytes) else str(raw))

    def record_model(self, collection: str, model: str) -> str:
        """Record `model` unless one is recorded already (another process was first); returns the
        recorded one."""
        key = self._model_key(collection)
        self._r.set(key, model, nx=True)
        return self.model_of(collection) or model

    def _model_key(self, collection: str) -> str:
        return self._s.key("index", "model", collection)

    def switch(
        self,
        new_active: str,
        wal_lsn: int | None = None,
        chunker: ChunkerSpec | None = None,
        model: str | None = None,
    ) -> IndexPointer:
        """Atomically make `new_active` live and remember the old one for rollback. `wal_lsn`: as
        in `bump` (the new collection's table and rows must be on a replica before it is read).
        `chunker`, `model`: what the new collection was built with, recorded in the same step."""
        current = self.read()
        pipe = self._r.pipeline(transaction=True)
        if model is not None:
            pipe.set(self._model_key(new_active), model)
        if chunker is not None:
            pipe.set(self._chunker_key(new_active), chunker.to_json())
        pipe.set(self._active, new_active)
        pipe.set(self._previous, current.active)
        if wal_lsn is None:
            pipe.incr(self.version_key)
        else:
            pipe.eval(_BUMP_WITH_LSN, 2, self._wal_lsn, self.version_key, int(wal_lsn))
        version = pipe.execute()[-1]
        lsn = max(current.wal_lsn, int(wal_lsn or 0))
        return IndexPointer(int(version), new_active, current.active, current.generation, lsn)

    def rollback(self) -> IndexPointer:
        current = self.read()
        if not current.previous:
            raise LookupError("no previous index version to roll back to")
        return self.switch(current.previous)
