"""workers/hooks/heartbeat.py: the file a liveness probe reads is touched on a schedule from a
thread of its own, survives a failing touch, and stops when told."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import pytest

from workers.hooks import heartbeat


def _wait_for(condition: object, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.01)
    return False


def test_the_file_is_created_and_touched_again_until_stopped(tmp_path: Path) -> None:
    path = tmp_path / "run" / "heartbeat"  # a missing directory is created
    stop = threading.Event()
    thread = threading.Thread(target=heartbeat.beat_forever, args=(path, stop, 0.05), daemon=True)
    thread.start()
    assert _wait_for(path.exists)
    first = path.stat().st_mtime_ns
    assert _wait_for(lambda: path.stat().st_mtime_ns > first)
    stop.set()
    thread.join(2)
    assert not thread.is_alive()
    last = path.stat().st_mtime_ns
    time.sleep(0.2)
    assert path.stat().st_mtime_ns == last  # a stopped heartbeat goes stale


def test_a_failing_touch_is_logged_and_retried(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    path = blocker / "heartbeat"  # its parent is a file: every touch fails
    stop = threading.Event()
    thread = threading.Thread(target=heartbeat.beat_forever, args=(path, stop, 0.02), daemon=True)
    with caplog.at_level(logging.WARNING, logger="ragfleet.worker"):
        thread.start()
        assert _wait_for(lambda: sum("heartbeat file" in r.message for r in caplog.records) >= 2)
    assert thread.is_alive()  # the probe decides, not this thread
    blocker.unlink()
    assert _wait_for(path.exists)  # and it recovers once it can write
    stop.set()
    thread.join(2)


def test_start_runs_one_thread_a_path(tmp_path: Path) -> None:
    path = tmp_path / "heartbeat"
    first = heartbeat.start(path, interval_s=0.05)
    try:
        assert heartbeat.start(path, interval_s=0.05) is first
        assert _wait_for(path.exists)
        assert sum(t.name == "ragfleet-heartbeat" for t in threading.enumerate()) >= 1
    finally:
        first.set()
        heartbeat._started.pop(str(path), None)


def test_the_file_holds_the_latest_store_record_when_a_node_watches_its_store(tmp_path: Path) -> None:
    """A node that watches its store writes the watch's record into the file on every beat (the
    probe still only reads the age), so `cat` on a pod shows what the node last saw."""
    path = tmp_path / "heartbeat"
    states = iter(['{"store": {"up": false}}', '{"store": {"up": true}}'])
    latest = {"text": next(states)}
    stop = threading.Event()
    thread = threading.Thread(
        target=heartbeat.beat_forever, args=(path, stop, 0.05, lambda: latest["text"]), daemon=True
    )
    thread.start()
    try:
        assert _wait_for(lambda: path.exists() and path.read_text() == '{"store": {"up": false}}')
        latest["text"] = next(states)
        assert _wait_for(lambda: path.read_text() == '{"store": {"up": true}}')
    finally:
        stop.set()
        thread.join(2)
