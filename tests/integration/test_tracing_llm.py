"""The LLM provider's HTTP call under tracing (ragfleet/generation): a client span per attempt, its
context sent to the provider, failures marked, and the breaker state and retries on the caller's span.
Runs the real gateway against a real HTTP server, in a process with tracing on (not this one: a
process's tracer provider is set once)."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from ragfleet.settings import Settings
from tests.conftest import REPO, settings_env
from tests.helpers import isolated
from tests.integration.fake_llm_server import FakeLLM
from tests.otlp_receiver import OtlpReceiver

pytestmark = [pytest.mark.redis]

CLIENT, STATUS_ERROR = 3, 2

_PROBE = r"""
from ragfleet import tracing
assert tracing.setup("generation")
from ragfleet.generation.gateway import LLMGateway
from ragfleet.redis_conn import get_redis
from ragfleet.schemas import Source
from ragfleet.settings import get_settings

s = get_settings()
text = "Celery runs tasks on workers."
source = Source(n=1, doc_id="d", chunk_id="d:0", text=text, score=1.0, start=0, end=len(text))
with tracing.span("run ragfleet.generate"):
    out = LLMGateway(s, get_redis(s, decode=False)).generate("What runs tasks?", [source])
tracing.shutdown()
print("degraded" if out.degraded else "answered")
"""


def test_a_failing_provider_call_is_a_failed_client_span_whose_context_the_provider_received(
    base_settings: Settings, tmp_path: Path
) -> None:
    receiver = OtlpReceiver().start()
    llm = FakeLLM().start()
    llm.mode = "500"
    s = isolated(
        base_settings,
        f"otel-llm-{uuid.uuid4().hex[:4]}",
        data_dir=tmp_path,
        generator="openai",
        llm_base_url=llm.url,
        llm_max_retries=1,
        llm_retry_base_s=0.01,
    )
    env = {
        **settings_env(s),
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": receiver.endpoint,
    }
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _PROBE], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
        )
    finally:
        llm.stop()
        receiver.stop()
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "degraded"  # the extractive floor answered
    spans = receiver.snapshot()
    parent = next(s for s in spans if s.name == "run ragfleet.generate")
    calls = [s for s in spans if s.kind == CLIENT]
    assert len(calls) == 2 == llm.calls  # one span per HTTP attempt (a retry after the first 500)
    assert all(c.parent_span_id == parent.span_id and c.status_code == STATUS_ERROR for c in calls)
    assert all(c.attributes["ragfleet.llm.provider"] == "default" for c in calls)
    sent = sorted(r["traceparent"].split("-")[2] for r in llm.requests)
    assert sent == sorted(c.span_id for c in calls)  # the provider got each attempt's own span
    assert parent.attributes["ragfleet.breaker.state"] == "default:closed"
    assert parent.attributes["ragfleet.llm.retries.default"] == 1
