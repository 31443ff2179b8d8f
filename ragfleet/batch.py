"""Batch query jobs: thousands of questions answered with bounded fan-out at batch priority.

A batch is a job record of kind "batch" (`<prefix>:job:<batch_id>`, progress done/failed/total)
plus three Redis keys under `<prefix>:batch:<batch_id>:`: `questions` (a list of normalized query
payloads in input order), `cursor` (how many have been dispatched) and `inflight` (indices
dispatched but not yet counted). Question `i` runs as an ordinary query job with the id
`item_job_id(batch_id, i)`, so results are read back in input order with no index of their own.

Why a window instead of enqueueing everything: 10,000 queued batch messages would sit in front of
nobody (interactive queries have a higher priority) but would expire, pin memory in the broker and
make cancellation a hunt through the queue. With a window only `Settings.batch_window` questions of
a batch are ever queued or running; each finishing question (the hook in `ragfleet.outcomes`) claims and
dispatches the next. Claiming and counting happen in one Lua script: a question is counted once
even when its job is finished twice (coalesced followers, redelivery), and a cancelled batch
dispatches nothing more.

A question whose job ends on a path that never reaches the hook (an expired message, a parked
poison message) would leave the window one short for ever; `reconcile` (called whenever anyone
reads the batch status) counts such terminal items and refills the window.

This module must stay light: the API and the client import it (no torch, no store).
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from ragfleet.batch_input import BatchError, normalize_questions, parse_jsonl
from ragfleet.callbacks import record_fields
from ragfleet.jobs import JobStore, parse_record
from ragfleet.names import Priority, TaskName
from ragfleet.schemas import TERMINAL, BatchDispatchPayload, ErrorCode, JobStatus
from ragfleet.settings import Settings
from ragfleet.submission import NewJob, submit_job

log = logging.getLogger(__name__)

_TERMINAL_VALUES = {s.value for s in TERMINAL}

# KEYS: job hash, inflight set, cursor.  ARGV: index (-1: none finished), outcome field, claims wanted.
# Returns {complete, claimed...}: complete is 1 once every question is counted.
_COMPLETE_AND_CLAIM = """
local idx = tonumber(ARGV[1])
if idx >= 0 then
  if redis.call('SREM', KEYS[2], idx) == 0 then return {-1} end
  redis.call('HINCRBY', KEYS[1], 'progress:' .. ARGV[2], 1)
