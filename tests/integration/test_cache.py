"""The two-layer answer cache and the query-embedding cache (ragfleet/cache.py) on a real Redis.

Two `AnswerCache` objects on one Redis stand for two processes (the API and a retrieval worker):
what one stores the other finds in Redis, then in its own memory.
"""

from __future__ import annotations

import numpy as np
import pytest
import redis

from ragfleet.cache import AnswerCache, EmbeddingCache, answer_key
from ragfleet.settings import Settings
from tests.helpers import isolated

pytestmark = pytest.mark.redis

ANSWER = {"answer": "Redis is an in-memory data store [1].", "sources": [{"n": 1, "doc_id": "redis"}]}


def key_at(version: int, question: str = "What is Redis?") -> str:
    return answer_key(
        question=question,
        tenant="t",
        top_k=5,
        mode="hybrid",
        filters={},
        index_version=version,
        generator="g",
    )


@pytest.fixture
def s(base_settings: Settings) -> Settings:
    return isolated(base_settings, "cache")


def test_an_answer_stored_by_one_process_is_found_in_redis_by_another_then_in_its_memory(
    s: Settings, redis_client: redis.Redis
) -> None:
    api, worker = AnswerCache(redis_client, s), AnswerCache(redis_client, s)
    k = key_at(1)
    assert api.get(k) is None
    worker.put(k, ANSWER)
    assert worker.get(k) == (ANSWER, "l1")
    assert api.get(k) == (ANSWER, "l2")
    redis_client.delete(api.redis_key(k))
    assert api.get(k) == (ANSWER, "l1"), "a Redis hit is kept in the local layer"
    api.clear_local()
    assert api.get(k) is None


def test_a_write_to_the_index_makes_every_older_answer_unreachable(
    s: Settings, redis_client: redis.Redis
) -> None:
    cache = AnswerCache(redis_client, s)
    cache.put(key_at(1), ANSWER)
    assert cache.get(key_at(2)) is None
    assert AnswerCache(redis_client, s).get(key_at(2)) is None


def test_answers_in_redis_expire_after_the_configured_ttl(s: Settings, redis_client: redis.Redis) -> None:
    cache = AnswerCache(redis_client, s.model_copy(update={"cache_l2_ttl_s": 123}))
    cache.put(key_at(1), ANSWER)
    assert 0 < redis_client.ttl(cache.redis_key(key_at(1))) <= 123


def test_a_put_on_a_pipeline_reaches_redis_only_with_the_callers_round_trip(
    s: Settings, redis_client: redis.Redis
) -> None:
    cache = AnswerCache(redis_client, s)
    pipe = redis_client.pipeline()
    cache.put(key_at(1), ANSWER, pipe=pipe)
    assert not redis_client.exists(cache.redis_key(key_at(1)))
    pipe.execute()
    assert AnswerCache(redis_client, s).get(key_at(1)) == (ANSWER, "l2")


def test_accept_remote_is_the_redis_half_of_get_for_callers_that_read_redis_themselves(
    s: Settings, redis_client: redis.Redis
) -> None:
    cache = AnswerCache(redis_client, s)
    k = key_at(1)
    assert cache.get_local(k) is None
    assert cache.accept_remote(k, None) is None
    raw = '{"answer": "from the API event loop"}'
    assert cache.accept_remote(k, raw) == ({"answer": "from the API event loop"}, "l2")
    assert cache.get_local(k) == ({"answer": "from the API event loop"}, "l1")


def test_a_disabled_cache_neither_stores_nor_serves(s: Settings, redis_client: redis.Redis) -> None:
    off = s.model_copy(update={"cache_enabled": False})
    cache = AnswerCache(redis_client, off)
    cache.put(key_at(1), ANSWER)
    assert not redis_client.exists(cache.redis_key(key_at(1)))
    AnswerCache(redis_client, s).put(key_at(1), ANSWER)  # even what an enabled process stored
    assert cache.get(key_at(1)) is None
    assert cache.get_local(key_at(1)) is None


def test_query_vectors_round_trip_exactly_and_are_shared_across_spellings(
    s: Settings, redis_client: redis.Redis
) -> None:
    vec = np.random.default_rng(0).standard_normal(384).astype(np.float32)
    EmbeddingCache(redis_client, s, "model-a").put("What is Redis?", vec)
    other = EmbeddingCache(redis_client, s, "model-a")
    got = other.get("  what IS redis? ")
    assert got is not None
    arr, layer = got
    assert layer == "l2" and arr.dtype == np.float32
    np.testing.assert_array_equal(arr, vec)  # bit for bit: no float formatting on the way
    again = other.get("What is Redis?")
    assert again is not None and again[1] == "l1"


def test_query_vectors_of_another_model_are_not_served(s: Settings, redis_client: redis.Redis) -> None:
    vec = np.ones(384, dtype=np.float32)
    EmbeddingCache(redis_client, s, "model-a").put("What is Redis?", vec)
    assert EmbeddingCache(redis_client, s, "model-b").get("What is Redis?") is None
    assert redis_client.ttl(EmbeddingCache(redis_client, s, "model-a").redis_key("What is Redis?")) > 0
