"""Webhook delivery latency: from a job turning `done` to its receiver holding the signed POST.

    python bench/bench_callbacks.py [--n 50] [--gap-ms 20]

A bench fleet's `callbacks` pool (bench/run_fleet.py: a real `celery worker`, threads, as in the
Procfile) delivers to a receiver on loopback (http.server, 200 to every POST). Each job is created
with a `callback_url` and finished through `JobStore.finish`, the same Lua transition every pool
runs, which pushes the delivery message. Latency = the receiver's clock at arrival minus the
record's `updated_at` (same host, same clock). Jobs are finished `--gap-ms` apart (latency, not a
backlog), then all at once (a burst: what a batch's end looks like to one receiver).

Also, paired: the cost of the finishing round trip with and without a callback (the push rides in
the same script: an answer must not wait for its callback).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.run_fleet import bench_fleet
from ragfleet.callback_spec import CallbackRequest
from ragfleet.callbacks import record_fields
from ragfleet.jobs import JobStore
from ragfleet.redis_conn import get_redis

ENV = {
    "RAGFLEET_CALLBACK_SECRETS": "default:bench-secret",
    "RAGFLEET_CALLBACK_ALLOWED_HOSTS": "127.0.0.1",
    "RAGFLEET_CALLBACK_ALLOWED_NETWORKS": "127.0.0.1/32",
}


class Receiver:
    def __init__(self) -> None:
        self.arrivals: dict[str, float] = {}
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.arrivals[json.loads(body)["job_id"]] = time.time()
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(q / 100 * (len(s) - 1)))]


def run(jobs: JobStore, settings: Any, rx: Receiver, n: int, gap_s: float) -> dict[str, float]:
    ids = []
    for _ in range(n):
        job_id = uuid.uuid4().hex
        extra = record_fields(settings, job_id, "default", CallbackRequest(callback_url=rx.url))
        jobs.create(job_id, "query", extra=extra)
        ids.append(job_id)
    for job_id in ids:
        jobs.finish(job_id, {"answer": "x" * 200})
        if gap_s:
            time.sleep(gap_s)
    deadline = time.monotonic() + 60
    while not all(j in rx.arrivals for j in ids) and time.monotonic() < deadline:
        time.sleep(0.01)
    got = [j for j in ids if j in rx.arrivals]
    lat = []
    for j in got:
        rec = jobs.get(j)
        assert rec is not None
        lat.append((rx.arrivals[j] - rec.updated_at) * 1000)
    return {"n": len(got), "missing": n - len(got), "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99),
            "max_ms": max(lat)}  # fmt: skip


def finish_cost(jobs: JobStore, settings: Any, url: str, n: int = 300) -> dict[str, float]:
    """Paired: finish() of a job without, then with, a callback; P50 of each (microseconds)."""
    plain, called = [], []
    for _ in range(n):
        for sink, extra in ((plain, None), (called, "cb")):
            job_id = uuid.uuid4().hex
            fields = (
                record_fields(settings, job_id, "default", CallbackRequest(callback_url=url))
                if extra
                else None
            )
            jobs.create(job_id, "query", extra=fields)
            t0 = time.perf_counter()
            jobs.finish(job_id, {"answer": "x"})
            sink.append((time.perf_counter() - t0) * 1e6)
    return {
        "finish_p50_us_plain": statistics.median(plain),
        "finish_p50_us_with_callback": statistics.median(called),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--gap-ms", type=float, default=20.0)
    args = ap.parse_args()
    rx = Receiver()
    with bench_fleet("callbacks", extra_env=ENV) as fleet:
        settings = fleet.settings()
        jobs = JobStore(get_redis(settings), settings)
        run(jobs, settings, rx, 5, 0.02)  # warm: the pool's first HTTP client, imports
        out = {
            "spaced": run(jobs, settings, rx, args.n, args.gap_ms / 1000),
            "burst": run(jobs, settings, rx, args.n, 0.0),
        }
        # under a prefix of its own that no worker consumes (the pushes queue up; cleanup removes them),
        # so the worker's deliveries do not share the two cores with the measurement
        quiet = settings.model_copy(
            update={
                "key_prefix": f"{settings.key_prefix}-cost",
                "broker_key_prefix": f"{settings.key_prefix}-cost:q:",
            }
        )
        out["finish"] = finish_cost(JobStore(get_redis(quiet), quiet), quiet, rx.url)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
