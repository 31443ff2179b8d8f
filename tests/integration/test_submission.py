"""`ragfleet.submission`, the one way a job starts (API, broker client, batch dispatch), against the
real Redis: the record and its Celery message are written by one MULTI, on the sync and the asyncio
client alike, and a batch question whose enqueue fails is still counted as failed."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from typing import Any

import pytest
import redis
import redis.asyncio

from ragfleet import batch as batch_module
from ragfleet.batch import Batches, item_job_id, normalize_questions
from ragfleet.client import BrokerTransport
from ragfleet.jobs import JobStore
from ragfleet.names import TASK_QUEUES, Priority, TaskName, priority_list
from ragfleet.schemas import JobStatus
from ragfleet.settings import Settings
from ragfleet.submission import NewJob, submit_job, submit_job_async

pytestmark = pytest.mark.redis


@pytest.fixture
def settings(base_settings: Settings, redis_client: redis.Redis) -> Settings:
    """A prefix of its own per test: the queue lists start empty."""
    prefix = f"{base_settings.key_prefix}-{uuid.uuid4().hex[:6]}"
    return base_settings.model_copy(update={"key_prefix": prefix, "broker_key_prefix": f"{prefix}:q:"})


@pytest.fixture
def client(settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(settings.redis_url, decode_responses=True)


def queued_messages(client: redis.Redis, settings: Settings, task: TaskName, priority: Priority) -> list[Any]:
    key = settings.broker_key_prefix + priority_list(TASK_QUEUES[task].value, int(priority))
    return [json.loads(raw) for raw in client.lrange(key, 0, -1)]


def payload_of(message: dict[str, Any]) -> dict[str, Any]:
    _args, kwargs, _embed = json.loads(base64.b64decode(message["body"]))
    payload: dict[str, Any] = kwargs["payload"]
    return payload


def count_transactions(monkeypatch: pytest.MonkeyPatch, cls: type[Any]) -> list[bool]:
    """Each `execute` of a pipeline class, noting whether it was a MULTI."""
    seen: list[bool] = []
    original = cls.execute

    def counting(self: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(bool(self.transaction))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, "execute", counting)
    return seen


def new_job(task: TaskName = TaskName.QUERY, priority: Priority = Priority.INTERACTIVE) -> NewJob:
    job_id = uuid.uuid4().hex
    return NewJob(task, "query", {"question": "q?", "tenant": "t1"}, job_id, "t1", "rid-1", priority)


def test_submit_job_writes_record_and_message_in_one_multi(
    client: redis.Redis, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    jobs = JobStore(client, settings)
    job = new_job()
    executes = count_transactions(monkeypatch, redis.client.Pipeline)
    assert submit_job(client, jobs, job, settings) == job.job_id
    assert executes == [True]
    record = jobs.get(job.job_id)
    assert record is not None
    assert (record.status, record.kind, record.tenant, record.request_id) == (
        JobStatus.QUEUED,
        "query",
        "t1",
        "rid-1",
    )
    [message] = queued_messages(client, settings, TaskName.QUERY, Priority.INTERACTIVE)
    assert message["headers"]["id"] == job.job_id
    assert message["headers"]["task"] == TaskName.QUERY.value
    assert payload_of(message) == {"job_id": job.job_id, "question": "q?", "tenant": "t1"}


def test_async_submit_writes_the_same_record_and_message(client: redis.Redis, settings: Settings) -> None:
    jobs = JobStore(client, settings)
    sync_job, async_job = new_job(), new_job()
    submit_job(client, jobs, sync_job, settings)

    async def submit() -> str:
        aclient = redis.asyncio.Redis.from_url(settings.redis_url, decode_responses=True)
        try:
            return await submit_job_async(aclient, jobs, async_job, settings)
        finally:
            await aclient.aclose()

    assert asyncio.run(submit()) == async_job.job_id
    records = [jobs.get(j.job_id) for j in (sync_job, async_job)]
    assert [(r.kind, r.tenant, r.request_id) for r in records if r] == [("query", "t1", "rid-1")] * 2
    messages = queued_messages(client, settings, TaskName.QUERY, Priority.INTERACTIVE)
    assert sorted(m["headers"]["id"] for m in messages) == sorted([sync_job.job_id, async_job.job_id])
    assert {m["properties"]["priority"] for m in messages} == {int(Priority.INTERACTIVE)}


def test_broker_client_starts_a_job_with_its_record_in_one_multi(
    client: redis.Redis, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    transport = BrokerTransport(settings)
    executes = count_transactions(monkeypatch, redis.client.Pipeline)
    job_id = transport.submit(
        TaskName.QUERY, {"question": "why?", "request_id": "r9"}, kind="query", priority=Priority.INTERACTIVE
    )
    assert executes == [True]
    record = transport.job(job_id)
    assert record is not None and (record["status"], record["tenant"]) == ("queued", settings.default_tenant)
    [message] = queued_messages(client, settings, TaskName.QUERY, Priority.INTERACTIVE)
    assert payload_of(message)["tenant"] == settings.default_tenant
    assert message["headers"]["id"] == job_id


def test_batch_questions_start_at_batch_priority_with_their_batch_id(
    client: redis.Redis, settings: Settings
) -> None:
    batches = Batches(client, settings)
    items = normalize_questions(["one?", "two?", "three?"], settings=settings, tenant="t2")
    batch_id = batches.submit(items, tenant="t2", request_id="rb", window=2)
    messages = queued_messages(client, settings, TaskName.QUERY, Priority.BATCH)
    assert [m["headers"]["id"] for m in messages] == [item_job_id(batch_id, 1), item_job_id(batch_id, 0)]
    first = JobStore(client, settings).get(item_job_id(batch_id, 0))
    assert first is not None and (first.status, first.tenant) == (JobStatus.QUEUED, "t2")
    assert client.hget(JobStore(client, settings).key(item_job_id(batch_id, 0)), "batch_id") == batch_id
    assert payload_of(messages[-1])["batch_id"] == batch_id


def test_a_batch_question_whose_enqueue_fails_is_failed_and_counted(
    client: redis.Redis, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broker_down(*args: Any, **kwargs: Any) -> str:
        raise redis.exceptions.ConnectionError("broker down")

    monkeypatch.setattr(batch_module, "submit_job", broker_down)
    batches = Batches(client, settings)
    items = normalize_questions(["one?", "two?"], settings=settings, tenant="t3")
    batch_id = batches.submit(items, tenant="t3", window=2)
    jobs = JobStore(client, settings)
    for i in range(2):
        record = jobs.get(item_job_id(batch_id, i))
        assert record is not None and record.status == JobStatus.FAILED
        assert record.error is not None and "could not enqueue" in record.error.message
    status = batches.status(batch_id, reconcile=False)
    assert status is not None and (status.failed, status.done, status.status) == (2, 0, "done")
    assert queued_messages(client, settings, TaskName.QUERY, Priority.BATCH) == []


def test_a_broker_on_another_redis_is_refused(client: redis.Redis, settings: Settings) -> None:
    elsewhere = settings.model_copy(update={"broker_url": "redis://127.0.0.1:6380/0"})
    with pytest.raises(ValueError, match="one MULTI"):
        submit_job(client, JobStore(client, elsewhere), new_job(), elsewhere)
    assert queued_messages(client, elsewhere, TaskName.QUERY, Priority.INTERACTIVE) == []
