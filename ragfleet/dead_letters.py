"""Dead letters: the messages and jobs the fleet gave up on, kept for an operator to work.

What is recorded, at the moment it fails: a message parked past the redelivery cap
(`workers.base.RagfleetTask.park`) and a job that failed with `worker_lost` or `internal` (a
worker gone with the job, a bug). Each entry keeps what a replay needs and what an operator asks
first: task name, queue, task id, job id, the task's payload, tenant, error code and message,
delivery count, first and last seen, and the node. Other failures (a timeout, an invalid payload,
a provider down) are the producer's to retry and are not dead letters.

Storage: a hash per entry (`<prefix>:dlq:entry:<id>`, TTL `Settings.dead_letter_ttl_s`) and a
sorted set index by last-seen time (`<prefix>:dlq:index`), capped at `Settings.dead_letter_max`
(the oldest go first). An index member whose hash expired is skipped and dropped when read.

A replay (`DeadLetters.replay`) keeps the job id, so a producer's poll still works: in one MULTI
guarded by WATCH on the entry and the job, the job record takes the one transition that reopens a
terminal job (`ragfleet.jobs.JobStore.queue_reopen`: `queued`, `attempt` + 1), its event stream
gets a `replayed` event, the message is sent again by name (`ragfleet.producer.enqueue_on`: a fresh
`expires`), the task's redelivery counter is reset, and the entry is marked `replayed`. A replay
of an entry that is replayed already, or that another replay is writing at the same moment, does
nothing (`ReplayOutcome.ALREADY`): a double click never runs a job twice.

No Celery at import: the worker hooks, the API and the CLI all call this module (a replay builds
the task message with `ragfleet.producer`, imported when a replay runs).
"""

from __future__ import annotations

import json
import time
import uuid
from enum import StrEnum
from typing import Any

import redis
from pydantic import BaseModel, Field

from ragfleet import deadlines
from ragfleet.events import JobEvents
from ragfleet.jobs import JobStore
from ragfleet.names import TASKS, TaskName
from ragfleet.schemas import TERMINAL, ErrorCode
from ragfleet.settings import Settings

# The failures that are dead letters (besides a parked message, which fails with worker_lost).
DEAD_LETTER_CODES = frozenset({ErrorCode.WORKER_LOST, ErrorCode.INTERNAL})
_TERMINAL_VALUES = frozenset(s.value for s in TERMINAL)


class DeadLetterState(StrEnum):
    PARKED = "parked"  # waiting for an operator
    REPLAYED = "replayed"  # sent again; a new failure of the job is a new entry


class DeadLetter(BaseModel):
    """One dead letter, as `GET /v1/admin/dead-letters/{id}` and `ragfleet dlq show` give it."""

    id: str
    task: str
    queue: str
    task_id: str
    job_id: str
    tenant: str
    code: str
    message: str
    deliveries: int = Field(description="Deliveries of the message, the failing one included.")
    first_seen: float = Field(description="When the job was created (or this failure, if unknown).")
    last_seen: float = Field(description="When it failed.")
    node: str = ""
    parked: bool = Field(description="True if the redelivery cap parked the message without running it.")
    state: DeadLetterState = DeadLetterState.PARKED
    replayed_at: float | None = None
    replay_attempt: int | None = Field(default=None, description="The job's `attempt` the replay began.")
    payload: dict[str, Any] | None = Field(default=None, description="The task's payload, as sent.")


class ReplayOutcome(StrEnum):
    REPLAYED = "replayed"
    ALREADY = "already_replayed"  # replayed before, or by a concurrent call: nothing done
    JOB_OPEN = "job_open"  # the job is running again already: nothing done
    NOT_REPLAYABLE = "not_replayable"  # no payload or an unknown task: nothing to send


