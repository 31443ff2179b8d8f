"""Readers for what `ragfleet ingest` accepts: BEIR-style JSONL, a .txt/.md file, or a folder (recursively)
of .txt/.md files (sent as text, chunked in word windows as always) and document files (PDF, Office,
HTML, images, CSV: uploaded and parsed on the fleet, docs/parsing.md). Anything else is listed as
skipped (`unsupported_format`), never silently ignored."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ragfleet.parsing.sniff import EXTENSIONS

TEXT_SUFFIXES = (".txt", ".md")
FILE_SUFFIXES = frozenset(EXTENSIONS) - set(TEXT_SUFFIXES)
JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")


@dataclass(frozen=True, slots=True)
class FileToUpload:
    path: Path
    doc_id: str
    """The path relative to the ingested folder (the file name for a single file)."""


@dataclass(frozen=True, slots=True)
class Skipped:
    file: str
    code: str
    reason: str


def plan_files(path: Path) -> tuple[list[FileToUpload], list[Skipped]]:
    """The document files to upload and the files skipped (with why); .txt/.md and JSONL are
    `read_documents`'."""
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix in FILE_SUFFIXES:
            return [FileToUpload(path, path.name)], []
        if suffix in TEXT_SUFFIXES or suffix in JSONL_SUFFIXES:
            return [], []
        return [], [_unsupported(path.name, suffix)]
    files: list[FileToUpload] = []
    skipped: list[Skipped] = []
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        rel = str(f.relative_to(path))
        suffix = f.suffix.lower()
        if suffix in TEXT_SUFFIXES:
            continue
        if suffix in FILE_SUFFIXES:
            files.append(FileToUpload(f, rel))
        else:
            skipped.append(_unsupported(rel, suffix))
    return files, skipped


def _unsupported(name: str, suffix: str) -> Skipped:
    what = f"'{suffix}' files are" if suffix else "files without an extension are"
    return Skipped(name, "unsupported_format", f"{what} not a supported type (docs/parsing.md)")


def _is_text_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in TEXT_SUFFIXES


def read_documents(path: Path) -> Iterator[dict[str, Any]]:
    if _is_text_file(path):
        text = path.read_text(encoding="utf-8", errors="replace")
        title = next((ln.lstrip("# ").strip() for ln in text.splitlines() if ln.strip()), path.stem)
        yield {"id": path.name, "title": title, "text": text, "metadata": {"path": str(path)}}
        return
    if path.is_file() and path.suffix.lower() not in JSONL_SUFFIXES:
        return  # a document file (uploaded) or an unsupported one (skipped): plan_files'
    if path.is_dir():
        for f in sorted(p for p in path.rglob("*") if p.suffix.lower() in (".txt", ".md") and p.is_file()):
            text = f.read_text(encoding="utf-8", errors="replace")
            title = next((ln.lstrip("# ").strip() for ln in text.splitlines() if ln.strip()), f.stem)
            yield {"id": str(f.relative_to(path)), "title": title, "text": text, "metadata": {"path": str(f)}}
        return
    with path.open(encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            doc_id = row.get("_id", row.get("id"))
            doc: dict[str, Any] = {
                "id": str(doc_id) if doc_id is not None else f"line-{line_no}",
                "text": row.get("text", ""),
            }
            if row.get("title"):
                doc["title"] = row["title"]
            if isinstance(row.get("metadata"), dict):
                doc["metadata"] = row["metadata"]
            yield doc


def count_documents(path: Path) -> int:
    if _is_text_file(path):
        return 1
    if path.is_file() and path.suffix.lower() not in JSONL_SUFFIXES:
        return 0
    if path.is_dir():
        return sum(1 for p in path.rglob("*") if p.suffix.lower() in (".txt", ".md") and p.is_file())
    with path.open(encoding="utf-8") as fh:
        return sum(1 for line in fh if line.strip())
