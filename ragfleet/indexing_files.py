"""Document files in the indexing pool: validate the references, hand each file to the bounded
parser (ragfleet.parsing, a child process per file) and chunk it along its pages and headings.

Apart from ragfleet/indexing.py, which keeps the batch itself (validate, embed what is new, replace
atomically): this module is what a file adds before its chunks join that batch. A file's chunks
carry `source`, `page` (+ `page_label`), `section` and the chunker's version (`chunker`), which
citations and the blue/green reindex read.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ragfleet.blobs import BlobStore
from ragfleet.chunkers import Chunker
from ragfleet.parsing import ParseError, parse_file
from ragfleet.resources import Resources
from ragfleet.schemas import (
    DocumentError,
    DocumentIn,
    ErrorCode,
    FileIn,
    IndexResult,
    MetadataValue,
    ParseReportOut,
)
from ragfleet.settings import Settings
from ragfleet.stores.base import ChunkRecord, chunk_id_for


def row_hash(text: str, metadata: dict[str, Any]) -> str:
    """Covers everything a row stores besides its vector: a metadata-only change is a change."""
    blob = text + "\0" + json.dumps(metadata, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:32]


def pending_record(
    *,
    tenant: str,
    doc_id: str,
    index: int,
    text: str,
    title: str | None,
    start: int,
    end: int,
    metadata: dict[str, MetadataValue],
    model: str,
) -> ChunkRecord:
    """A chunk as it is written before its vector is filled (`_fill_vectors`): its id and its content
    hash are derived here, in one place, for text documents, parsed files and reindex copies alike."""
    return ChunkRecord(
        chunk_id=chunk_id_for(tenant, doc_id, index),
        doc_id=doc_id,
        tenant=tenant,
        chunk_index=index,
        text=text,
        title=title,
        start=start,
        end=end,
        content_hash=row_hash(text, metadata),
        embedding_model=model,
        vector=[],
        metadata=dict(metadata),
    )


def validation_reason(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:3]:
        loc = ".".join(str(p) for p in err.get("loc", ())) or "document"
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    return "; ".join(parts)


def validate_files(
    raw_files: Iterable[Any],
    default_tenant: str,
    result: IndexResult,
    by_tenant: dict[str, dict[str, DocumentIn | FileIn]],
) -> dict[tuple[str, str], int]:
    """Add the valid file references to `by_tenant` (a file replaces a text document of the same id);
    record the bad ones (`index` is the position in `files`). Returns each file's position."""
    positions: dict[tuple[str, str], int] = {}
    for i, raw in enumerate(raw_files):
        name = raw.get("name") or raw.get("path") if isinstance(raw, dict) else None
        try:
            f = FileIn.model_validate(raw)
        except ValidationError as exc:
            result.errors.append(
                DocumentError(
                    index=i,
                    doc_id=str(raw.get("id")) if isinstance(raw, dict) and raw.get("id") else None,
                    message=validation_reason(exc),
                    source=str(name) if name else None,
                )
            )
            continue
        ten = f.tenant or default_tenant
        by_tenant.setdefault(ten, {})[f.doc_id] = f
        positions[(ten, f.doc_id)] = i
    return positions


_UNSAFE_NAME = re.compile(r"[\x00-\x1f\x7f/\\]")


@contextmanager
def _local_file(settings: Settings, blobs: BlobStore, f: FileIn) -> Iterator[Path]:
    """The file to hand the parser. A `path` must lie under `RAGFLEET_BLOB_AREA` (a producer must not
    make the fleet read arbitrary files); a blob is linked under its file name into a scratch
    directory, because the extension breaks ties between text formats. Raises `ParseError`."""
    if f.path is not None:
        area = settings.blob_area
        if area is None:
            raise ParseError(
                ErrorCode.INVALID_DOCUMENT,
                "files by path are refused: RAGFLEET_BLOB_AREA is not set on the workers (upload the file)",
            )
        root = area.resolve()
        candidate = Path(f.path)
        resolved = (candidate if candidate.is_absolute() else root / candidate).resolve()
        if not resolved.is_relative_to(root):
            raise ParseError(
                ErrorCode.INVALID_DOCUMENT, f"path {f.path!r} is not under the blob area {str(area)!r}"
            )
        if not resolved.is_file():
            raise ParseError(ErrorCode.NOT_FOUND, f"no file at {f.path!r} in the blob area")
        yield resolved
        return
    assert f.blob_id is not None  # FileIn: exactly one of path and blob_id
    if not blobs.exists(f.blob_id):
        raise ParseError(
            ErrorCode.NOT_FOUND,
            f"blob {f.blob_id} not found (already indexed and deleted, or stored on a blob directory "
            "these workers do not share)",
        )
    source = blobs.path(f.blob_id)
    scratch = source.parent.parent / "tmp"
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=scratch) as tmp:
        local = Path(tmp) / (_UNSAFE_NAME.sub("_", f.file_name).strip(".") or "document")
        try:
            os.link(source, local)
        except OSError:
            shutil.copyfile(source, local)
        yield local


def file_records(
    res: Resources,
    blobs: BlobStore,
    chunker: Chunker,
    tenant: str,
    index: int,
    f: FileIn,
    result: IndexResult,
    model: str,
) -> list[ChunkRecord] | None:
    """Parse one file (a bounded child process) and chunk it along its structure with `chunker`, its
    rows to be embedded by `model`; on failure record the error (with its parse code) and return None."""
    s = res.settings
    try:
        with _local_file(s, blobs, f) as local:
            parsed = parse_file(local, s, source=f.file_name)
        chunks = chunker.blocks(parsed.pages, f.title)
        if not chunks:
            raise ParseError(ErrorCode.EMPTY_DOCUMENT, "the parsed document holds no text to index")
    except ParseError as exc:
        result.errors.append(
            DocumentError(
                index=index, doc_id=f.doc_id, code=exc.code, message=exc.message, source=f.file_name
            )
        )
        return None
    records = []
    length = max(c.end for c in chunks)  # offsets are into the file's blocks joined
    for c in chunks:
        metadata: dict[str, MetadataValue] = {
            **f.metadata,
            "source": parsed.source,
            "page": c.page,
            "chunker": chunker.file_label,
            **chunker.document_metadata(length),
        }
        if c.page_label:
            metadata["page_label"] = c.page_label
        if c.section:
            metadata["section"] = " > ".join(c.section)
        records.append(
            pending_record(
                tenant=tenant,
                doc_id=f.doc_id,
                index=c.index,
                text=c.text,
                title=f.title,
                start=c.start,
                end=c.end,
                metadata=metadata,
                model=model,
            )
        )
    r = parsed.report
    result.parse_reports.append(
        ParseReportOut(
            doc_id=f.doc_id,
            source=parsed.source,
            format=parsed.format.value,
            pages=r.pages,
            pages_ocred=r.pages_ocred,
            characters=r.characters,
            chunks=len(records),
            warnings=list(r.warnings),
            parser=r.parser,
        )
    )
    return records
