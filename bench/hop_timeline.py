"""Where a query's time goes between the stages, step by step: a timeline of sequential cache-miss queries.

    python bench/hop_timeline.py --a /tmp/ragfleet-bench/fleet.json [--n 100]

Starts a second fleet (retrieval, generation, API) on fleet A's index, as `bench_ab.py --share-index`
does, with the probe in `bench/hop_timeline/` loaded into every process: it stamps the time at each
step a message goes through (kombu taking it off Redis and writing its unacked entry, Celery's
strategy, the prefork child's tracer or the thread's start, every Redis pipeline, the API's HTTP
request and its wake-up), beside the job record's own stage stamps. Then it sends `--n` questions
one at a time and prints, for every pair of consecutive steps seen in at least 80 % of the queries,
the median gap, in timeline order, twice: across all processes (who waits for whom) and within each
process (what it spends between its own steps). The probe's own cost (a
JSON line per step) is in the numbers; compare gaps with each other, not with `bench_latency.py`.
Writes bench/out/hop-timeline-<stamp>.json; stops and removes the probed fleet at the end.
"""

from __future__ import annotations

import argparse
import collections
import itertools
import json
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.bench_ab import share_index  # noqa: E402
from bench.bench_latency import HttpCaller, ask  # noqa: E402
from bench.run_fleet import STATE, BenchFleet  # noqa: E402

OUT = REPO / "bench" / "out"
PROBE = REPO / "bench" / "hop_timeline"


def run_queries(url: str, questions: list[str]) -> list[dict[str, Any]]:
    caller = HttpCaller(url)
    for q in questions[:10]:  # warm both pools and the API
        ask(caller, f"{q} (warm)", use_cache=False)
    out = []
    for q in questions[10:]:
        t0 = time.time()
        status, body = ask(caller, q, use_cache=False)
        t1 = time.time()
        if status == 200:
            out.append({"sent": t0, "answered": t1, "record": json.loads(body)})
        time.sleep(0.1)  # let every process go idle, as a lone query finds them
    return out


def read_events(directory: Path) -> dict[int, list[dict[str, Any]]]:
    events: dict[int, list[dict[str, Any]]] = {}
    for f in directory.glob("tl-*.jsonl"):
        pid = int(f.stem.split("-")[1])
        events[pid] = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
    return events


def roles(fleet: BenchFleet, events: dict[int, list[dict[str, Any]]]) -> dict[int, str]:
    named = {fleet.pids["retrieval"]: "retrieval-parent", fleet.pids["generation"]: "generation"}
    out = {}
    for pid, evs in events.items():
        if pid in named:
            out[pid] = named[pid]
        elif any(e["ev"] == "http_request" for e in evs):
            out[pid] = "api"
        else:
            out[pid] = "retrieval-child"
    return out


def timeline(
    answers: list[dict[str, Any]], events: dict[int, list[dict[str, Any]]], role_of: dict[int, str]
) -> list[list[tuple[float, str]]]:
    flat = sorted((e["t"], f"{role_of[pid]}:{e['ev']}") for pid, evs in events.items() for e in evs)
    per_query = []
    for a in answers:
        rec, t0, t1 = a["record"], a["sent"], a["answered"]
        r, g = rec["stages"]["retrieval"], rec["stages"]["generation"]
        points = [
            (t0, "client:sent"),
            (rec["created_at"], "record:created"),
            (r["started_at"], "record:retrieval started"),
            (r["started_at"] + r["ms"] / 1000, "record:retrieval ended"),
            (g["started_at"], "record:generation started"),
            (rec["updated_at"], "record:finished"),
            (t1, "client:answered"),
        ]
        points += [(t, name) for t, name in flat if t0 <= t <= t1]
        points.sort()
        seen: collections.Counter[str] = collections.Counter()
        labelled = []
        for t, name in points:
            seen[name] += 1
            labelled.append((t - t0, name if seen[name] == 1 else f"{name} #{seen[name]}"))
        per_query.append(labelled)
    return per_query


