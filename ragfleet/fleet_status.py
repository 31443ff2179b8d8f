"""`ragfleet ps`: each process of the local supervised fleet, its state, pid, uptime and restarts.

It asks supervisord over its unix socket (`<fleet_dir>/supervisor.sock`, infra/supervisor/fleet.conf)
with supervisord's own XML-RPC interface. supervisord keeps no restart count: the count here is
read from its main log, one `spawned: '<process>'` line per start since supervisord started (a
start by `supervisorctl restart` counts too), and `unexpected exits` counts its `not expected`
exit lines (a crash, a kill, an OOM kill). A rotated-away log undercounts; the log says so.
"""

from __future__ import annotations

import json
import re
import time
import xmlrpc.client
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any, cast

import typer
from rich.console import Console
from rich.table import Table

SPAWNED = re.compile(r" spawned: '(?P<name>[^']+)' with pid")
UNEXPECTED = re.compile(r" exited: (?P<name>\S+) \(.*not expected\)")


@dataclass(frozen=True, slots=True)
class ProcessStatus:
    name: str
    state: str
    pid: int
    uptime_s: float | None  # None: not running
    restarts: int
    unexpected_exits: int
    detail: str  # supervisord's description: the exit status, or why it could not start


def _proxy(socket_path: Path) -> Any:
    from supervisor.xmlrpc import SupervisorTransport  # the worker extra: `ragfleet ps` runs beside the fleet

    transport = SupervisorTransport(None, None, f"unix://{socket_path}")
    return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)


def count_lines(log: str) -> tuple[Counter[str], Counter[str]]:
    """(starts, unexpected exits) per process name, from supervisord's main log."""
    starts = Counter(m["name"] for m in SPAWNED.finditer(log))
    exits = Counter(m["name"] for m in UNEXPECTED.finditer(log))
    return starts, exits


def fleet_status(fleet_dir: Path) -> list[ProcessStatus]:
    """ConnectionError (OSError) when no supervisord listens on the fleet's socket."""
    proxy = _proxy(fleet_dir / "supervisor.sock")
    infos = cast(list[dict[str, Any]], proxy.supervisor.getAllProcessInfo())
    starts, exits = count_lines(cast(str, proxy.supervisor.readLog(0, 0)))
    now = time.time()
    out = []
    for info in infos:
        name = info["name"]
        running = info["statename"] == "RUNNING"
        out.append(
            ProcessStatus(
                name=name,
                state=info["statename"],
                pid=int(info["pid"]),
                uptime_s=float(now - info["start"]) if running else None,
                restarts=max(starts[name] - 1, 0),
                unexpected_exits=exits[name],
                detail="" if running else str(info["description"]),
            )
        )
    return out


def format_uptime(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


HEALTHY = {"RUNNING", "STOPPED"}  # STOPPED: on purpose (Flower without a password, `supervisorctl stop`)


def status_command(
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object a process")] = False,
) -> None:
    """Each process of the local fleet (scripts/demo.sh): state, pid, uptime, restarts. Exit 3 when
    one is neither RUNNING nor STOPPED (starting, backing off, FATAL), 2 when no fleet runs."""
    from ragfleet.settings import get_settings

    fleet_dir = get_settings().fleet_dir
    try:
        procs = fleet_status(fleet_dir)
    except OSError as e:
        Console(stderr=True).print(f"[red]no supervised fleet at {fleet_dir / 'supervisor.sock'}: {e}")
        raise typer.Exit(2) from e
    console = Console()
    if as_json:
        for p in procs:
            console.print_json(json.dumps(asdict(p)))
    else:
        table = Table("process", "state", "pid", "uptime", "restarts", "unexpected exits", "detail")
        for p in procs:
            counts = (str(p.restarts), str(p.unexpected_exits))
            table.add_row(p.name, p.state, str(p.pid or "-"), format_uptime(p.uptime_s), *counts, p.detail)
        console.print(table)
    if any(p.state not in HEALTHY for p in procs):
        raise typer.Exit(3)
