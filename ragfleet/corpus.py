"""Readers for what `ragfleet ingest` accepts: BEIR-style JSONL or a folder of .txt/.md files."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def read_documents(path: Path) -> Iterator[dict[str, Any]]:
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
    if path.is_dir():
        return sum(1 for p in path.rglob("*") if p.suffix.lower() in (".txt", ".md") and p.is_file())
    with path.open(encoding="utf-8") as fh:
        return sum(1 for line in fh if line.strip())
