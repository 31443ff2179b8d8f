"""The ledger of Celery/kombu internals (docs/compat.md) is the truth: `pytest -m compat`.

- the installed Celery and kombu are the versions compat.md was checked against;
- no module of ours imports a private Celery/kombu name, patches a Celery/kombu module or class, or
  reads a private attribute of theirs, unless compat.md lists the symbol (and every symbol it lists
  is still used);
- a producer's or client's process (the producer, the Python client, the API) has kombu unpatched.
"""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.compat.scanner import Finding, allowed_symbols, is_allowed, scan_source, scan_tree

pytestmark = pytest.mark.compat

REPO = Path(__file__).resolve().parents[2]
COMPAT_MD = REPO / "docs" / "compat.md"
PACKAGES = ("ragfleet", "workers", "tasks", "api_shim")
ALLOW_LIST_HEADING = "## Private names used"


def _doc() -> str:
    return COMPAT_MD.read_text()


@pytest.mark.parametrize("package", ["celery", "kombu"])
def test_installed_versions_are_the_ones_compat_md_was_checked_against(package: str) -> None:
    checked = re.search(rf"Checked against:.*?`{package}==([^`]+)`", _doc())
    assert checked, f"docs/compat.md names no checked {package} version"
    installed = importlib.metadata.version(package)
    assert installed == checked.group(1), (
        f"{package} {installed} is installed; docs/compat.md was checked against {checked.group(1)}. "
        "Follow its 'After upgrading' steps, then update its versions line."
    )


def test_every_private_touch_of_celery_or_kombu_is_in_the_ledger() -> None:
    allowed = allowed_symbols(_doc(), ALLOW_LIST_HEADING)
    assert allowed, "docs/compat.md's allow-list table is empty or missing"
    findings = scan_tree(REPO, PACKAGES)
    unlisted = [f for f in findings if not is_allowed(f, allowed)]
    assert not unlisted, "not in docs/compat.md:\n" + "\n".join(map(str, unlisted))
    used = {s for s in allowed if any(is_allowed(f, {s}) for f in findings)}
    assert used == allowed, f"listed in docs/compat.md but no longer used: {sorted(allowed - used)}"


def _kinds(src: str) -> set[tuple[str, str]]:
    return {(f.kind, f.symbol) for f in scan_source(textwrap.dedent(src))}


@pytest.mark.parametrize(
    "src",
    [
        """
        from kombu.transport import redis as kombu_redis
        kombu_redis.Channel._create_client = object()
        """,
        """
        import kombu.transport.redis
        kombu.transport.redis.Channel._create_client = object()
        """,
        """
        from kombu.transport.redis import Channel
        Channel._create_client = object()
        """,
        """
        from typing import Any
        from kombu.transport import redis as r
        channel: Any = r.Channel
        c2 = channel
        c2._create_client = object()
        """,
        """
        from kombu.transport import redis
        setattr(redis.Channel, "_create_client", object())
        """,
        """
        def install():
            import kombu.transport.redis as kr
            kr.Channel._create_client = staticmethod(len)
        """,
    ],
    ids=["module-alias", "dotted-import", "class-import", "local-alias", "setattr", "in-a-function"],
)
def test_the_scanner_catches_a_patch_of_a_kombu_method_however_it_is_spelled(src: str) -> None:
    assert ("patch", "kombu.transport.redis.Channel._create_client") in _kinds(src)
    finding = next(f for f in scan_source(textwrap.dedent(src)) if f.kind == "patch")
    # and the ledger does not allow it
    assert not is_allowed(finding, allowed_symbols(_doc(), ALLOW_LIST_HEADING))


def test_the_scanner_catches_private_imports_reads_and_public_method_patches() -> None:
    kinds = _kinds(
        """
        from celery._state import _task_stack
        import celery.app._private_mod
        from celery.worker.consumer.consumer import Consumer
        from kombu.transport import virtual
        Consumer.on_send_event_buffered = print
        def f(message):
            return message._raw, virtual.QoS._delivered_default
        """
    )
    assert ("import", "celery._state._task_stack") in kinds
    assert ("import", "celery.app._private_mod") in kinds
    assert ("patch", "celery.worker.consumer.consumer.Consumer.on_send_event_buffered") in kinds
    assert ("private", "*._raw") in kinds  # an object of unknown type, and a name not ours
    assert ("private", "kombu.transport.virtual.QoS._delivered_default") in kinds


def test_the_scanner_leaves_configuration_our_own_privates_and_other_libraries_alone() -> None:
    assert (
        _kinds(
            """
            import os
            from celery import Celery
            app = Celery("x")
            app.conf.task_acks_late = True
            app.conf.update(worker_prefetch_multiplier=1)
            class Ours:
                def __init__(self):
                    self._state = 1
                def get(self):
                    return self._state
            def bye():
                os._exit(1)
            """
        )
        == set()
    )


def test_allow_list_entries_match_unresolved_reads_by_their_last_name() -> None:
    allowed = {"kombu.transport.virtual.Message._raw"}
    assert is_allowed(Finding("x.py", 1, "private", "*._raw"), allowed)
    assert not is_allowed(Finding("x.py", 1, "private", "*._rawer"), allowed)
    assert not is_allowed(Finding("x.py", 1, "patch", "kombu.transport.virtual.Message.other"), allowed)


NO_PATCH_IN_A_PRODUCER = """
import sys
import ragfleet.producer, ragfleet.client
from ragfleet.names import TaskName
from ragfleet.settings import Settings
import api_shim.app

s = Settings(redis_url="redis://127.0.0.1:1/0")  # nothing connects
api_shim.app.create_app(s)
ragfleet.producer.build_message(TaskName.QUERY, {"question": "q"}, settings=s)
ragfleet.producer.client_app(s)

from kombu.transport import redis as kr
touched = [
    name
    for name, fn in (
        ("Channel._connparams", kr.Channel._connparams),
        ("Channel._create_client", kr.Channel._create_client),
        ("QoS.append", kr.QoS.append),
        ("QoS._remove_from_indices", kr.QoS._remove_from_indices),
        ("QoS.restore_by_tag", kr.QoS.restore_by_tag),
    )
    if fn.__module__ != "kombu.transport.redis" or hasattr(fn, "__wrapped_original__")
]
ours = sorted(m for m in sys.modules if m.split(".")[0] in ("workers", "tasks"))
print(touched, ours)
assert not touched and not ours, (touched, ours)
"""


def test_a_producer_client_or_api_process_has_kombu_unpatched() -> None:
    out = subprocess.run(
        [sys.executable, "-c", NO_PATCH_IN_A_PRODUCER], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_worker_app_installs_exactly_the_listed_patches() -> None:
    """The other side: the patches the ledger lists are the ones the worker app installs."""
    script = (
        "from workers import kombu_patches; from workers.app import create_app; "
        "from ragfleet.settings import Settings; "
        "create_app(Settings(redis_url='redis://127.0.0.1:1/0')); "
        "print(sorted(k for k, v in kombu_patches.installed().items() if v))"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    installed = set(eval(out.stdout.strip().splitlines()[-1]))  # our own subprocess's repr of a list of str
    patched_in_ledger = {
        s for s in allowed_symbols(_doc(), ALLOW_LIST_HEADING) if s.startswith("kombu.transport.redis.")
    }
    assert installed == patched_in_ledger
