"""ragfleet.kombu_fixes against a real Redis: closing a consumer connection that Celery has already
`collect()`ed, with a message still unacknowledged, must be a connection error Celery ignores -
not the AttributeError that shut a generation worker down in the Redis-outage chaos test."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import redis
from kombu import Connection, Exchange, Queue
from kombu.common import ignore_errors

from ragfleet import kombu_fixes

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

    original = getattr(kombu_redis.Channel._connparams, "__wrapped_original__", None)
    if original is not None:
        monkeypatch.setattr(kombu_redis.Channel, "_connparams", original)
    with pytest.raises(AttributeError, match="hostname"):
        ignore_errors(collected_with_unacked, collected_with_unacked.close)


def test_guarded_close_is_a_connection_error_celery_ignores(collected_with_unacked: Connection) -> None:
    kombu_fixes.install()
    kombu_fixes.install()  # idempotent
    channel = collected_with_unacked.default_channel
    with pytest.raises(redis.exceptions.ConnectionError):
        channel._connparams()
    ignore_errors(collected_with_unacked, collected_with_unacked.close)  # no AttributeError


def test_a_channel_reuses_one_sync_client_per_pool_and_messages_still_flow(
    redis_base_url: str, session_prefix: str, redis_client: redis.Redis
) -> None:
    """kombu builds a redis client per publish/ack/event; with the fix a channel keeps the one it
    built until its pool is replaced (a reconnect), and publish -> get -> ack behave as before."""
    kombu_fixes.install()
    prefix = f"{session_prefix}:kombu-client:"
    conn = Connection(redis_base_url, transport_options={"global_keyprefix": prefix})
    try:
        channel = conn.default_channel
        with channel.conn_or_acquire() as first, channel.conn_or_acquire() as second:
            assert first is second
        queue = Queue("q", Exchange("q"), "q")
        with conn.Producer() as producer:
            for n in range(3):
                producer.publish({"n": n}, exchange=queue.exchange, routing_key="q", declare=[queue])
        got = []
        for _ in range(3):
            message = queue(channel).get(no_ack=False)
            assert message is not None
            got.append(message.payload["n"])
            message.ack()
        assert sorted(got) == [0, 1, 2]
        assert redis_client.hlen(f"{prefix}unacked") == 0  # acks went through the shared client
        with channel.conn_or_acquire() as before_reset:
            pass
        channel._disconnect_pools()  # what a reconnect does: a new pool, so a new client
        with channel.conn_or_acquire() as after_reset:
            assert after_reset is not before_reset
            assert after_reset.connection_pool is channel.pool
    finally:
        conn.release()
        for key in redis_client.scan_iter(f"{prefix}*", count=1000):
            redis_client.delete(key)


def test_a_tracked_node_keeps_its_unacked_tags_in_its_own_set_in_step_with_kombus_hash(
    redis_base_url: str, session_prefix: str, redis_client: redis.Redis
) -> None:
    """workers/inflight.py relies on this: while tracking is on, every delivered message's tag is in
    the node's set exactly as long as kombu keeps it in its unacked hash (ack, requeue and restore
    all take it out), and the hash entry is the one kombu itself writes (its restore reads it back)."""
    kombu_fixes.install()
    prefix = f"{session_prefix}:kombu-inflight:"
    held = f"{prefix}{kombu_fixes.inflight_key('node-a@test')}"
    conn = Connection(redis_base_url, transport_options={"global_keyprefix": prefix})
    try:
        channel = conn.default_channel
        queue = Queue("q", Exchange("q"), "q")
        with conn.Producer() as producer:
            for n in range(4):
                producer.publish({"n": n}, exchange=queue.exchange, routing_key="q", declare=[queue])

        untracked = queue(channel).get(no_ack=False)  # kombu's own append: no set
        assert untracked is not None and not redis_client.exists(held)
        kombu_fixes.track_inflight("node-a@test")
        acked, requeued, restored = (queue(channel).get(no_ack=False) for _ in range(3))
        assert acked is not None and requeued is not None and restored is not None
        tags = {m.delivery_tag for m in (acked, requeued, restored)}
        assert redis_client.smembers(held) == tags
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
        kombu_fixes.track_inflight(None)
        conn.release()
        for key in redis_client.scan_iter(f"{prefix}*", count=1000):
            redis_client.delete(key)
