"""docs/config.md is generated from Settings: it must be current, complete, and its defaults must be
values that, put in the environment, give back the field's default."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from pydantic_settings import BaseSettings, SettingsConfigDict

from ragfleet.config_doc import (
    COMMAND,
    EMPTY,
    LAUNCH_VARIABLES,
    UNSET,
    default_text,
    env_name,
    render,
    sections,
)
from ragfleet.settings import Settings

REPO = Path(__file__).resolve().parents[2]
# where the product reads its environment: code, process files, scripts (not tests, benchmarks or docs)
SOURCES = ["Procfile", "infra", "scripts", "ragfleet", "workers", "tasks", "api_shim"]
SOURCE_SUFFIXES = {".py", ".sh", ".conf", ".yml", ".yaml", ".toml", ""}


def variables_named_in_sources() -> set[str]:
    names: set[str] = set()
    for top in SOURCES:
        root = REPO / top
        files = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()]
        for path in files:
            if path.suffix in SOURCE_SUFFIXES and "__pycache__" not in path.parts:
                names |= set(re.findall(r"\bRAGFLEET_[A-Z0-9_]+", path.read_text(errors="replace")))
    return names


def test_config_md_is_up_to_date() -> None:
    on_disk = (REPO / "docs" / "config.md").read_text()
    assert on_disk == render(), f"docs/config.md is stale: run `{COMMAND}`"


def test_every_setting_has_a_description() -> None:
    missing = [name for name, info in Settings.model_fields.items() if not (info.description or "").strip()]
    assert not missing, f"add a docstring under these fields in ragfleet/settings.py: {missing}"


def test_every_setting_is_listed_once_under_its_variable() -> None:
    text = render()
    grouped = [name for names in sections().values() for name in names]
    assert sorted(grouped) == sorted(Settings.model_fields)
    for name in Settings.model_fields:
        assert text.count(f"| `{env_name(name)}` |") == 1, name


def test_the_groups_are_the_section_comments_of_settings_py() -> None:
    groups = sections()
    assert "redis_url" in groups["Redis / Celery"]
    assert "search_mode" in groups["retrieval"]
    assert list(groups)[:2] == ["Redis / Celery", "storage"]


def test_rendering_ignores_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    before = render()
    monkeypatch.setenv("RAGFLEET_REDIS_URL", "redis://elsewhere:6380/3")
    monkeypatch.setenv("RAGFLEET_TORCH_THREADS", "7")
    assert render() == before


def test_documented_defaults_read_back_as_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the reference shows as a default, put in the variable, is what Settings uses by default."""
    for var in [v for v in os.environ if v.startswith("RAGFLEET_")]:
        monkeypatch.delenv(var)
    defaults = Settings()
    for name, info in Settings.model_fields.items():
        shown = default_text(info)
        if shown == UNSET:
            assert getattr(defaults, name) is None, name
            continue
        monkeypatch.setenv(env_name(name), "" if shown == EMPTY else shown)
        assert getattr(Settings(), name) == getattr(defaults, name), (name, shown)
        monkeypatch.delenv(env_name(name))


def test_a_new_setting_without_a_docstring_is_caught_and_placed() -> None:
    class Probe(BaseSettings):
        model_config = SettingsConfigDict(env_prefix="PROBE_", use_attribute_docstrings=True)

        # --- first ---
        alpha: int = 1
        """Documented."""

        # --- second ---
        beta: str | None = None

    assert sections(Probe) == {"first": ["alpha"], "second": ["beta"]}
    assert Probe.model_fields["beta"].description is None
    text = render(Probe)
    assert "| `PROBE_ALPHA` | int | `1` | Documented. |" in text
    assert "| `PROBE_BETA` | str, optional | unset |  |" in text


def test_every_ragfleet_variable_the_product_reads_is_documented() -> None:
    """A RAGFLEET_* name in the code or the process files is a setting or a listed launch variable."""
    settings_vars = {env_name(name) for name in Settings.model_fields}
    named = variables_named_in_sources()
    assert named - settings_vars - set(LAUNCH_VARIABLES) == set(), "document it in ragfleet/config_doc.py"
    assert set(LAUNCH_VARIABLES) <= named, "a launch variable nothing reads any more"
    text = render()
    for name in LAUNCH_VARIABLES:
        assert f"| `{name}` |" in text
