"""glibc malloc tuning for the retrieval nodes: what a process keeps of the memory it has freed.

glibc gives each thread that allocates concurrently an arena of its own, up to 8 per core, and keeps
what is freed in an arena for reuse instead of returning it. A retrieval node's search threads (the
full-text leg's pool, LanceDB's runtime) each took an arena: on SciFact 50 store searches grew a node's
anonymous memory by ~190 MB that stayed after the searches were done (PSS 598 MB after 200 queries; with
at most 2 arenas 402 MB; `python bench/bench_retrieval_memory.py`). `mallopt(M_ARENA_MAX)` limits the
arenas threads created afterwards may get, and `malloc_trim` hands free pages back after a one-off peak
(a snapshot build). Both are no-ops where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging

log = logging.getLogger("ragfleet.memory")

_M_ARENA_MAX = -8  # glibc's malloc.h


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        lib = ctypes.CDLL(name)
        lib.mallopt  # noqa: B018 -- glibc only (musl has no mallopt)
        lib.malloc_trim  # noqa: B018
    except (OSError, AttributeError):
        return None
    return lib


def limit_malloc_arenas(n: int) -> bool:
    """At most `n` malloc arenas for threads that start allocating from now on; False where unsupported."""
    lib = _libc()
    if lib is None or n <= 0:
        return False
    ok = bool(lib.mallopt(_M_ARENA_MAX, n))
    log.info("malloc arenas limited to %d: %s", n, ok)
    return ok


def trim() -> bool:
    """Return free heap pages to the OS (after a one-off peak); False where unsupported or nothing freed."""
    lib = _libc()
    return bool(lib.malloc_trim(0)) if lib is not None else False
