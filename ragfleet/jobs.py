"""The job record in Redis: the one place a producer polls for status, stage timings and result.

A job is a Redis hash `<prefix>:job:<id>` with a TTL. Scalar fields are stored as strings and
nested ones as JSON, so a producer without our code can read it with HGETALL. Status moves forward
only: once a job is terminal (done, failed, cancelled) a late or redelivered task cannot reopen it.

The one exception is explicit: an operator's replay of a dead letter (`ragfleet.dead_letters`)
moves a terminal job back to `queued` through `JobStore.queue_reopen`, and nothing else does. The
job keeps its id (a producer's poll still works), its `attempt` counter (1 for the first run, absent
until a replay) goes up by one, its error and result are cleared, and its TTL starts again.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeAlias, cast

import redis
import redis.asyncio

from ragfleet import deadlines
from ragfleet.schemas import (
    TERMINAL,
    ErrorCode,
    JobError,
    JobRecord,
    JobStatus,
    StageTiming,
)
from ragfleet.settings import Settings

# commands queued on either client's pipeline are executed by whoever made it
AnyPipeline: TypeAlias = redis.client.Pipeline | redis.asyncio.client.Pipeline

# A job that asked for a callback (`ragfleet.callbacks`) carries its delivery's task message, built
# when it was submitted (`cb:msg`, to be LPUSHed onto `cb:list`). Whatever turns the job terminal
# pushes it in the same script: no ending path can miss it, and it costs the answer no round trip.
# The message's delivery tag (`cb:tag`) gets the job's `attempt` appended, so a replayed job's
# delivery is a message of its own. KEYS[1]: the job hash, after the update.
PUSH_CALLBACK = """
local cbm = redis.call('HGET', KEYS[1], 'cb:msg')
if cbm then
  local ns = redis.call('HGET', KEYS[1], 'status')
  if ns == 'done' or ns == 'failed' or ns == 'cancelled' then
    local tag = redis.call('HGET', KEYS[1], 'cb:tag')
    local att = redis.call('HGET', KEYS[1], 'attempt') or '1'
    local m = string.gsub(cbm, tag, tag .. 'a' .. att, 1)
    redis.call('LPUSH', redis.call('HGET', KEYS[1], 'cb:list'), m)
  end
end
"""

# Update fields only while the job is not terminal; returns 1 if applied, 0 if the job was terminal,
# -1 if it does not exist (expired or never created: nothing is written, so no key without a TTL).
# ARGV[1] names a counter field to increment with the update ("" for none).
_UPDATE_IF_OPEN = (
    """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local st = redis.call('HGET', KEYS[1], 'status')
if st == 'done' or st == 'failed' or st == 'cancelled' then return 0 end
for i = 2, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i+1]) end
if ARGV[1] ~= '' then redis.call('HINCRBY', KEYS[1], ARGV[1], 1) end
"""
    + PUSH_CALLBACK
    + """
return 1
"""
)

_TERMINAL_VALUES = {s.value for s in TERMINAL}

# The replay transition, the only way a terminal job moves again: terminal -> queued, `attempt`
# + 1 (an absent field is the first attempt), error and result cleared, a fresh TTL. KEYS: the job
# hash. ARGV: now, TTL. Returns the new attempt, 0 if the job is not terminal (nothing is written),
# -1 if it is gone.
_REOPEN = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local st = redis.call('HGET', KEYS[1], 'status')
if st ~= 'done' and st ~= 'failed' and st ~= 'cancelled' then return 0 end
local attempt = tonumber(redis.call('HGET', KEYS[1], 'attempt') or '1') + 1
redis.call('HDEL', KEYS[1], 'error', 'result')
redis.call('HSET', KEYS[1], 'status', 'queued', 'updated_at', ARGV[1], 'attempt', tostring(attempt))
redis.call('EXPIRE', KEYS[1], ARGV[2])
return attempt
"""


