"""`ragfleet check <item>` (ragfleet/checks.py): each item's command exits 1 on a fleet or a
configuration where the item fails and 0 where it holds, against the real parts: Redis, the
breakers' shared state, promtool, the dashboard file, and an HTTP server for the load check."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pybreaker
import pytest
import redis
from typer.testing import CliRunner

from ragfleet import checks
from ragfleet.checks_cli import check_app
from ragfleet.resilience import make_breaker
from ragfleet.settings import Settings, get_settings
from tests.conftest import REPO, need, settings_env

pytestmark = [pytest.mark.redis]

LLM = {
    "RAGFLEET_GENERATOR": "openai",
    "RAGFLEET_LLM_PROVIDERS": "primary,backup",
    "RAGFLEET_LLM_PROVIDER_CONFIG": json.dumps(
        {
            "primary": {"base_url": "http://127.0.0.1:9/v1", "api_key": "k1"},
            "backup": {"base_url": "http://127.0.0.1:10/v1", "api_key": "k2"},
        }
    ),
}


def run(s: Settings, *args: str, **env: str) -> tuple[int, str]:
    """The command as the CLI runs it, configured as a deployment is: by RAGFLEET_* variables."""
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(check_app, list(args), env={**settings_env(s), **env})
    finally:
        get_settings.cache_clear()
    return result.exit_code, result.output


def run_process(s: Settings, *args: str) -> tuple[int, str]:
    """`python -m ragfleet.cli check ...` in a process of its own: the exit status a CI job sees."""
    out = subprocess.run(
        [sys.executable, "-m", "ragfleet.cli", "check", *args],
        env={**settings_env(s), "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    return out.returncode, out.stdout + out.stderr


def test_fallback_needs_two_providers_with_keys(base_settings: Settings) -> None:
    assert run(base_settings, "fallback", **LLM)[0] == 0
    assert run(base_settings, "fallback", **{**LLM, "RAGFLEET_GENERATOR": "extractive"})[0] == 0
    code, out = run(base_settings, "fallback", **{**LLM, "RAGFLEET_LLM_PROVIDERS": "primary"})
    assert code == 1 and "a fallback needs 2" in out
    no_key = json.dumps({"primary": {"base_url": "http://x/v1"}, "backup": {"base_url": "http://y/v1"}})
    code, out = run(base_settings, "fallback", **{**LLM, "RAGFLEET_LLM_PROVIDER_CONFIG": no_key})
    assert code == 1 and "provider primary: no API key" in out


def test_cache_fails_when_off_or_when_redis_does_not_answer(base_settings: Settings) -> None:
    assert run(base_settings, "cache")[0] == 0
    code, out = run(base_settings, "cache", RAGFLEET_CACHE_ENABLED="false")
    assert code == 1 and "cache is off" in out
    dead = base_settings.model_copy(
        update={"redis_url": "redis://127.0.0.1:1/0", "redis_socket_timeout_s": 0.5}
    )
    code, out = run(dead, "cache")
    assert code == 1 and "Redis layer" in out


def test_breakers_fail_while_one_is_open(base_settings: Settings) -> None:
    s = base_settings.model_copy(update={"key_prefix": f"{base_settings.key_prefix}-breakers"})
    assert run(s, "breakers", **LLM)[0] == 0
    client = redis.Redis.from_url(s.redis_url)  # bytes: pybreaker's storage decodes itself
    breaker = make_breaker(client, s, "backup", fail_max=1, reset_s=60)

    def boom() -> None:
        raise ConnectionError("provider down")

    with pytest.raises(pybreaker.CircuitBreakerError):  # the call that trips it
        breaker.call(boom)
    code, out = run(s, "breakers", **LLM)
    assert code == 1 and "breaker backup: open" in out and "breaker primary: closed" in out
    for key in client.scan_iter(f"{s.key_prefix}:*"):
        client.delete(key)
    client.close()


def test_rate_limits_need_keys_and_a_parsable_limit(base_settings: Settings) -> None:
    keys = {"RAGFLEET_API_KEYS": "k1:team-a,k2:team-b"}
    assert run(base_settings, "rate-limits", **keys)[0] == 0
    code, out = run(base_settings, "rate-limits")
    assert code == 1 and "RAGFLEET_API_KEYS is empty" in out
    code, out = run(base_settings, "rate-limits", RAGFLEET_RATE_LIMIT="lots", **keys)
    assert code == 1 and "RAGFLEET_RATE_LIMIT='lots'" in out


def test_dashboards_fail_on_a_series_the_fleet_does_not_export(tmp_path: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(check_app, ["dashboards"]).exit_code == 0
    board = json.loads(checks.DASHBOARD.read_text())
    panel = next(p for p in board["panels"] if p.get("targets"))
    panel["targets"][0]["expr"] = "sum(rate(ragfleet_requests_renamed_total[5m]))"
    bad = tmp_path / "board.json"
    bad.write_text(json.dumps(board))
    result = runner.invoke(check_app, ["dashboards", "--path", str(bad)])
    assert result.exit_code == 1 and "ragfleet_requests_renamed_total" in result.output


def test_alerts_fail_on_a_missing_alert_or_a_rule_promtool_rejects(tmp_path: Path) -> None:
    rules = checks.ALERT_RULES.read_text()
    missing = tmp_path / "alerts.yml"
    missing.write_text(rules.replace("alert: RagfleetBreakerOpen", "alert: SomethingElse"))
    runner = CliRunner()
    result = runner.invoke(
        check_app, ["alerts", "--rules", str(missing), "--tests", str(tmp_path / "none.yml")]
    )
    assert result.exit_code == 1 and "RagfleetBreakerOpen" in result.output
    need(
        checks.shutil.which("promtool") is not None, "promtool not installed (apt-get install -y prometheus)"
    )
    assert runner.invoke(check_app, ["alerts"]).exit_code == 0
    broken = tmp_path / "broken.yml"
    broken.write_text(rules.replace("expr:", "expr: sum(", 1))  # a PromQL syntax error
    result = runner.invoke(check_app, ["alerts", "--rules", str(broken), "--tests", str(checks.ALERT_TESTS)])
    assert result.exit_code == 1 and "promtool check" in result.output


class _Fleet(BaseHTTPRequestHandler):
    """The API's long-poll contract (POST /v1/queries?wait=): 200 and the record once done."""

    delay_s = 0.0
    status = 200

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        time.sleep(self.delay_s)
        body = json.dumps(
            {"job_id": "j", "status": "done"} if self.status == 200 else {"error": "x"}
        ).encode()
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def fleet_api() -> Iterator[tuple[str, type[_Fleet]]]:
    handler = type("Handler", (_Fleet,), {})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", handler
    server.shutdown()


def test_load_at_twice_the_expected_traffic_fails_a_slow_or_failing_fleet(
    base_settings: Settings, fleet_api: tuple[str, type[_Fleet]]
) -> None:
    url, handler = fleet_api
    s = base_settings.model_copy(update={"api_url": url})
    fast = checks.check_load(s, expected_rps=10, duration_s=1.0, p50_ms=100, p99_ms=200)
    assert fast.ok, fast.lines
    assert "20 queries at 20/s (2 x 10)" in fast.lines[0]
    handler.delay_s = 0.3
    slow = checks.check_load(s, expected_rps=10, duration_s=1.0, p50_ms=100, p99_ms=200)
    assert not slow.ok and any("P99" in line for line in slow.lines)
    handler.delay_s, handler.status = 0.0, 503
    code, out = run_process(s, "load", "--expected-rps", "10", "--duration", "0.5")
    assert code == 1 and "HTTP 503 x10" in out