def _owner(name: str) -> str:
    """The process a step belongs to (the record's stamps are taken by the stage's own process)."""
    role = name.split(":", 1)[0]
    if role == "record":
        if "retrieval" in name:
            return "retrieval-child"
        if "generation" in name or "finished" in name:
            return "generation"
        return "api"
    return role


def gaps(per_query: list[list[tuple[float, str]]], *, within: bool) -> list[dict[str, Any]]:
    """Median gaps between consecutive steps seen in >= 80 % of the queries: across all processes
    (`within=False`: who waits for whom), or between the steps of one process (`within=True`: what
    each process spends between its own steps, whatever the others do meanwhile)."""
    found: dict[tuple[str, str], list[tuple[float, float]]] = collections.defaultdict(list)
    for points in per_query:
        if within:
            by_owner: dict[str, list[tuple[float, str]]] = collections.defaultdict(list)
            for t, name in points:
                by_owner[_owner(name)].append((t, name))
            sequences = list(by_owner.values())
        else:
            sequences = [points]
        for seq in sequences:
            for (ta, a), (tb, b) in itertools.pairwise(seq):
                found[(a, b)].append((tb, (tb - ta) * 1000))
    rows = []
    for (a, b), values in found.items():
        if len(values) >= 0.8 * len(per_query):
            rows.append(
                {
                    "from": a,
                    "to": b,
                    "at_ms": statistics.median(v[0] for v in values) * 1000,
                    "gap_ms": statistics.median(v[1] for v in values),
                    "n": len(values),
                }
            )
    return sorted(rows, key=lambda row: row["at_ms"])


def print_table(title: str, rows: list[dict[str, Any]]) -> None:
    print(f"\n{title}")
    print("| at (ms after the client sent) | from | to | gap ms |")
    print("| --- | --- | --- | --- |")
    for row in rows:
        print(f"| {row['at_ms']:.2f} | {row['from']} | {row['to']} | {row['gap_ms']:.3f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--a", type=Path, default=STATE, help="state file of a fleet with an index")
    ap.add_argument("--data", type=Path, default=Path("../shared/data/scifact"))
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--port", type=int, default=8779)
    args = ap.parse_args()

    from ragfleet.evaluation import load_dataset

    a = BenchFleet.load(args.a)
    prefix = f"rfhop-{uuid.uuid4().hex[:6]}"
    data_dir = Path("/tmp/ragfleet-bench") / prefix
    stamps = data_dir / "timeline"
    stamps.mkdir(parents=True)
    share_index(a, prefix, data_dir)
    fleet = BenchFleet.create(
        prefix=prefix,
        data_dir=data_dir,
        redis_url=a.redis_url,
        extra_env={"RAGFLEET_HOP_TIMELINE_DIR": str(stamps), "PYTHONPATH": str(PROBE)},
    )
    fleet.state = data_dir / "fleet.json"
    nonce = uuid.uuid4().hex[:8]
    questions = [f"{q} [{nonce}]" for q in load_dataset(args.data).queries.values()][: args.n + 10]
    try:
        fleet.start("retrieval", "generation")
        url = fleet.start_api(args.port, env={"RAGFLEET_RATE_LIMIT": "1000000/minute"})
        answers = run_queries(url, questions)
        time.sleep(0.5)
        events = read_events(stamps)
        role_of = roles(fleet, events)
    finally:
        fleet.stop()
        fleet.cleanup()
    per_query = timeline(answers, events, role_of)
    across, within = gaps(per_query, within=False), gaps(per_query, within=True)
    print(f"{len(answers)} sequential queries; median gaps between consecutive steps seen in >= 80 % of them")
    print_table("across processes (who waits for whom):", across)
    print_table("within each process (its own steps):", within)
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"hop-timeline-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"queries": len(answers), "across": across, "within": within}, indent=1))
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