@dataclass(frozen=True, slots=True)
class JobCreate:
    """What `stage_start(create=...)` needs to create the record in the same round trip."""

    kind: str
    tenant: str = "default"
    request_id: str | None = None
    extra: dict[str, str] | None = None  # more fields, set only if absent (`traceparent`, a callback's)
    deadline: bool = False  # a query: its deadline too (ragfleet.deadlines), in the same MULTI


class JobStore:
    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self._r = client
        self._s = settings
        self._update = client.register_script(_UPDATE_IF_OPEN)

    def key(self, job_id: str) -> str:
        return self._s.key("job", job_id)

    def create(
        self,
        job_id: str,
        kind: str,
        *,
        tenant: str = "default",
        request_id: str | None = None,
        extra: dict[str, str] | None = None,
    ) -> JobStatus:
        """Idempotent: a redelivered task re-creating its job keeps the existing record. Returns the
        record's status after the call, read in the same round trip: a task checks it to skip a
        job that is already terminal without asking Redis again."""
        pipe = self._r.pipeline()
        self.queue_create(pipe, job_id, kind, tenant, request_id, extra)
        return JobStatus(str(pipe.execute()[-1]))

    def queue_create(
        self,
        pipe: AnyPipeline,
        job_id: str,
        kind: str,
        tenant: str,
        request_id: str | None,
        extra: dict[str, str] | None = None,
    ) -> None:
        """Queue the idempotent create (HSETNX each field, TTL) and a read of the status after it:
        the API queues it with the job's message (`enqueue_on`) in one MULTI."""
        now = repr(time.time())
        key = self.key(job_id)
        fields: dict[str, str] = {
            "job_id": job_id,
            "kind": kind,
            "status": JobStatus.QUEUED.value,
            "tenant": tenant,
            "created_at": now,
            "updated_at": now,
            "attempts": "0",
        }
        if request_id:
            fields["request_id"] = request_id
        if extra:
            fields.update(extra)
        for field, value in fields.items():
            pipe.hsetnx(key, field, value)
        pipe.expire(key, self._s.job_ttl_s)
        pipe.hget(key, "status")

    def put_done(
        self,
        pipe: AnyPipeline,
        job_id: str,
        kind: str,
        result: dict[str, Any],
        *,
        tenant: str = "default",
        request_id: str | None = None,
        extra: dict[str, str] | None = None,
    ) -> JobRecord:
        """Queue onto `pipe` the whole record of a new job that is done at birth (an answer served
        from the cache), so that creating and finishing it costs one round trip, not six; `extra`:
        more fields (a callback's, whose message is pushed here too)."""
        now = repr(time.time())
        fields = {
            "job_id": job_id,
            "kind": kind,
            "status": JobStatus.DONE.value,
            "tenant": tenant,
            "created_at": now,
            "updated_at": now,
            "attempts": "0",
            "result": json.dumps(result),
            **({"request_id": request_id} if request_id else {}),
        }
        if extra:
            fields.update(extra)
        pipe.hset(self.key(job_id), mapping=cast("dict[Any, Any]", fields))
        pipe.expire(self.key(job_id), self._s.job_ttl_s)
        if extra and "cb:msg" in extra:  # done at birth: its callback goes now (PUSH_CALLBACK's rule)
            tag = extra["cb:tag"]
            pipe.lpush(extra["cb:list"], extra["cb:msg"].replace(tag, tag + "a1", 1))
        return parse_record(fields)

    def _apply(
        self,
        job_id: str,
        fields: dict[str, str],
        pipe: redis.client.Pipeline | None = None,
        *,
        incr: str = "",
    ) -> int:
        """With `pipe`, the update is only queued (it runs with the pipeline; returns -2 here)."""
        fields = {**fields, "updated_at": repr(time.time())}
        argv: list[str] = [incr]
        for k, v in fields.items():
            argv += [k, v]
        if pipe is not None:
            # EVAL, not the Script object: a Script in a pipeline costs a SCRIPT EXISTS round trip
            # before every execute; Redis caches the compiled body by its SHA either way.
            pipe.eval(_UPDATE_IF_OPEN, 1, self.key(job_id), *argv)
            return -2
        return int(self._update(keys=[self.key(job_id)], args=argv))

    def set_status(self, job_id: str, status: JobStatus) -> bool:
        return self._apply(job_id, {"status": status.value}) == 1

    def stage_start(
        self,
        job_id: str,
        stage: str,
        queue: str,
        status: JobStatus,
        *,
        create: JobCreate | None = None,
        reads: Callable[[redis.client.Pipeline], None] | None = None,
    ) -> tuple[StageTiming, bool, list[Any]]:
        """One round trip: status, who runs the stage, and its attempt count. Returns the timing
        (keep it for `stage_fields`, so the end needs no read), whether the job is open (False if it
        is terminal already: cancelled, or finished by another delivery, or gone) and the replies
        to `reads`.

        With `create`, the record is first created (idempotently, as `create` does) in the same
        round trip: the first stage of a job sent by task name has no record yet. `reads` queues
        what the stage will need first (the index pointer, a cached query vector) onto the same
        round trip, instead of one round trip each once the stage has begun."""
        timing = self.local_start(queue)
        update = {"status": status.value, f"stage:{stage}": timing.model_dump_json()}
        if create is None and reads is None:
            return timing, self._apply(job_id, update, incr=f"attempts:{stage}") == 1, []
        # MULTI with a create: nobody sees the record created but not started
        pipe = self._r.pipeline(transaction=create is not None)
        if create is not None:
            self.queue_create(pipe, job_id, create.kind, create.tenant, create.request_id, create.extra)
            if create.deadline:
                deadlines.queue_deadline(pipe, self._s, job_id)
        at = len(pipe)
        self._apply(job_id, update, pipe, incr=f"attempts:{stage}")
        if reads is not None:
            reads(pipe)
        replies = pipe.execute()
        return timing, int(replies[at]) == 1, list(replies[at + 1 :])

    @staticmethod
    def local_start(queue: str) -> StageTiming:
        """A stage's start as this process sees it, written later (`stage_fields`)."""
        return StageTiming(
            worker=_HOSTNAME or socket.gethostname(), queue=queue, pid=os.getpid(), started_at=time.time()
        )

    def stage_fields(self, stage: str, timing: StageTiming, fields: dict[str, Any]) -> dict[str, str]:
        """End the stage's timing (its `ms`, from its start to now) and encode what its end writes:
        the timing and the stage's own `fields` (JSON). `update_on` or a finish writes them."""
        timing.ms = (time.time() - timing.started_at) * 1000.0
        out = {f"stage:{stage}": timing.model_dump_json()}
        out.update({k: json.dumps(v) for k, v in fields.items()})
        return out

    def update_on(self, pipe: redis.client.Pipeline, job_id: str, fields: dict[str, str]) -> None:
        """Queue an update of the record onto `pipe`, applied only while the job is open."""
        self._apply(job_id, fields, pipe)

    def finish(self, job_id: str, result: dict[str, Any]) -> bool:
        return self.finish_timed(job_id, result) is not None

    def finish_timed(self, job_id: str, result: dict[str, Any]) -> float | None:
        """Finish the job; returns its latency in ms (created to finished), or None if it was
        terminal already. One round trip: the update and the read of the timestamps are pipelined."""
        pipe = self._r.pipeline(transaction=False)
        self._apply(job_id, {"status": JobStatus.DONE.value, "result": json.dumps(result)}, pipe)
        pipe.hmget(self.key(job_id), ["created_at", "updated_at"])
        applied, (created, updated) = pipe.execute()
        if int(applied) != 1:
            return None
        return (float(updated) - float(created)) * 1000.0

    def fail(self, job_id: str, code: ErrorCode, message: str, *, retry_after: float | None = None) -> bool:
        err = JobError(code=code, message=message[:2_000], retry_after=retry_after)
        return self._apply(job_id, {"status": JobStatus.FAILED.value, "error": err.model_dump_json()}) == 1

    def cancel(self, job_id: str) -> bool:
        return self._apply(job_id, {"status": JobStatus.CANCELLED.value}) == 1

    def queue_reopen(self, pipe: AnyPipeline, job_id: str) -> None:
        """Queue onto `pipe` the replay transition (`_REOPEN`): a terminal job back to `queued`, its
        `attempt` + 1. Its reply is the new attempt, 0 if the job was open (nothing written), -1 if
        it is gone. Only `ragfleet.dead_letters.DeadLetters.replay` calls it, in the MULTI that also
        re-sends the job's message, so the record is never `queued` without a message to run it."""
        pipe.eval(_REOPEN, 1, self.key(job_id), repr(time.time()), self._s.job_ttl_s)

    def set_progress(self, job_id: str, **counts: int) -> None:
        self._apply(job_id, {f"progress:{k}": str(v) for k, v in counts.items()})

    def incr_progress(self, job_id: str, field: str, amount: int = 1) -> int:
        return int(self._r.hincrby(self.key(job_id), f"progress:{field}", amount))

    def set_field(self, job_id: str, field: str, value: Any) -> None:
        self._apply(job_id, {field: json.dumps(value)})

    def get_field(self, job_id: str, field: str) -> Any:
        raw = self._r.hget(self.key(job_id), field)
        return None if raw is None else json.loads(raw)

    def status(self, job_id: str) -> JobStatus | None:
        raw = self._r.hget(self.key(job_id), "status")
        return None if raw is None else JobStatus(str(raw))

    def is_terminal(self, job_id: str) -> bool:
        return self._r.hget(self.key(job_id), "status") in _TERMINAL_VALUES

    def get(self, job_id: str) -> JobRecord | None:
        raw: dict[str, str] = self._r.hgetall(self.key(job_id))  # type: ignore[assignment]
        if not raw:
            return None
        return parse_record(raw)


