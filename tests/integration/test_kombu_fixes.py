"""workers.kombu_patches and the gone-node sweep of workers/inflight.py against a real Redis.

Closing a consumer connection that Celery has already `collect()`ed, with a message still
unacknowledged, must be a connection error Celery ignores - not the AttributeError that shut a
generation worker down in the Redis-outage chaos test. A tracked node's in-flight set follows
kombu's unacked hash and has a TTL; a sweep puts back what a node without a liveness key held."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
import redis
from kombu import Connection, Exchange, Queue
from kombu.common import ignore_errors

from ragfleet.settings import Settings
from workers import inflight, kombu_patches

pytestmark = pytest.mark.redis


@pytest.fixture
def collected_with_unacked(
    redis_base_url: str, session_prefix: str, redis_client: redis.Redis
) -> Iterator[Connection]:
    prefix = f"{session_prefix}:kombu-fix:"
    conn = Connection(redis_base_url, transport_options={"global_keyprefix": prefix})
    channel = conn.default_channel
    queue = Queue("q", Exchange("q"), "q")
    with conn.Producer() as producer:
        producer.publish({"n": 1}, exchange=queue.exchange, routing_key="q", declare=[queue])
    message = queue(channel).get(no_ack=False)
    assert message is not None and len(channel.qos._delivered) == 1
    # What Celery's consumer does on a broker error, before it closes the connection:
    # Connection.collect() ends in _do_close_transport(), which detaches the transport's client.
    conn._transport.client = None
    try:
        yield conn
    finally:
        for key in redis_client.scan_iter(f"{prefix}*", count=1000):
            redis_client.delete(key)


def test_unpatched_kombu_raises_attribute_error(
    collected_with_unacked: Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The failure mode itself: if kombu stops doing this, the guard can go."""
    from kombu.transport import redis as kombu_redis

    monkeypatch.setattr(
        kombu_redis.Channel, "_connparams", kombu_patches.original(kombu_redis.Channel._connparams)
    )
    with pytest.raises(AttributeError, match="hostname"):
        ignore_errors(collected_with_unacked, collected_with_unacked.close)


def test_guarded_close_is_a_connection_error_celery_ignores(collected_with_unacked: Connection) -> None:
    kombu_patches.install()
    kombu_patches.install()  # idempotent
    channel = collected_with_unacked.default_channel
    with pytest.raises(redis.exceptions.ConnectionError):
        channel._connparams()
    ignore_errors(collected_with_unacked, collected_with_unacked.close)  # no AttributeError


def test_a_tracked_node_keeps_its_unacked_tags_in_its_own_set_in_step_with_kombus_hash(
    redis_base_url: str, session_prefix: str, redis_client: redis.Redis
) -> None:
    """workers/inflight.py relies on this: while tracking is on, every delivered message's tag is in
    the node's set exactly as long as kombu keeps it in its unacked hash (ack, requeue and restore
    all take it out), and the hash entry is the one kombu itself writes (its restore reads it back)."""
    kombu_patches.install()
    prefix = f"{session_prefix}:kombu-inflight:"
    held = f"{prefix}{kombu_patches.inflight_key('node-a@test')}"
    conn = Connection(redis_base_url, transport_options={"global_keyprefix": prefix})
    try:
        channel = conn.default_channel
        queue = Queue("q", Exchange("q"), "q")
        with conn.Producer() as producer:
            for n in range(4):
                producer.publish({"n": n}, exchange=queue.exchange, routing_key="q", declare=[queue])

        untracked = queue(channel).get(no_ack=False)  # kombu's own append: no set
        assert untracked is not None and not redis_client.exists(held)
        kombu_patches.track_inflight("node-a@test", ttl_s=120)
        acked, requeued, restored = (queue(channel).get(no_ack=False) for _ in range(3))
        assert acked is not None and requeued is not None and restored is not None
        tags = {m.delivery_tag for m in (acked, requeued, restored)}
        assert redis_client.smembers(held) == tags
        assert 100 < redis_client.ttl(held) <= 120  # set in the same pipeline: a dead node's set expires
        entries = redis_client.hgetall(f"{prefix}unacked")
        assert len(entries) == 4 and redis_client.zcard(f"{prefix}unacked_index") == 4
        # the tracked entries have the shape of kombu's own: [raw message, exchange, routing key]
        own, ours = (
            json.loads(entries[untracked.delivery_tag]),
            json.loads(entries[acked.delivery_tag]),
        )
        assert [type(x) for x in own] == [type(x) for x in ours] and own[1:] == ours[1:]
        assert own[0].keys() == ours[0].keys()

        acked.ack()
        requeued.reject(requeue=True)
        channel.qos.restore_by_tag(restored.delivery_tag)
        assert redis_client.scard(held) == 0
        assert redis_client.hlen(f"{prefix}unacked") == 1  # only the untracked one is still held
        again = sorted(m.payload["n"] for m in (queue(channel).get(no_ack=False) for _ in range(2)) if m)
        assert again == sorted([requeued.payload["n"], restored.payload["n"]])  # both back on the queue
    finally:
        kombu_patches.track_inflight(None)
        conn.release()
        for key in redis_client.scan_iter(f"{prefix}*", count=1000):
            redis_client.delete(key)


