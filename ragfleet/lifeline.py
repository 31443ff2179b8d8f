"""A child process that dies with its parent: no orphan keeps a port or a queue after a SIGKILL.

A supervisor (supervisord, systemd, the kubelet) restarts the process it started, not the children
that process forked or spawned. When a parent is SIGKILLed (an OOM kill, `kill -9`), nothing stops
its children: the API launcher's uvicorn workers keep serving the old listening socket (and the
restarted launcher fails to bind), a prefork parent's children keep their model and their
half-done batch. Linux's `PR_SET_PDEATHSIG` makes the kernel signal the child the moment its
parent dies; nothing needs to run in the parent, which is the point.

Caveats, and why they do not bite here: the signal follows the death of the *thread* that created
the child (uvicorn's launcher and Celery's prefork parent create their children from the main
thread, which lives as long as the process); and a parent that died before the child called
`die_with_parent` is caught by comparing `getppid()` with the pid the caller passes in.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(parent_pid: int, sig: signal.Signals = signal.SIGKILL) -> bool:
    """Ask the kernel to send `sig` to this process when its parent dies; exit now if the parent
    (`parent_pid`, the pid the child was started by) is already gone. False where the platform
    has no `prctl` (not Linux): the caller's supervisor must then stop the process group."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent_pid:  # the parent died before the prctl: the signal will never come
        os.kill(os.getpid(), sig)
    return True
