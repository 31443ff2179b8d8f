"""When a search snapshot may answer, and who builds the next one.

The fleet's hard rule is never to answer from an older index. A query reads the index pointer
(collection, version, generation) first (`Resources.live_store`); the snapshot answers only when
its label equals that pointer exactly. Otherwise the query searches the store as before (which
refreshes its handle and, on PostgreSQL, reads only where the pointer's WAL position has been
replayed) and a rebuild is scheduled. The builder reads the pointer *before* it scans the store,
so a snapshot holds at least every write of its label (a write committed but not yet bumped may
be in it too, as in a refreshed store handle).

Building never blocks a query: one background thread per process waits until the pointer has
stood still for `search_snapshot_delay_s`, and for at least twice the last build's time (during a
bulk ingest the version moves every few seconds: the store answers until it settles), then builds
under an exclusive file lock, so one process per
host builds while the others find the finished directory and map it. Old snapshot directories
and crashed builders' temporary directories are removed by the next builder. Processes that
still map an old directory keep their pages (Linux unlinks lazily).

From `ann_min_rows` chunks on (`snapshot_ann_min_rows`, by default LanceDB's own ANN threshold,
100k) the snapshot carries an HNSW graph for its dense leg (ragfleet/snapshot/ann.py): an exact scan
there is slower than the store's IVF-PQ. At 1M chunks the build takes minutes; the store answers
meanwhile, as during any rebuild. Only the LanceDB store is mirrored: the snapshot's BM25
reproduces LanceDB's native FTS (ragfleet/snapshot/text.py); PostgreSQL's and Weaviate's full-text
ranking differ, so those stores always answer themselves. Queries with metadata filters also go to the store.
"""

from __future__ import annotations

import fcntl
import logging
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ragfleet.index_state import IndexPointer
from ragfleet.memory import trim
from ragfleet.snapshot.files import Label, Snapshot, write_snapshot
from ragfleet.stores.base import VectorStore, WalPositioned

log = logging.getLogger("ragfleet.snapshot")


def label_of(pointer: IndexPointer) -> Label:
    return Label(pointer.active, pointer.version, pointer.generation, pointer.epoch)


class SnapshotManager:
    """One per process: the mapped snapshot, and the background builder."""

    def __init__(
        self,
        root: Path,
        *,
        open_store: Callable[[str], VectorStore],
        read_pointer: Callable[[], IndexPointer],
        dim: int,
        delay_s: float = 2.0,
        ann_min_rows: int = 100_000,
        ann_candidates: int = 400,
    ) -> None:
        self.root = Path(root)
        self._open_store = open_store
        self._read_pointer = read_pointer
        self.dim = dim
        self.delay_s = delay_s
        self.ann_min_rows = ann_min_rows
        self.ann_candidates = ann_candidates
        self._current: Snapshot | None = None
        self._lock = threading.Lock()
        self._wanted = threading.Event()
        self._thread: threading.Thread | None = None
        self.builds = 0  # snapshots this process wrote (for tests and benchmarks)
        self._last_build_s = 0.0

    def for_pointer(self, pointer: IndexPointer) -> Snapshot | None:
        """The snapshot labelled exactly `pointer`, if one is built; else None (and one is asked for)."""
        label = label_of(pointer)
        if not label.epoch:  # a pointer without its epoch yet: the builder makes one (read_pointer)
            self.request()
            return None
        cur = self._current
        if cur is not None and cur.label == label:
            return cur
        snap = self._open(label)
        if snap is None:
            self.request()
        return snap

    def _open(self, label: Label) -> Snapshot | None:
        path = self.root / label.collection / label.dirname
        if not (path / "meta.json").exists():
            return None
        try:
            snap = Snapshot(path, ann_candidates=self.ann_candidates)
        except (OSError, ValueError) as exc:  # removed under us by a newer build, or corrupt
            log.warning("snapshot %s unusable: %s", path, exc)
            return None
        if snap.label != label:
            return None
        with self._lock:
            self._current = snap
        return snap

    def request(self) -> None:
        """Ask the background builder for a snapshot at the pointer once it settles."""
        self._wanted.set()
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="snapshot-builder", daemon=True)
                self._thread.start()

    def _loop(self) -> None:
        while self._wanted.wait(timeout=60.0):
            self._wanted.clear()
            try:
                before = self._read_pointer()
                # quiet for at least twice what the last build took: during a bulk ingest (a version
                # every few seconds) a build would be stale before it ends, and it takes CPU the
                # niced indexing pool needs; the store answers meanwhile
                time.sleep(max(self.delay_s, 2.0 * self._last_build_s))
                if self._read_pointer() != before:
                    self._wanted.set()  # still moving: the store answers meanwhile
                    continue
                self.build_now()
            except Exception:  # a failed build only means the store keeps answering
                log.exception("snapshot build failed")
                time.sleep(self.delay_s)

    def build_now(self) -> Path | None:
        """Build the snapshot of the current pointer unless it exists; None when another process
        on this host holds the build lock (it will publish the directory)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".build.lock", "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return None
            try:
                return self._build_locked()
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _build_locked(self) -> Path | None:
        pointer = self._read_pointer()  # before the scan: the snapshot is never older than its label
        label = label_of(pointer)
        if not label.epoch:
            raise RuntimeError("the index pointer has no epoch: read_pointer must ensure one")
        final = self.root / label.collection / label.dirname
        if not (final / "meta.json").exists():
            store = self._open_store(label.collection)
            try:
                if pointer.wal_lsn and isinstance(store, WalPositioned):
                    store.read_after(pointer.wal_lsn)
                store.refresh()
                self._sweep(keep=None)  # crashed builders' leftovers (we hold the lock)
                t0 = time.perf_counter()
                final = write_snapshot(
                    self.root, label, store.iter_chunks(), self.dim, ann_min_rows=self.ann_min_rows
                )
                self.builds += 1
                self._last_build_s = time.perf_counter() - t0
                log.info("snapshot %s built in %.2f s", final, self._last_build_s)
                trim()  # the build's transient arrays: back to the OS, not kept by this query process
            finally:
                store.close()
        self._sweep(keep=final)
        return final

    def _sweep(self, keep: Path | None) -> None:
        """Remove temporary directories, and with `keep`, every other snapshot."""
        for coll in self.root.iterdir() if self.root.exists() else ():
            if not coll.is_dir():
                continue
            for d in coll.iterdir():
                if d.name.startswith(".tmp-") or (keep is not None and d != keep):
                    shutil.rmtree(d, ignore_errors=True)
