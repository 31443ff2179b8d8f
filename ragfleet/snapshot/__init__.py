"""Read-only, memory-mapped search snapshots of the live collection (see files.py and manager.py)."""

from ragfleet.snapshot.files import Label, Snapshot, write_snapshot
from ragfleet.snapshot.manager import SnapshotManager, label_of

__all__ = ["Label", "Snapshot", "SnapshotManager", "label_of", "write_snapshot"]
