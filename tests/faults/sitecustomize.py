"""Test-only fault injection, loaded by every process of a fleet the tests start (tests/fleet.py puts
this directory first on PYTHONPATH), as bench/hop_timeline/ does for its probe. A no-op unless a
`RAGFLEET_CHAOS_*` variable is set (see ragfleet_faults); never on a production query path.
"""

from __future__ import annotations

import os

_MARKERS = ("RAGFLEET_CHAOS_KILL_MARKER", "RAGFLEET_CHAOS_ERROR_MARKER", "RAGFLEET_CHAOS_HANG_MARKER")

_DELAYS = ("RAGFLEET_CHAOS_DELAY_S", "RAGFLEET_CHAOS_EMBED_DELAY_S")

if any(os.environ.get(name) for name in _MARKERS) or any(float(os.environ.get(d) or 0) > 0 for d in _DELAYS):
    import ragfleet_faults

    ragfleet_faults.install()
