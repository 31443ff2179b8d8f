"""SIGTERM to the API (the Procfile's launcher, api_shim/serve.py, two uvicorn workers) drains it:
it stops accepting, ends an open long poll (202: poll elsewhere) and an open stream (its `timeout`
line: resume elsewhere) at once instead of at their own limits, and exits within the drain grace
(api_shim/drain.py). No worker runs here, so neither query could end any other way."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from ragfleet.settings import Settings
from tests.conftest import REPO, free_port, settings_env

pytestmark = [pytest.mark.redis]

GRACE_S = 10


def _wait_healthy(base: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the API exited"
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError("API not healthy")


def test_sigterm_ends_long_polls_and_streams_and_the_api_exits_within_the_grace(
    base_settings: Settings, tmp_path: Path
) -> None:
    s = base_settings.model_copy(update={"key_prefix": f"{base_settings.key_prefix}-apidrain"})
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**settings_env(s), "RAGFLEET_DRAIN_GRACE_S": str(GRACE_S)}
    log = (tmp_path / "api.log").open("ab")
    argv = [
        sys.executable,
        "-m",
        "api_shim.serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "2",
    ]
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_healthy(base, proc)
        ask = {"question": "Which store keeps the vectors?", "use_cache": False}
        streamed = httpx.post(f"{base}/v1/queries", json=ask, timeout=10).json()["job_id"]
        ended: dict[str, Any] = {}

        def long_poll() -> None:
            r = httpx.post(f"{base}/v1/queries", params={"wait": 25}, json=ask, timeout=40)
            ended["poll"] = (time.monotonic(), r.status_code)

        def stream() -> None:
            lines = []
            with httpx.stream("GET", f"{base}/v1/queries/{streamed}/stream", timeout=40) as r:
                for line in r.iter_lines():
                    if line.strip():
                        lines.append(json.loads(line))
            ended["stream"] = (time.monotonic(), lines)

        threads = [threading.Thread(target=f, daemon=True) for f in (long_poll, stream)]
        for t in threads:
            t.start()
        time.sleep(2.0)  # both are waiting now
        assert not ended
        proc.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        proc.wait(GRACE_S + 5)
        exited = time.monotonic() - sent
        for t in threads:
            t.join(10)

        poll_at, poll_status = ended["poll"]
        stream_at, lines = ended["stream"]
        print(
            f"\n[drain] API: long poll answered {poll_at - sent:.2f} s and stream ended "
            f"{stream_at - sent:.2f} s after SIGTERM; exited after {exited:.2f} s (grace {GRACE_S} s)"
        )
        assert poll_status == 202 and poll_at - sent < 3  # not at its 25 s wait
        assert lines[-1]["type"] == "timeout" and stream_at - sent < 3  # resume from `after`
        assert exited < GRACE_S
        with pytest.raises(httpx.ConnectError):  # it no longer accepts
            httpx.get(f"{base}/healthz", timeout=1)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        log.close()
