"""Load test: the API at twice the expected traffic, for a fixed time, with error rate and P99.

    python bench/bench_load.py            # starts fleet + API, runs this file headless, prints the table

Expected traffic for one 2-core node (the number the fleet is sized for, stated here so the test
means something): **8 questions/s** (~690k a day), of which 60 % are new questions (cache miss,
the whole retrieval -> generation pipeline) and 40 % repeat a popular question (answered from the
cache). That is about a third of the node's saturated miss throughput (bench_latency.py). The
test runs at 2x: 16 questions/s from 32 callers at 0.5/s each (`constant_throughput`), each with
its own API key, as separate client services would be.

A request is a success only if `POST /v1/queries?wait=30` returns 200 with a `done` job record: a
202 (not answered within the long poll), a 429, a 5xx or a failed job all count as errors.
"""

from __future__ import annotations

import itertools
import json
import os
import random
from pathlib import Path

from locust import HttpUser, constant_throughput, events, task

DATA = Path(os.environ.get("RAGFLEET_BENCH_DATA", "../shared/data/scifact"))
RATE_PER_USER = float(os.environ.get("RAGFLEET_BENCH_USER_RATE", "0.5"))
REPEAT_SHARE = float(os.environ.get("RAGFLEET_BENCH_REPEAT_SHARE", "0.4"))
KEYS = [k.split(":", 1)[0] for k in os.environ.get("RAGFLEET_API_KEYS", "").split(",") if k]

_queries = [json.loads(line)["text"] for line in (DATA / "queries.jsonl").open()]
random.Random(7).shuffle(_queries)
POPULAR = _queries[:20]  # the repeated questions: warmed into the cache before the run
_fresh = iter(_queries[20:])
_key_ids = itertools.count()


def next_fresh() -> str:
    """Each new question is asked once; after the file runs out, a suffix keeps them distinct."""
    global _fresh
    try:
        return next(_fresh)
    except StopIteration:
        _fresh = (f"{q} ({i})" for i in itertools.count(1) for q in _queries[20:])
        return next(_fresh)


class ApiCaller(HttpUser):
    wait_time = constant_throughput(RATE_PER_USER)

    def on_start(self) -> None:
        if KEYS:
            self.client.headers["Authorization"] = f"Bearer {KEYS[next(_key_ids) % len(KEYS)]}"

    @task
    def ask(self) -> None:
        repeat = random.random() < REPEAT_SHARE
        question = random.choice(POPULAR) if repeat else next_fresh()
        name = "query (repeat)" if repeat else "query (new)"
        with self.client.post(
            "/v1/queries?wait=30", json={"question": question, "top_k": 5}, name=name, catch_response=True
        ) as r:
            if r.status_code != 200:
                r.failure(f"HTTP {r.status_code}: {r.text[:200]}")
            elif r.json().get("status") != "done":
                r.failure(f"job {r.json().get('status')}: {r.json().get('error')}")


@events.test_start.add_listener
def warm_popular(environment, **_kwargs) -> None:  # type: ignore[no-untyped-def]
    """Ask the popular questions once so that repeats are cache hits, as in steady state."""
    import httpx

    headers = {"Authorization": f"Bearer {KEYS[0]}"} if KEYS else {}
    with httpx.Client(base_url=environment.host, timeout=60, headers=headers) as c:
        for q in POPULAR:
            c.post("/v1/queries", params={"wait": 30}, json={"question": q, "top_k": 5})
