"""`python -m ragfleet.parsing.child PATH LIMITS_JSON [SOURCE]`: parse one file, print one JSON line.

Run only by `ragfleet.parsing.isolate`. It limits its own address space first (RLIMIT_AS), so a parse
that would grow past the memory limit gets a MemoryError (reported `too_large`) instead of taking the
worker's host down. Output on stdout, always one JSON object: `{"ok": true, "document": ...}` or
`{"ok": false, "code": ..., "message": ...}`; anything else (a crash, a kill) is the parent's to classify.
"""

from __future__ import annotations

import json
import os
import resource
import sys
from pathlib import Path

from ragfleet.parsing.model import ParseError, ParseLimits
from ragfleet.schemas import ErrorCode


def _limit_memory(max_mb: int) -> None:
    limit = max_mb * 2**20
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def run(argv: list[str]) -> dict[str, object]:
    path, limits = Path(argv[0]), ParseLimits.model_validate_json(argv[1])
    source = argv[2] if len(argv) > 2 else None
    _limit_memory(limits.max_memory_mb)
    from ragfleet.parsing.core import parse_in_process

    try:
        document = parse_in_process(path, limits, source)
    except ParseError as exc:
        return {"ok": False, **exc.to_json()}
    except MemoryError:
        return {"ok": False, "code": ErrorCode.TOO_LARGE.value, "message": "over the parse memory limit"}
    except Exception as exc:  # any library's failure on a malformed file
        message = f"{type(exc).__name__}: {exc}"[:500]
        return {"ok": False, "code": ErrorCode.UNREADABLE_DOCUMENT.value, "message": message}
    return {"ok": True, "document": document.model_dump(mode="json")}


def main() -> None:
    """The result goes to the real stdout; during the parse, fd 1 points at stderr, so nothing a library
    prints (C code included) can corrupt the one JSON line the parent reads."""
    result_out = os.fdopen(os.dup(1), "w", encoding="utf-8")
    sys.stdout.flush()
    os.dup2(2, 1)
    result = run(sys.argv[1:])
    result_out.write(json.dumps(result) + "\n")
    result_out.flush()


if __name__ == "__main__":
    main()
