"""Which collection is live, and the fleet-wide index version.

Every index write bumps the version; cache keys include it, so an answer computed before a write is
never served after it. The version is bumped *after* the store commit: a reader that sees version v
and refreshes its store handle is guaranteed to see the writes of v.

A reindex builds a new collection (`<base>_v<n>`) and switches `active` atomically (MULTI), keeping
the previous one for rollback.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis

from ragfleet.settings import Settings


@dataclass(frozen=True, slots=True)
class IndexPointer:
    version: int  # what the index holds: in every answer-cache key
    active: str
    previous: str | None
    generation: int = 0  # how the store is laid out (compaction): readers reopen when it moves


class IndexState:
    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self._r = client
        self._s = settings
        self.version_key = settings.key("index", "version")  # read on redis.asyncio by the API
        self._active = settings.key("index", "active")
        self._previous = settings.key("index", "previous")
        self._generation = settings.key("index", "generation")

    def read(self) -> IndexPointer:
        return self.parse(self._r.mget(*self.keys()))

    def keys(self) -> tuple[str, str, str, str]:
        """What to MGET, in order, for `parse`: a stage reads the pointer in its first round trip."""
        return self.version_key, self._active, self._previous, self._generation

    def parse(self, values: list[Any]) -> IndexPointer:
        version, active, previous, generation = values
        return IndexPointer(
            version=int(version or 0),
            active=str(active) if active else self._s.collection,
            previous=str(previous) if previous else None,
            generation=int(generation or 0),
        )

    def bump_generation(self) -> int:
        """After a compaction: the same content, new files. Readers reopen their handle; the
        answer cache, keyed by `version`, keeps every entry."""
        return int(self._r.incr(self._generation))

    def version(self) -> int:
        return int(self._r.get(self.version_key) or 0)

    def bump(self) -> int:
        return int(self._r.incr(self.version_key))

    def switch(self, new_active: str) -> IndexPointer:
        """Atomically make `new_active` live and remember the old one for rollback."""
        current = self.read()
        pipe = self._r.pipeline(transaction=True)
        pipe.set(self._active, new_active)
        pipe.set(self._previous, current.active)
        pipe.incr(self.version_key)
        _, _, version = pipe.execute()
        return IndexPointer(int(version), new_active, current.active, current.generation)

    def rollback(self) -> IndexPointer:
        current = self.read()
        if not current.previous:
            raise LookupError("no previous index version to roll back to")
        return self.switch(current.previous)
