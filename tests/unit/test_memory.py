"""ragfleet.memory on this machine's glibc: the arena limit and the trim are really applied."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from ragfleet.memory import limit_malloc_arenas, trim


def test_glibc_accepts_the_arena_limit_and_the_trim() -> None:
    assert limit_malloc_arenas(2) is True
    blocks = [bytearray(1 << 20) for _ in range(64)]  # 64 MB allocated and freed: something to trim
    del blocks
    assert isinstance(trim(), bool)
    assert limit_malloc_arenas(0) is False  # 0 means glibc's default: nothing is set


def test_threads_started_after_the_limit_share_its_arenas() -> None:
    """glibc's malloc_info lists one <heap> per arena: 16 allocating threads create at most 2 more
    than the main arena with the limit, and more without it."""
    script = textwrap.dedent(
        """
        import ctypes, sys, threading, os, tempfile
        from ragfleet.memory import limit_malloc_arenas
        if sys.argv[1] == "1":
            assert limit_malloc_arenas(2)
        libc = ctypes.CDLL("libc.so.6")
        libc.fdopen.restype = ctypes.c_void_p
        libc.fdopen.argtypes = [ctypes.c_int, ctypes.c_char_p]
        libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
        libc.fflush.argtypes = [ctypes.c_void_p]
        gate = threading.Barrier(16)
        def work():
            gate.wait()
            keep = [bytearray(4096) for _ in range(2000)]
            gate.wait()
        ts = [threading.Thread(target=work) for _ in range(16)]
        [t.start() for t in ts]
        [t.join() for t in ts]
        fd, path = tempfile.mkstemp()
        f = libc.fdopen(fd, b"w")
        libc.malloc_info(0, f)
        libc.fflush(f)
        print(open(path).read().count("<heap nr="))
        """
    )
    counts = [
        int(
            subprocess.run(
                [sys.executable, "-c", script, flag], check=True, capture_output=True, text=True
            ).stdout
        )
        for flag in ("1", "0")
    ]
    limited, default = counts
    assert limited <= 2 < default, counts
