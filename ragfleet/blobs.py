"""Where uploaded document files wait for the indexing pool: a content-addressed blob store.

File bytes never ride inside broker messages: the API (or the CLI) stores a file here and the task
message carries its blob id, the file's SHA-256. `BlobStore` is the interface the fleet uses, small
enough for an object store to implement; `DirectoryBlobStore` is the default, a directory that every
host running the API or the indexing pool must share (a network volume): a worker opens the blob the
API wrote.

What must stay true:
- A blob id is the SHA-256 of the bytes, so the same file stored twice is one blob, and a blob id can
  never name other bytes.
- A blob appears whole or not at all (written to a temporary file, then renamed into place), so a
  worker never parses half an upload.
- An indexed document's blob is kept `blob_indexed_ttl_s` more and then removed by the sweep; a failed
  one's is kept `blob_failed_ttl_s` (so the job can be retried). Why not delete an indexed blob at
  once: two uploads of the same bytes share the blob (ingest of a folder holding copies, the same file
  sent twice), and the second job, still queued, would find it gone and fail `not_found`. Storing the
  bytes again clears both marks: the blob is referenced afresh.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import time
from pathlib import Path
from typing import BinaryIO, Protocol

from ragfleet.settings import Settings

_BLOB_ID = re.compile(r"^[0-9a-f]{64}$")
_COPY_BUFFER = 1 << 20
_MARKS = ("failed", "indexed")  # subdirectories of marker files; a marker's mtime is when it was set


def is_blob_id(value: str) -> bool:
    return bool(_BLOB_ID.fullmatch(value))


class BlobStore(Protocol):
    def put(self, data: bytes | BinaryIO) -> str:
        """Store bytes (or a readable binary stream); returns the blob id (SHA-256, hex)."""
        ...

    def open(self, blob_id: str) -> BinaryIO: ...

    def path(self, blob_id: str) -> Path:
        """A local file holding the blob (what the parsing child reads)."""
        ...

    def exists(self, blob_id: str) -> bool: ...

    def delete(self, blob_id: str) -> bool: ...

    def mark_failed(self, blob_id: str) -> None:
        """Keep a failed document's blob for the retention TTL."""
        ...

    def sweep_failed(self, ttl_s: float, *, now: float | None = None) -> int:
        """Delete failed blobs older than `ttl_s`; returns how many went."""
        ...

    def mark_indexed(self, blob_id: str) -> None:
        """An indexed document's blob: kept for the indexed TTL, then swept (see the module docstring)."""
        ...

    def sweep_indexed(self, ttl_s: float, *, now: float | None = None) -> int:
        """Delete indexed blobs marked longer than `ttl_s` ago; returns how many went."""
        ...


class DirectoryBlobStore:
    """Blobs as files `<root>/<id[:2]>/<id>`; failed and indexed ones marked by `<root>/failed/<id>` and
    `<root>/indexed/<id>` (a marker's mtime is when it was set)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _file(self, blob_id: str) -> Path:
        if not is_blob_id(blob_id):
            raise ValueError(f"not a blob id (64 lowercase hex digits): {blob_id[:80]!r}")
        return self.root / blob_id[:2] / blob_id

    def put(self, data: bytes | BinaryIO) -> str:
        tmp_dir = self.root / "tmp"
        tmp_dir.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        fd, tmp_name = tempfile.mkstemp(dir=tmp_dir)
        try:
            with os.fdopen(fd, "wb") as out:
                if isinstance(data, bytes | bytearray | memoryview):
                    digest.update(data)
                    out.write(data)
                else:
                    while chunk := data.read(_COPY_BUFFER):
                        digest.update(chunk)
                        out.write(chunk)
            blob_id = digest.hexdigest()
            target = self._file(blob_id)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp_name, target)  # atomic: readers see the whole blob or none
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
        for mark in _MARKS:  # stored again: referenced afresh
            (self.root / mark / blob_id).unlink(missing_ok=True)
        return blob_id

    def open(self, blob_id: str) -> BinaryIO:
        return self._file(blob_id).open("rb")

    def path(self, blob_id: str) -> Path:
        return self._file(blob_id)

    def exists(self, blob_id: str) -> bool:
        return self._file(blob_id).is_file()

    def delete(self, blob_id: str) -> bool:
        for mark in _MARKS:
            (self.root / mark / blob_id).unlink(missing_ok=True)
        try:
            self._file(blob_id).unlink()
        except FileNotFoundError:
            return False
        return True

    def mark_failed(self, blob_id: str) -> None:
        self._mark("failed", blob_id)

    def mark_indexed(self, blob_id: str) -> None:
        self._mark("indexed", blob_id)

    def sweep_failed(self, ttl_s: float, *, now: float | None = None) -> int:
        return self._sweep("failed", ttl_s, now)

    def sweep_indexed(self, ttl_s: float, *, now: float | None = None) -> int:
        return self._sweep("indexed", ttl_s, now)

    def _mark(self, mark: str, blob_id: str) -> None:
        self._file(blob_id)  # validates the id
        marker = self.root / mark / blob_id
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()

    def _sweep(self, mark: str, ttl_s: float, now: float | None) -> int:
        now = time.time() if now is None else now
        marks = self.root / mark
        if not marks.is_dir():
            return 0
        removed = 0
        for marker in marks.iterdir():
            try:
                if now - marker.stat().st_mtime < ttl_s:
                    continue
            except FileNotFoundError:
                continue
            if is_blob_id(marker.name) and self.delete(marker.name):
                removed += 1
            marker.unlink(missing_ok=True)
        return removed


def blob_store(settings: Settings) -> BlobStore:
    """The fleet's blob store (a directory today; an object store would plug in here)."""
    return DirectoryBlobStore(settings.blob_root)


__all__ = ["BlobStore", "DirectoryBlobStore", "blob_store", "is_blob_id"]
