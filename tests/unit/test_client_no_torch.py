"""Other services import the Python client: it must not drag in the model or the store libraries."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import REPO

HEAVY = ("torch", "sentence_transformers", "lancedb", "weaviate", "tasks", "workers", "ragfleet.embedding")

SCRIPT = """
import json, sys
from ragfleet.client import BrokerTransport, FleetClient
from ragfleet.settings import Settings
import ragfleet.cli  # the CLI's enqueue-and-poll commands are as light as the client

s = Settings(redis_url="redis://127.0.0.1:1/0")  # nothing connects until a call
FleetClient(BrokerTransport(s))
FleetClient.over_http("http://127.0.0.1:1")
heavy = json.loads(sys.argv[1])
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in heavy or m in heavy)))
"""


def test_importing_and_building_the_client_imports_no_heavy_module() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(HEAVY)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []
