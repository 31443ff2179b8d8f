"""workers/drain.py against a real Redis and kombu, without a worker: when the grace ends, every
message the node still holds goes back on its queue once, marked as handed back (the redelivery
cap does not count it), its liveness key is dropped, and the process exits; a drain whose warm
shutdown finished in time never hands anything back."""

from __future__ import annotations

import time

import pytest
import redis
from kombu import Connection, Exchange, Queue

from ragfleet.settings import Settings
from workers import kombu_patches
from workers.drain import Drain, handback_key
from workers.inflight import alive_key

pytestmark = pytest.mark.redis

NODE = "indexing-drain@test"


def test_the_grace_ends_and_what_the_node_holds_is_handed_back_once(
    base_settings: Settings, redis_client: redis.Redis
) -> None:
    kombu_patches.install()
    s = base_settings.model_copy(
        update={"broker_key_prefix": f"{base_settings.key_prefix}:drain:q:", "drain_grace_s": 0.2}
    )
    p = s.broker_key_prefix
    conn = Connection(s.broker, transport_options={"global_keyprefix": p})
    exits: list[int] = []
    try:
        queue = Queue("indexing", Exchange("indexing"), "indexing")
        with conn.Producer() as producer:
            for n in range(3):  # Celery's protocol 2: the task id is a header
                headers = {"id": f"task-{n}", "task": "ragfleet.index_documents"}
                producer.publish({"n": n}, exchange=queue.exchange, routing_key="indexing",
                                 declare=[queue], headers=headers)  # fmt: skip
        kombu_patches.track_inflight(NODE, ttl_s=120)
        running, prefetched = (queue(conn.default_channel).get(no_ack=False) for _ in range(2))
        assert running is not None and prefetched is not None
        redis_client.set(p + alive_key(NODE), "1")

        drain = Drain(s, NODE, lambda: Connection(s.broker, transport_options={"global_keyprefix": p}),
                      children=list, exit_=exits.append)  # fmt: skip
        drain.start()
        drain.start()  # a second SIGTERM: one timer
        deadline = time.monotonic() + 5
        while not exits and time.monotonic() < deadline:
            time.sleep(0.02)

        assert exits == [0]
        assert (
            redis_client.hlen(f"{p}unacked") == 0
            and redis_client.scard(p + kombu_patches.inflight_key(NODE)) == 0
        )
        assert redis_client.llen(f"{p}indexing") == 3  # both held messages are back, beside the third
        for task_id in ("task-0", "task-1"):
            assert redis_client.get(handback_key(s, task_id)) == NODE
        assert not redis_client.exists(handback_key(s, "task-2"))
        assert not redis_client.exists(p + alive_key(NODE))
        again = queue(conn.default_channel).get(no_ack=False)
        assert again is not None and again.delivery_info.get("redelivered")  # kombu marks it
    finally:
        kombu_patches.track_inflight(None)
        conn.release()
        for key in redis_client.scan_iter(f"{s.key_prefix}:*", count=1000):
            redis_client.delete(key)


def test_a_drain_that_finished_within_the_grace_hands_back_nothing(base_settings: Settings) -> None:
    s = base_settings.model_copy(update={"drain_grace_s": 0.2})
    connected: list[int] = []

    def connect() -> Connection:
        connected.append(1)
        return Connection(s.broker)

    exits: list[int] = []
    drain = Drain(s, NODE, connect, children=list, exit_=exits.append)
    drain.start()
    drain.cancelled.set()  # what `finished` does first, when Celery's warm shutdown ends in time
    time.sleep(0.5)
    assert not connected and not exits
