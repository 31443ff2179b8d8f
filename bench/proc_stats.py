"""CPU time and memory of a fleet's processes, read from /proc (Linux only), for bench_baseline.py.

Why /proc and not psutil: the numbers are the kernel's own (utime + stime in clock ticks, PSS from
smaps_rollup), with nothing to install. A bench fleet starts every pool with `start_new_session`, so a
pool's processes are exactly those whose session id is the pid run_fleet.py recorded for it:
supervisord's retrieval nodes, a prefork parent's children and uvicorn's workers included.
"""

from __future__ import annotations

import os
from pathlib import Path

TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) is in parentheses and may hold spaces: split after its last ")"
    return raw[raw.rindex(")") + 2 :].split()


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of the process (all its threads), or None if it is gone."""
    f = _stat_fields(pid)
    return None if f is None else (int(f[11]) + int(f[12])) * TICK_S


def session_of(pid: int) -> int | None:
    f = _stat_fields(pid)
    return None if f is None else int(f[3])


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def label_of(pool: str, pid: int, leader: int) -> str:
    """A readable name for one process of a pool: `retrieval0`, `api worker`, `indexing child`..."""
    cmd = cmdline(pid)
    if pool == "retrieval":
        if pid == leader:
            return "retrieval supervisord"
        for part in cmd.split():
            if part.startswith("retrieval") and "@" in part:
                return part.split("@")[0]
        return "retrieval ?"
    if pid == leader:
        return f"{pool} main" if pool != "api" else "api master"
    return f"{pool} worker" if pool == "api" else f"{pool} child"


def fleet_processes(pools: dict[str, int]) -> dict[int, tuple[str, str]]:
    """pid -> (pool, label) for every live process of the pools (pool -> session leader pid)."""
    by_session = {leader: pool for pool, leader in pools.items()}
    out: dict[int, tuple[str, str]] = {}
    for pid in all_pids():
        sid = session_of(pid)
        if sid in by_session:
            pool = by_session[sid]
            out[pid] = (pool, label_of(pool, pid, sid))
    return out


def redis_server_pids() -> list[int]:
    pids = []
    for pid in all_pids():
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        if comm == "redis-server":
            pids.append(pid)
    return pids


def machine_busy_seconds() -> float:
    """All CPUs' non-idle time since boot (/proc/stat), to show what the window's attribution missed."""
    parts = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    vals = [int(v) for v in parts[:8]]
    idle = vals[3] + vals[4]  # idle + iowait
    return (sum(vals) - idle) * TICK_S


def memory_kb(pid: int) -> dict[str, int]:
    """Rss and Pss (shared pages divided among the processes that map them) from smaps_rollup."""
    out: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("Rss", "Pss"):
                out[key.lower() + "_kb"] = int(rest.split()[0])
    except OSError:
        pass
    return out


def maps_mention(pid: int, needle: str) -> bool:
    """Whether the process maps a file whose path contains `needle` (e.g. libtorch)."""
    try:
        return needle in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False