UNACKED_KEYS = frozenset({"unacked", "unacked:interactive"})


def _sweep_settings(redis_base_url: str, prefix: str) -> Settings:
    return Settings(
        redis_url=redis_base_url,
        broker_key_prefix=prefix,
        node_alive_ttl_s=0.5,
        node_alive_refresh_s=0.1,
        node_gone_sweep_s=0.2,
        node_inflight_ttl_s=60,
    )


def test_a_sweep_puts_back_what_a_node_without_liveness_held_and_then_forgets_the_node(
    redis_base_url: str, session_prefix: str, redis_client: redis.Redis
) -> None:
    """workers/inflight.py's answer to a node that never comes back under its name: once its
    liveness key has expired, a live node's sweep restores (through kombu's restore_by_tag, so the
    message is marked redelivered) the tags it finds in its own unacked hash, drops tags no hash
    holds any more, leaves a tag another pool kind's hash holds, drops (without restoring) a tag that
    a live node holds now (a restored message keeps its tag), and deletes the set once empty."""
    kombu_patches.install()
    prefix = f"{session_prefix}:sweep:"
    s = _sweep_settings(redis_base_url, prefix)
    held = f"{prefix}{kombu_patches.inflight_key('dead@test')}"
    dead = Connection(redis_base_url, transport_options={"global_keyprefix": prefix})
    live = Connection(redis_base_url, transport_options={"global_keyprefix": prefix})
    try:
        assert inflight.claim(s, "dead@test") == []  # tracking on, alive, registered
        assert redis_client.sismember(f"{prefix}{inflight.NODES_KEY}", "dead@test")
        queue = Queue("q", Exchange("q"), "q")
        with dead.Producer() as producer:
            for n in range(3):
                producer.publish({"n": n}, exchange=queue.exchange, routing_key="q", declare=[queue])
        acked, stuck, taken_over = (queue(dead.default_channel).get(no_ack=False) for _ in range(3))
        assert acked is not None and stuck is not None and taken_over is not None
        acked.ack()
        kombu_patches.track_inflight(None)  # the node is dead from here on
        redis_client.sadd(held, "acked-long-ago", "held-by-a-background-node")
        redis_client.hset(f"{prefix}unacked:interactive", "held-by-a-background-node", "[]")
        # `taken_over` was restored by someone else and delivered to a live node (same tag)
        redis_client.set(f"{prefix}{inflight.alive_key('other@test')}", "1")
        redis_client.sadd(f"{prefix}{inflight.NODES_KEY}", "other@test")
        redis_client.sadd(f"{prefix}{kombu_patches.inflight_key('other@test')}", taken_over.delivery_tag)
        r = redis.Redis.from_url(redis_base_url, decode_responses=True)
        qos = live.default_channel.qos
        assert qos.unacked_key == "unacked"

        # still alive (its key has not expired): nothing is touched
        assert inflight.sweep_gone_nodes(r, qos, s, "live@test", UNACKED_KEYS) == 0
        assert redis_client.scard(held) == 4

        time.sleep(s.node_alive_ttl_s + s.node_gone_sweep_s + 0.1)  # its key gone, the lock free
        assert inflight.sweep_gone_nodes(r, qos, s, "live@test", UNACKED_KEYS) == 1
        assert redis_client.smembers(held) == {"held-by-a-background-node"}
        assert not redis_client.hexists(f"{prefix}unacked", stuck.delivery_tag)
        assert redis_client.hexists(f"{prefix}unacked", taken_over.delivery_tag)  # the live node's now
        back = queue(live.default_channel).get(no_ack=True)
        assert back is not None and back.payload == {"n": stuck.payload["n"]}
        assert back.delivery_info.get("redelivered") is True  # what the redelivery cap counts
        assert queue(live.default_channel).get(no_ack=True) is None  # only that one came back

        redis_client.hdel(f"{prefix}unacked:interactive", "held-by-a-background-node")
        # locked: one sweep at a time
        assert inflight.sweep_gone_nodes(r, qos, s, "live@test", UNACKED_KEYS) == 0
        time.sleep(s.node_gone_sweep_s + 0.05)
        assert inflight.sweep_gone_nodes(r, qos, s, "live@test", UNACKED_KEYS) == 0
        assert not redis_client.exists(held)
        assert not redis_client.sismember(f"{prefix}{inflight.NODES_KEY}", "dead@test")
        r.close()
    finally:
        kombu_patches.track_inflight(None)
        dead.release()
        live.release()
        for key in redis_client.scan_iter(f"{prefix}*", count=1000):
            redis_client.delete(key)


