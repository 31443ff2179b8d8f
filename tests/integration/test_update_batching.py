"""Single-document updates are gathered into batches before embedding; one bad document fails alone."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest

from ragfleet.names import TaskName
from ragfleet.producer import enqueue
from ragfleet.resources import Resources
from ragfleet.settings import Settings
from tests.helpers import wait_job

pytestmark = [pytest.mark.redis, pytest.mark.workers, pytest.mark.model]


def test_single_document_updates_are_embedded_in_batches(fleet: Any, base_settings: Settings) -> None:
    tenant = f"upd-{uuid.uuid4().hex[:6]}"
    docs = [
        {"id": f"u{i}", "title": f"Update {i}", "text": f"Update {i} says the broker retried task {i} twice."}
        for i in range(120)
    ]
    docs[7] = {"id": "u7", "text": "   "}  # invalid: blank text
    t0 = time.perf_counter()
    job_ids = [
        enqueue(TaskName.INDEX_DOCUMENT_SINGLE, {"document": d, "tenant": tenant}, settings=base_settings)
        for d in docs
    ]
    records = [wait_job(base_settings, j, timeout=120) for j in job_ids]
    elapsed = time.perf_counter() - t0

    failed = [r for r in records if r["status"] == "failed"]
    assert [r["job_id"] for r in failed] == [job_ids[7]]
    assert failed[0]["error"]["code"] == "invalid_document"
    done = [r for r in records if r["status"] == "done"]
    assert len(done) == 119
    sizes = [r["result"]["batched_with"] for r in done]
    print(
        f"\n120 single-document updates in {elapsed:.1f} s; batch sizes max={max(sizes)} "
        f"distinct versions={len({r['result']['index_version'] for r in done})}"
    )
    assert max(sizes) >= 10, "updates were not gathered into batches"
    assert len({r["result"]["index_version"] for r in done}) < 40

    res = Resources(base_settings)
    store = res.store(res.index_state.read().active)
    store.refresh()
    hashes = store.document_hashes(tenant, [d["id"] for d in docs])
    assert set(hashes) == {d["id"] for d in docs} - {"u7"}
    assert store.count(tenant) == 119
