"""ragfleet.lifeline: a child that asked to die with its parent is gone once the parent is SIGKILLed
(what keeps a killed API launcher's uvicorn workers, or a killed prefork parent's children, from
serving on as orphans). Real processes: a parent interpreter that starts a child interpreter."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO
from tests.supervised import proc_alive

CHILD = (
    "import os, signal, sys, time; from ragfleet.lifeline import die_with_parent;"
    "die_with_parent(int(sys.argv[1]), signal.SIGTERM if sys.argv[2] == 'term' else signal.SIGKILL);"
    "print('armed', flush=True); time.sleep(60)"
)
PARENT = (
    "import subprocess, sys, time, os;"
    "c = subprocess.Popen([sys.executable, '-c', sys.argv[1], sys.argv[2] or str(os.getpid()), sys.argv[3]],"
    " stdout=subprocess.PIPE, text=True);"
    "print(c.pid, c.stdout.readline().strip(), flush=True); time.sleep(60)"
)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")


def _start(parent_pid_arg: str, sig: str) -> tuple[subprocess.Popen[str], int, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, CHILD, parent_pid_arg, sig], stdout=subprocess.PIPE, text=True, env=env
    )
    assert parent.stdout is not None
    pid, *said = parent.stdout.readline().split()
    return parent, int(pid), "".join(said)


def _gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not proc_alive(pid):
            return True
        time.sleep(0.02)
    return False


@pytest.mark.parametrize("sig", ["kill", "term"])
def test_a_child_dies_when_its_parent_is_sigkilled(sig: str) -> None:
    parent, child, said = _start("", sig)
    try:
        assert said == "armed" and proc_alive(child)
        parent.kill()
        parent.wait(5)
        assert _gone_within(child, 5), "the child outlived its SIGKILLed parent"
    finally:
        parent.kill()
        if proc_alive(child):
            os.kill(child, signal.SIGKILL)


def test_a_child_whose_parent_died_before_it_armed_exits_at_once() -> None:
    """The race the pid check closes: the given parent pid is not the child's parent any more."""
    parent, child, said = _start("1", "kill")  # pid 1 is never the child's parent
    try:
        assert said == "" and _gone_within(child, 5)
    finally:
        parent.kill()
        parent.wait(5)
