"""A new job: its record and its message, in one MULTI (both or neither).

The one way the API, the Python client over the broker and batch dispatch start a job. What must
stay true: no job record without its message on the queue (a producer would poll a `queued` job
that never runs), and no message without its record (a worker would run a job nobody can read).
The broker is the job store's Redis (`require_one_redis`), so one MULTI holds both: the idempotent
create (`JobStore.queue_create`) and the LPUSH of the task message (`ragfleet.producer.enqueue_on`).
Redis runs the queued commands together at EXEC, or none if EXEC never arrives (a connection lost
or timed out before it). One round trip, no kombu publish, no worker thread in the API.

A failed `execute` leaves nothing behind, except when the reply is lost (a timeout): the MULTI
may then have run, and the caller decides what to tell its client (the API marks the job failed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio

from ragfleet import deadlines, tracing
from ragfleet.jobs import AnyPipeline, JobStore
from ragfleet.names import Priority, TaskName
from ragfleet.producer import enqueue_on
from ragfleet.settings import Settings


@dataclass(frozen=True, slots=True)
class NewJob:
    """What a job is born with: the task that runs it, its record's kind, owner and request id."""

    task: TaskName
    kind: str
    payload: dict[str, Any]
    job_id: str
    tenant: str
    request_id: str | None = None
    priority: Priority = Priority.DEFAULT
    extra: dict[str, str] | None = None


def require_one_redis(settings: Settings) -> None:
    """A MULTI cannot span two Redis servers (or two databases): with a broker elsewhere, a job's
    message would be pushed onto lists no worker reads. Fail loudly instead (the API at start-up)."""
    if settings.broker != settings.redis_url:
        raise ValueError(
            "the broker must be the job store's Redis (leave RAGFLEET_BROKER_URL unset, or equal to "
            f"RAGFLEET_REDIS_URL): a job's record and its message are written in one MULTI; got "
            f"broker {settings.broker!r}, job store {settings.redis_url!r}"
        )


def queue_new_job(pipe: AnyPipeline, jobs: JobStore, job: NewJob, settings: Settings) -> str:
    """Queue the record's create and the job's message onto `pipe` (sync or asyncio); returns the
    job id. The caller executes `pipe`, which must be a transaction for the both-or-neither rule."""
    require_one_redis(settings)
    attrs = {tracing.JOB_ID: job.job_id, tracing.TENANT: job.tenant}
    with tracing.span(f"enqueue {job.task.value}", kind=tracing.SpanKind.PRODUCER, **attrs):
        # the record keeps the job's trace context: a coalesced follower links to it (ragfleet.tracing)
        traced = tracing.record_fields()
        extra = {**(job.extra or {}), **traced} if traced else job.extra
        jobs.queue_create(pipe, job.job_id, job.kind, job.tenant, job.request_id, extra)
        if job.task is TaskName.QUERY:  # a lost message ends the job `lost` (ragfleet.deadlines)
            deadlines.queue_deadline(pipe, settings, job.job_id)
        enqueue_on(pipe, job.task, job.payload, settings=settings, job_id=job.job_id, priority=job.priority)
    return job.job_id


def submit_job(client: redis.Redis, jobs: JobStore, job: NewJob, settings: Settings) -> str:
    """`queue_new_job` in a MULTI on a synchronous client (the client library, batch dispatch)."""
    pipe = client.pipeline(transaction=True)
    queue_new_job(pipe, jobs, job, settings)
    pipe.execute()
    return job.job_id


async def submit_job_async(
    client: redis.asyncio.Redis, jobs: JobStore, job: NewJob, settings: Settings
) -> str:
    """`queue_new_job` in a MULTI on redis.asyncio (the API: no thread per request)."""
    pipe = client.pipeline(transaction=True)
    queue_new_job(pipe, jobs, job, settings)
    await pipe.execute()
    return job.job_id


__all__ = ["NewJob", "queue_new_job", "require_one_redis", "submit_job", "submit_job_async"]
