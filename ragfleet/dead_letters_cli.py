"""`ragfleet dlq ...`: list, show, replay and purge dead letters, straight through Redis (no API needed;
every tenant's). Mounted by ragfleet/cli.py: `app.add_typer(dlq_app, name="dlq")`.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

if TYPE_CHECKING:
    from ragfleet.dead_letters import DeadLetters

dlq_app = typer.Typer(
    help="Dead letters: parked poison messages, worker_lost and internal failures (docs/operations.md).",
    no_args_is_help=True,
)
console = Console()
err = Console(stderr=True)


def _dead_letters() -> DeadLetters:
    """The store, on the fleet's Redis: the CLI is an operator's tool and sees every tenant (the HTTP
    routes `/v1/admin/dead-letters` are the way for a tenant key)."""
    from ragfleet.dead_letters import DeadLetters
    from ragfleet.redis_conn import get_redis
    from ragfleet.settings import get_settings

    s = get_settings()
    return DeadLetters(get_redis(s), s)


@dlq_app.command("list")
def dlq_list(
    tenant: Annotated[str | None, typer.Option(help="only this tenant's")] = None,
    limit: Annotated[int, typer.Option(help="at most this many, newest first")] = 100,
) -> None:
    """List dead letters, newest first, one JSON object a line (payloads left out: see `show`)."""
    for entry in _dead_letters().list(tenant=tenant, limit=limit):
        print(entry.model_dump_json(exclude={"payload"}))


@dlq_app.command("show")
def dlq_show(entry_id: Annotated[str, typer.Argument(help="dead letter id")]) -> None:
    """Print one dead letter, payload included."""
    entry = _dead_letters().get(entry_id)
    if entry is None:
        err.print(f"[red]dead letter {entry_id} not found (purged, or past RAGFLEET_DEAD_LETTER_TTL_S)")
        raise typer.Exit(4)
    console.print_json(entry.model_dump_json())


@dlq_app.command("replay")
def dlq_replay(entry_id: Annotated[str, typer.Argument(help="dead letter id")]) -> None:
    """Send a dead letter's message again under its job id (`ragfleet job ID` follows it). Exit 3 if
    it was not replayed (replayed already, job running, nothing to send)."""
    from ragfleet.dead_letters import ReplayOutcome

    letters = _dead_letters()
    entry = letters.get(entry_id)
    if entry is None:
        err.print(f"[red]dead letter {entry_id} not found")
        raise typer.Exit(4)
    outcome, attempt = letters.replay(entry_id)
    print(
        json.dumps({"dead_letter": entry_id, "job_id": entry.job_id, "outcome": outcome, "attempt": attempt})
    )
    if outcome != ReplayOutcome.REPLAYED:
        raise typer.Exit(3)


@dlq_app.command("purge")
def dlq_purge(
    tenant: Annotated[str | None, typer.Option(help="only this tenant's")] = None,
    yes: Annotated[bool, typer.Option("--yes", help="do not ask")] = False,
) -> None:
    """Delete dead letters (all, or one tenant's)."""
    if not yes and not typer.confirm(f"purge the dead letters of {tenant or 'every tenant'}?"):
        raise typer.Exit(1)
    print(json.dumps({"purged": _dead_letters().purge(tenant=tenant)}))