def parse_record(raw: dict[str, str]) -> JobRecord:
    stages = {
        k.split(":", 1)[1]: StageTiming.model_validate_json(v)
        for k, v in raw.items()
        if k.startswith("stage:")
    }
    progress = {k.split(":", 1)[1]: int(v) for k, v in raw.items() if k.startswith("progress:")}
    attempts = sum(int(v) for k, v in raw.items() if k.startswith("attempts:"))
    return JobRecord(
        job_id=raw["job_id"],
        kind=raw["kind"],
        status=JobStatus(raw["status"]),
        tenant=raw.get("tenant", "default"),
        request_id=raw.get("request_id"),
        created_at=float(raw["created_at"]),
        updated_at=float(raw["updated_at"]),
        stages=stages,
        progress=progress,
        result=json.loads(raw["result"]) if raw.get("result") else None,
        error=JobError.model_validate_json(raw["error"]) if raw.get("error") else None,
        attempts=attempts,
        attempt=int(raw.get("attempt", 1)),
    )


_HOSTNAME: str | None = None


def set_worker_hostname(name: str) -> None:
    """Celery's node name (e.g. `retrieval@host`) identifies the pool in stage timings."""
    global _HOSTNAME
    _HOSTNAME = name


def job_id_of(task_id: str, kwargs: Any) -> str:
    """The job a caller polls for a task: a hand-off task (`<job>:gen`) carries it in its payload;
    a task sent by name without one is its own job."""
    payload = (kwargs or {}).get("payload") if isinstance(kwargs, dict) else None
    if isinstance(payload, dict) and payload.get("job_id"):
        return str(payload["job_id"])
    return str(task_id).removesuffix(":gen")
