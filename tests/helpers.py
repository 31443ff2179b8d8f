"""What several test modules need, in one place: waiting for a job, waiting for any condition, a served
API and a client for it, the producer's two round trips (index, ask), and a stand-in encoder.

Light on purpose: importing this module imports no torch, no store client and no server; each helper
imports what it needs when it is called, so a unit test that only wants `wait_for` stays fast.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from numpy.typing import NDArray

from ragfleet.settings import Settings
from tests.conftest import free_port

if TYPE_CHECKING:
    import httpx
    from fastapi import FastAPI

T = TypeVar("T")

TERMINAL = ("done", "failed", "cancelled")


def wait_for(
    probe: Callable[[], T | None],
    *,
    timeout: float,
    interval: float = 0.02,
    what: str = "condition",
) -> T:
    """Call `probe` until it returns something other than None (or False) and return that.

    Waiting on the real condition instead of sleeping a fixed time: fast when the system is fast,
    patient when the machine is busy, and the failure message says what never happened.
    """
    deadline = time.monotonic() + timeout
    while True:
        got = probe()
        if got is not None and got is not False:
            return got
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not reached within {timeout} s")
        time.sleep(interval)


def wait_job(
    settings: Settings, job_id: str, timeout: float = 60, *, statuses: tuple[str, ...] = TERMINAL
) -> dict[str, Any]:
    """The job's record (as JSON, what `GET /v1/jobs/{id}` serves) once its status is in `statuses`
    (by default: terminal). Reads the record the workers write, exactly as a producer would."""
    from ragfleet.jobs import JobStore
    from ragfleet.redis_conn import get_redis

    jobs = JobStore(get_redis(settings), settings)

    def probe() -> dict[str, Any] | None:
        rec = jobs.get(job_id)
        return rec.model_dump(mode="json") if rec is not None and rec.status in statuses else None

    try:
        return wait_for(probe, timeout=timeout, what=f"job {job_id} in {statuses}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last record: {jobs.get(job_id)}") from None


def isolated(base: Settings, tag: str, **update: Any) -> Settings:
    """`base` with a key prefix (and broker prefix) of its own under the session's: a test that
    asserts on what lies in Redis sees only its own keys, and the session's cleanup still removes
    them (it deletes everything under the session prefix)."""
    prefix = f"{base.key_prefix}-{tag}-{uuid.uuid4().hex[:8]}"
    return base.model_copy(update={"key_prefix": prefix, "broker_key_prefix": f"{prefix}:q:", **update})


def index(settings: Settings, docs: list[dict[str, Any]], tenant: str = "default") -> dict[str, Any]:
    """Send an indexing job like any producer and wait for its record."""
    from ragfleet.names import TaskName
    from ragfleet.producer import enqueue

    job_id = enqueue(TaskName.INDEX_DOCUMENTS, {"documents": docs, "tenant": tenant}, settings=settings)
    return wait_job(settings, job_id)


def index_status(settings: Settings) -> dict[str, Any]:
    """`ragfleet index status` in a process of its own, as an operator runs it."""
    import json
    import subprocess
    import sys

    from tests.conftest import settings_env

    out = subprocess.run(
        [sys.executable, "-m", "ragfleet.cli", "index", "status"],
        env=settings_env(settings),
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    status: dict[str, Any] = json.loads(out.stdout)
    return status


def ask(settings: Settings, question: str, **kw: Any) -> dict[str, Any]:
    """Send a query job like any producer and wait for its record."""
    from ragfleet.names import TaskName
    from ragfleet.producer import enqueue

    job_id = enqueue(TaskName.QUERY, {"question": question, **kw}, settings=settings)
    return wait_job(settings, job_id)


# --- the HTTP API ---------------------------------------------------------------------------------


@contextmanager
def serve(app: FastAPI) -> Iterator[str]:
    """A real uvicorn server in a thread on a free loopback port; yields its base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started or not thread.is_alive(), timeout=10, interval=0.01, what="uvicorn start")
    if not server.started:
        raise RuntimeError("uvicorn did not start")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@contextmanager
def serve_api(settings: Settings) -> Iterator[str]:
    """The product's API (`create_app(settings)`), served for real; yields its base URL."""
    from api_shim.app import create_app

    with serve(create_app(settings)) as url:
        yield url


@contextmanager
def api_client(
    settings: Settings, *, headers: dict[str, str] | None = None, timeout: float = 10.0
) -> Iterator[httpx.Client]:
    """An httpx client bound to the served API of `settings`: what every API test talks through."""
    import httpx

    with serve_api(settings) as url, httpx.Client(base_url=url, headers=headers, timeout=timeout) as client:
        yield client


# --- a stand-in encoder -----------------------------------------------------------------------------

_WORD = re.compile(r"\w+")


class HashingEmbedder:
    """Deterministic 384-dimensional vectors from hashed words, for tests of the logic *around* the
    embedding (batching, copying vectors by content hash, blue/green switches) that must not pay ~5 s
    for torch and the model. Texts that share words get near vectors, so a search still finds them.
    The real model is exercised by the `model`-marked tests. `calls` counts the texts encoded: a test
    asserts on it when nothing should have been embedded.
    """

    dim = 384

    def __init__(self) -> None:
        self.calls = 0

    def warm_up(self) -> None:
        pass

    def encode(self, texts: list[str], *, batch_size: int | None = None) -> NDArray[np.float32]:
        self.calls += len(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in _WORD.findall(text.casefold()):
                h = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=4).digest(), "little")
                out[row, h % self.dim] += 1.0
            norm = float(np.linalg.norm(out[row]))
            out[row] = out[row] / norm if norm else out[row]
        return out

    def encode_one(self, text: str) -> NDArray[np.float32]:
        vec: NDArray[np.float32] = self.encode([text])[0]
        return vec
