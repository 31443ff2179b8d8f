"""The pre-launch checklist (docs/operations.md), one check per item, each a verdict an operator or
a CI job can act on: `ragfleet check <item>` exits 0 when the item holds and 1 when it does not,
saying why (ragfleet/checks_cli.py).

Each check reads what the fleet really runs with: the Settings (the deployment's `RAGFLEET_*`), the
shared Redis, the files in infra/, the running API. None imports torch or a store client.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import redis

from ragfleet.settings import Settings

REPO = Path(__file__).resolve().parents[1]
DASHBOARD = REPO / "infra" / "grafana" / "ragfleet-dashboard.json"
ALERT_RULES = REPO / "infra" / "prometheus" / "alerts.yml"
ALERT_TESTS = REPO / "infra" / "prometheus" / "alerts_test.yml"
# what the checklist asks the alerts to cover, by rule name (infra/prometheus/alerts.yml)
REQUIRED_ALERTS = (
    "RagfleetQueryLatencyP50High",
    "RagfleetQueryLatencyP99High",
    "RagfleetHTTPErrorRateHigh",
    "RagfleetCacheHitRateLow",
    "RagfleetRetrievalQualityLow",
    "RagfleetQueueHasNoWorkers",
    "RagfleetBreakerOpen",
)


# series the API exports besides the declared ones (ragfleet/metrics/queue_depth.py, dead_letters.py)
@dataclass(slots=True)
class Verdict:
    """One item's outcome: `ok`, and the lines that say what was checked or what failed."""

    item: str
    ok: bool = True
    lines: list[str] = field(default_factory=list)

    def fail(self, line: str) -> None:
        self.ok = False
        self.lines.append(f"FAIL {line}")

    def note(self, line: str) -> None:
        self.lines.append(f"ok   {line}")


def check_fallback(s: Settings) -> Verdict:
    """An LLM generator has at least two providers (a fallback), each resolvable; the extractive
    answerer, which needs no provider, is the last resort of every chain."""
    from ragfleet.generation.gateway import provider_specs

    v = Verdict("fallback")
    if s.generator == "extractive":
        v.note("generator is extractive: no LLM provider to fall back from")
        return v
    try:
        specs = provider_specs(s)
    except ValueError as exc:
        v.fail(f"provider configuration: {exc}")
        return v
    if len(specs) < 2:
        v.fail(f"{len(specs)} LLM provider(s) configured (RAGFLEET_LLM_PROVIDERS): a fallback needs 2")
    for p in specs:
        if p.api_key is None:
            v.fail(f"provider {p.name}: no API key (RAGFLEET_LLM_PROVIDER_CONFIG or _LLM_API_KEY)")
        else:
            v.note(f"provider {p.name}: {p.base_url} model {p.model}")
    return v


def _redis(s: Settings) -> redis.Redis:
    t = s.redis_socket_timeout_s
    return redis.Redis.from_url(s.redis_url, socket_timeout=t, socket_connect_timeout=t)


def check_cache(s: Settings) -> Verdict:
    """The answer cache is on and its Redis layer takes a write and gives it back."""
    v = Verdict("cache")
    if not s.cache_enabled:
        v.fail("the answer cache is off (RAGFLEET_CACHE_ENABLED=false)")
    if s.cache_l2_ttl_s <= 0 or s.cache_l1_size <= 0:
        v.fail(f"cache sizes: l1 {s.cache_l1_size} entries, l2 TTL {s.cache_l2_ttl_s} s")
    key = s.key("check", "cache", str(time.time_ns()))
    client = _redis(s)
    try:
        client.set(key, b"1", ex=10)
        if client.get(key) != b"1":
            v.fail(f"Redis {s.redis_url.rsplit('@', 1)[-1]} did not give back what was written")
        else:
            v.note(f"Redis layer answers, entries kept {s.cache_l2_ttl_s} s")
        client.delete(key)
    except redis.RedisError as exc:
        v.fail(f"Redis layer: {exc}")
    finally:
        client.close()
    return v


