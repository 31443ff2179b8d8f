"""Other services import the Python client: it must not drag in the model or the store libraries."""

from __future__ import annotations

from tests.conftest import heavy_modules_loaded_by

SCRIPT = """
from ragfleet.client import BrokerTransport, FleetClient
from ragfleet.settings import Settings
import ragfleet.cli  # the CLI's enqueue-and-poll commands are as light as the client

s = Settings(redis_url="redis://127.0.0.1:1/0")  # nothing connects until a call
FleetClient(BrokerTransport(s))
FleetClient.over_http("http://127.0.0.1:1")
"""


def test_importing_and_building_the_client_imports_no_heavy_module() -> None:
    assert heavy_modules_loaded_by(SCRIPT) == []
