"""Faults the chaos suite (tests/chaos) injects into a worker's query path, from its environment:

- `RAGFLEET_CHAOS_KILL_MARKER`: a query whose question contains it SIGKILLs its own worker process,
  every delivery, as an OOM kill would (a poison message): the redelivery cap must park it.
- `RAGFLEET_CHAOS_ERROR_MARKER`: ... raises `ChaosError`, an exception no task handles (a bug): its
  job must still end, `internal`.
- `RAGFLEET_CHAOS_HANG_MARKER`: ... blocks the soft time limit's signal (SIGUSR1 in a prefork
  child, SIGALRM in a solo node) and sleeps, as a call stuck in native code would: only the hard
  limit can end it, and its job must end, `timeout`.
- `RAGFLEET_CHAOS_DELAY_S`: every query sleeps this long, so a test can kill its worker mid-query.

Each fires where the query task used to call its in-task fault hook: in the retrieval stage, after
the cache and coalescing checks, just before the search (`ragfleet.querying.search` is wrapped
when that module is first imported).

- `RAGFLEET_CHAOS_EMBED_DELAY_S`: indexing sleeps this long per chunk it is about to embed (before
  `ragfleet.indexing._fill_vectors`), as a slower encoder would: a batch that must still run when
  its node is stopped stays long however fast the real encoder gets.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from functools import wraps
from types import ModuleType
from typing import Any


class ChaosError(Exception):
    """What the error marker raises: an exception no task expects."""


def inject_fault(question: str) -> None:
    kill = os.environ.get("RAGFLEET_CHAOS_KILL_MARKER", "")
    error = os.environ.get("RAGFLEET_CHAOS_ERROR_MARKER", "")
    hang = os.environ.get("RAGFLEET_CHAOS_HANG_MARKER", "")
    delay = float(os.environ.get("RAGFLEET_CHAOS_DELAY_S") or 0)
    if kill and kill in question:
        os.kill(os.getpid(), signal.SIGKILL)
    if error and error in question:
        raise ChaosError(f"injected failure ({error})")
    if hang and hang in question:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1, signal.SIGALRM})
        time.sleep(3_600)
    if delay > 0:
        time.sleep(delay)


def _wrap_querying(module: ModuleType) -> None:
    search: Callable[..., Any] = module.search

    @wraps(search)
    def search_with_faults(res: Any, p: Any, *args: Any, **kwargs: Any) -> Any:
        inject_fault(p.question)
        return search(res, p, *args, **kwargs)

    module.search = search_with_faults


def _wrap_indexing(module: ModuleType) -> None:
    fill: Callable[..., Any] = module._fill_vectors
    per_chunk = float(os.environ.get("RAGFLEET_CHAOS_EMBED_DELAY_S") or 0)

    @wraps(fill)
    def slow_fill(res: Any, pending: dict[str, list[Any]], *args: Any, **kwargs: Any) -> Any:
        time.sleep(per_chunk * sum(len(rows) for rows in pending.values()))
        return fill(res, pending, *args, **kwargs)

    module._fill_vectors = slow_fill


TARGETS: dict[str, Callable[[ModuleType], None]] = {
    "ragfleet.querying": _wrap_querying,
    "ragfleet.indexing": _wrap_indexing,
}


class _Finder(importlib.abc.MetaPathFinder):
    """Finds nothing itself: wraps the real loader of its target module so that `wrap` runs once
    the module has executed."""

    def __init__(self, target: str, wrap: Callable[[ModuleType], None]) -> None:
        self.target = target
        self.wrap = wrap

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != self.target:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        exec_module = loader.exec_module

        def exec_and_wrap(module: ModuleType) -> None:
            exec_module(module)
            self.wrap(module)

        loader.exec_module = exec_and_wrap  # type: ignore[method-assign]
        return spec


def install() -> None:
    for name, wrap in TARGETS.items():
        if name in sys.modules:
            wrap(sys.modules[name])
        else:
            sys.meta_path.insert(0, _Finder(name, wrap))
