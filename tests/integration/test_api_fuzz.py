"""Schemathesis against the real served API: the schema must describe every answer the API gives.

All checks run (server errors, undocumented status codes, response schemas and headers, schema-valid
requests rejected, schema-invalid requests accepted, auth ignored, stateful links POST -> GET job).
`/readyz` is left out: with no workers in this test it answers 503 by design, which
`not_a_server_error` would flag; tests/integration/test_api.py covers it.
"""

from __future__ import annotations

import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import redis

from ragfleet.settings import Settings
from tests.helpers import serve_api

pytestmark = [pytest.mark.redis, pytest.mark.slow]

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
MAX_TIME_S = 30


def test_schemathesis_finds_no_failures(
    base_settings: Settings, redis_client: redis.Redis, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    key = "fuzz-" + uuid.uuid4().hex
    s = base_settings.model_copy(
        update={
            "api_keys": f"{key}:fuzz-tenant",
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
            [str(SCHEMATHESIS), "--no-color", "run", f"{url}/openapi.json", "--max-time", str(MAX_TIME_S),
             "--checks", "all", "--exclude-path", "/readyz",
             # DELETE /v1/batches/{id} cancels: the cancelled batch and its results stay readable
             # (documented in docs/http.md), so "deleted resource still available" does not apply
             "--exclude-checks", "use_after_free", "-H", f"Authorization: Bearer {key}"],
            capture_output=True, text=True, timeout=MAX_TIME_S + 120, cwd=tmp_path,
        )  # fmt: skip
    out = proc.stdout + proc.stderr
    counts = re.search(r"(\d+) generated, (.*)", out)
    assert counts is not None, out[-3_000:]
    with capsys.disabled():
        print(f"\nschemathesis: {counts.group(1)} cases generated, {counts.group(2).strip()}")
    assert proc.returncode == 0, out[-8_000:]
    assert "No issues found" in out, out[-8_000:]
    assert int(counts.group(1)) >= 100
