"""docs/config.md is generated from Settings: it must be current, complete, and its defaults must be
values that, put in the environment, give back the field's default."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic_settings import BaseSettings, SettingsConfigDict

from ragfleet.config_doc import COMMAND, EMPTY, UNSET, default_text, env_name, render, sections
from ragfleet.settings import Settings

REPO = Path(__file__).resolve().parents[2]


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
