"""LLMGateway against real HTTP servers and a real Redis: fallback, timeouts, retries, the
fleet-wide circuit breaker (checked from a second process), degradation and streaming."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from ragfleet import resilience
from ragfleet.generation.extractive import answer_from_passages
from ragfleet.generation.gateway import LLMGateway, provider_specs
from ragfleet.schemas import Source
from ragfleet.settings import Settings
from tests.conftest import REPO
from tests.integration.fake_llm_server import FakeLLM

pytestmark = pytest.mark.redis

QUESTION = "Does aspirin lower fever?"
SOURCES = [
    Source(
        n=1,
        doc_id="d1",
        chunk_id="d1:0",
        title="Aspirin",
        text="Aspirin\nAspirin is a common drug. "
        "In trials, aspirin lowered fever in most adults within an hour.",
        score=0.9,
        start=0,
        end=90,
    ),
    Source(
        n=2,
        doc_id="d2",
        chunk_id="d2:0",
        title="Weather",
        text="Weather\nIt rained in Paris on Monday. The forecast for Tuesday is sunny.",
        score=0.2,
        start=0,
        end=60,
    ),
]


@pytest.fixture(scope="module")
def redis_bytes(redis_base_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_base_url, decode_responses=False, socket_timeout=2)
    yield client
    client.close()


@pytest.fixture
def fake_llm() -> Iterator[Callable[..., FakeLLM]]:
    servers: list[FakeLLM] = []

    def start(**kwargs: Any) -> FakeLLM:
        servers.append(FakeLLM(**kwargs).start())
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


def gateway_settings(base: Settings, providers: dict[str, FakeLLM], **overrides: Any) -> Settings:
    """Unique provider names per test: the breaker keys of one test never leak into another."""
    config = {
        name: {"base_url": server.url, "model": "gpt-4o-mini", "api_key": f"key-{name}"}
        for name, server in providers.items()
    }
    for name, extra in overrides.pop("provider_overrides", {}).items():
        config[name].update(extra)
    update: dict[str, Any] = {
        "generator": "openai",
        "llm_providers": ",".join(providers),
        "llm_provider_config": json.dumps(config),
        "llm_timeout_s": 5.0,
        "llm_max_retries": 0,
        "llm_retry_base_s": 0.01,
        "llm_breaker_fail_max": 5,
        "llm_breaker_reset_s": 30,
    }
    update.update(overrides)
    return Settings(**{**base.model_dump(exclude={"llm_provider_config", "llm_api_key"}), **update})


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:6]}"


@pytest.fixture
def redis_cleanup(redis_client: redis.Redis, base_settings: Settings) -> Iterator[None]:
    yield
    for key in redis_client.scan_iter(base_settings.key("breaker", "*")):
        redis_client.delete(key)


def test_answer_from_first_provider_records_usage_and_cost(
    base_settings: Settings, redis_bytes: redis.Redis, fake_llm: Callable[..., FakeLLM], redis_cleanup: None
) -> None:
    server = fake_llm(prompt_tokens=1_000, completion_tokens=200)
    primary = unique("primary")
    gw = LLMGateway(gateway_settings(base_settings, {primary: server}), redis_bytes)

    out = gw.generate(QUESTION, SOURCES)

    assert out.provider == primary and not out.degraded and out.errors == {}
    assert out.answer == "Aspirin lowers fever [1]."
    assert out.usage.prompt_tokens == 1_000 and out.usage.completion_tokens == 200
    assert out.usage.cost_usd == pytest.approx((1_000 * 0.00015 + 200 * 0.0006) / 1000)
    assert out.usage.provider == primary and out.usage.model == "gpt-4o-mini"
    assert [q.source for q in out.quotes] == [1]
    assert out.quotes[0].text in SOURCES[0].text and "lowered fever" in out.quotes[0].text
    sent = server.requests[0]
    assert sent["auth"] == f"Bearer key-{primary}"
    prompt = sent["body"]["messages"][-1]["content"]
    assert "[1] Aspirin" in prompt and "[2] Weather" in prompt and QUESTION in prompt


def test_falls_back_to_second_provider_when_first_returns_500(
    base_settings: Settings, redis_bytes: redis.Redis, fake_llm: Callable[..., FakeLLM], redis_cleanup: None
) -> None:
    bad, good = fake_llm(), fake_llm(answer="Backup says yes [1].")
    bad.mode = "500"
    primary, backup = unique("primary"), unique("backup")
    gw = LLMGateway(
        gateway_settings(base_settings, {primary: bad, backup: good}, llm_max_retries=2), redis_bytes
    )

    out = gw.generate(QUESTION, SOURCES)

    assert out.provider == backup and out.answer == "Backup says yes [1]." and not out.degraded
    assert "HTTP 500" in out.errors[primary]
    assert bad.calls == 3  # first attempt + 2 retries: 5xx is retryable
    assert good.calls == 1


def test_timeout_is_enforced_per_call(
    base_settings: Settings, redis_bytes: redis.Redis, fake_llm: Callable[..., FakeLLM], redis_cleanup: None
) -> None:
    slow, good = fake_llm(), fake_llm(answer="Fast [2].")
    slow.mode, slow.hang_s = "hang", 10.0
    primary, backup = unique("primary"), unique("backup")
    settings = gateway_settings(
        base_settings, {primary: slow, backup: good}, provider_overrides={primary: {"timeout_s": 0.5}}
    )
    gw = LLMGateway(settings, redis_bytes)

    t0 = time.monotonic()
    out = gw.generate(QUESTION, SOURCES)
    elapsed = time.monotonic() - t0

    assert out.provider == backup
    assert "timeout" in out.errors[primary]
    assert 0.5 <= elapsed < 2.0, elapsed


def test_400_is_not_retried_and_does_not_count_against_the_breaker(
    base_settings: Settings, redis_bytes: redis.Redis, fake_llm: Callable[..., FakeLLM], redis_cleanup: None
) -> None:
    bad, good = fake_llm(), fake_llm()
    bad.mode = "400"
    primary, backup = unique("primary"), unique("backup")
    settings = gateway_settings(
        base_settings, {primary: bad, backup: good}, llm_max_retries=3, llm_breaker_fail_max=1
    )
    gw = LLMGateway(settings, redis_bytes)

    out = gw.generate(QUESTION, SOURCES)

    assert bad.calls == 1
    assert "HTTP 400" in out.errors[primary] and out.provider == backup
    assert resilience.breaker_state(redis_bytes, settings, primary) == resilience.STATE_CLOSED


def test_429_is_retried_with_backoff(
    base_settings: Settings, redis_bytes: redis.Redis, fake_llm: Callable[..., FakeLLM], redis_cleanup: None
) -> None:
    limited = fake_llm()
    limited.mode = "429"
    primary = unique("primary")
    gw = LLMGateway(gateway_settings(base_settings, {primary: limited}, llm_max_retries=2), redis_bytes)

    out = gw.generate(QUESTION, SOURCES)

    assert limited.calls == 3
    assert out.degraded and "HTTP 429" in out.errors[primary]


def _state_from_another_process(settings: Settings, name: str) -> dict[str, Any]:
    """A fresh interpreter builds its own breaker object and gateway from the environment, the way
    a second worker process would, and reports what it sees."""
    script = f"""
