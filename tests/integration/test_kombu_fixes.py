"""ragfleet.kombu_fixes against a real Redis: closing a consumer connection that Celery has already
`collect()`ed, with a message still unacknowledged, must be a connection error Celery ignores -
not the AttributeError that shut a generation worker down in the Redis-outage chaos test."""

from __future__ import annotations

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
