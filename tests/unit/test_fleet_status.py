"""`ragfleet ps` against a real supervisord (a small configuration of its own, two `sleep`
programs and one that cannot start): state, pid, uptime, restarts and unexpected exits as
supervisord's XML-RPC interface and its log tell them, and the command's exit codes."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ragfleet.cli import app
from ragfleet.fleet_status import fleet_status
from ragfleet.settings import get_settings
from tests.conftest import PYTHON

CONF = """
[supervisord]
nodaemon=true
pidfile={d}/supervisord.pid
logfile={d}/supervisord.log
[unix_http_server]
file={d}/supervisor.sock
[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface
[program:steady]
command=sleep 600
startsecs=0
stopsignal=KILL
stopasgroup=true
killasgroup=true
[program:killed]
command=sleep 600
startsecs=0
stopsignal=KILL
stopasgroup=true
killasgroup=true
[program:broken]
command=false
startsecs=1
startretries=0
"""


@pytest.fixture
def supervisor(tmp_path: Path) -> Iterator[Path]:
    (tmp_path / "s.conf").write_text(CONF.format(d=tmp_path))
    proc = subprocess.Popen([PYTHON, "-m", "supervisor.supervisord", "-c", str(tmp_path / "s.conf")])
    try:
        deadline = time.monotonic() + 20
        while not (tmp_path / "supervisor.sock").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        yield tmp_path
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)


def _until(fleet_dir: Path, ok: object, timeout: float = 20) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while True:
        status = {p.name: p for p in fleet_status(fleet_dir)}
        if ok(status) or time.monotonic() > deadline:  # type: ignore[operator]
            return status  # type: ignore[return-value]
        time.sleep(0.1)


def test_status_counts_a_killed_process_restart_and_shows_one_that_cannot_start(supervisor: Path) -> None:
    first = _until(supervisor, lambda s: s["killed"].state == "RUNNING" and s["broken"].state == "FATAL")
    pid = first["killed"].pid  # type: ignore[attr-defined]
    os.kill(pid, signal.SIGKILL)
    status = _until(supervisor, lambda s: s["killed"].state == "RUNNING" and s["killed"].pid != pid)
    killed, steady, broken = status["killed"], status["steady"], status["broken"]
    assert (killed.state, killed.restarts, killed.unexpected_exits) == ("RUNNING", 1, 1)  # type: ignore[attr-defined]
    assert killed.pid != pid and 0 <= killed.uptime_s <= steady.uptime_s  # type: ignore[attr-defined]  (whole seconds)
    assert (steady.restarts, steady.unexpected_exits) == (0, 0)  # type: ignore[attr-defined]
    assert broken.state == "FATAL" and broken.pid == 0 and broken.uptime_s is None  # type: ignore[attr-defined]

    get_settings.cache_clear()  # the command reads RAGFLEET_FLEET_DIR through the cached Settings
    out = CliRunner().invoke(app, ["ps"], env={"RAGFLEET_FLEET_DIR": str(supervisor)})
    get_settings.cache_clear()
    assert out.exit_code == 3, out.output  # one process is neither RUNNING nor STOPPED
    assert "killed" in out.output and "FATAL" in out.output


def test_status_says_when_no_fleet_runs(tmp_path: Path) -> None:
    get_settings.cache_clear()
    out = CliRunner().invoke(app, ["ps"], env={"RAGFLEET_FLEET_DIR": str(tmp_path)})
    get_settings.cache_clear()
    assert out.exit_code == 2