import json, redis
from ragfleet.settings import Settings
from ragfleet.resilience import make_breaker
from ragfleet.generation.gateway import LLMGateway
from ragfleet.schemas import Source
s = Settings()
r = redis.Redis.from_url(s.redis_url, decode_responses=False)
b = make_breaker(r, s, {name!r})
out = LLMGateway(s, r).generate("Does aspirin lower fever?", [Source(n=1, doc_id="d", chunk_id="d:0",
    text="Aspirin lowered fever in most adults.", score=1.0, start=0, end=37)])
print(json.dumps({{"state": b.current_state, "fail_counter": b.fail_counter, "degraded": out.degraded,
                  "errors": out.errors}}))
"""
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(REPO),
        "RAGFLEET_REDIS_URL": settings.redis_url,
        "RAGFLEET_KEY_PREFIX": settings.key_prefix,
        "RAGFLEET_GENERATOR": settings.generator,
        "RAGFLEET_LLM_PROVIDERS": settings.llm_providers,
        "RAGFLEET_LLM_PROVIDER_CONFIG": settings.llm_provider_config.get_secret_value()
        if settings.llm_provider_config
        else "{}",
        "RAGFLEET_LLM_MAX_RETRIES": "0",
        "RAGFLEET_LLM_BREAKER_FAIL_MAX": str(settings.llm_breaker_fail_max),
        "RAGFLEET_LLM_BREAKER_RESET_S": str(settings.llm_breaker_reset_s),
    }
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def test_breaker_opens_after_n_failures_and_another_process_sees_it_open(
    base_settings: Settings, redis_bytes: redis.Redis, fake_llm: Callable[..., FakeLLM], redis_cleanup: None
) -> None:
    server = fake_llm()
    primary = unique("primary")
    settings = gateway_settings(base_settings, {primary: server}, llm_breaker_fail_max=3)
    gw = LLMGateway(settings, redis_bytes)
    assert not gw.generate(QUESTION, SOURCES).degraded

    server.mode = "500"  # the outage starts
    t0 = time.monotonic()
    requests = 0
    while resilience.breaker_state(redis_bytes, settings, primary) != resilience.STATE_OPEN:
        out = gw.generate(QUESTION, SOURCES)
        requests += 1
        assert out.degraded
        assert requests <= 3, "breaker did not open after fail_max failures"
    outage_to_open_ms = (time.monotonic() - t0) * 1000
    print(f"\noutage -> breaker open: {outage_to_open_ms:.1f} ms over {requests} requests (fail_max=3)")
    assert requests == 3 and server.calls == 4
    assert "circuit open" in out.errors[primary] and "HTTP 500" in out.errors[primary]

    # another worker process: sees the open state and does not call the provider at all
    server.mode = "ok"
    seen = _state_from_another_process(settings, primary)
    assert seen["state"] == resilience.STATE_OPEN
    assert seen["degraded"] is True and "circuit open" in seen["errors"][primary]
    assert server.calls == 4


def test_breaker_half_opens_after_reset_and_closes_on_success(
    base_settings: Settings, redis_bytes: redis.Redis, fake_llm: Callable[..., FakeLLM], redis_cleanup: None
) -> None:
    server = fake_llm()
    server.mode = "500"
    primary = unique("primary")
    settings = gateway_settings(
        base_settings, {primary: server}, llm_breaker_fail_max=2, llm_breaker_reset_s=1
    )
    gw = LLMGateway(settings, redis_bytes)
    gw.generate(QUESTION, SOURCES)
    gw.generate(QUESTION, SOURCES)
    assert resilience.breaker_state(redis_bytes, settings, primary) == resilience.STATE_OPEN
    opened = time.monotonic()

    server.mode = "ok"
    assert gw.generate(QUESTION, SOURCES).degraded  # still open: the provider is not called
    assert server.calls == 2

    time.sleep(max(0.0, opened + 1.1 - time.monotonic()))  # the reset timeout is time itself
    server.mode = "500"  # the trial call fails: open again, after a single call
    assert gw.generate(QUESTION, SOURCES).degraded
    assert server.calls == 3
    assert resilience.breaker_state(redis_bytes, settings, primary) == resilience.STATE_OPEN

    time.sleep(1.1)
    server.mode = "ok"
    out = gw.generate(QUESTION, SOURCES)
    assert out.provider == primary and not out.degraded
    assert resilience.breaker_state(redis_bytes, settings, primary) == resilience.STATE_CLOSED
    assert _state_from_another_process(settings, primary)["state"] == resilience.STATE_CLOSED


def test_all_providers_down_gives_degraded_extractive_answer(
    base_settings: Settings, redis_bytes: redis.Redis, fake_llm: Callable[..., FakeLLM], redis_cleanup: None
) -> None:
    a, b = fake_llm(), fake_llm()
    a.mode, b.mode = "500", "hang"
    b.hang_s = 3.0
    primary, backup = unique("primary"), unique("backup")
    settings = gateway_settings(
        base_settings, {primary: a, backup: b}, provider_overrides={backup: {"timeout_s": 0.3}}
    )
    chunks: list[str] = []

    out = LLMGateway(settings, redis_bytes).generate(QUESTION, SOURCES, on_chunk=chunks.append)

    assert out.degraded and out.provider == "extractive"
    assert set(out.errors) == {primary, backup}
    expected_answer, expected_quotes = answer_from_passages(
        QUESTION, SOURCES, n_sentences=settings.answer_sentences
    )
    assert out.answer == expected_answer and out.quotes == expected_quotes
    assert "aspirin lowered fever" in out.quotes[0].text
    assert "".join(chunks) == out.answer
    assert out.usage.cost_usd == 0.0 and out.usage.provider == "extractive"


def test_streaming_deltas_reach_on_chunk_and_usage_is_recorded(
    base_settings: Settings, redis_bytes: redis.Redis, fake_llm: Callable[..., FakeLLM], redis_cleanup: None
) -> None:
    server = fake_llm(answer="Yes: aspirin lowered fever in most adults [1], within an hour [1].")
    primary = unique("primary")
    gw = LLMGateway(gateway_settings(base_settings, {primary: server}), redis_bytes)
    chunks: list[str] = []

    out = gw.generate(QUESTION, SOURCES, on_chunk=chunks.append)

    assert server.requests[0]["body"]["stream"] is True
    assert len(chunks) == len(server.answer.split(" ")) > 1
    assert "".join(chunks) == out.answer == server.answer
    assert out.usage.prompt_tokens == 120 and out.usage.completion_tokens == 8 and out.usage.cost_usd > 0
    assert [q.source for q in out.quotes] == [1]


def test_stream_cut_midway_falls_back_to_next_provider(
    base_settings: Settings, redis_bytes: redis.Redis, fake_llm: Callable[..., FakeLLM], redis_cleanup: None
) -> None:
    cut, good = fake_llm(), fake_llm(answer="Backup [1].")
    cut.mode = "cut"
    primary, backup = unique("primary"), unique("backup")
    gw = LLMGateway(gateway_settings(base_settings, {primary: cut, backup: good}), redis_bytes)
    chunks: list[str] = []

    out = gw.generate(QUESTION, SOURCES, on_chunk=chunks.append)

    assert out.provider == backup and out.answer == "Backup [1]."
    assert "ended before the answer" in out.errors[primary]
    assert "".join(chunks).endswith("Backup [1].")


def test_no_providers_means_extractive_not_degraded(
    base_settings: Settings, redis_bytes: redis.Redis
) -> None:
    settings = base_settings.model_copy(update={"generator": "extractive", "llm_providers": "ignored"})
    assert provider_specs(settings) == []
    chunks: list[str] = []

    out = LLMGateway(settings, redis_bytes).generate(QUESTION, SOURCES, on_chunk=chunks.append)

    assert not out.degraded and out.provider == "extractive" and out.errors == {}
    # the extractive answer exists whole at once: one chunk (one Redis write), the whole answer
    assert out.quotes and chunks == [out.answer]


def test_a_whole_answer_goes_to_on_whole_and_a_stream_to_on_chunk(
    base_settings: Settings, redis_bytes: redis.Redis, fake_llm: Callable[..., FakeLLM], redis_cleanup: None
) -> None:
    """The generation task writes a whole answer with the job's finish (one round trip fewer) and
    an LLM's pieces as they come; a provider that fails mid-stream keeps its pieces, and the
    fallback's whole answer follows through `on_whole`."""
    extractive = LLMGateway(base_settings.model_copy(update={"generator": "extractive"}), redis_bytes)
    chunks: list[str] = []
    wholes: list[str] = []
    out = extractive.generate(QUESTION, SOURCES, on_chunk=chunks.append, on_whole=wholes.append)
    assert chunks == [] and wholes == [out.answer] and out.quotes

    server = fake_llm(answer="Yes [1], quickly [1].")
    gw = LLMGateway(gateway_settings(base_settings, {unique("primary"): server}), redis_bytes)
    chunks, wholes = [], []
    out = gw.generate(QUESTION, SOURCES, on_chunk=chunks.append, on_whole=wholes.append)
    assert wholes == [] and len(chunks) > 1 and "".join(chunks) == out.answer

    cut = fake_llm()
    cut.mode = "cut"
    gw = LLMGateway(gateway_settings(base_settings, {unique("primary"): cut}), redis_bytes)
    chunks, wholes = [], []
    out = gw.generate(QUESTION, SOURCES, on_chunk=chunks.append, on_whole=wholes.append)
    assert out.degraded and chunks and wholes == [out.answer]


def test_no_sources_does_not_call_the_llm(
    base_settings: Settings, redis_bytes: redis.Redis, fake_llm: Callable[..., FakeLLM], redis_cleanup: None
) -> None:
    server = fake_llm()
    gw = LLMGateway(gateway_settings(base_settings, {unique("primary"): server}), redis_bytes)

    out = gw.generate(QUESTION, [])

    assert server.calls == 0 and out.quotes == [] and "No sources" in out.answer


def test_breaker_refuses_a_decoding_redis_client(base_settings: Settings, redis_client: redis.Redis) -> None:
    with pytest.raises(ValueError, match="decode_responses=False"):
        resilience.make_breaker(redis_client, base_settings, unique("x"))