class DeadLetters:
    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self._r = client
        self._s = settings
        self.index_key = settings.key("dlq", "index")
        # every dead letter ever recorded (no TTL, never trimmed or purged): the alert counts new ones
        # by it, since the index stops growing at `dead_letter_max` and shrinks on a purge
        self.recorded_key = settings.key("dlq", "recorded")

    def entry_key(self, entry_id: str) -> str:
        return self._s.key("dlq", "entry", entry_id)

    # --- recording ------------------------------------------------------------------------------

    def record(
        self,
        *,
        task: str,
        task_id: str,
        job_id: str,
        payload: Any,
        code: ErrorCode,
        message: str,
        deliveries: int,
        node: str,
        parked: bool = False,
        tenant: str | None = None,
        queue: str | None = None,
        now: float | None = None,
    ) -> str:
        """Record one dead letter; returns its id. The tenant and first-seen time come from the job
        record when it exists (the key decided the tenant, not the payload), else from the payload.
        Two round trips: the record read, then the write and the trim in one MULTI (plus one more
        only when the index is over its cap)."""
        now = time.time() if now is None else now
        created, rec_tenant = self._r.hmget(self._s.key("job", job_id), ["created_at", "tenant"])
        body = payload if isinstance(payload, dict) else None
        tenant = (
            tenant
            or (str(rec_tenant) if rec_tenant else None)
            or (str(body.get("tenant")) if body and body.get("tenant") else None)
        )
        if queue is None:
            spec = TASKS.get(TaskName(task)) if task in TaskName._value2member_map_ else None
            queue = spec.queue.value if spec is not None else ""
        entry_id = uuid.uuid4().hex
        fields = {
            "id": entry_id,
            "task": task,
            "queue": queue,
            "task_id": task_id,
            "job_id": job_id,
            "tenant": tenant or self._s.default_tenant,
            "code": code.value,
            "message": message[:2_000],
            "deliveries": str(deliveries),
            "first_seen": repr(float(created) if created else now),
            "last_seen": repr(now),
            "node": node,
            "parked": "1" if parked else "0",
            "state": DeadLetterState.PARKED.value,
            "payload": json.dumps(body) if body is not None else "",
        }
        key, ttl = self.entry_key(entry_id), self._s.dead_letter_ttl_s
        pipe = self._r.pipeline(transaction=True)
        pipe.hset(key, mapping=fields)  # type: ignore[arg-type]
        pipe.expire(key, ttl)
        pipe.zadd(self.index_key, {entry_id: now})
        pipe.zremrangebyscore(self.index_key, "-inf", now - ttl)  # their hashes expired already
        pipe.expire(self.index_key, ttl)
        pipe.incr(self.recorded_key)
        pipe.zcard(self.index_key)
        size = int(pipe.execute()[-1])
        if size > self._s.dead_letter_max:
            self._drop_oldest(size - self._s.dead_letter_max)
        return entry_id

    def _drop_oldest(self, n: int) -> None:
        popped: list[tuple[str, float]] = self._r.zpopmin(self.index_key, n)  # type: ignore[assignment]
        if popped:
            self._r.delete(*(self.entry_key(str(member)) for member, _ in popped))

    # --- reading --------------------------------------------------------------------------------

    def count(self, now: float | None = None) -> int:
        """Entries not past their TTL: what `ragfleet_dead_letters` reports. One read, no write."""
        now = time.time() if now is None else now
        return int(self._r.zcount(self.index_key, now - self._s.dead_letter_ttl_s, "+inf"))

    def count_and_recorded(self, now: float | None = None) -> tuple[int, int]:
        """`count` and how many were ever recorded (`ragfleet_dead_letters_recorded_total`), in one
        round trip."""
        now = time.time() if now is None else now
        pipe = self._r.pipeline(transaction=False)
        pipe.zcount(self.index_key, now - self._s.dead_letter_ttl_s, "+inf")
        pipe.get(self.recorded_key)
        count, recorded = pipe.execute()
        return int(count), int(recorded or 0)

    def get(self, entry_id: str) -> DeadLetter | None:
        raw: dict[str, str] = self._r.hgetall(self.entry_key(entry_id))  # type: ignore[assignment]
        return _parse(raw) if raw else None

    def list(self, *, tenant: str | None = None, limit: int = 100, offset: int = 0) -> list[DeadLetter]:
        """Newest first; `tenant` restricts to one tenant's (None: all). Payloads are left out:
        `get` shows one entry whole."""
        ids = [str(i) for i in self._r.zrevrange(self.index_key, 0, -1)]
        out: list[DeadLetter] = []
        gone: list[str] = []
        skipped = 0
        for start in range(0, len(ids), 200):
            chunk = ids[start : start + 200]
            pipe = self._r.pipeline(transaction=False)
            for entry_id in chunk:
                pipe.hgetall(self.entry_key(entry_id))
            for entry_id, raw in zip(chunk, pipe.execute(), strict=True):
                if not raw:
                    gone.append(entry_id)
                    continue
                if tenant is not None and raw.get("tenant") != tenant:
                    continue
                if skipped < offset:
                    skipped += 1
                    continue
                out.append(_parse({**raw, "payload": ""}))
                if len(out) >= limit:
                    break
            if len(out) >= limit:
                break
        if gone:
            self._r.zrem(self.index_key, *gone)
        return out

    # --- working --------------------------------------------------------------------------------

    def replay(self, entry_id: str) -> tuple[ReplayOutcome, int | None]:
        """Send the entry's message again under its job id; returns the outcome and the job's new
        `attempt` (None when nothing was done, or when the record is gone: then the re-sent task
        creates it again at its first stage, as any task sent by name does).

        Atomic and once only: WATCH on the entry and the job record, then one MULTI with the
        reopen transition, the `replayed` event, the message and the entry's new state. A
        concurrent replay of the same entry makes this EXEC fail, and the retry sees `replayed`."""
        from ragfleet.producer import enqueue_on  # imports Celery (the message format): only here

        entry_key = self.entry_key(entry_id)
        jobs = JobStore(self._r, self._s)
        events = JobEvents(self._r, self._s)
        while True:
            with self._r.pipeline(transaction=True) as pipe:
                try:
                    pipe.watch(entry_key)  # type: ignore[no-untyped-call]
                    raw: dict[str, str] = pipe.hgetall(entry_key)  # type: ignore[assignment]
                    if not raw:
                        raise KeyError(entry_id)
                    entry = _parse(raw)
                    if entry.state != DeadLetterState.PARKED:
                        return ReplayOutcome.ALREADY, None
                    if entry.payload is None or entry.task not in TaskName._value2member_map_:
                        return ReplayOutcome.NOT_REPLAYABLE, None
                    job_key = jobs.key(entry.job_id)
                    pipe.watch(entry_key, job_key)  # type: ignore[no-untyped-call]
                    status, attempt_raw = pipe.hmget(job_key, ["status", "attempt"])
                    if pipe.hget(entry_key, "state") != DeadLetterState.PARKED.value:
                        return ReplayOutcome.ALREADY, None  # a concurrent replay won before our read
                    if status is not None and status not in _TERMINAL_VALUES:
                        return ReplayOutcome.JOB_OPEN, None
                    attempt = int(attempt_raw or 1) + 1 if status is not None else None
                    now = time.time()
                    pipe.multi()
                    if status is not None:
                        jobs.queue_reopen(pipe, entry.job_id)
                        events.emit_to(
                            pipe,
                            entry.job_id,
                            "replayed",
                            {"attempt": attempt, "dead_letter": entry_id, "previous_error": entry.code},
                        )
                    task = TaskName(entry.task)
                    enqueue_on(
                        pipe,
                        task,
                        entry.payload,
                        settings=self._s,
                        job_id=entry.task_id,
                        priority=TASKS[task].priority,
                    )
                    if status is not None and task in (TaskName.QUERY, TaskName.GENERATE):
                        # a query again: a deadline from now (an old one could fail the replay `lost`)
                        deadlines.queue_deadline(pipe, self._s, entry.job_id, now, fresh=True)
                    # the redelivery cap counts afresh: the old count would park the replay at once
                    pipe.delete(self._s.key("deliveries", entry.task_id))
                    pipe.hset(
                        entry_key,
                        mapping={
                            "state": DeadLetterState.REPLAYED.value,
                            "replayed_at": repr(now),
                            **({"replay_attempt": str(attempt)} if attempt is not None else {}),
                        },
                    )
                    pipe.execute()
                    return ReplayOutcome.REPLAYED, attempt
                except redis.WatchError:
                    continue  # the entry or the job changed under us: look again

    def purge(self, *, tenant: str | None = None) -> int:
        """Delete every entry (of one tenant, or all); returns how many."""
        if tenant is None:
            ids = [str(i) for i in self._r.zrange(self.index_key, 0, -1)]
        else:
            ids = [e.id for e in self.list(tenant=tenant, limit=self._s.dead_letter_max + 1)]
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            pipe = self._r.pipeline(transaction=True)
            pipe.delete(*(self.entry_key(i) for i in chunk))
            pipe.zrem(self.index_key, *chunk)
            pipe.execute()
        return len(ids)


def _parse(raw: dict[str, str]) -> DeadLetter:
    fields: dict[str, Any] = dict(raw)
    fields["payload"] = json.loads(raw["payload"]) if raw.get("payload") else None
    fields["parked"] = raw.get("parked") == "1"
    return DeadLetter.model_validate(fields)


def is_dead_letter(code: ErrorCode) -> bool:
    """Whether a job failing with `code` is recorded as a dead letter."""
    return code in DEAD_LETTER_CODES


__all__ = [
    "DEAD_LETTER_CODES",
    "DeadLetter",
    "DeadLetterState",
    "DeadLetters",
    "ReplayOutcome",
    "is_dead_letter",
]
