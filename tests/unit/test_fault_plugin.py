"""Fault injection is test-only: the production packages know nothing of it, and the plugin the
tests' fleets load (tests/faults) wraps the query and indexing paths only when a fault is asked for."""

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


def _probe(script: str = PROBE, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RAGFLEET_CHAOS_")}
    pythonpath = os.pathsep.join([str(FAULTS_DIR), str(REPO)])
    out = subprocess.run(
        [sys.executable, "-c", script],
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


SLOW_FILL = """
import time
import ragfleet.indexing as ix
t0 = time.perf_counter()
try:
    ix._fill_vectors(None, {"a": [1, 2], "b": [3]}, None, None, None, "model")
except Exception as exc:
    print(hasattr(ix._fill_vectors, "__wrapped__"), type(exc).__name__, round(time.perf_counter() - t0, 1))
"""


def test_the_embed_delay_slows_indexing_by_the_chunks_it_embeds() -> None:
    # three chunks at 0.2 s each, then the real function fails on its missing arguments
    assert _probe(SLOW_FILL, RAGFLEET_CHAOS_EMBED_DELAY_S="0.2") == "True AttributeError 0.6"
    assert _probe(SLOW_FILL) == "False AttributeError 0.0"
