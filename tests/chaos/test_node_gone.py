"""A node that dies holding a query and never comes back under its name (a rescheduled pod, a host
gone): the query is terminal within its expiry + 10 s, not after the 300 s visibility timeout.

workers/inflight.py: every node keeps a liveness key and its in-flight set; a live node's sweep puts
back on its queue what a node without a liveness key held. Answered by another node while the query
is still in time; else Celery revokes it as expired on receipt and the job fails `worker_lost`
with a message that says its worker died. The interactive visibility timeout stays at 300 s here,
so kombu's own sweep cannot be what brings the message back. Run with `RAGFLEET_NODE_GONE_SWEEP_S=0`
in the environment of the workers (the `extra_env` below), both tests fail: nothing restores the
message before the timeout.
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from typing import Any

import pytest

from ragfleet.names import TaskName
from ragfleet.redis_conn import get_redis
from ragfleet.schemas import JobStatus
from ragfleet.settings import Settings
from tests.chaos.conftest import sleep_until, wait_terminal, wait_until
from tests.chaos.test_crash_safety import deliveries, generation_holding_a_query
from workers.inflight import NODES_KEY, alive_key
from workers.kombu_patches import inflight_key

pytestmark = [pytest.mark.chaos, pytest.mark.redis, pytest.mark.workers, pytest.mark.model]

# the defaults (Settings.node_*): a dead node's key is gone within 6 s, a sweep runs every 2 s
SLACK_S = 10.0


def _held_message(s: Settings, node: str) -> tuple[str, float]:
    """(delivery tag, expiry as epoch seconds) of the one message `node` holds."""
    r = get_redis(s)
    (tag,) = r.smembers(f"{s.broker_key_prefix}{inflight_key(node)}")
    raw = r.hget(f"{s.broker_key_prefix}unacked:interactive", tag)
    assert raw is not None
    message = json.loads(raw)[0]
    assert message["headers"]["task"] == TaskName.GENERATE.value
    return tag, datetime.fromisoformat(message["headers"]["expires"]).timestamp()


def _forgotten(s: Settings, node: str) -> bool:
    r = get_redis(s)
    p = s.broker_key_prefix
    return not r.exists(p + inflight_key(node)) and not r.sismember(p + NODES_KEY, node)


def test_a_query_whose_node_is_gone_for_good_is_answered_by_another_node_in_time(
    base_settings: Settings, tmp_path: Any, chaos_fleet_factory: Any
) -> None:
    with generation_holding_a_query(
        base_settings, tmp_path, chaos_fleet_factory, interactive_visibility_timeout_s=300, query_expires_s=60
    ) as held:
        s, fleet, gen, job_id = held.settings, held.fleet, held.gen, held.job_id
        other = fleet.spawn("generation").wait_ready()
        tag, expires_at = _held_message(s, gen.node)
        gen.kill()  # never started again under its name
        killed_at = time.time()
        held.llm.mode = "ok"
        assert get_redis(s).exists(f"{s.broker_key_prefix}{alive_key(gen.node)}")  # not yet expired

        rec = wait_terminal(s, job_id, expires_at + SLACK_S - time.time(), fleet)
        assert rec.status == JobStatus.DONE, (rec, fleet.logs())
        redelivered_after = rec.stages["generation"].started_at - killed_at
        print(
            f"\n[chaos] node gone for good: its query redelivered {redelivered_after:.1f} s after SIGKILL "
            f"(liveness TTL {s.node_alive_ttl_s:g} s, sweep every {s.node_gone_sweep_s:g} s, "
            f"interactive visibility timeout {s.interactive_visibility_timeout_s} s)"
        )
        assert redelivered_after < s.node_alive_ttl_s + s.node_gone_sweep_s + 5
        assert rec.updated_at <= expires_at + SLACK_S
        assert rec.stages["generation"].worker == other.node
        assert rec.result is not None and rec.result["answer"] == held.llm.answer
        assert deliveries(s, f"{job_id}:gen") == 2  # restored through kombu: counted as a redelivery
        assert "is gone (no liveness" in fleet.logs()
        # the dead node's tracking set is handled and deleted, and the node forgotten
        assert wait_until(lambda: _forgotten(s, gen.node), 10), fleet.logs()
        # the redelivered message keeps its delivery tag; the other node acked it once it was done
        unacked = f"{s.broker_key_prefix}unacked:interactive"
        assert wait_until(lambda: not get_redis(s).hexists(unacked, tag), 10)


def test_a_query_whose_node_is_gone_for_good_past_its_expiry_fails_worker_lost(
    base_settings: Settings, tmp_path: Any, chaos_fleet_factory: Any
) -> None:
    with generation_holding_a_query(
        base_settings, tmp_path, chaos_fleet_factory, interactive_visibility_timeout_s=300, query_expires_s=25
    ) as held:
        s, fleet, gen, job_id = held.settings, held.fleet, held.gen, held.job_id
        other = fleet.spawn("generation").wait_ready()
        _tag, expires_at = _held_message(s, gen.node)
        # dies 2 s before its message expires: its liveness key outlives it by 4-6 s, so the message
        # is back on the queue only after its expiry
        assert expires_at - time.time() > 3, "the second generation node took too long to start"
        sleep_until(time.monotonic() + (expires_at - 2 - time.time()))
        gen.kill()
        held.llm.mode = "ok"

        rec = wait_terminal(s, job_id, expires_at + SLACK_S + 5 - time.time(), fleet)
        print(
            f"\n[chaos] node gone for good past its query's expiry: failed "
            f"{rec.updated_at - expires_at:.1f} s after the expiry ({rec.error})"
        )
        assert rec.status == JobStatus.FAILED, (rec, fleet.logs())
        assert rec.error is not None and rec.error.code == "worker_lost", rec.error
        assert "worker holding this task died" in rec.error.message
        assert rec.updated_at <= expires_at + SLACK_S
        assert "generation" not in rec.stages or rec.stages["generation"].worker == gen.node  # never re-run
        assert held.llm.calls == 1
        assert f"{job_id}:gen" in other.output()  # the other node received and revoked it
        assert wait_until(lambda: _forgotten(s, gen.node), 10), fleet.logs()
