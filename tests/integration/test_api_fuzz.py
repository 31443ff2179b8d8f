"""Schemathesis against the real served API: the schema must describe every answer the API gives.

All checks run (server errors, undocumented status codes, response schemas and headers, schema-valid
requests rejected, schema-invalid requests accepted, auth ignored, stateful links POST -> GET job).
`/readyz` is left out: with no workers in this test it answers 503 by design, which
`not_a_server_error` would flag; tests/integration/test_api.py covers it.

The search is bounded by time, which schemathesis shares between its phases (coverage, fuzzing,
stateful): 30 s in the full suite and in CI (`CI=true`), 10 s in the fast tier run locally (a run
whose `-m` deselects the worker tests: the quick check between edits). `RAGFLEET_FUZZ_MAX_TIME_S`
overrides both. Every phase runs either way; a longer budget generates more cases (~25 a second on a
quiet machine).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import redis
from pydantic import SecretStr

from ragfleet.settings import Settings
from tests.conftest import IN_CI
from tests.helpers import serve_api

pytestmark = [pytest.mark.redis, pytest.mark.slow]

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
# Every warning but missing_test_data: no operation creates a dead letter (the fleet does, when it
# gives up on a job), so the entry routes answer 404 to every generated id, as they must.
WARNINGS = [
    "missing_auth",
    "base_url_mismatch",
    "validation_mismatch",
    "missing_deserializer",
    "unused_openapi_auth",
    "unsupported_regex",
    "method_not_allowed",
    "low_valid_rate",
    "rate_limited",
]
FULL_S, FAST_TIER_S = 30, 10
CONFIG = Path(__file__).with_name("schemathesis.toml")  # per-operation expectations, explained there


def budget_s(config: pytest.Config) -> int:
    if os.environ.get("RAGFLEET_FUZZ_MAX_TIME_S"):
        return int(os.environ["RAGFLEET_FUZZ_MAX_TIME_S"])
    fast_tier = "not workers" in (config.getoption("markexpr") or "")
    return FAST_TIER_S if fast_tier and not IN_CI else FULL_S


def test_schemathesis_finds_no_failures(
    base_settings: Settings,
    redis_client: redis.Redis,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    pytestconfig: pytest.Config,
) -> None:
    max_time_s = budget_s(pytestconfig)
    key = "fuzz-" + uuid.uuid4().hex
    s = base_settings.model_copy(
        update={
            "api_keys": f"{key}:fuzz-tenant",
            "admin_keys": key,  # the purge route answers only an admin (a tenant key gets 403 only)
            # callbacks as the session allows them (a loopback receiver), with a secret for this tenant
            "callback_secrets": SecretStr("fuzz-tenant:fuzz-secret"),
            "rate_limit": "1000000/minute",
            # small limits keep generated bodies small and positive long polls short
            "long_poll_max_s": 0.5,
            "stream_max_s": 1.0,  # an open stream of a job nobody runs must end inside the fuzzer's timeout
            "stream_heartbeat_s": 0.5,
            "max_documents_per_request": 20,
            "max_document_chars": 5_000,
            "max_question_chars": 500,
            "max_request_bytes": 1_000_000,
            # thousands of messages: keep them off the queues other tests read
            "broker_key_prefix": f"{base_settings.key_prefix}:fuzzq:",
        }
    )
    with serve_api(s) as url:
        proc = subprocess.run(
            [str(SCHEMATHESIS), "--no-color", "--config-file", str(CONFIG),
             "run", f"{url}/openapi.json", "--max-time", str(max_time_s),
             "--checks", "all", "--exclude-path", "/readyz",
             # DELETE /v1/batches/{id} cancels: the cancelled batch and its results stay readable
             # (documented in docs/http.md), so "deleted resource still available" does not apply
             "--exclude-checks", "use_after_free", "-H", f"Authorization: Bearer {key}",
             "--warnings", ",".join(WARNINGS)],
            capture_output=True, text=True, timeout=max_time_s + 120, cwd=tmp_path,
        )  # fmt: skip
    out = proc.stdout + proc.stderr
    counts = re.search(r"(\d+) generated, (.*)", out)
    assert counts is not None, out[-3_000:]
    with capsys.disabled():
        print(
            f"\nschemathesis ({max_time_s} s): {counts.group(1)} cases generated, {counts.group(2).strip()}"
        )
    assert proc.returncode == 0, out[-8_000:]
    assert "No issues found" in out, out[-8_000:]
    # something was tested (a broken schema or server ends the run with next to nothing): 3 cases a
    # second is far below what even a busy machine generates
    assert int(counts.group(1)) >= 3 * max_time_s
