"""`ragfleet sync DIR` against the running fleet: add, change, rename and delete files; a dry run
changes nothing; documents ingested otherwise, or synced from another root, survive.

Real workers, Redis, model, LanceDB and parsing children; the CLI runs as a subprocess in a tenant
of this module's own, so the store's chunks of that tenant are exactly what these syncs did.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from ragfleet.resources import Resources
from ragfleet.settings import Settings
from tests import parsing_corpus as corpus
from tests.conftest import REPO, settings_env
from tests.fleet import Fleet

pytestmark = [pytest.mark.redis, pytest.mark.workers, pytest.mark.model]

TENANT = f"sync-{uuid.uuid4().hex[:6]}"


def cli(settings: Settings, *args: str) -> tuple[int, dict[str, Any]]:
    env = {**settings_env(settings), "RAGFLEET_DEFAULT_TENANT": TENANT}
    proc = subprocess.run(
        [sys.executable, "-m", "ragfleet.cli", *args, "--json", "--timeout", "120"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.stdout, proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def docs(settings: Settings) -> dict[str, list[Any]]:
    """The tenant's chunks in the live store, by document id."""
    store, _ = Resources(settings).live_store()
    store.refresh()
    out: dict[str, list[Any]] = {}
    for batch in store.iter_chunks():
        for c in batch:
            if c.tenant == TENANT:
                out.setdefault(c.doc_id, []).append(c)
    return out


def test_sync_follows_the_folder_and_deletes_only_what_it_synced_from_it(
    fleet: Fleet, base_settings: Settings, tmp_path: Path
) -> None:
    root, other, elsewhere = tmp_path / "root", tmp_path / "other", tmp_path / "elsewhere"
    for d in (root / "policies", other, elsewhere):
        d.mkdir(parents=True)
    corpus.text_pdf(root / "handbook.pdf")
    (root / "policies" / "travel.md").write_text("# Travel\n\nTrains are booked in second class.\n")
    (root / "gone.md").write_text("# Gone\n\nThis note will be deleted from the folder.\n")
    (other / "outside.md").write_text("# Outside\n\nIngested by ragfleet ingest, not by sync.\n")
    (elsewhere / "gone.md").write_text("# Elsewhere\n\nSynced from another root.\n")

    # a dry run on an empty index: the plan, and nothing written
    rc, out = cli(base_settings, "sync", str(root), "--dry-run")
    assert rc == 0 and out["dry_run"]
    assert sorted(out["added"]) == ["gone.md", "handbook.pdf", "policies/travel.md"] and out["jobs"] == []
    assert docs(base_settings) == {}

    rc, out = cli(base_settings, "ingest", str(other))
    assert rc == 0, out
    rc, out = cli(base_settings, "sync", str(root))
    assert rc == 0, out
    assert sorted(out["added"]) == ["gone.md", "handbook.pdf", "policies/travel.md"]
    now = docs(base_settings)
    assert set(now) == {"gone.md", "handbook.pdf", "policies/travel.md", "outside.md"}
    for doc_id in ("gone.md", "handbook.pdf", "policies/travel.md"):
        assert {c.metadata.get("source_root") for c in now[doc_id]} == {str(root.resolve())}
    assert "source_root" not in now["outside.md"][0].metadata
    assert {c.metadata["page"] for c in now["handbook.pdf"]} == {1, 2, 3}

    # change one file, rename one, delete one; the dry run first changes nothing
    (root / "policies" / "travel.md").write_text("# Travel\n\nTrains are booked in first class.\n")
    (root / "handbook.pdf").rename(root / "policies" / "handbook.pdf")
    (root / "gone.md").unlink()
    rc, out = cli(base_settings, "sync", str(root), "--dry-run")
    expected = {
        "added": ["policies/handbook.pdf"],
        "changed": ["policies/travel.md"],
        "deleted": ["gone.md", "handbook.pdf"],
    }
    assert rc == 0 and {k: sorted(out[k]) for k in expected} == expected
    assert set(docs(base_settings)) == set(now)

    # another root holding a `gone.md` of its own is synced too; then the first root's sync
    rc, out = cli(base_settings, "sync", str(elsewhere))
    assert rc == 0 and out["added"] == ["gone.md"], out
    rc, out = cli(base_settings, "sync", str(root))
    assert rc == 0, out
    assert (out["added"], out["changed"]) == (expected["added"], expected["changed"])
    assert (out["deleted"], out["released"]) == (["handbook.pdf"], ["gone.md"])
    after = docs(base_settings)
    assert set(after) == {"policies/handbook.pdf", "policies/travel.md", "outside.md", "gone.md"}
    assert any("first class" in c.text for c in after["policies/travel.md"])
    assert all("second class" not in c.text for c in after["policies/travel.md"])
    # gone.md is the other root's document now: its sync replaced it, this root's sync left it be
    assert {c.metadata["source_root"] for c in after["gone.md"]} == {str(elsewhere.resolve())}
    assert "Synced from another root" in after["gone.md"][0].text

    # nothing changed on disk: nothing to do
    rc, out = cli(base_settings, "sync", str(root))
    assert rc == 0 and (out["added"], out["changed"], out["deleted"], out["jobs"]) == ([], [], [], [])
    assert out["unchanged"] == 2
