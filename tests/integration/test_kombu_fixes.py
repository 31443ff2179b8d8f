"""workers.kombu_fixes against a real Redis: closing a consumer connection that Celery has already
`collect()`ed, with a message still unacknowledged, must be a connection error Celery ignores -
not the AttributeError that shut a generation worker down in the Redis-outage chaos test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from kombu import Connection, Exchange, Queue
from kombu.common import ignore_errors

from workers import kombu_fixes

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
