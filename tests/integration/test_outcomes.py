"""How a job ends (ragfleet/outcomes.py) on a real Redis: the record, the stream and the batch move
together, exactly once, and a late ending never overwrites an earlier one."""

from __future__ import annotations

import uuid

import pytest

from ragfleet.batch import Batches, item_job_id
from ragfleet.outcomes import fail_job, finish_with_answer
from ragfleet.resources import Resources
from ragfleet.schemas import ErrorCode, JobStatus
from ragfleet.settings import Settings
from tests.helpers import isolated

pytestmark = pytest.mark.redis

ANSWER = {"answer": "42 [1]", "sources": [{"n": 1, "doc_id": "d"}]}


@pytest.fixture
def res(base_settings: Settings) -> Resources:
    return Resources(isolated(base_settings, "outcomes"))


def new_job(res: Resources) -> str:
    job_id = uuid.uuid4().hex
    res.jobs.create(job_id, "query")
    return job_id


def event_types(res: Resources, job_id: str) -> list[str]:
    return [e.type for e in res.events.read(job_id)]


def test_failing_an_open_job_records_the_error_and_tells_stream_readers(res: Resources) -> None:
    job_id = new_job(res)
    assert fail_job(res, job_id, ErrorCode.RETRIEVAL_FAILED, "store unreachable", retry_after=2.0)
    rec = res.jobs.get(job_id)
    assert rec is not None and rec.status == JobStatus.FAILED
    assert rec.error is not None
    assert (rec.error.code, rec.error.message, rec.error.retry_after) == (
        ErrorCode.RETRIEVAL_FAILED,
        "store unreachable",
        2.0,
    )
    [event] = res.events.read(job_id)
    assert event.type == "error"
    assert event.data == {"code": "retrieval_failed", "message": "store unreachable", "retry_after": 2.0}


def test_a_second_failure_writes_nothing(res: Resources) -> None:
    job_id = new_job(res)
    assert fail_job(res, job_id, ErrorCode.TIMEOUT, "first")
    assert not fail_job(res, job_id, ErrorCode.WORKER_LOST, "second")
    rec = res.jobs.get(job_id)
    assert rec is not None and rec.error is not None and rec.error.message == "first"
    assert event_types(res, job_id) == ["error"]


def test_failing_a_job_that_does_not_exist_writes_nothing(res: Resources) -> None:
    job_id = uuid.uuid4().hex
    assert not fail_job(res, job_id, ErrorCode.TIMEOUT, "expired long ago")
    assert res.jobs.get(job_id) is None
    assert not res.redis.exists(res.events.key(job_id)), "no stream (and no key without a TTL) for a ghost"


def test_long_failure_messages_are_cut_to_2000_characters(res: Resources) -> None:
    job_id = new_job(res)
    assert fail_job(res, job_id, ErrorCode.INTERNAL, "x" * 5_000)
    rec = res.jobs.get(job_id)
    assert rec is not None and rec.error is not None and len(rec.error.message) == 2_000
    assert len(res.events.read(job_id)[0].data["message"]) == 2_000


def test_an_answer_finishes_the_job_once_and_a_late_failure_cannot_overwrite_it(res: Resources) -> None:
    job_id = new_job(res)
    latency = finish_with_answer(res, job_id, ANSWER, replay=True)
    assert latency is not None and latency >= 0
    assert event_types(res, job_id) == ["sources", "answer_chunk", "done"]
    assert finish_with_answer(res, job_id, {"answer": "other"}, replay=True) is None
    assert not fail_job(res, job_id, ErrorCode.WORKER_LOST, "redelivered after the answer")
    rec = res.jobs.get(job_id)
    assert rec is not None and rec.status == JobStatus.DONE and rec.result == ANSWER and rec.error is None
    assert event_types(res, job_id) == ["sources", "answer_chunk", "done"], "nothing emitted twice"


def test_an_answer_without_replay_only_closes_the_stream(res: Resources) -> None:
    """A generation worker streamed the answer already: only the terminal event is added."""
    job_id = new_job(res)
    assert finish_with_answer(res, job_id, ANSWER, replay=False) is not None
    assert event_types(res, job_id) == ["done"]


def test_ending_batch_questions_advances_their_batch_to_its_end(res: Resources) -> None:
    batches = Batches(res.redis, res.settings)
    batch_id = batches.submit(
        [{"question": "one"}, {"question": "two"}], tenant="default", window=2
    )  # both dispatched to this test's own queues: no worker takes them
    first, second = item_job_id(batch_id, 0), item_job_id(batch_id, 1)
    assert res.jobs.status(first) == JobStatus.QUEUED and res.jobs.status(second) == JobStatus.QUEUED

    assert finish_with_answer(res, first, ANSWER, replay=True) is not None
    mid = batches.status(batch_id, reconcile=False)
    assert mid is not None and (mid.status, mid.done, mid.failed) == ("running", 1, 0)

    assert fail_job(res, second, ErrorCode.RETRIEVAL_FAILED, "store unreachable")
    end = batches.status(batch_id, reconcile=False)
    assert end is not None and (end.status, end.done, end.failed) == ("done", 1, 1)

    assert not fail_job(res, first, ErrorCode.WORKER_LOST, "late"), "a late ending is not counted again"
    again = batches.status(batch_id, reconcile=False)
    assert again is not None and (again.done, again.failed) == (1, 1)
