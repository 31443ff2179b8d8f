"""What `ragfleet ingest` sends as text, uploads as files, or lists as skipped; how `ask` labels a source."""

from __future__ import annotations

from pathlib import Path

from ragfleet.cli import source_label
from ragfleet.corpus import count_documents, plan_files, read_documents


def test_a_mixed_folder_is_split_into_text_files_and_skipped(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.md").write_text("# A\n\nalpha")
    (tmp_path / "sub" / "b.txt").write_text("beta")
    (tmp_path / "sub" / "c.pdf").write_bytes(b"%PDF-1.4")
    (tmp_path / "d.HTML").write_text("<html></html>")
    (tmp_path / "e.bin").write_bytes(b"\x00\x01")
    (tmp_path / "Makefile").write_text("all:")
    files, skipped = plan_files(tmp_path)
    assert [(f.path.name, f.doc_id) for f in files] == [("d.HTML", "d.HTML"), ("c.pdf", "sub/c.pdf")]
    assert [(s.file, s.code) for s in skipped] == [
        ("Makefile", "unsupported_format"),
        ("e.bin", "unsupported_format"),
    ]
    assert "'.bin' files are not a supported type" in skipped[1].reason
    assert [d["id"] for d in read_documents(tmp_path)] == ["a.md", "sub/b.txt"]  # text: as before
    assert count_documents(tmp_path) == 2


def test_a_single_file_is_text_an_upload_jsonl_or_skipped(tmp_path: Path) -> None:
    note = tmp_path / "note.txt"
    note.write_text("a single note")
    assert [d["text"] for d in read_documents(note)] == ["a single note"] and plan_files(note) == ([], [])
    pdf = tmp_path / "x.pdf"
    pdf.write_bytes(b"%PDF-1.4")
    assert [f.doc_id for f in plan_files(pdf)[0]] == ["x.pdf"] and list(read_documents(pdf)) == []
    rows = tmp_path / "corpus.jsonl"
    rows.write_text('{"_id": "1", "text": "one"}\n')
    assert [d["id"] for d in read_documents(rows)] == ["1"] and count_documents(rows) == 1
    odd = tmp_path / "x.xyz"
    odd.write_text("?")
    assert [s.code for s in plan_files(odd)[1]] == ["unsupported_format"] and list(read_documents(odd)) == []


def test_source_labels() -> None:
    meta = {"source": "handbook.pdf", "page": 3, "section": "Leave > Parental"}
    assert source_label({"doc_id": "h", "metadata": meta}) == "handbook.pdf p. 3 § Leave > Parental"
    sheet = {"source": "budget.xlsx", "page": 2, "page_label": "Budget"}
    assert source_label({"doc_id": "b", "metadata": sheet}) == "budget.xlsx sheet Budget"
    assert source_label({"doc_id": "d", "title": "Celery", "metadata": {"kind": "x"}}) == "Celery"
    assert source_label({"doc_id": "d", "metadata": {}}) == "d"
