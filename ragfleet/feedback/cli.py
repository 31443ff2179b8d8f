"""`ragfleet feedback ...`: read the feedback database directly (no broker, no workers needed).

Mounted by ragfleet/cli.py: `app.add_typer(feedback_app, name="feedback")`.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy.exc import SQLAlchemyError

from ragfleet.feedback import repository, service
from ragfleet.settings import get_settings

feedback_app = typer.Typer(help="User feedback: the worst-rated questions.", no_args_is_help=True)
console = Console()
err = Console(stderr=True)
EXCERPT_CHARS = 120


@feedback_app.callback()
def _group() -> None:
    """User feedback stored by the feedback pool."""
    # a callback keeps this a command group on its own too (typer runs a lone command directly)


def _excerpt(text: str, n: int = EXCERPT_CHARS) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= n else flat[: n - 1] + "…"


@feedback_app.command("candidates")
def candidates_cmd(
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="how many questions")] = 20,
    since_hours: Annotated[
        float | None, typer.Option("--since-hours", min=0, help="only ratings from the last N hours")
    ] = None,
    tenant: Annotated[str | None, typer.Option(help="only this tenant")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
    db_url: Annotated[
        str | None, typer.Option("--db-url", help="default: RAGFLEET_FEEDBACK_DB_URL", show_default=False)
    ] = None,
) -> None:
    """Questions with the lowest average rating (ties: most ratings first), with their last answer."""
    url = db_url or get_settings().feedback_db_url
    since = datetime.now(UTC) - timedelta(hours=since_hours) if since_hours is not None else None
    try:
        sessions = repository.get_session_factory(url)
        rows = service.candidates(sessions, limit=limit, since=since, tenant=tenant)
    except SQLAlchemyError as exc:
        # read-only on purpose: a report never migrates a database (the feedback worker does)
        first_line = str(exc).splitlines()[0] if str(exc) else ""
        err.print(f"[red]cannot read feedback database:[/red] {type(exc).__name__}: {first_line}")
        err.print("is the schema there? a feedback worker migrates it at startup")
        raise typer.Exit(1) from exc
    if as_json:
        typer.echo(json.dumps(rows, ensure_ascii=False, indent=2))
        return
    if not rows:
        err.print("no feedback recorded yet")
        return
    table = Table(title=f"Worst-rated questions ({len(rows)})", show_lines=False)
    table.add_column("question", overflow="fold", ratio=3)
    table.add_column("avg", justify="right", no_wrap=True)
    table.add_column("n", justify="right", no_wrap=True)
    table.add_column("tenant", no_wrap=True)
    table.add_column("answer (excerpt)", overflow="fold", ratio=4)
    for row in rows:
        avg = float(row["avg_rating"])
        style = "red" if avg < 2.5 else "yellow" if avg < 3.5 else "green"
        table.add_row(
            _excerpt(str(row["question"]), 200),
            f"[{style}]{avg:.2f}[/{style}]",
            str(row["count"]),
            str(row["tenant"]),
            _excerpt(str(row["answer"])),
        )
    console.print(table)
