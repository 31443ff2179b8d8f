"""The Prometheus config, the alert rules and the Grafana dashboard: valid, tested, and in step with
ragfleet/metrics.py.

promtool comes from the Debian `prometheus` package (apt-get install -y prometheus); a missing promtool
skips locally and fails in CI. The drift tests need nothing but the files.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]  # PyYAML ships no stubs; types-PyYAML is not a dep

from ragfleet.metrics import exposed_series
from tests.conftest import REPO, need
from workers.roles import WORKER_ROLES

PROM = REPO / "infra" / "prometheus"
DASHBOARD = REPO / "infra" / "grafana" / "ragfleet-dashboard.json"
METRIC_REF = re.compile(r"\bragfleet_[a-zA-Z0-9_]+")


def promtool() -> str:
    path = shutil.which("promtool")
    need(path is not None, "promtool not installed (apt-get install -y prometheus)")
    assert path is not None
    return path


def run_promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *map(str, args)], capture_output=True, text=True, timeout=120, cwd=PROM
    )


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in load_yaml(PROM / "alerts.yml")["groups"] for rule in group["rules"]]


def dashboard_panels() -> list[dict[str, Any]]:
    dash = json.loads(DASHBOARD.read_text())
    out: list[dict[str, Any]] = []
    for panel in dash["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))  # collapsed rows nest their panels
    return [p for p in out if p.get("type") != "row"]


# --- promtool -------------------------------------------------------------------------------------


def test_alert_rules_pass_promtool_check() -> None:
    result = run_promtool("check", "rules", "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def test_alert_rule_unit_tests_pass() -> None:
    result = run_promtool("test", "rules", "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_alert_unit_tests_catch_a_wrong_threshold(tmp_path: Path) -> None:
    """The unit tests must be able to fail: loosen the P50 threshold and they do."""
    rules = (PROM / "alerts.yml").read_text()
    assert " > 0.75\n" in rules
    (tmp_path / "alerts.yml").write_text(rules.replace(" > 0.75\n", " > 1\n"))
    shutil.copy(PROM / "alerts_test.yml", tmp_path / "alerts_test.yml")
    result = subprocess.run(
        [promtool(), "test", "rules", "alerts_test.yml"], capture_output=True, text=True, cwd=tmp_path
    )
    assert result.returncode != 0
    assert "RagfleetQueryLatencyP50High" in result.stdout + result.stderr


def test_prometheus_config_is_valid() -> None:
    result = run_promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_prometheus_scrapes_the_api_and_every_pool() -> None:
    config = load_yaml(PROM / "prometheus.yml")
    targets = {
        job["job_name"]: [t for sc in job["static_configs"] for t in sc["targets"]]
        for job in config["scrape_configs"]
    }
    assert targets["ragfleet-api"] == ["127.0.0.1:8000"]
    pools = {
        sc["labels"]["pool"]
        for job in config["scrape_configs"]
        if job["job_name"] == "ragfleet-workers"
        for sc in job["static_configs"]
    }
    assert pools == {r.name for r in WORKER_ROLES}


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """promtool parses the dashboard's queries when they are written as recording rules."""
    rules = [
        {"record": f"dashboard:panel_{panel['id']}_{target['refId']}", "expr": expr}
        for panel in dashboard_panels()
        for target in panel["targets"]
        for expr in [target["expr"].replace("$__rate_interval", "5m")]
    ]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run_promtool("check", "rules", path)
    assert result.returncode == 0, result.stdout + result.stderr


# --- drift between code, rules and dashboard ----------------------------------------------------------


def test_every_alert_has_a_firing_and_a_silent_unit_test() -> None:
    fires: set[str] = set()
    silent: set[str] = set()
    for group in load_yaml(PROM / "alerts_test.yml")["tests"]:
        for case in group.get("alert_rule_test", []):
            (fires if case.get("exp_alerts") else silent).add(case["alertname"])
    names = {rule["alert"] for rule in alert_rules()}
    assert names - fires == set(), "alerts never shown to fire"
    assert names - silent == set(), "alerts never shown to stay silent"


def test_alert_rules_reference_only_defined_metrics() -> None:
    defined = exposed_series()
    for rule in alert_rules():
        used = set(METRIC_REF.findall(rule["expr"]))
        assert used <= defined, f"{rule['alert']} uses undefined {sorted(used - defined)}"


def test_dashboard_has_a_prometheus_datasource_variable() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in dashboard_panels():
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]


@pytest.mark.parametrize(
    "title",
    [
        "Requests/s by status",
        "Query latency P50 / P99 by stage",
        "Error rate",
        "Cache hit rate by layer",
        "Queue depth",
        "Task runtime P50 / P95 by task",
        "Task failures and retries",
        "Breaker state",
        "Index version",
        "Index chunks",
        "Retrieval quality (nDCG@10)",
        "Average rating",
        "Tokens/s by provider",
        "Cost per hour (USD)",
        "PostgreSQL replica lag (seconds)",
        "PostgreSQL replica lag (bytes)",
    ],
)
def test_dashboard_has_panel(title: str) -> None:
    assert title in {p["title"] for p in dashboard_panels()}


def test_dashboard_panels_reference_only_defined_metrics() -> None:
    defined = exposed_series()
    panels = dashboard_panels()
    assert panels
    for panel in panels:
        exprs = [t["expr"] for t in panel["targets"]]
        used = {m for e in exprs for m in METRIC_REF.findall(e)}
        assert used, f"panel {panel['title']!r} queries no ragfleet metric"
        assert used <= defined, f"panel {panel['title']!r} uses undefined {sorted(used - defined)}"
