"""Fleet-wide request coalescing (single flight) in Redis.

Identical questions in flight at once (same answer-cache key, which includes the index version)
run the pipeline once. The first job to arrive takes a short lock and becomes the leader; the others
register as followers and do no work. When the leader's answer is ready, `complete` hands it to
every follower atomically. The lock has a short TTL that the leader renews at each stage: if the
leader's worker dies, the lock lapses and the next follower to wake up takes over (followers wake
by retrying with a countdown). A follower past its deadline fails cleanly with `timeout`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import redis

from ragfleet.settings import Settings

# With a third key (the Redis answer-cache entry), an answer already there is returned instead
# ({2, answer}) and nothing is joined: the cache lookup and the join cost one round trip, not two.
_JOIN = """
if #KEYS > 2 then
  local cached = redis.call('GET', KEYS[3])
  if cached then return {2, cached} end
end
local got = redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2])
if got then
  redis.call('SREM', KEYS[2], ARGV[1])  -- a follower taking over is no longer its own follower
  return {1, ARGV[1]}
end
local leader = redis.call('GET', KEYS[1])
if leader == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {1, leader}
end
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return {0, leader}
"""

_DRAIN = """
local followers = redis.call('SMEMBERS', KEYS[2])
redis.call('DEL', KEYS[2])
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return followers
"""

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""


@dataclass(frozen=True, slots=True)
class Flight:
    role: Literal["leader", "follower"]
    leader: str


class Coalescer:
    def __init__(self, client: redis.Redis, settings: Settings, lock_ttl_s: float = 15.0) -> None:
        self._r = client
        self._s = settings
        self.lock_ttl_ms = int(lock_ttl_s * 1000)
        self._join = client.register_script(_JOIN)
        self._drain = client.register_script(_DRAIN)
        self._renew = client.register_script(_RENEW)

    def _keys(self, key: str) -> list[str]:
        return [self._s.key("flight", key), self._s.key("flight", key, "followers")]

    def join(self, key: str, job_id: str) -> Flight:
        flight = self._call_join(key, job_id, [])
        assert isinstance(flight, Flight)
        return flight

    def join_unless_cached(self, key: str, job_id: str, cache_key: str) -> Flight | str:
        """Look up `cache_key` (the answer cache's Redis entry) and, only on a miss, join the flight
        of `key`: a hit returns the raw entry and joins nothing."""
        return self._call_join(key, job_id, [cache_key])

    def queue_join(self, pipe: redis.client.Pipeline, key: str, job_id: str, cache_key: str | None) -> None:
        """`join_unless_cached` (`join` without `cache_key`) queued on `pipe`: read its reply with
        `parse_join`. The retrieval stage sends it with its start, under the index version it saw
        last (see `ragfleet.querying.Prefetch`)."""
        keys = [*self._keys(key), *([cache_key] if cache_key else [])]
        pipe.eval(_JOIN, len(keys), *keys, *self._join_args(job_id))

    @staticmethod
    def parse_join(reply: Any) -> Flight | str:
        ok, value = reply
        if int(ok) == 2:
            return str(value)
        return Flight("leader" if int(ok) == 1 else "follower", str(value))

    def _join_args(self, job_id: str) -> list[str | int]:
        return [job_id, self.lock_ttl_ms, self._s.query_expires_s * 1000]

    def _call_join(self, key: str, job_id: str, extra_keys: list[str]) -> Flight | str:
        return self.parse_join(self._join(keys=[*self._keys(key), *extra_keys], args=self._join_args(job_id)))

    def renew(self, key: str, job_id: str, pipe: redis.client.Pipeline | None = None) -> bool:
        """Extend the leader's lock; with `pipe` it is only queued (and this returns True)."""
        if pipe is not None:
            pipe.eval(_RENEW, 1, self._keys(key)[0], job_id, self.lock_ttl_ms)
            return True
        return int(self._renew(keys=self._keys(key)[:1], args=[job_id, self.lock_ttl_ms])) == 1

    def leave(self, key: str, flight: Flight, job_id: str) -> None:
        """Undo a join (made under an index version that turned out stale, or for a job that turned
        out closed): a leader lets the lock go (its followers wake and one takes over), a follower
        leaves the set, so no answer from that flight is ever handed to this job."""
        if flight.role == "leader":
            self.complete(key, job_id)
        else:
            self._r.srem(self._keys(key)[1], job_id)

    def complete(self, key: str, job_id: str) -> list[str]:
        """Release the flight; returns the followers to hand the answer to."""
        return [str(f) for f in self._drain(keys=self._keys(key), args=[job_id])]

    def runs_key(self) -> str:
        return self._s.key("stats", "pipeline_runs")

    def count_run(self, pipe: redis.client.Pipeline | None = None) -> int:
        """Count a pipeline run (what coalescing saved is runs vs queries); with `pipe`, queued."""
        if pipe is not None:
            pipe.incr(self.runs_key())
            return -1
        return int(self._r.incr(self.runs_key()))
