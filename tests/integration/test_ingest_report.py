"""`ragfleet ingest` says what did not get in, and its exit status says so too, even when nothing failed
on the fleet: a file skipped before sending (an unknown type) or refused before sending (an empty text
file) makes the run exit 1 and is named, with its error code and reason, in the closing table and in
`--json`. Real CLI subprocesses against a real Redis under the test's own prefix; no workers: what is
checked here is decided before anything reaches the fleet (tests/integration/test_files_fleet.py
covers files that fail on it)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ragfleet.settings import Settings
from tests.conftest import REPO, settings_env
from tests.helpers import isolated

pytestmark = pytest.mark.redis


def ingest(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ragfleet.cli", "ingest", *args],
        cwd=REPO,
        env={**settings_env(settings), "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_skipped_and_empty_files_are_named_and_the_run_exits_non_zero(
    base_settings: Settings, tmp_path: Path
) -> None:
    s = isolated(base_settings, "ingest-report")
    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / "sub" / "archive.xyz").write_bytes(b"\x00\x01\x02")
    (docs / "empty.txt").write_text("  \n")

    as_json = ingest(s, str(docs), "--json")
    assert as_json.returncode == 1, as_json.stderr
    out = json.loads(as_json.stdout)
    rows = {p["file"]: (p["status"], p["code"]) for p in out["problems"]}
    assert rows == {
        "sub/archive.xyz": ("skipped", "unsupported_format"),
        "empty.txt": ("failed", "empty_document"),
    }
    assert all(p["reason"] for p in out["problems"]) and (out["failed"], out["skipped"]) == (1, 1)
    assert out["jobs"] == []  # nothing was worth sending

    table = ingest(s, str(docs))
    assert table.returncode == 1
    assert "documents not indexed" in table.stdout
    for file, code in (("sub/archive.xyz", "unsupported_format"), ("empty.txt", "empty_document")):
        line = next(line for line in table.stdout.splitlines() if file in line)
        assert code in line


def test_a_skipped_file_alone_fails_the_run_beside_documents_that_were_sent(
    base_settings: Settings, tmp_path: Path
) -> None:
    s = isolated(base_settings, "ingest-skip")
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "runbook.md").write_text("# Runbook\n\nRestart the indexing pool after an upgrade.")
    (docs / "diagram.vsdx.bak").write_bytes(b"PK\x03\x04")
    proc = ingest(s, str(docs), "--json", "--no-wait")
    assert proc.returncode == 1, proc.stderr
    out = json.loads(proc.stdout)
    assert len(out["jobs"]) == 1  # the good document was sent
    assert [(p["file"], p["status"], p["code"]) for p in out["problems"]] == [
        ("diagram.vsdx.bak", "skipped", "unsupported_format")
    ]