def check_breakers(s: Settings) -> Verdict:
    """Every provider's circuit breaker is configured to open and to recover, and none is open now."""
    from ragfleet.generation.gateway import provider_specs
    from ragfleet.resilience import STATE_CLOSED, breaker_state

    v = Verdict("breakers")
    if s.llm_breaker_fail_max < 1 or s.llm_breaker_reset_s <= 0:
        v.fail(f"breaker settings: fail_max {s.llm_breaker_fail_max}, reset {s.llm_breaker_reset_s} s")
    try:
        names = [p.name for p in provider_specs(s)]
    except ValueError as exc:
        v.fail(f"provider configuration: {exc}")
        return v
    if not names:
        v.note("no LLM provider: no breaker to check")
        return v
    client = _redis(s)
    try:
        for name in names:
            state = breaker_state(client, s, name)
            if state == STATE_CLOSED:
                v.note(f"breaker {name}: closed")
            else:
                v.fail(f"breaker {name}: {state}")
    except redis.RedisError as exc:
        v.fail(f"breaker state in Redis: {exc}")
    finally:
        client.close()
    return v


def check_rate_limits(s: Settings) -> Verdict:
    """The API limits submissions per key and every limit parses (`limits` syntax); callers have keys."""
    from limits import parse_many

    v = Verdict("rate-limits")
    limits = (("RAGFLEET_RATE_LIMIT", s.rate_limit), ("RAGFLEET_READ_RATE_LIMIT", s.read_rate_limit))
    for name, value in limits:
        if not value.strip():
            if name == "RAGFLEET_RATE_LIMIT":
                v.fail(f"{name} is empty: submissions are unlimited")
            continue
        try:
            parsed = parse_many(value)
        except ValueError as exc:
            v.fail(f"{name}={value!r}: {exc}")
            continue
        v.note(f"{name}: {', '.join(str(p) for p in parsed)}")
    if not s.api_keys.strip():
        v.fail("RAGFLEET_API_KEYS is empty: the API is open and every caller shares one rate limit")
    return v


def _series(expr: str) -> set[str]:
    return set(re.findall(r"\bragfleet_[a-z0-9_]+", expr))


def check_dashboards(path: Path = DASHBOARD) -> Verdict:
    """The Grafana dashboard loads, and every ragfleet series its panels query is one the fleet exports."""
    from ragfleet.metrics.spec import exposed_series

    v = Verdict("dashboards")
    try:
        board = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        v.fail(f"{path}: {exc}")
        return v
    known = exposed_series()  # the one list the alert rules' test reads too
    exprs = [
        str(t.get("expr", ""))
        for p in board.get("panels", [])
        for t in p.get("targets", [])
        if isinstance(t, dict)
    ]
    if not exprs:
        v.fail(f"{path.name}: no panel queries anything")
    unknown = sorted(set().union(*map(_series, exprs)) - known) if exprs else []
    if unknown:
        v.fail(f"{path.name}: panels query series the fleet does not export: {', '.join(unknown)}")
    else:
        v.note(f"{path.name}: {len(exprs)} queries, every series exported")
    return v


def check_alerts(rules: Path = ALERT_RULES, tests: Path | None = ALERT_TESTS) -> Verdict:
    """promtool accepts the alert rules and their unit tests pass, and the checklist's alerts exist."""
    v = Verdict("alerts")
    text = rules.read_text() if rules.exists() else ""
    names = set(re.findall(r"^\s*-\s*alert:\s*(\S+)", text, flags=re.M))
    missing = [a for a in REQUIRED_ALERTS if a not in names]
    if missing:
        v.fail(f"alerts missing from {rules.name}: {', '.join(missing)}")
    promtool = shutil.which("promtool")
    if promtool is None:
        v.fail("promtool not found (Debian/Ubuntu: apt-get install prometheus)")
        return v
    runs = [["check", "rules", str(rules)]] + ([["test", "rules", str(tests)]] if tests else [])
    for args in runs:
        out = subprocess.run(
            [promtool, *args], capture_output=True, text=True, timeout=120, cwd=rules.parent, check=False
        )
        if out.returncode != 0:
            v.fail(f"promtool {' '.join(args[:2])}: {(out.stdout + out.stderr).strip()[-800:]}")
        else:
            v.note(f"promtool {' '.join(args)}")
    return v


