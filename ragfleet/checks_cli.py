"""`ragfleet check <item>`: the pre-launch checklist (docs/operations.md), one command per item, each
exiting 1 when its item fails (ragfleet/checks.py says what each checks), 0 when it holds."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ragfleet import checks
from ragfleet.settings import get_settings

check_app = typer.Typer(help="Pre-launch checks: each exits 1 when its item fails.", no_args_is_help=True)


def _report(*verdicts: checks.Verdict) -> None:
    for v in verdicts:
        typer.echo(f"{'PASS' if v.ok else 'FAIL'} {v.item}")
        for line in v.lines:
            typer.echo(f"  {line}")
    if not all(v.ok for v in verdicts):
        raise typer.Exit(1)


@check_app.command("load")
def load(
    expected_rps: Annotated[float, typer.Option(help="the stated expected traffic, queries a second")],
    factor: Annotated[float, typer.Option(help="multiple of the expected traffic to drive")] = 2.0,
    duration: Annotated[float, typer.Option(help="seconds of load")] = 60.0,
    p50_ms: Annotated[float, typer.Option(help="largest P50 that passes (the alert's)")] = 750.0,
    p99_ms: Annotated[float, typer.Option(help="largest P99 that passes (the alert's)")] = 3_000.0,
    max_error_rate: Annotated[float, typer.Option(help="largest share of failed queries")] = 0.005,
) -> None:
    """Drive the running API (RAGFLEET_API_URL) at FACTOR x the expected rate, answer cache bypassed,
    with the first of RAGFLEET_API_KEYS."""
    _report(
        checks.check_load(
            get_settings(),
            expected_rps=expected_rps,
            factor=factor,
            duration_s=duration,
            p50_ms=p50_ms,
            p99_ms=p99_ms,
            max_error_rate=max_error_rate,
        )
    )


@check_app.command("fallback")
def fallback() -> None:
    """An LLM generator has two providers or more, each with a URL and a key."""
    _report(checks.check_fallback(get_settings()))


@check_app.command("cache")
def cache() -> None:
    """The answer cache is on and its Redis layer answers."""
    _report(checks.check_cache(get_settings()))


@check_app.command("breakers")
def breakers() -> None:
    """Breakers are configured, and none is open now."""
    _report(checks.check_breakers(get_settings()))


@check_app.command("rate-limits")
def rate_limits() -> None:
    """Submissions are rate-limited per API key, and the limits parse."""
    _report(checks.check_rate_limits(get_settings()))


@check_app.command("dashboards")
def dashboards(
    path: Annotated[Path, typer.Option(help="the Grafana dashboard")] = checks.DASHBOARD,
) -> None:
    """Every series the dashboard queries is one the fleet exports."""
    _report(checks.check_dashboards(path))


@check_app.command("alerts")
def alerts(
    rules: Annotated[Path, typer.Option(help="Prometheus alert rules")] = checks.ALERT_RULES,
    tests: Annotated[Path | None, typer.Option(help="their promtool unit tests")] = checks.ALERT_TESTS,
) -> None:
    """promtool checks and tests the alert rules; the checklist's alerts exist."""
    _report(checks.check_alerts(rules, tests))


@check_app.command("config")
def config() -> None:
    """Every item that needs no traffic: fallback, cache, breakers, rate limits, dashboards, alerts."""
    s = get_settings()
    _report(
        checks.check_fallback(s),
        checks.check_cache(s),
        checks.check_breakers(s),
        checks.check_rate_limits(s),
        checks.check_dashboards(),
        checks.check_alerts(),
    )
