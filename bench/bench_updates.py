"""Single-document updates: gathered into batches (`ragfleet.index_document`) vs one indexing task per
document (`ragfleet.index_documents` with a batch of one), through a real indexing pool, same run.

    python bench/bench_updates.py [--docs 300]

Prints a table and writes bench/out/updates.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from run_fleet import bench_fleet

from ragfleet.jobs import JobStore
from ragfleet.names import TaskName
from ragfleet.producer import enqueue
from ragfleet.redis_conn import get_redis


def run(settings: object, task: TaskName, n: int) -> float:
    tenant = f"b-{uuid.uuid4().hex[:6]}"
    docs = [
        {"id": f"d{i}", "text": f"Update {i}: worker {i % 7} retried task {i} after a timeout."}
        for i in range(n)
    ]
    jobs = JobStore(get_redis(settings), settings)  # type: ignore[arg-type]
    t0 = time.perf_counter()
    if task == TaskName.INDEX_DOCUMENT_SINGLE:
        ids = [enqueue(task, {"document": d, "tenant": tenant}, settings=settings) for d in docs]  # type: ignore[arg-type]
    else:
        ids = [enqueue(task, {"documents": [d], "tenant": tenant}, settings=settings) for d in docs]  # type: ignore[arg-type]
    pending = set(ids)
    while pending:
        for j in list(pending):
            st = jobs.status(j)
            if st is not None and st.value in ("done", "failed"):
                pending.discard(j)
        time.sleep(0.05)
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=300)
    args = ap.parse_args()
    with bench_fleet("indexing") as fleet:
        s = fleet.settings()
        per_task = run(s, TaskName.INDEX_DOCUMENTS, args.docs)
        batched = run(s, TaskName.INDEX_DOCUMENT_SINGLE, args.docs)
    out = {
        "docs": args.docs,
        "one_task_per_document_docs_per_s": round(per_task, 1),
        "batched_docs_per_s": round(batched, 1),
        "gain": round(batched / per_task, 2),
    }
    print("| path | docs/s |\n| --- | --- |")
    print(f"| one indexing task per document | {out['one_task_per_document_docs_per_s']} |")
    print(f"| gathered into batches (index_document) | {out['batched_docs_per_s']} |")
    print(f"gain: {out['gain']}x")
    Path("bench/out").mkdir(parents=True, exist_ok=True)
    Path("bench/out/updates.json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
