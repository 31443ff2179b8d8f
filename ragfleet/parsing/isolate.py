"""Each document is parsed in a child process of its own, bounded in memory and time.

Why a `subprocess` and not `multiprocessing`: Celery's prefork children are daemonic and may not start
multiprocessing children. Why a child at all: PDFium and Tesseract are C code that can hang, abort or
balloon on a malformed file; in a child, that costs one document, never the worker, and the worker's RSS
comes back down when the child exits. The child runs in a session of its own, so the timeout kill takes
its Tesseract grandchildren with it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from ragfleet.parsing.model import ParsedDocument, ParseError, ParseLimits
from ragfleet.schemas import ErrorCode
from ragfleet.settings import Settings

_MEMORY_MARKERS = ("MemoryError", "std::bad_alloc", "Cannot allocate memory", "out of memory")
_KILL_GRACE_S = 5.0


def limits_from(settings: Settings) -> ParseLimits:
    return ParseLimits(
        timeout_s=settings.parse_timeout_s,
        max_memory_mb=settings.parse_max_memory_mb,
        max_file_mb=settings.parse_max_file_mb,
        max_pages=settings.parse_max_pages,
        min_chars=settings.parse_min_chars,
    )


def child_argv(path: Path, limits: ParseLimits, source: str) -> list[str]:
    return [sys.executable, "-m", "ragfleet.parsing.child", str(path), limits.model_dump_json(), source]


def _child_env() -> dict[str, str]:
    """The child imports the same `ragfleet` as this process (whatever put it on our sys.path)."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    # one OCR, one core; no BLAS thread pool reserving address space against RLIMIT_AS
    env.update(OMP_THREAD_LIMIT="1", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def run_child(argv: list[str], timeout_s: float) -> ParsedDocument:
    """Run one parsing child to its end and classify the outcome; raises `ParseError`."""
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_child_env(), start_new_session=True
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        proc.communicate(timeout=_KILL_GRACE_S)
        raise ParseError(ErrorCode.PARSE_TIMEOUT, f"parse took longer than {timeout_s:g} s") from None
    finally:
        if proc.poll() is None:
            _kill_group(proc)
            proc.wait()
    return classify(proc.returncode, stdout, stderr)


def classify(returncode: int, stdout: bytes, stderr: bytes) -> ParsedDocument:
    """The child's answer when it gave one; otherwise a crash: `too_large` if it ran out of memory
    (RLIMIT_AS makes allocation fail, which C code often answers by aborting), else `unreadable_document`."""
    result: dict[str, Any] | None = None
    lines = stdout.decode("utf-8", errors="replace").strip().splitlines()
    if returncode == 0 and lines:
        try:
            result = json.loads(lines[-1])
        except ValueError:
            result = None
    if isinstance(result, dict) and result.get("ok") is True:
        return ParsedDocument.model_validate(result["document"])
    if isinstance(result, dict) and result.get("ok") is False:
        raise ParseError(ErrorCode(result["code"]), str(result["message"]))
    err = stderr.decode("utf-8", errors="replace")
    if any(marker in err for marker in _MEMORY_MARKERS):
        raise ParseError(ErrorCode.TOO_LARGE, "the parse ran out of its memory limit")
    tail = err.strip().splitlines()[-1][:300] if err.strip() else ""
    how = f"signal {-returncode}" if returncode < 0 else f"exit status {returncode}"
    raise ParseError(ErrorCode.UNREADABLE_DOCUMENT, f"the parser crashed ({how}) {tail}".strip())


def parse_file(path: Path | str, settings: Settings, *, source: str | None = None) -> ParsedDocument:
    """Parse one document file in a bounded child process. `source` (default: the file name) is what
    citations will show. Raises `ParseError` with one of the codes in docs/parsing.md; never hangs past
    `settings.parse_timeout_s` (plus a few seconds to reap the child)."""
    path = Path(path)
    limits = limits_from(settings)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ParseError(ErrorCode.UNREADABLE_DOCUMENT, f"cannot read the file: {exc}") from exc
    if size > limits.max_file_mb * 2**20:
        raise ParseError(ErrorCode.TOO_LARGE, f"{size // 2**20} MiB, over the {limits.max_file_mb} MiB limit")
    return run_child(child_argv(path.resolve(), limits, source or path.name), limits.timeout_s)
