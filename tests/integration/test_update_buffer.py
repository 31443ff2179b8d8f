"""Single-document updates gathered into batches (ragfleet/update_buffer.py): a real Redis, a real
LanceDB store in a temporary directory, and a stand-in encoder (tests/helpers.HashingEmbedder) so
the batching logic is checked without loading the model. The worker path with the real model is
tests/integration/test_update_batching.py."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from ragfleet.resources import Resources
from ragfleet.schemas import ErrorCode, JobStatus
from ragfleet.settings import Settings
from ragfleet.update_buffer import FlushReport, UpdateBuffer
from tests.helpers import HashingEmbedder, isolated

pytestmark = pytest.mark.redis


@pytest.fixture
def res(base_settings: Settings, tmp_path: Path) -> Resources:
    r = Resources(isolated(base_settings, "updates", data_dir=tmp_path, update_batch_size=3))
    r.__dict__["embedder"] = HashingEmbedder()
    return r


def add(buf: UpdateBuffer, doc_id: str, text: str | None = None, tenant: str = "default") -> str:
    job_id = uuid.uuid4().hex
    buf.res.jobs.create(job_id, "index", tenant=tenant)
    doc = {"id": doc_id, "text": text if text is not None else f"Document {doc_id} is about queues."}
    buf.add({"job_id": job_id, "tenant": tenant, "document": doc})
    return job_id


def test_a_flush_indexes_everything_pending_in_batches_and_finishes_each_job(res: Resources) -> None:
    buf = UpdateBuffer(res)
    jobs = [add(buf, f"d{i}", tenant="a" if i % 2 else "b") for i in range(7)]
    assert buf.pending() == 7

    assert buf.flush() == FlushReport(batches=3, documents=7, failed=0)

    assert buf.pending() == 0
    results = [res.jobs.get(j) for j in jobs]
    assert all(r is not None and r.status == JobStatus.DONE for r in results)
    assert [r.result["batched_with"] for r in results if r and r.result] == [3, 3, 3, 3, 3, 3, 1]
    assert [r.result["document_id"] for r in results if r and r.result] == [f"d{i}" for i in range(7)]
    store, _ = res.live_store()
    assert (store.count("a"), store.count("b")) == (3, 4), "each update lands in its own tenant"
    assert res.embedder.calls == 7  # type: ignore[attr-defined]


def test_an_invalid_update_fails_its_own_job_and_the_rest_of_its_batch_is_indexed(res: Resources) -> None:
    buf = UpdateBuffer(res)
    ok1, bad, ok2 = add(buf, "ok1"), add(buf, "bad", text="   "), add(buf, "ok2")

    assert buf.flush() == FlushReport(batches=1, documents=3, failed=1)

    rec = res.jobs.get(bad)
    assert rec is not None and rec.status == JobStatus.FAILED
    assert rec.error is not None and rec.error.code == ErrorCode.INVALID_DOCUMENT
    for job in (ok1, ok2):
        done = res.jobs.get(job)
        assert done is not None and done.status == JobStatus.DONE
    assert res.live_store()[0].count("default") == 2


class FailingEmbedder(HashingEmbedder):
    def encode(self, texts: list[str], *, batch_size: int | None = None) -> NDArray[np.float32]:
        raise RuntimeError("the flusher dies here")


def test_a_flush_that_dies_mid_batch_leaves_the_batch_for_the_next_flush(res: Resources) -> None:
    buf = UpdateBuffer(res)
    jobs = [add(buf, f"d{i}") for i in range(2)]
    res.__dict__["embedder"] = FailingEmbedder()
    with pytest.raises(RuntimeError, match="dies here"):
        buf.flush()
    assert buf.pending() == 2, "removed only after the batch is indexed"
    assert all(res.jobs.status(j) == JobStatus.QUEUED for j in jobs)

    res.__dict__["embedder"] = HashingEmbedder()
    assert buf.flush() == FlushReport(batches=1, documents=2, failed=0), "the lock was released"
    assert all(res.jobs.status(j) == JobStatus.DONE for j in jobs)


def test_only_one_flusher_runs_at_a_time(res: Resources) -> None:
    buf = UpdateBuffer(res)
    add(buf, "d0")
    other = res.redis.lock(buf.lock_key, timeout=30)
    assert other.acquire(blocking=False)
    try:
        assert buf.flush() is None
        assert buf.pending() == 1
    finally:
        other.release()
    assert buf.flush() == FlushReport(batches=1, documents=1, failed=0)


def test_one_timed_flush_is_scheduled_per_wait_window(res: Resources) -> None:
    buf = UpdateBuffer(res)
    assert buf.claim_schedule() is True
    assert buf.claim_schedule() is False, "the second update of the window schedules nothing"
    add(buf, "d0")
    buf.flush()
    assert buf.claim_schedule() is True, "a flush opens the next window"
    ttl_ms = res.redis.pttl(buf.flag_key)
    # a flush task that is lost cannot block the next window forever
    assert 0 < ttl_ms <= (res.settings.update_max_wait_s + 30) * 1000


def test_updates_are_kept_as_json_in_arrival_order(res: Resources) -> None:
    buf = UpdateBuffer(res)
    first, second = add(buf, "x"), add(buf, "y")
    raw: list[Any] = res.redis.lrange(buf.list_key, 0, -1)
    assert [json.loads(x)["job_id"] for x in raw] == [first, second]
