"""A query nobody finished by its deadline ends `failed` with `lost`, instead of hanging until its
record's TTL.

Why: kombu's Redis transport takes a message off its queue list (BRPOP) before it records it as
unacknowledged. A worker killed in that window (wider than it sounds: the dying process's socket
stays open while the kernel frees its memory) takes the message with it: it is in no Redis key,
neither the restart nor the gone-node sweep (workers/inflight.py) nor kombu's visibility sweep can
restore it, and the job record would stay `queued` (or `generating`, for a lost hand-off) while its
producer polls.

So every query job gets a deadline, a member of one sorted set (`<prefix>:deadlines`, job id ->
deadline as a UNIX time), added by the command list that creates its record: in the API's MULTI
(`ragfleet.submission`) and in the retrieval stage's first round trip for a producer that enqueues
by task name (`ragfleet.answering`). One ZADD NX each: a redelivery never moves the deadline.

The deadline is the enqueue plus the message's expiry (`query_expires_s`: past it no worker starts
the query) plus `query_deadline_grace_s` (a slow retrieval, the hand-off's own expiry and the
generation): a job still open past it can no longer be finished by anyone. Worker nodes sweep
(`sweep`, from each node's keeper thread, workers/inflight.py): a Lua script takes the due members
off the set and returns them in one step, so two sweepers never take the same job; each taken job
that is still open is failed through `ragfleet.outcomes.fail_job` (the record, stream readers and
long polls, its batch, its callback: `ragfleet.outcomes.fail_lost`); a terminal or expired one is
only dropped from the set. This module stays light: the API and the client import it.
"""

from __future__ import annotations

import time

import redis
import redis.asyncio

from ragfleet.settings import Settings

LOST_MESSAGE = (
    "no worker finished the job before its deadline; its message was lost (a worker died while taking it)"
)

# KEYS[1]: the set. ARGV: now, the most members to take. Returns the due members, taken off the set.
_TAKE_DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
if #due > 0 then redis.call('ZREM', KEYS[1], unpack(due)) end
return due
"""


def key(settings: Settings) -> str:
    return settings.key("deadlines")


def deadline_of(settings: Settings, created_at: float) -> float:
    """When a query created at `created_at` can no longer be finished by any worker."""
    return created_at + settings.query_expires_s + settings.query_deadline_grace_s


def queue_deadline(
    pipe: redis.client.Pipeline | redis.asyncio.client.Pipeline,
    settings: Settings,
    job_id: str,
    now: float | None = None,
    *,
    fresh: bool = False,
) -> None:
    """Queue the job's deadline onto `pipe` (the MULTI that creates its record); NX: a second create
    (a redelivery, the retrieval stage of an API job) keeps the first deadline. `fresh`: replace it
    (a dead letter's replay sends the message again, with an expiry from now)."""
    at = deadline_of(settings, time.time() if now is None else now)
    pipe.zadd(key(settings), {job_id: at}, nx=not fresh)


def take_due(client: redis.Redis, settings: Settings, now: float, batch: int) -> list[str]:
    """Take up to `batch` members past their deadline off the set, atomically: a member taken here is
    taken by no other sweeper."""
    due = client.eval(_TAKE_DUE, 1, key(settings), repr(now), batch)
    return [m.decode() if isinstance(m, bytes) else str(m) for m in due]


__all__ = ["LOST_MESSAGE", "deadline_of", "key", "queue_deadline", "take_due"]
