"""Interactive latency while a bulk ingest runs (issue 21: "stay polite when queries arrive").

    python bench/bench_ingest_interactive.py --state /tmp/ragfleet-ab/<run>/b.json [--docs 1000]

On a running fleet that already holds an index (e.g. one `bench_baseline.py --keep` left): one
question at a time through the HTTP API (cache off, every question unique), first with the fleet
idle, then while `--docs` new documents are ingested as `ragfleet ingest` sends them (64 a job),
then idle again. The new documents are SciFact abstracts with their sentences in reverse order, under
new ids and a title tagged with the run: new text, so every chunk is embedded (nothing is reused by
content hash). Prints P50/P99 of
each phase and the ingest's docs/s. During the ingest the snapshot is stale (the store answers) and
the indexing pool encodes on both cores at nice 10: this is what a user's question costs then.
Writes bench/out/ingest-interactive-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_baseline import free_port
from bench.bench_latency import HttpCaller, ask
from bench.run_fleet import BenchFleet

OUT = Path(__file__).resolve().parent / "out"


def reversed_docs(corpus: Path, n: int, tag: str) -> list[dict[str, Any]]:
    from ragfleet.corpus import read_documents
    from ragfleet.sentences import split_sentences

    out = []
    for d in list(read_documents(corpus))[:n]:
        sentences = split_sentences(d["text"])
        # the run's tag in the title: the title is part of every chunk's text, so no chunk's text
        # (hence its content hash) was ever embedded before, not even by an earlier run of this script
        title = f"{d.get('title') or ''} [{tag}]"
        out.append({**d, "id": f"{tag}-{d['id']}", "title": title, "text": " ".join(reversed(sentences))})
    return out


def ask_loop(url: str, questions: list[str], stop: threading.Event | None, limit: int) -> list[float]:
    """One question at a time until `stop` is set (or `limit` questions without one)."""
    caller, lat = HttpCaller(url), []
    for i, q in enumerate(questions):
        if (stop is not None and stop.is_set()) or (stop is None and i >= limit):
            break
        t0 = time.perf_counter()
        status, body = ask(caller, q, use_cache=False)
        if status != 200 or json.loads(body).get("status") != "done":
            raise SystemExit(f"question failed: HTTP {status} {body[:300]!r}")
        lat.append((time.perf_counter() - t0) * 1000)
    return lat


def wait_for_snapshot(fleet: BenchFleet, timeout: float) -> float:
    """Seconds until a snapshot directory of the index pointer's current version exists (the
    retrieval nodes answer from it from then on; until then the store answers)."""
    import redis

    r = redis.Redis.from_url(fleet.redis_url)
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        version, generation = (
            int(r.get(f"{fleet.prefix}:index:{k}") or 0) for k in ("version", "generation")
        )
        suffix = f"-v{version}-g{generation}"
        if any(d.name.endswith(suffix) for d in (fleet.data_dir / "snapshots").glob("*/*")):
            return time.perf_counter() - t0
        time.sleep(0.1)
    raise SystemExit(f"no snapshot of the current index version after {timeout} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--state", type=Path, required=True, help="the fleet's state file (bench/run_fleet.py)")
    ap.add_argument("--data", type=Path, default=Path("/work/shared/data/scifact"))
    ap.add_argument("--docs", type=int, default=1000, help="new documents to ingest")
    ap.add_argument("--idle-questions", type=int, default=150, help="questions in each idle phase")
    ap.add_argument("--port", type=int, help="the API's port (default: a free one)")
    args = ap.parse_args()

    fleet = BenchFleet.load(args.state)
    for k, v in fleet.settings_env().items():
        os.environ[k] = v  # FleetClient and Settings below read them
    from ragfleet.client import FleetClient
    from ragfleet.evaluation import load_dataset, percentile

    # a port of its own each run: an API left by an earlier run on a fixed port would answer instead
    url = fleet.start_api(args.port or free_port(), env={"RAGFLEET_RATE_LIMIT": "1000000/minute"})
    nonce = uuid.uuid4().hex[:6]
    base = list(load_dataset(args.data).queries.values())
    questions = [f"{base[i % len(base)]} [{nonce}-{i}]" for i in range(100_000)]
    ask_loop(url, questions[:30], None, 30)  # connections, the API workers' first requests
    phases: dict[str, Any] = {}

    def record(name: str, lat: list[float], extra: dict[str, Any] | None = None) -> None:
        phases[name] = {"n": len(lat), "p50_ms": percentile(lat, 50), "p99_ms": percentile(lat, 99)}
        phases[name] |= extra or {}
        print(f"{name}: {len(lat)} questions, P50 {phases[name]['p50_ms']:.1f} ms, "
              f"P99 {phases[name]['p99_ms']:.1f} ms", flush=True)  # fmt: skip

    record("idle before", ask_loop(url, questions[100:], None, args.idle_questions))
    docs = reversed_docs(args.data / "corpus.jsonl", args.docs, f"ii{nonce}")
    client, stop = FleetClient(), threading.Event()
    done: dict[str, float] = {}

    def ingest() -> None:
        t0 = time.perf_counter()
        jobs = [client.index(docs[i : i + 64]) for i in range(0, len(docs), 64)]
        pending, failed = set(jobs), 0
        while pending:
            for j in list(pending):
                rec = client.job(j)
                if rec is not None and rec["status"] in ("done", "failed", "cancelled"):
                    pending.discard(j)
                    failed += rec["status"] != "done"
            time.sleep(0.25)
        done.update(seconds=time.perf_counter() - t0, failed_jobs=failed)
        stop.set()

    worker = threading.Thread(target=ingest, daemon=True)
    worker.start()
    during = ask_loop(url, questions[10_000:], stop, 0)
    worker.join()
    docs_per_s = len(docs) / done["seconds"]
    record("during ingest", during, {"ingest_docs": len(docs), "ingest_docs_per_s": docs_per_s, **done})
    print(f"ingest: {len(docs)} documents in {done['seconds']:.1f} s = {docs_per_s:.2f} docs/s "
          f"({done['failed_jobs']} failed jobs)", flush=True)  # fmt: skip
    waited = wait_for_snapshot(fleet, timeout=180.0)
    print(f"the snapshot of the new index version answered {waited:.1f} s after the ingest", flush=True)
    record(
        "idle after",
        ask_loop(url, questions[50_000:], None, args.idle_questions),
        {"snapshot_after_s": waited},
    )
    OUT.mkdir(exist_ok=True)
    path = OUT / f"ingest-interactive-{time.strftime('%Y%m%d-%H%M%S')}.json"
    meta = {"state": str(args.state), "prefix": fleet.prefix, "env": fleet.extra_env}
    path.write_text(json.dumps({"meta": meta, "phases": phases}, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