@dataclass(slots=True)
class LoadResult:
    sent: int = 0
    done: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)

    def quantile(self, q: float) -> float:
        xs = sorted(self.latencies_ms)
        return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("inf")


async def _drive(
    api_url: str, api_key: str | None, rate: float, duration_s: float, questions: Sequence[str], wait_s: float
) -> LoadResult:
    """Open loop: one query every 1/rate s for `duration_s`, each long-polled for its answer."""
    result = LoadResult()
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    pool = httpx.Limits(max_connections=512, max_keepalive_connections=512)
    async with httpx.AsyncClient(base_url=api_url, headers=headers, timeout=wait_s + 10, limits=pool) as http:

        async def one(i: int) -> None:
            body = {"question": questions[i % len(questions)], "use_cache": False}
            started = time.perf_counter()
            try:
                r = await http.post("/v1/queries", params={"wait": wait_s}, json=body)
            except httpx.HTTPError as exc:
                result.errors[type(exc).__name__] = result.errors.get(type(exc).__name__, 0) + 1
                return
            status = r.json().get("status") if r.status_code == 200 else None
            if status == "done":
                result.done += 1
                result.latencies_ms.append((time.perf_counter() - started) * 1000)
            else:
                why = f"HTTP {r.status_code}" + (f" {status}" if status else "")
                result.errors[why] = result.errors.get(why, 0) + 1

        tasks = []
        start = time.perf_counter()
        n = max(1, int(rate * duration_s))
        for i in range(n):
            await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
            tasks.append(asyncio.create_task(one(i)))
            result.sent += 1
        await asyncio.gather(*tasks)
    return result


DEFAULT_QUESTIONS = (
    "What does the fleet do when a worker dies?",
    "How are documents indexed?",
    "Which store keeps the vectors?",
    "How is an answer cited?",
)


def check_load(
    s: Settings,
    *,
    expected_rps: float,
    factor: float = 2.0,
    duration_s: float = 60.0,
    p99_ms: float = 3_000.0,
    p50_ms: float = 750.0,
    max_error_rate: float = 0.005,
    questions: Sequence[str] = DEFAULT_QUESTIONS,
) -> Verdict:
    """Queries at `factor` x the expected rate through the running API (answer cache bypassed):
    P50, P99 and the error rate must stay within the alert thresholds (infra/prometheus/alerts.yml).
    It calls with the first key of `api_keys` (the deployment's), if any."""
    v = Verdict("load")
    first = s.api_keys.split(",")[0].strip()
    api_key = first.split(":")[0] or None
    rate = expected_rps * factor
    wait_s = max(p99_ms / 1000 * 2, 5.0)  # a query slower than this counts as failed
    res = asyncio.run(_drive(s.api_url, api_key, rate, duration_s, questions, wait_s))
    failed = res.sent - res.done
    error_rate = failed / res.sent if res.sent else 1.0
    p50, p99 = res.quantile(0.50), res.quantile(0.99)
    summary = (
        f"{res.sent} queries at {rate:g}/s ({factor:g} x {expected_rps:g}) for {duration_s:g} s: "
        f"P50 {p50:.0f} ms, P99 {p99:.0f} ms, errors {failed} ({error_rate:.2%})"
    )
    v.lines.append(f"     {summary}")
    if res.errors:
        v.lines.append("     errors: " + ", ".join(f"{k} x{n}" for k, n in sorted(res.errors.items())))
    if p50 > p50_ms:
        v.fail(f"P50 {p50:.0f} ms over {p50_ms:g} ms")
    if p99 > p99_ms:
        v.fail(f"P99 {p99:.0f} ms over {p99_ms:g} ms")
    if error_rate > max_error_rate:
        v.fail(f"error rate {error_rate:.2%} over {max_error_rate:.2%}")
    return v
