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
    version: int
    active: str
    previous: str | None


class IndexState:
    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self._r = client
        self._s = settings
        self.version_key = settings.key("index", "version")  # read on redis.asyncio by the API
        self._active = settings.key("index", "active")
        self._previous = settings.key("index", "previous")

    def read(self) -> IndexPointer:
        return self.parse(self._r.mget(*self.keys()))

    def keys(self) -> tuple[str, str, str]:
        """What to MGET, in order, for `parse`: a stage reads the pointer in its first round trip."""
        return self.version_key, self._active, self._previous

    def parse(self, values: list[Any]) -> IndexPointer:
        version, active, previous = values
        return IndexPointer(
            version=int(version or 0),
            active=str(active) if active else self._s.collection,
            previous=str(previous) if previous else None,
        )

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
        return IndexPointer(version=int(version), active=new_active, previous=current.active)

    def rollback(self) -> IndexPointer:
        current = self.read()
        if not current.previous:
            raise LookupError("no previous index version to roll back to")
        return self.switch(current.previous)
