"""The API process must stay light: building the app and serving a request pulls in no model or
store library (a replica starts in well under a second and needs tens of MB, not a GB). With the
PostgreSQL store configured it does not even load the PostgreSQL client: the API never connects to
the store, so a store outage cannot make the API replicas unready (the workers report it)."""

from __future__ import annotations

from tests.conftest import heavy_modules_loaded_by

SCRIPT = """
import api_shim.app
from fastapi.testclient import TestClient
from ragfleet.settings import Settings

settings = Settings(  # nothing connects at build
    redis_url="redis://127.0.0.1:1/0", store="postgres", pg_url="postgresql://ragfleet@127.0.0.1:1/ragfleet"
)
app = api_shim.app.create_app(settings)
with TestClient(app) as client:
    assert client.get("/healthz").status_code == 200
    assert client.get("/metrics").status_code == 200
    app.openapi()
"""


def test_building_and_serving_the_api_imports_no_heavy_module() -> None:
    assert heavy_modules_loaded_by(SCRIPT) == []
