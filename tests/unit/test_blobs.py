"""The directory blob store: content addressed, atomic, failed blobs kept for their TTL only."""

from __future__ import annotations

import hashlib
import io
import os
import time
from pathlib import Path

import pytest

from ragfleet.blobs import DirectoryBlobStore, blob_store, is_blob_id
from ragfleet.settings import Settings


def test_put_is_content_addressed_and_idempotent(tmp_path: Path) -> None:
    store = DirectoryBlobStore(tmp_path)
    data = b"%PDF-1.4 pretend\n" * 1000
    blob_id = store.put(data)
    assert blob_id == hashlib.sha256(data).hexdigest()
    assert store.put(io.BytesIO(data)) == blob_id  # a stream of the same bytes is the same blob
    assert store.exists(blob_id)
    assert store.path(blob_id).read_bytes() == data
    with store.open(blob_id) as fh:
        assert fh.read() == data
    assert list((tmp_path / "tmp").iterdir()) == []  # no temporary file left behind
    assert store.delete(blob_id) is True
    assert not store.exists(blob_id)
    assert store.delete(blob_id) is False


def test_streamed_put_larger_than_the_copy_buffer(tmp_path: Path) -> None:
    store = DirectoryBlobStore(tmp_path)
    data = os.urandom(3 * 2**20 + 17)
    blob_id = store.put(io.BytesIO(data))
    assert blob_id == hashlib.sha256(data).hexdigest()
    assert store.path(blob_id).read_bytes() == data


@pytest.mark.parametrize("bad", ["../../etc/passwd", "A" * 64, "abc", "0" * 63 + "/"])
def test_ids_that_are_not_sha256_are_refused(tmp_path: Path, bad: str) -> None:
    store = DirectoryBlobStore(tmp_path)
    assert not is_blob_id(bad)
    with pytest.raises(ValueError, match="not a blob id"):
        store.path(bad)


def test_failed_blobs_are_kept_until_their_ttl(tmp_path: Path) -> None:
    store = DirectoryBlobStore(tmp_path)
    old, fresh = store.put(b"old failure"), store.put(b"fresh failure")
    store.mark_failed(old)
    store.mark_failed(fresh)
    now = time.time()
    os.utime(tmp_path / "failed" / old, (now - 100, now - 100))
    assert store.sweep_failed(50, now=now) == 1
    assert not store.exists(old)
    assert store.exists(fresh)
    assert store.put(b"fresh failure") == fresh  # stored again: no longer marked failed
    assert store.sweep_failed(0, now=now + 1) == 0
    assert store.exists(fresh)


def test_default_root_is_under_the_data_dir(tmp_path: Path) -> None:
    store = blob_store(Settings(data_dir=tmp_path))
    assert isinstance(store, DirectoryBlobStore) and store.root == tmp_path / "blobs"
    assert Settings(data_dir=tmp_path, blob_dir=tmp_path / "x").blob_root == tmp_path / "x"


def test_an_indexed_blob_outlives_its_first_job_so_a_duplicate_upload_still_finds_it(tmp_path: Path) -> None:
    """Two uploads of the same bytes are one blob: the first job's cleanup must not take it from the
    second, still queued (found by bench/bench_parsing.py: 137 of 200 duplicate files lost)."""
    store = DirectoryBlobStore(tmp_path)
    blob = store.put(b"the same handbook, uploaded twice")
    store.mark_indexed(blob)  # the first job indexed it
    now = time.time()
    assert store.sweep_indexed(3_600, now=now) == 0
    assert store.exists(blob)  # the second job still parses it
    assert store.put(b"the same handbook, uploaded twice") == blob  # a third upload: referenced afresh
    assert not (tmp_path / "indexed" / blob).exists()
    store.mark_indexed(blob)
    os.utime(tmp_path / "indexed" / blob, (now - 7_200, now - 7_200))
    assert store.sweep_indexed(3_600, now=now) == 1
    assert not store.exists(blob)
