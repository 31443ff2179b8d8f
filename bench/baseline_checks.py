"""The slower or separate parts of bench/bench_baseline.py's run: dev quality through both APIs, the
Celery no-op floor, and every fleet process's memory. Split out to keep the orchestrator readable.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any

from bench import proc_stats as ps
from bench.bench_latency import HttpCaller
from bench.run_fleet import BenchFleet

REPO = Path(__file__).resolve().parent.parent
TRACING_OFF = {"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "none"}


def _rank_all(
    url: str, queries: dict[str, str], ids: list[str], concurrency: int
) -> tuple[dict[str, list[str]], list[str]]:
    """Every question's document ranking through one API, `concurrency` callers at once."""
    from ragfleet.evaluation import collapse_to_documents

    lock = threading.Lock()
    todo = iter(ids)
    ranks: dict[str, list[str]] = {}
    failed: list[str] = []

    def work() -> None:
        caller = HttpCaller(url)
        while True:
            with lock:
                qid = next(todo, None)
            if qid is None:
                return
            body = {"question": queries[qid], "top_k": 100, "use_cache": False}
            try:
                status, raw = caller.post_json("/v1/queries?wait=30", body)
                rec = json.loads(raw)
                if status != 200 or rec.get("status") != "done":
                    raise RuntimeError(f"{status} {str(rec)[:200]}")
                sources = (rec.get("result") or {}).get("sources", [])
                ranks[qid] = collapse_to_documents(str(x["doc_id"]) for x in sources)
            except (OSError, http.client.HTTPException, ValueError, RuntimeError) as exc:
                failed.append(f"{qid}: {exc}")
                caller = HttpCaller(url)

    threads = [threading.Thread(target=work) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return ranks, failed


def quality(urls: dict[str, str], data: Path, concurrency: int = 4) -> dict[str, Any]:
    """Dev nDCG@10 through each fleet's API (top 100 chunks collapsed to documents, cache off, as
    `ragfleet eval` ranks), and the mean overlap of A's and B's top-10 documents per question.
    Only meaningful on the whole corpus (with --ingest-limit most relevant documents are absent)."""
    from ragfleet.evaluation import load_dataset, ndcg_at_k

    ds = load_dataset(data)
    ids = list(ds.queries)
    out: dict[str, Any] = {"questions": len(ids)}
    tops: dict[str, dict[str, list[str]]] = {}
    for n, url in urls.items():
        ranks, failed = _rank_all(url, ds.queries, ids, concurrency)
        tops[n] = {q: r[:10] for q, r in ranks.items()}
        ndcg = [ndcg_at_k(ranks[q], ds.qrels[q], 10) for q in ids if q in ranks]
        out[n] = {"ndcg_at_10": sum(ndcg) / max(1, len(ndcg)), "answered": len(ranks), "failed": len(failed)}
        if failed:
            out[n]["first_failure"] = failed[0]
        print(f"quality {n}: nDCG@10 {out[n]['ndcg_at_10']:.4f} ({len(ranks)} answered)", flush=True)
    both = [q for q in ids if q in tops["A"] and q in tops["B"]]
    overlaps = [len(set(tops["A"][q]) & set(tops["B"][q])) / max(1, len(tops["A"][q])) for q in both]
    out["top10_doc_overlap_mean"] = sum(overlaps) / max(1, len(overlaps))
    return out


def celery_noop(fleet: BenchFleet, n: int = 300) -> dict[str, float]:
    """A Celery round trip that does nothing (bench_latency's `noop_app`: no ragfleet task, no job
    record) on the fleet's broker and prefix, through a solo worker of its own: the floor of a hop."""
    from ragfleet.evaluation import percentile

    env = fleet.settings_env()
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the app and its worker read their Settings from the environment
    worker: subprocess.Popen[bytes] | None = None
    try:
        from bench.bench_latency import _make_noop_app

        with warnings.catch_warnings():  # the module's own noop app registered the name first
            warnings.simplefilter("ignore")
            app = _make_noop_app()
            task = app.tasks["bench.noop"]
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "bench.bench_latency:noop_app", "worker", "--pool", "solo",
             "-l", "WARNING", "-n", f"noop-{os.getpid()}@bench", "--without-mingle", "--without-gossip"],
            cwd=REPO, env={**os.environ, **TRACING_OFF, "PYTHONPATH": str(REPO)}, start_new_session=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        task.delay().get(timeout=120)  # the worker is up
        for _ in range(20):
            task.delay().get(timeout=30)
        ms = []
        for _ in range(n):
            t0 = time.perf_counter()
            task.delay().get(timeout=30)
            ms.append((time.perf_counter() - t0) * 1000)
        return {"p50_ms": percentile(ms, 50), "p99_ms": percentile(ms, 99), "n": len(ms)}
    finally:
        if worker is not None:
            os.killpg(worker.pid, signal.SIGTERM)
            worker.wait(30)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def memory(fleets: dict[str, BenchFleet]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for n, f in fleets.items():
        rows = []
        for pid, (pool, label) in sorted(ps.fleet_processes(f.pids).items()):
            rows.append(
                {
                    "pid": pid,
                    "pool": pool,
                    "label": label,
                    "libtorch_mapped": ps.maps_mention(pid, "libtorch"),
                    **ps.memory_kb(pid),
                }
            )
        out[n] = rows
    return out
