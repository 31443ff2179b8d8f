"""`ragfleet status`: is the fleet's vector store reachable, from each worker that uses it, and if
not, why. It reads what the workers recorded (ragfleet/store_health.py) and never connects to the
store itself: what matters is what the workers see, from where they run.

Exit status: 0 all reachable; 7 a server is down for some node (a replica down included: searches
then read the primary); 8 no worker has reported in the last `STALE_AFTER_S` seconds.
"""

from __future__ import annotations

import json
import time
from typing import Annotated, Any

import typer
from rich.console import Console

from ragfleet.store_health import STALE_AFTER_S, read_all

console = Console()
err = Console(stderr=True)


def _line(rec: dict[str, Any], now: float) -> str:
    parts = []
    for sv in rec.get("servers", []):
        state = "up" if sv.get("up") else f"[red]DOWN[/red] ({sv.get('error')})"
        parts.append(f"{sv.get('role')} {sv.get('server')} {state}")
    age = now - float(rec.get("checked_at", now))
    return f"{rec.get('node')}: {rec.get('store')}: " + "; ".join(parts) + f" (checked {age:.0f} s ago)"


def status(
    as_json: Annotated[bool, typer.Option("--json", help="print the workers' records as JSON")] = False,
) -> None:
    """Which vector store servers each worker reaches, and why not where it does not."""
    from ragfleet.redis_conn import get_redis
    from ragfleet.settings import get_settings

    s = get_settings()
    records = read_all(get_redis(s), s)
    down = [sv for r in records for sv in r.get("servers", []) if not sv.get("up")]
    if as_json:
        console.print_json(json.dumps({"nodes": records, "down": down}))
    else:
        now = time.time()
        for rec in records:
            console.print(_line(rec, now), markup=True, highlight=False, soft_wrap=True)
    if not records:
        err.print(f"[yellow]no worker has reported its store in the last {STALE_AFTER_S} s")
        raise typer.Exit(8)
    if down:
        names = sorted({f"{sv.get('role')} {sv.get('server')}" for sv in down})
        err.print(f"[red]store unreachable: {', '.join(names)}")
        raise typer.Exit(7)
