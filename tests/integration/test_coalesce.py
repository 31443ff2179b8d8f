"""Fleet-wide single flight (ragfleet/coalesce.py) on a real Redis: who leads, who follows, who gets
the answer, and what happens when a leader dies."""

from __future__ import annotations

import uuid

import pytest
import redis

from ragfleet.coalesce import Coalescer, Flight
from ragfleet.settings import Settings
from tests.helpers import isolated, wait_for

pytestmark = pytest.mark.redis


@pytest.fixture
def s(base_settings: Settings) -> Settings:
    return isolated(base_settings, "coalesce")


@pytest.fixture
def key() -> str:
    return uuid.uuid4().hex


def test_the_first_job_leads_and_identical_ones_follow_it(
    s: Settings, redis_client: redis.Redis, key: str
) -> None:
    c = Coalescer(redis_client, s)
    assert c.join(key, "job-1") == Flight("leader", "job-1")
    assert c.join(key, "job-2") == Flight("follower", "job-1")
    assert c.join(key, "job-3") == Flight("follower", "job-1")
    assert c.join(uuid.uuid4().hex, "job-4") == Flight("leader", "job-4"), "another question: its own flight"


def test_complete_hands_the_answer_to_every_follower_once_and_frees_the_flight(
    s: Settings, redis_client: redis.Redis, key: str
) -> None:
    c = Coalescer(redis_client, s)
    c.join(key, "lead")
    c.join(key, "f1")
    c.join(key, "f2")
    assert sorted(c.complete(key, "lead")) == ["f1", "f2"]
    assert c.complete(key, "lead") == [], "a second completion hands nothing to anyone"
    assert c.join(key, "later") == Flight("leader", "later"), "the next identical question runs again"


def test_a_redelivered_leader_rejoins_as_leader_and_renews_its_lock(
    s: Settings, redis_client: redis.Redis, key: str
) -> None:
    c = Coalescer(redis_client, s, lock_ttl_s=5)
    c.join(key, "lead")
    redis_client.pexpire(s.key("flight", key), 100)
    assert c.join(key, "lead") == Flight("leader", "lead")
    assert redis_client.pttl(s.key("flight", key)) > 1_000


def test_only_the_leader_can_renew_the_lock(s: Settings, redis_client: redis.Redis, key: str) -> None:
    c = Coalescer(redis_client, s, lock_ttl_s=5)
    c.join(key, "lead")
    c.join(key, "follower")
    redis_client.pexpire(s.key("flight", key), 1_000)
    assert c.renew(key, "follower") is False
    assert redis_client.pttl(s.key("flight", key)) <= 1_000
    assert c.renew(key, "lead") is True
    assert redis_client.pttl(s.key("flight", key)) > 1_000


def test_when_a_leader_dies_its_lock_lapses_and_a_follower_takes_over(
    s: Settings, redis_client: redis.Redis, key: str
) -> None:
    c = Coalescer(redis_client, s, lock_ttl_s=0.2)
    c.join(key, "dead-leader")
    assert c.join(key, "f1").role == "follower"
    wait_for(lambda: not redis_client.exists(s.key("flight", key)), timeout=5, what="leader's lock lapsed")
    assert c.join(key, "f1") == Flight("leader", "f1")
    assert c.join(key, "f2") == Flight("follower", "f1")
    assert c.complete(key, "f1") == ["f2"], "the new leader is no longer its own follower"


def test_a_cached_answer_is_returned_instead_of_joining(
    s: Settings, redis_client: redis.Redis, key: str
) -> None:
    c = Coalescer(redis_client, s)
    cache_key = s.key("cache", "answer", key)
    assert c.join_unless_cached(key, "job-1", cache_key) == Flight("leader", "job-1")
    c.complete(key, "job-1")
    redis_client.set(cache_key, '{"answer": "42"}')
    assert c.join_unless_cached(key, "job-2", cache_key) == '{"answer": "42"}'
    assert not redis_client.exists(s.key("flight", key)), "a cache hit joins nothing"


def test_a_join_queued_on_a_pipeline_is_the_same_join(
    s: Settings, redis_client: redis.Redis, key: str
) -> None:
    c = Coalescer(redis_client, s)
    pipe = redis_client.pipeline(transaction=False)
    c.queue_join(pipe, key, "job-1", None)
    c.queue_join(pipe, key, "job-2", None)
    first, second = (Coalescer.parse_join(reply) for reply in pipe.execute())
    assert (first, second) == (Flight("leader", "job-1"), Flight("follower", "job-1"))


def test_a_follower_that_leaves_is_not_handed_the_answer(
    s: Settings, redis_client: redis.Redis, key: str
) -> None:
    c = Coalescer(redis_client, s)
    c.join(key, "lead")
    stale = c.join(key, "stale")
    c.join(key, "stays")
    c.leave(key, stale, "stale")
    assert c.complete(key, "lead") == ["stays"]


def test_a_leader_that_leaves_lets_the_next_job_lead_at_once(
    s: Settings, redis_client: redis.Redis, key: str
) -> None:
    c = Coalescer(redis_client, s)
    lead = c.join(key, "lead")
    c.leave(key, lead, "lead")
    assert c.join(key, "next") == Flight("leader", "next")


def test_pipeline_runs_are_counted(s: Settings, redis_client: redis.Redis) -> None:
    c = Coalescer(redis_client, s)
    assert c.count_run() == 1
    pipe = redis_client.pipeline()
    assert c.count_run(pipe) == -1
    pipe.execute()
    assert c.count_run() == 3
