"""A poison message, end to end through real workers: parked by the redelivery cap, it becomes a
dead letter an operator can see (`ragfleet dlq list`, `GET /v1/admin/dead-letters`), replay once the
fault is gone (the job keeps its id and finishes `done` on its second attempt), and purge."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from typing import Any

import pytest

from ragfleet.dead_letters import DeadLetters
from ragfleet.events import JobEvents
from ragfleet.names import TaskName
from ragfleet.producer import enqueue
from ragfleet.redis_conn import get_redis
from ragfleet.schemas import JobStatus
from ragfleet.settings import Settings
from tests.chaos.conftest import ChaosFleet, isolated_settings, seed_documents, wait_terminal
from tests.chaos.test_crash_safety import CORPUS
from tests.conftest import REPO, settings_env
from tests.helpers import api_client

pytestmark = [pytest.mark.chaos, pytest.mark.redis, pytest.mark.workers, pytest.mark.model]

ADMIN, TENANT_KEY = f"admin-{uuid.uuid4().hex[:8]}", f"other-{uuid.uuid4().hex[:8]}"


def cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ragfleet.cli", "dlq", *args],
        env=settings_env(settings),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_parked_poison_message_is_listed_replayed_after_the_fix_and_purged(
    base_settings: Settings, tmp_path: Any, chaos_fleet_factory: Any
) -> None:
    marker = "POISON-PILL-dlq-" + uuid.uuid4().hex[:6]
    s = isolated_settings(base_settings, tmp_path, chaos_kill_marker=marker, max_redeliveries=1)
    seed_documents(s, CORPUS)
    fleet: ChaosFleet = chaos_fleet_factory(s)
    (retrieval, _gen) = fleet.start("retrieval-prefork", "generation")
    question = f"What is Redis? {marker}"
    job_id = enqueue(TaskName.QUERY, {"question": question}, settings=s)
    rec = wait_terminal(s, job_id, 180, fleet)
    assert rec.status == JobStatus.FAILED and rec.error is not None and rec.error.code == "worker_lost", rec
    assert rec.attempt == 1

    # recorded at the moment it was parked, with what a replay needs
    listed = cli(s, "list")
    assert listed.returncode == 0, listed.stderr
    (line,) = listed.stdout.splitlines()
    entry = json.loads(line)
    assert (entry["job_id"], entry["task"], entry["queue"], entry["tenant"]) == (
        job_id,
        "ragfleet.query",
        "retrieval",
        "default",
    )
    assert entry["parked"] is True and entry["code"] == "worker_lost"
    assert entry["deliveries"] == s.max_redeliveries + 2 and entry["node"].startswith("retrieval")
    shown = json.loads(cli(s, "show", entry["id"]).stdout)
    assert shown["payload"]["question"] == question

    # the fault is removed: the poisoned node goes, a node without the marker takes its queue
    retrieval.stop()
    fixed = s.model_copy(update={"chaos_kill_marker": ""})
    fixed_fleet: ChaosFleet = chaos_fleet_factory(fixed)
    fixed_fleet.start("retrieval-prefork")

    api = fixed.model_copy(
        update={"api_keys": f"{TENANT_KEY}:other", "admin_keys": ADMIN, "rate_limit": "10000/minute"}
    )
    admin = {"Authorization": f"Bearer {ADMIN}"}
    url = "/v1/admin/dead-letters"
    with api_client(api) as c:
        assert [e["id"] for e in c.get(url, headers=admin).json()["items"]] == [entry["id"]]
        assert c.post(f"{url}/{entry['id']}/replay", headers={"X-API-Key": TENANT_KEY}).status_code == 403
        t0 = time.time()
        replayed = c.post(f"{url}/{entry['id']}/replay", headers=admin)
        assert replayed.status_code == 202, replayed.text
        assert replayed.json()["job_id"] == job_id and replayed.json()["attempt"] == 2
        # same job id: the producer's poll follows the second attempt to its answer
        rec = wait_terminal(s, job_id, 90, fixed_fleet)
        assert rec.status == JobStatus.DONE, (rec, fleet.logs(), fixed_fleet.logs())
        assert rec.attempt == 2 and rec.error is None and rec.result is not None and rec.result["answer"]
        assert rec.stages["retrieval"].started_at > t0
        types = [e.type for e in JobEvents(get_redis(s), s).read(job_id)]
        assert types[types.index("error") + 1] == "replayed" and types[-1] == "done", types
        # a second replay does nothing
        assert c.post(f"{url}/{entry['id']}/replay", headers=admin).status_code == 409
        assert c.delete(url, headers={"X-API-Key": TENANT_KEY}).status_code == 403

    purged = cli(s, "purge", "--yes")
    assert purged.returncode == 0 and json.loads(purged.stdout) == {"purged": 1}, purged.stderr
    assert cli(s, "list").stdout == ""
    assert DeadLetters(get_redis(s), s).count() == 0
