"""Fault injection is test-only: the production packages know nothing of it, and the plugin the
tests' fleets load (tests/faults) wraps the query path only when a fault is asked for."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import REPO
from tests.fleet import FAULTS_DIR

PROBE = """
import types
import ragfleet.querying as q
wrapped = hasattr(q.search, "__wrapped__")
try:
    q.search(None, types.SimpleNamespace(question="What is Redis? BUG-1"))
except Exception as exc:
    print(wrapped, type(exc).__name__)
"""


def _probe(**env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RAGFLEET_CHAOS_")}
    pythonpath = os.pathsep.join([str(FAULTS_DIR), str(REPO)])
    out = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=REPO,
        env={**clean, **env, "PYTHONPATH": pythonpath},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_the_plugin_injects_its_fault_into_the_query_path_only_when_asked() -> None:
    assert _probe(RAGFLEET_CHAOS_ERROR_MARKER="BUG-1") == "True ChaosError"
    assert _probe() == "False TypeError"  # no plugin: the real search, missing its arguments


def test_no_production_module_knows_the_faults() -> None:
    for package in ("ragfleet", "workers", "tasks", "api_shim"):
        for path in (REPO / package).rglob("*.py"):
            text = path.read_text().lower()
            assert not any(word in text for word in ("chaos_", "inject_fault", "chaoserror")), path