def test_a_node_keeper_keeps_its_node_alive_and_its_set_expiring_and_stops_cleanly(
    redis_base_url: str, session_prefix: str, redis_client: redis.Redis
) -> None:
    """While its thread runs, the node's liveness key exists and its in-flight set has a TTL (a set
    of a dead node's name expires even where no sweep ever handles it); once it stops (the node is
    dead), the liveness key is gone within `node_alive_ttl_s`."""
    prefix = f"{session_prefix}:keeper:"
    s = _sweep_settings(redis_base_url, prefix).model_copy(
        update={"node_gone_sweep_s": 0.0, "node_inflight_ttl_s": 1}
    )
    alive = f"{prefix}{inflight.alive_key('k@test')}"
    held = f"{prefix}{kombu_patches.inflight_key('k@test')}"
    redis_client.sadd(held, "some-tag")  # e.g. written before the set had its TTL
    keeper = inflight.NodeKeeper(s, "k@test", connect=None, unacked_keys=UNACKED_KEYS).start()
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and redis_client.ttl(held) < 0:
            time.sleep(0.02)
        assert 0 < redis_client.ttl(held) <= s.node_inflight_ttl_s
        time.sleep(3 * s.node_alive_ttl_s)  # both refreshed all along
        assert redis_client.exists(alive) and redis_client.exists(held)
        assert redis_client.sismember(f"{prefix}{inflight.NODES_KEY}", "k@test")
    finally:
        keeper.stop()
    try:
        time.sleep(s.node_inflight_ttl_s + 0.1)
        assert not redis_client.exists(alive)
        assert not redis_client.exists(held)  # the dead node's set expired by itself
    finally:
        for key in redis_client.scan_iter(f"{prefix}*", count=1000):
            redis_client.delete(key)


def test_a_node_keeper_sweeps_only_after_one_liveness_ttl_of_beats_that_reached_redis(
    redis_base_url: str, session_prefix: str, redis_client: redis.Redis
) -> None:
    """At start and after a Redis error the other nodes' keys may have expired without their deaths
    (a Redis outage): a keeper sweeps only once it has beaten for `node_alive_ttl_s` without an
    error, the time every live node needs to renew its key."""
    prefix = f"{session_prefix}:keeper-outage:"
    s = _sweep_settings(redis_base_url, prefix).model_copy(update={"node_gone_sweep_s": 0.05})

    class Probe(inflight.NodeKeeper):
        fail_next = False
        failed_at = 0.0
        sweeps: list[float] = []

        def beat(self, r: redis.Redis) -> None:
            if self.fail_next:
                self.fail_next, self.failed_at = False, time.monotonic()
                raise redis.ConnectionError("Redis is down")
            super().beat(r)

        def sweep(self, r: redis.Redis) -> int:
            self.sweeps.append(time.monotonic())
            return 0

    started = time.monotonic()
    keeper = Probe(s, "p@test", connect=None, unacked_keys=UNACKED_KEYS).start()
    try:
        time.sleep(3 * s.node_alive_ttl_s)
        assert keeper.sweeps and keeper.sweeps[0] >= started + s.node_alive_ttl_s
        keeper.fail_next = True
        time.sleep(3 * s.node_alive_ttl_s)
        after = [t for t in keeper.sweeps if t > keeper.failed_at]
        assert keeper.failed_at and after, keeper.sweeps
        assert after[0] >= keeper.failed_at + s.node_alive_ttl_s
    finally:
        keeper.stop()
        for key in redis_client.scan_iter(f"{prefix}*", count=1000):
            redis_client.delete(key)