end
local total = tonumber(redis.call('HGET', KEYS[1], 'progress:total') or '0')
local st = redis.call('HGET', KEYS[1], 'status')
local out = {0}
if st ~= 'cancelled' and st ~= 'done' and st ~= 'failed' then
  for i = 1, tonumber(ARGV[3]) do
    local c = tonumber(redis.call('GET', KEYS[3]) or '0')
    if c >= total then break end
    redis.call('SET', KEYS[3], c + 1, 'KEEPTTL')
    redis.call('SADD', KEYS[2], c)
    out[#out + 1] = c
  end
end
local done = tonumber(redis.call('HGET', KEYS[1], 'progress:done') or '0')
local failed = tonumber(redis.call('HGET', KEYS[1], 'progress:failed') or '0')
if done + failed >= total then out[1] = 1 end
return out
"""


def item_job_id(batch_id: str, index: int) -> str:
    return f"{batch_id}.{index}"


@dataclass(frozen=True, slots=True)
class BatchStatus:
    batch_id: str
    status: str
    tenant: str
    total: int
    done: int
    failed: int
    dispatched: int
    created_at: float
    updated_at: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "batch_id": self.batch_id,
            "status": self.status,
            "progress": {
                "total": self.total,
                "done": self.done,
                "failed": self.failed,
                "dispatched": self.dispatched,
            },
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }


class Batches:
    """Create, advance, read and cancel batches. Safe to use from any process (API, client, worker)."""

    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self._r = client
        self._s = settings
        self.jobs = JobStore(client, settings)
        self._step = client.register_script(_COMPLETE_AND_CLAIM)

    def key(self, batch_id: str, part: str) -> str:
        return self._s.key("batch", batch_id, part)

    # --- create ---------------------------------------------------------------------------------
    def submit(
        self,
        questions: Sequence[dict[str, Any]],
        *,
        tenant: str,
        request_id: str | None = None,
        batch_id: str | None = None,
        window: int | None = None,
        extra: dict[str, str] | None = None,
    ) -> str:
        """Store normalized questions (see `normalize_questions`) and dispatch the first window.

        Idempotent for a given `batch_id` (a redelivered dispatch task): questions are stored once.
        """
        batch_id = batch_id or f"b{uuid.uuid4().hex}"
        ttl = self._s.job_ttl_s
        qkey = self.key(batch_id, "questions")
        self.jobs.create(
            batch_id,
            "batch",
            tenant=tenant,
            request_id=request_id,
            extra={
                "progress:total": str(len(questions)),
                "progress:done": "0",
                "progress:failed": "0",
                **(extra or {}),
            },
        )
        if self._r.set(self.key(batch_id, "stored"), "1", nx=True, ex=ttl):
            pipe = self._r.pipeline(transaction=False)
            pipe.delete(qkey)
            for start in range(0, len(questions), 500):
                chunk = questions[start : start + 500]
                pipe.rpush(qkey, *(json.dumps(q, separators=(",", ":")) for q in chunk))
            pipe.expire(qkey, ttl)
            pipe.set(self.key(batch_id, "cursor"), 0, ex=ttl, nx=True)
            pipe.execute()
            self.jobs.set_status(batch_id, JobStatus.RUNNING)
        self.advance(batch_id, None, claims=window or self._s.batch_window)
        return batch_id

    # --- advance --------------------------------------------------------------------------------
    def advance(self, batch_id: str, index: int | None, *, ok: bool = True, claims: int = 1) -> None:
        """Count question `index` (if given) as done or failed, then dispatch up to `claims` more."""
        keys = [self.jobs.key(batch_id), self.key(batch_id, "inflight"), self.key(batch_id, "cursor")]
        args = [-1 if index is None else index, "done" if ok else "failed", claims]
        out = [int(x) for x in self._step(keys=keys, args=args)]
        if out[0] == -1:
            return  # counted before: a second finish of the same question
        for i in out[1:]:
            self._dispatch(batch_id, i)
        if out[0] == 1 and self.jobs.is_terminal(batch_id) is False:
            self._complete(batch_id)

    def _complete(self, batch_id: str) -> None:
        st = self.status(batch_id, reconcile=False)
        if st is not None:
            self.jobs.finish(batch_id, {"total": st.total, "done": st.done, "failed": st.failed})

    def _dispatch(self, batch_id: str, index: int) -> None:
        raw = self._r.lindex(self.key(batch_id, "questions"), index)
        # the client is built with decode_responses=True (get_redis), so these are str
        tenant_raw, rid_raw = self._r.hmget(self.jobs.key(batch_id), ["tenant", "request_id"])
        tenant = str(tenant_raw or self._s.default_tenant)
        request_id = None if rid_raw is None else str(rid_raw)
        job_id = item_job_id(batch_id, index)
        extra = {"batch_id": batch_id}
        if raw is None:  # expired with its batch: count it so the batch can end
            self.jobs.create(job_id, "query", tenant=tenant, request_id=request_id, extra=extra)
            self.jobs.fail(job_id, ErrorCode.NOT_FOUND, "batch question expired")
            self.advance(batch_id, index, ok=False, claims=0)
            return
        q = {k: v for k, v in json.loads(raw).items() if k != "id"}
        payload = {**q, "tenant": tenant, "batch_id": batch_id, "request_id": request_id}
        job = NewJob(TaskName.QUERY, "query", payload, job_id, tenant, request_id, Priority.BATCH, extra)
        try:
            submit_job(self._r, self.jobs, job, self._s)
        except Exception as exc:  # a broker blip must not strand the whole batch
            log.warning("batch %s: could not enqueue question %d: %s", batch_id, index, exc)
            # count it, but claim nothing: a dead broker must not cascade through the whole batch
            # (`reconcile` refills an empty window later). The record is created here (the MULTI
            # left none) so that the failure is counted and readable in the results.
            self.jobs.create(job_id, "query", tenant=tenant, request_id=request_id, extra=extra)
            if self.jobs.fail(job_id, ErrorCode.UNAVAILABLE, f"could not enqueue: {exc}"):
                self.advance(batch_id, index, ok=False, claims=0)

    def on_job_finished(self, job_id: str, *, ok: bool) -> None:
        """The worker hook: called after a query job became terminal. No-op unless it is a batch item
        (whose job id is `<batch id>.<index>`: any other id is known not to be one without a read)."""
        _, dot, index = job_id.rpartition(".")
        if not dot or not index.isdigit():
            return
        batch_id = self._r.hget(self.jobs.key(job_id), "batch_id")
        if batch_id:
            self.advance(str(batch_id), int(index), ok=ok)

    def reconcile(self, batch_id: str) -> None:
        """Count in-flight items that ended without passing the hook, and refill the window."""
        inflight: set[str] = self._r.smembers(self.key(batch_id, "inflight"))  # type: ignore[assignment]
        for raw in inflight:
            index = int(raw)
            status = self.jobs.status(item_job_id(batch_id, index))
            if status is not None and status.value in _TERMINAL_VALUES:
                self.advance(batch_id, index, ok=status == JobStatus.DONE)
        if not inflight:
            self.advance(batch_id, None, claims=self._s.batch_window)

    # --- read -----------------------------------------------------------------------------------
    def status(self, batch_id: str, *, reconcile: bool = True) -> BatchStatus | None:
        if reconcile and self.jobs.status(batch_id) == JobStatus.RUNNING:
            self.reconcile(batch_id)
        # progress and cursor in one MULTI: a question finishing between two reads would count its
        # successor's claim but not itself, and show one more in flight than the window allows
        pipe = self._r.pipeline(transaction=True)
        pipe.hgetall(self.jobs.key(batch_id))
        pipe.get(self.key(batch_id, "cursor"))
        raw, cursor = pipe.execute()
        rec = parse_record(raw) if raw else None
        if rec is None or rec.kind != "batch":
            return None
        p = rec.progress
        return BatchStatus(
            batch_id=batch_id,
            status=rec.status.value,
            tenant=rec.tenant,
            total=p.get("total", 0),
            done=p.get("done", 0),
            failed=p.get("failed", 0),
            dispatched=min(int(cursor or 0), p.get("total", 0)),
            created_at=rec.created_at,
            updated_at=rec.updated_at,
        )

    def results(self, batch_id: str, *, chunk: int = 200) -> Iterator[dict[str, Any]]:
        """One entry per question, in input order; unfinished ones carry their current status."""
        st = self.status(batch_id, reconcile=False)
        if st is None:
            return
        qkey = self.key(batch_id, "questions")
        for start in range(0, st.total, chunk):
            stop = min(st.total, start + chunk)
            questions = self._r.lrange(qkey, start, stop - 1)
            pipe = self._r.pipeline(transaction=False)
            for i in range(start, stop):
                pipe.hmget(self.jobs.key(item_job_id(batch_id, i)), ["status", "result", "error"])
            rows = pipe.execute()
            for offset, (status, result, error) in enumerate(rows):
                i = start + offset
                q = json.loads(questions[offset]) if offset < len(questions) else {}
                if status is None:
                    status = "cancelled" if st.status == JobStatus.CANCELLED.value else "pending"
                entry: dict[str, Any] = {
                    "index": i,
                    "job_id": item_job_id(batch_id, i),
                    "question": q.get("question"),
                    "status": status,
                    "result": json.loads(result) if result else None,
                    "error": json.loads(error) if error else None,
                }
                if "id" in q:
                    entry["id"] = q["id"]
                if status == "cancelled" and entry["error"] is None:
                    entry["error"] = {"code": ErrorCode.CANCELLED.value, "message": "batch cancelled"}
                yield entry

    # --- cancel ---------------------------------------------------------------------------------
    def cancel(self, batch_id: str) -> bool:
        """Stop dispatching; questions already in flight may still finish (and are counted)."""
        return self.jobs.cancel(batch_id)


def on_query_finished(client: redis.Redis, settings: Settings, job_id: str, *, ok: bool) -> None:
    """The hook the workers call once a query job is terminal: advances its batch, if it has one.

    Never raises: the answer is already stored, and a missed step is repaired by `reconcile`.
    """
    try:
        Batches(client, settings).on_job_finished(job_id, ok=ok)
    except Exception:
        log.exception("batch progress for job %s failed; reconcile will repair it", job_id)


def submit_payload(client: redis.Redis, settings: Settings, p: BatchDispatchPayload) -> dict[str, Any]:
    """What the dispatch task does: validate every question, store them, dispatch the first window.

    A rejected batch is a failed batch record with the reasons, so a by-name producer sees them too.
    """
    batches = Batches(client, settings)
    batch_id = p.job_id or f"b{uuid.uuid4().hex}"
    defaults = {"top_k": p.top_k, "mode": p.mode, "use_cache": p.use_cache}
    try:
        items = normalize_questions(p.questions, settings=settings, tenant=p.tenant, defaults=defaults)
    except BatchError as exc:
        batches.jobs.create(batch_id, "batch", tenant=p.tenant, request_id=p.request_id)
        message = f"{exc}: {json.dumps(exc.errors)}"[:2_000]
        batches.jobs.fail(batch_id, ErrorCode.INVALID_PAYLOAD, message)
        return {
            "job_id": batch_id,
            "status": "failed",
            "error": {"code": "invalid_payload", "message": message},
        }
    extra = record_fields(settings, batch_id, p.tenant, p)  # tasks._common.parse refused a bad one
    batches.submit(items, tenant=p.tenant, request_id=p.request_id, batch_id=batch_id, extra=extra)
    return {"job_id": batch_id, "status": "running", "total": len(items)}


# `BatchError`, `normalize_questions` and `parse_jsonl` live in `ragfleet.batch_input`; importing
# them from here keeps working.
__all__ = [
    "BatchDispatchPayload",
    "BatchError",
    "BatchStatus",
    "Batches",
    "item_job_id",
    "normalize_questions",
    "on_query_finished",
    "parse_jsonl",
    "submit_payload",
]
