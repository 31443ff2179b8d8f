"""A stage of a job (retrieval, generation, indexing, ...): its bookkeeping in the job record.

A stage writes its start and its end in one round trip each, and whatever the stage queued on the
way (cache entries, events, the next stage's message) goes out with its end: see `stage`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import redis

from ragfleet.events import EventType
from ragfleet.jobs import JobCreate
from ragfleet.outcomes import finish_with_answer
from ragfleet.resources import Resources
from ragfleet.schemas import ErrorCode, JobStatus


@dataclass(slots=True)
class StageRun:
    """What a stage hands back: its duration, and `fields` for the job record that are written
    with the stage's end, in the same round trip."""

    pipe: redis.client.Pipeline  # writes queued here go out with the stage's end (cache entries)
    fields: dict[str, Any] = field(default_factory=dict)
    events: list[tuple[EventType, dict[str, Any]]] = field(default_factory=list)  # emitted at the end
    answer: dict[str, Any] | None = None  # set by the last stage: the job is finished with its end
    latency_ms: float | None = None  # with `answer`: the job's latency, None if it was terminal
    ms: float = 0.0
    seconds: float = 0.0
    open: bool = True  # False: the job was terminal when the stage began; do no work for it
    reads: list[Any] = field(default_factory=list)  # replies to `stage(reads=...)`, from its start
    # queued after the end's own writes, in the same round trip: the next stage's message
    then: Callable[[redis.client.Pipeline], None] | None = None
    status: JobStatus | None = None  # the job's status from the end on (a hand-off: the next stage's)
    # the end's writes stay queued on `pipe` (not sent): the next stage, run in this process at once,
    # gets `pipe` (`stage(pipe=...)`) and sends them with its own end, in one round trip
    defer: bool = False


@contextmanager
def stage(
    res: Resources,
    job_id: str,
    name: str,
    queue: str,
    status: JobStatus,
    *,
    create: JobCreate | None = None,
    reads: Callable[[redis.client.Pipeline], None] | None = None,
    start_with_end: bool = False,
    pipe: redis.client.Pipeline | None = None,
) -> Iterator[StageRun]:
    """Stage bookkeeping in two round trips: one to start it (creating the record first, with
    `create`, and reading what the stage needs first, with `reads`: replies in `run.reads`), one to
    end it with its `fields`, `events` and whatever was queued on `pipe` (what would otherwise be a
    write each on the query's critical path). A stage that sets `answer` finishes the job in that
    same last round trip. A stage of a terminal job writes nothing.

    `start_with_end`: one round trip, for a last stage whose work costs less than a round trip
    (the extractive answer, ~1 ms): its start (worker, pid, `started_at`, attempt count) is written
    with the finish, and a job that turned terminal meanwhile is left as it is by the finish itself
    (atomic, in Redis), so `run.open` is True and the work is done regardless. Whatever must not run
    for a cancelled job (a paid LLM call), or must show in the record while it runs, starts as usual.

    `pipe`: a previous stage's end, deferred (`StageRun.defer`), goes out first in this stage's end;
    only with `start_with_end` (a start of its own would reach Redis before the previous end)."""
    if pipe is not None and not start_with_end:
        raise ValueError("a deferred stage end can only be sent with a stage that starts with its end")
    replies: list[Any] = []
    if start_with_end:
        timing, is_open = res.jobs.local_start(queue), True
    else:
        timing, is_open, replies = res.jobs.stage_start(
            job_id, name, queue, status, create=create, reads=reads
        )
    run = StageRun(
        pipe=pipe if pipe is not None else res.redis.pipeline(transaction=False), open=is_open, reads=replies
    )
    t0 = time.perf_counter()
    try:
        yield run
    finally:
        if run.open:
            fields = res.jobs.stage_fields(name, timing, run.fields)
            if run.status is not None:
                fields["status"] = run.status.value
            run.ms = timing.ms or 0.0
            if run.answer is not None:
                incr = f"attempts:{name}" if start_with_end else ""
                run.latency_ms = finish_with_answer(
                    res, job_id, run.answer, replay=False, fields=fields, pipe=run.pipe, incr=incr
                )
            else:
                res.jobs.update_on(run.pipe, job_id, fields)
                for type_, data in run.events:
                    res.events.emit_to(run.pipe, job_id, type_, data)
                if run.then is not None:
                    run.then(run.pipe)
                if not run.defer:
                    run.pipe.execute()
        run.seconds = time.perf_counter() - t0


def error_result(job_id: str, code: ErrorCode, message: str) -> dict[str, Any]:
    """What a task returns for a failed job (its record holds the same error)."""
    return {
        "job_id": job_id,
        "status": JobStatus.FAILED.value,
        "error": {"code": code.value, "message": message},
    }
