"""The API's part of a graceful drain (`Settings.drain_grace_s`): on SIGTERM uvicorn closes its
listening socket and waits for open requests (at most `timeout_graceful_shutdown`, which
api_shim/serve.py sets to the grace); this module makes the long ones end at once instead of at
their own limits: a long poll answers 202 with its job id (the caller polls another replica), a
stream sends its `timeout` line (the caller resumes elsewhere with the last event id).

uvicorn handles SIGTERM and SIGINT itself while it serves; `chain_signals`, called at startup
(inside uvicorn's signal capture), sets `draining` and then calls uvicorn's handler.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

draining = threading.Event()
_CHAINED = "_ragfleet_drain"


def chain_signals() -> bool:
    """Set `draining` on SIGTERM/SIGINT before the handler in place (uvicorn's). False where
    signals cannot be set (not the main thread: a test client)."""
    if threading.current_thread() is not threading.main_thread():
        return False
    for sig in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(sig)
        if getattr(previous, _CHAINED, False):
            continue

        def handler(signum: int, frame: FrameType | None, previous: Any = previous) -> None:
            draining.set()
            if callable(previous):
                previous(signum, frame)
            elif previous == signal.SIG_DFL:
                raise SystemExit(128 + signum)

        setattr(handler, _CHAINED, True)
        signal.signal(sig, handler)
    return True
