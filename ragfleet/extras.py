"""Which install has what, for the CLI: `pip install ragfleet` is the client, `ragfleet[worker]` the fleet.

The bare distribution carries only what `ragfleet.client` and the enqueue-and-poll commands need
(celery/kombu to build task messages, redis, httpx, pydantic, typer, rich): a producer's service
installs it without torch, the store libraries or the parsers. The fleet-side commands (`index`, which
opens the store and the model; `feedback`, which reads the feedback database) need the extra; in a
client-only install they say so in one line and exit `EXIT_NEEDS_WORKER`, not with an ImportError
traceback. A missing module of ragfleet's own is a broken install, not a missing extra: it is re-raised.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import contextmanager

import typer
from rich.console import Console
from rich.markup import escape

WORKER_EXTRA = "ragfleet[worker]"
EXIT_NEEDS_WORKER = 7
"""Exit status of a fleet-side command run without the worker extra."""
_OWN_PACKAGES = frozenset({"ragfleet", "workers", "tasks", "api_shim"})


def missing_extra(exc: ModuleNotFoundError) -> bool:
    """True when the module that is missing is a third-party one (what the extra installs)."""
    return (exc.name or "").split(".")[0] not in _OWN_PACKAGES


def refuse(command: str, module: str | None) -> typer.Exit:
    Console(stderr=True).print(
        f"[red]`ragfleet {command}` runs fleet-side code and needs the worker extra "
        f"({module} is not installed): pip install '{escape(WORKER_EXTRA)}'",
        highlight=False,
        soft_wrap=True,
    )
    return typer.Exit(EXIT_NEEDS_WORKER)


@contextmanager
def fleet_side(command: str) -> Iterator[None]:
    """Wrap a fleet-side command (a decorator) or its imports: a missing third-party module, whenever the
    command reaches for it, becomes the one-line hint."""
    try:
        yield
    except ModuleNotFoundError as exc:
        if not missing_extra(exc):
            raise
        raise refuse(command, exc.name) from exc


def mount_fleet_side(app: typer.Typer, name: str, module: str, attr: str, help: str) -> None:
    """Mount the command group `module.attr` as `ragfleet NAME`; in a client-only install, a stand-in
    command (it takes any arguments, `--help` too) that prints the hint instead."""
    try:
        group = getattr(importlib.import_module(module), attr)
    except ModuleNotFoundError as exc:
        if not missing_extra(exc):
            raise
        absent = exc.name

        anything = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}

        @app.command(name, help=f"{help} Needs {escape(WORKER_EXTRA)}.", context_settings=anything)
        def unavailable() -> None:
            raise refuse(name, absent)

        return
    app.add_typer(group, name=name)
