"""The compose files in infra/ are valid Compose files (offline: no container engine runs here), and
infra/compose.postgres.yaml runs every role of workers/roles.py on PostgreSQL with a streaming
replica serving the searches, with secrets from the environment.

Validity is the Compose Specification's JSON Schema as Docker Compose v2.40.3 embeds it, vendored in
infra/schemas/ (README there: where it comes from and how to refresh it)."""

from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from ragfleet.settings import Settings
from tests.conftest import REPO
from workers import roles

COMPOSE_SCHEMA = REPO / "infra" / "schemas" / "compose-spec-v2.40.3.schema.json"
COMPOSE_FILES = sorted(p for p in (REPO / "infra").glob("*compose*.y*ml"))
POSTGRES = REPO / "infra" / "compose.postgres.yaml"
ROLE_NAMES = {"api", *roles.ROLES, "beat"}


def _errors(doc: dict[str, Any]) -> list[str]:
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    validator = jsonschema.Draft7Validator(schema)
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(doc)]


def _load(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(path.read_text())  # YAML merge keys (<<) resolved here
    return doc


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's `${VAR}`, `${VAR:-default}` and `${VAR:?error}`, innermost first, and `$$` -> `$`."""
    pattern = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::([-?])([^${}]*))?\}")

    def one(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3) or ""
        if env.get(name):
            return env[name]
        if op == "?":
            raise KeyError(f"{name}: {arg}")
        return arg if op == "-" else ""

    while (new := pattern.sub(one, value)) != value:
        value = new
    return value.replace("$$", "$")


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_every_compose_file_is_valid_for_the_vendored_compose_spec(path: Path) -> None:
    assert _errors(_load(path)) == []


def test_the_compose_schema_rejects_a_misspelt_field_and_a_wrong_type() -> None:
    doc = _load(POSTGRES)
    misspelt = copy.deepcopy(doc)
    misspelt["services"]["retrieval"]["helthcheck"] = misspelt["services"]["retrieval"].pop("healthcheck")
    assert any("helthcheck" in e for e in _errors(misspelt))
    wrong = copy.deepcopy(doc)
    wrong["services"]["postgres"]["depends_on"] = {"redis": {"condition": "when_it_feels_like_it"}}
    assert _errors(wrong)


def test_the_postgres_fleet_runs_every_role_reading_the_replica_and_writing_the_primary() -> None:
    services = _load(POSTGRES)["services"]
    fleet = {name: s for name, s in services.items() if s.get("image", "").startswith("ragfleet:")}
    assert set(fleet) == ROLE_NAMES
    env = {"POSTGRES_PASSWORD": "pw", "PG_REPLICATION_PASSWORD": "rpw", "REDIS_PASSWORD": "rds"}
    for name, service in fleet.items():
        assert service["command"] == [name]  # the image's entrypoint runs the role (infra/docker)
        assert service["depends_on"]["postgres"] == {"condition": "service_healthy"}
        values = {k: interpolate(str(v), env) for k, v in service["environment"].items()}
        assert values["RAGFLEET_STORE"] == "postgres"
        assert values["RAGFLEET_PG_URL"] == "postgresql://ragfleet:pw@postgres:5432/ragfleet"
        assert values["RAGFLEET_PG_READ_URLS"] == "postgresql://ragfleet:pw@postgres-replica:5432/ragfleet"
        assert "blobs:/var/lib/ragfleet/blobs" in service["volumes"]  # one blob dir for API + indexing
        assert values["RAGFLEET_BLOB_DIR"] == "/var/lib/ragfleet/blobs"
    assert fleet["retrieval"]["deploy"]["replicas"] >= 2

    replica = services["postgres-replica"]
    script = replica["command"][0]
    assert re.search(r"pg_basebackup -h postgres -U replicator .*-R", script)
    assert "hot_standby=on" in script and replica["user"] == "postgres"
    assert replica["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert "wal_level=replica" in services["postgres"]["command"]
    assert services["postgres"]["image"] == replica["image"]  # a replica runs the primary's version


def test_the_postgres_fleet_takes_every_secret_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No password is written in the file: each one is `${VAR:?...}` (compose refuses to start
    without it) or a default built from one; the environment it resolves to is a valid Settings."""
    doc = _load(POSTGRES)
    credentials = [
        (name, key, str(value))
        for name, service in doc["services"].items()
        for key, value in (service.get("environment") or {}).items()
        if "PASSWORD" in key or "@" in str(value)
    ]
    assert len(credentials) >= 8
    for name, key, value in credentials:
        assert value.startswith("${"), (name, key, value)  # never a literal
    with pytest.raises(KeyError, match="POSTGRES_PASSWORD"):
        interpolate(doc["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"], {})
    env = {"POSTGRES_PASSWORD": "pw", "PG_REPLICATION_PASSWORD": "rpw", "REDIS_PASSWORD": "rds"}
    for var in [v for v in os.environ if v.startswith("RAGFLEET_")]:
        monkeypatch.delenv(var)
    for key, value in doc["services"]["indexing"]["environment"].items():
        monkeypatch.setenv(key, interpolate(str(value), env))
    settings = Settings()
    assert settings.store == "postgres" and settings.redis_url == "redis://:rds@redis:6379/0"
    assert (
        settings.pg_read_urls is not None and "postgres-replica" in settings.pg_read_urls.get_secret_value()
    )
    assert settings.blob_root == Path("/var/lib/ragfleet/blobs")
