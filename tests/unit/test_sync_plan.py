"""`ragfleet sync`'s plan from the folder and the root's record, without a fleet: what is new,
changed, unchanged and gone, and the `source_root` every synced text document carries."""

from __future__ import annotations

import hashlib
from pathlib import Path

from ragfleet.sync_cli import plan_sync


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_new_changed_unchanged_and_gone_files(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.md").write_text("# A\n\nsame\n")
    (tmp_path / "sub" / "b.md").write_text("# B\n\nnew text\n")
    (tmp_path / "c.pdf").write_bytes(b"%PDF-1.4 fake")
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "x.bin").write_bytes(b"\0")
    recorded = {
        "a.md": sha(b"# A\n\nsame\n"),
        "sub/b.md": sha(b"old"),
        "gone.pdf": sha(b"x"),
        "empty.txt": sha(b"was full"),
    }
    plan = plan_sync(tmp_path, recorded)
    assert (plan.added, plan.changed, plan.deleted, plan.unchanged) == (
        ["c.pdf"],
        ["sub/b.md"],
        ["gone.pdf"],
        1,
    )
    assert [d["id"] for d in plan.texts] == ["sub/b.md"]
    assert plan.texts[0]["metadata"]["source_root"] == str(tmp_path)
    assert plan.files == [(tmp_path / "c.pdf", "c.pdf")]
    assert plan.hashes["c.pdf"] == sha(b"%PDF-1.4 fake")
    # an empty file is reported, and is not a deletion of what was synced before
    assert {(p["file"], p["code"]) for p in plan.problems} == {
        ("empty.txt", "empty_document"),
        ("x.bin", "unsupported_format"),
    }


def test_full_resends_unchanged_files(tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text("text")
    plan = plan_sync(tmp_path, {"a.md": sha(b"text")}, full=True)
    assert plan.changed == ["a.md"] and plan.unchanged == 0 and len(plan.texts) == 1
