"""What a retrieval process holds (PSS, MB) on a SciFact-sized index, with and without the malloc arena limit.

    python bench/eval_scifact.py --inprocess --data ../shared/data/scifact   # once: builds the cached index
    python bench/bench_retrieval_memory.py [--index /tmp/ragfleet-eval/lance-tokens-3-200-40-254t]

Each row is a fresh process doing what a retrieval node does (`Resources.warm_up`, then
`querying.retrieve`): 50 questions answered by the store (as while a snapshot is stale), a snapshot
build, 200 questions answered by the snapshot. PSS/RSS from /proc/self/smaps_rollup after each step.
`arena max` 0 is glibc's default (8 arenas per core); the fleet's retrieval nodes use
`RAGFLEET_RETRIEVAL_MALLOC_ARENA_MAX` (2), set by workers/hooks/warmup.py before the first search.
A fleet's two retrieval nodes share the library and snapshot pages (Pss_File), so each node's PSS there
is lower than a lone process's. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "scifact"
STEPS = ("warm", "50 store queries", "snapshot built", "200 snapshot queries")


def _pss() -> dict[str, int]:
    out: dict[str, int] = {}
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if parts[0] in ("Rss:", "Pss:", "Pss_Anon:", "Pss_File:"):
                out[parts[0][:-1]] = int(parts[1]) // 1024
    return out


def child(index: Path, arena_max: int, data: Path) -> None:
    from ragfleet import querying
    from ragfleet.memory import limit_malloc_arenas
    from ragfleet.resources import Resources
    from ragfleet.schemas import QueryPayload
    from ragfleet.settings import Settings

    work = Path(tempfile.mkdtemp(prefix="rf-mem-"))
    try:
        (work / "lancedb").symlink_to(index)
        prefix = f"bench-mem-{os.getpid()}"
        s = Settings(
            data_dir=work,
            key_prefix=prefix,
            broker_key_prefix=f"{prefix}:q:",
            onnx_dir=ROOT / "var" / "data" / "onnx",
        )
        limit_malloc_arenas(arena_max)
        res = Resources(s)
        res.warm_up()
        rows = {"warm": _pss()}
        with open(data / "queries.jsonl") as f:
            qs = [json.loads(line)["text"] for line in f][:250]
        for q in qs[:50]:
            querying.retrieve(res, QueryPayload(question=q, use_cache=False))
        rows["50 store queries"] = _pss()
        assert res.snapshots is not None and res.snapshots.build_now() is not None
        rows["snapshot built"] = _pss()
        for q in qs[50:]:
            querying.retrieve(res, QueryPayload(question=q, use_cache=False))
        assert res.snapshot_for(res.last_version or 0) is not None, "the snapshot did not answer"
        rows["200 snapshot queries"] = _pss()
        for k in list(res.redis.scan_iter(f"{prefix}*")):
            res.redis.delete(k)
        print(json.dumps(rows))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--index", type=Path, default=Path("/tmp/ragfleet-eval/lance-tokens-3-200-40-254t"))
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--arena-max", default="0,2", help="comma-separated values to compare")
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child is not None:
        child(a.index.resolve(), a.child, a.data)
        return
    if not a.index.exists():
        raise SystemExit(f"no index at {a.index}: run bench/eval_scifact.py --inprocess first")
    print("| arena max | " + " | ".join(f"{s}: PSS / RSS MB" for s in STEPS) + " |")
    print("|---|" + "---|" * len(STEPS))
    for n in (int(x) for x in a.arena_max.split(",")):
        cmd = [sys.executable, __file__, "--index", str(a.index), "--data", str(a.data), "--child", str(n)]
        out = subprocess.run(
            cmd, check=True, capture_output=True, text=True, env=os.environ | {"PYTHONPATH": str(ROOT)}
        )
        rows = json.loads(out.stdout.strip().splitlines()[-1])
        print(
            f"| {n or 'glibc default'} | "
            + " | ".join(f"{rows[s]['Pss']} / {rows[s]['Rss']}" for s in STEPS)
            + " |"
        )


if __name__ == "__main__":
    main()
