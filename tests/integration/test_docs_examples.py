"""The copy-paste examples in docs/ run against a real fleet and a real API server, so they cannot rot.

A fenced ```bash or ```python block preceded by a `<!-- test -->` line is executed: the blocks of
one page run in order, in one scratch directory (a later block may use a file an earlier one wrote),
with the test session's `RAGFLEET_*` environment and `http://127.0.0.1:8000` replaced by the test
server's address. Shell variables carry between the bash blocks of a page.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ragfleet.settings import Settings
from tests.conftest import REPO, settings_env
from tests.fleet import Fleet, Worker
from tests.helpers import index, serve_api
from tests.integration.test_fleet_e2e import DOCS

pytestmark = [pytest.mark.redis, pytest.mark.workers, pytest.mark.model]

PAGES = ["http.md", "celery.md", "python-client.md", "cli.md"]
DOC_URL = "http://127.0.0.1:8000"
SHELL_VAR = "^declare -- [A-Z][A-Z0-9_]*="
BLOCK = re.compile(r"<!-- test -->\s*\n```(bash|python)\n(.*?)\n```", re.S)


def examples(page: str) -> list[tuple[str, str]]:
    return [(m.group(1), m.group(2)) for m in BLOCK.finditer((REPO / "docs" / page).read_text())]


@pytest.fixture(scope="module")
def api_url(fleet: Fleet, base_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    # the callbacks pool the callback examples need (the session fleet has none)
    callbacks = Worker("callbacks", "callbacks", "threads", 4, base_settings, tmp_path_factory.mktemp("cb"))
    callbacks.start()
    try:
        assert index(base_settings, DOCS)["status"] == "done"
        callbacks.wait_ready()
        with serve_api(base_settings.model_copy(update={"rate_limit": "100000/minute"})) as url:
            yield url
    finally:
        callbacks.stop()


def test_every_page_has_tested_examples() -> None:
    for page in PAGES:
        assert examples(page), f"docs/{page} has no <!-- test --> example"


@pytest.mark.parametrize("page", PAGES)
def test_doc_examples_run(page: str, api_url: str, base_settings: Settings, tmp_path: Path) -> None:
    env = settings_env(base_settings)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["COLUMNS"] = "120"
    shell_state = ""  # the bash blocks of a page share their variables, as in one terminal
    for n, (lang, code) in enumerate(examples(page), start=1):
        code = code.replace(DOC_URL, api_url)
        if lang == "bash":
            state_file = tmp_path / "shell-state"
            save = f"declare -p | grep -E '{SHELL_VAR}' | grep -v '^declare -- BASH' > {state_file} || true"
            script = f"{shell_state}\nset -euo pipefail\n{code}\n{save}\n"
            proc = subprocess.run(
                ["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180
            )
            if state_file.exists():
                shell_state = state_file.read_text()
        else:
            proc = subprocess.run(
                [sys.executable, "-c", code],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=180,
            )
        assert proc.returncode == 0, (
            f"docs/{page} example {n} ({lang}) failed:\n{code}\n"
            f"--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-3000:]}"
        )
        print(f"\ndocs/{page} example {n}:\n{proc.stdout[-1500:]}")
