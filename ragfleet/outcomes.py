"""How a query or document job ends, the same way from every place that ends one: a task's body,
the Celery hooks in `workers` (a hard time limit, an exception no task handled, a parked poison
message, an expired or revoked message) and the API's cache path.

Ending a job is three writes that must not drift apart: the record turns terminal (only if it
was open: a late or redelivered task never overwrites an answer), stream readers get the terminal
event (which also wakes long polls), and the job's batch, if any, advances.
"""

from __future__ import annotations

import time
from typing import Any

import redis

from ragfleet import deadlines
from ragfleet.batch import on_query_finished
from ragfleet.events import finish_query
from ragfleet.resources import Resources
from ragfleet.schemas import ErrorCode


def fail_job(
    res: Resources, job_id: str, code: ErrorCode, message: str, *, retry_after: float | None = None
) -> bool:
    """Fail the job and tell any stream reader, so a streaming or long-polling client never waits
    in vain. Returns False (and writes nothing) if the job was terminal already or is gone."""
    message = message[:2_000]
    if not res.jobs.fail(job_id, code, message, retry_after=retry_after):
        return False
    res.events.emit(job_id, "error", {"code": code.value, "message": message, "retry_after": retry_after})
    on_query_finished(res.redis, res.settings, job_id, ok=False)
    return True


def fail_lost(res: Resources, *, now: float | None = None, batch: int = 100) -> list[str]:
    """The deadline sweep (`ragfleet.deadlines`): take the queries past their deadline and fail those
    still open with `lost`; returns the ids it failed. Safe to run from every node at once (each
    due job is taken by one sweeper only); a terminal or expired job is only dropped."""
    at = time.time() if now is None else now
    failed: list[str] = []
    while True:
        due = deadlines.take_due(res.redis, res.settings, at, batch)
        failed += [j for j in due if fail_job(res, j, ErrorCode.LOST, deadlines.LOST_MESSAGE, retry_after=1)]
        if len(due) < batch:
            return failed


def finish_with_answer(
    res: Resources,
    job_id: str,
    answer: dict[str, Any],
    *,
    replay: bool,
    fields: dict[str, str] | None = None,
    pipe: redis.client.Pipeline | None = None,
    incr: str = "",
) -> float | None:
    """Finish a query job (see ragfleet.events.finish_query) and advance its batch, if any.
    Returns the job's latency in ms, or None if it was terminal already."""
    latency_ms = finish_query(
        res.jobs, res.events, job_id, answer, replay=replay, fields=fields, pipe=pipe, incr=incr
    )
    if latency_ms is not None:
        on_query_finished(res.redis, res.settings, job_id, ok=True)
    return latency_ms
