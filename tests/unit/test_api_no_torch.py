"""The API process must stay light: building the app and serving a request pulls in no model or
store library (a replica starts in well under a second and needs tens of MB, not a GB)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import REPO

HEAVY = ("torch", "sentence_transformers", "lancedb", "weaviate", "tasks", "workers", "ragfleet.embedding")

SCRIPT = """
import json, sys
import api_shim.app
from fastapi.testclient import TestClient
from ragfleet.settings import Settings

app = api_shim.app.create_app(Settings(redis_url="redis://127.0.0.1:1/0"))  # nothing connects at build
with TestClient(app) as client:
    assert client.get("/healthz").status_code == 200
    assert client.get("/metrics").status_code == 200
    app.openapi()
heavy = json.loads(sys.argv[1])
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in heavy or m in heavy)))
"""


def test_building_and_serving_the_api_imports_no_heavy_module() -> None:
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
