"""What tracing costs a query: a paired A/B (bench/bench_ab.py) of two fleets on one index, A with
tracing off (no OTEL_* variable), B exporting every span over OTLP/HTTP to a real receiver here.

    python bench/bench_tracing.py --n 200 --docs 500

Steps: fleet A (retrieval, generation, indexing) starts and ingests the first `--docs` SciFact
abstracts; fleet B (retrieval, generation) starts on A's index with `OTEL_TRACES_EXPORTER=otlp`,
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` pointing at an OTLP/HTTP receiver in this process
(tests/otlp_receiver.py, which decodes every span: the exporter does all of its real work), and B's API
gets the same variables.
bench_ab then sends each question through both APIs back to back (`use_cache` off) and prints the median
of the paired differences (B - A) with its 95 % interval. Both fleets are stopped and cleaned up at the
end. "Off costs nothing": with no OTEL_* variable every tracing helper returns after one boolean test
(ragfleet/tracing.py); A is that fleet.
"""

from __future__ import annotations

import argparse
import itertools
import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.otlp_receiver import OtlpReceiver  # noqa: E402


def run(*args: str, env: dict[str, str] | None = None) -> None:
    print("$", " ".join(args), file=sys.stderr, flush=True)
    subprocess.run([sys.executable, *args], cwd=ROOT, env={**os.environ, **(env or {})}, check=True)


def fleet_env(state: Path) -> dict[str, str]:
    out = subprocess.run(
        [sys.executable, "bench/run_fleet.py", "--state", str(state), "env"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return dict(line.removeprefix("export ").split("=", 1) for line in out.splitlines() if "=" in line)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200, help="paired questions")
    ap.add_argument("--warm", type=int, default=30)
    ap.add_argument("--docs", type=int, default=500, help="SciFact abstracts to index")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "scifact")
    ap.add_argument("--port", type=int, default=0, help="the OTLP receiver's port (0: any free one)")
    args = ap.parse_args()
    if not (args.data / "corpus.jsonl").exists():
        args.data = Path("/work/shared/data/scifact")
    receiver = OtlpReceiver(args.port).start()
    tmp = Path(tempfile.mkdtemp(prefix="bench-tracing-"))
    tag = uuid.uuid4().hex[:6]
    a_state, b_state = tmp / "a.json", tmp / "b.json"
    otel = [
        "OTEL_TRACES_EXPORTER=otlp",
        f"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT={receiver.endpoint}",
    ]
    try:
        run(
            "bench/run_fleet.py",
            "--state",
            str(a_state),
            "start",
            "--prefix",
            f"tra-{tag}",
            "--data-dir",
            str(tmp / "a"),
        )
        corpus = tmp / "corpus.jsonl"
        with (args.data / "corpus.jsonl").open() as src, corpus.open("w") as dst:
            dst.writelines(itertools.islice(src, args.docs))
        run("-m", "ragfleet.cli", "ingest", str(corpus), env=fleet_env(a_state))
        run("bench/bench_ab.py", "--a", str(a_state), "--share-index", f"trb-{tag}:{tmp / 'b'}")
        run(
            "bench/run_fleet.py",
            "--state",
            str(b_state),
            "start",
            "--prefix",
            f"trb-{tag}",
            "--data-dir",
            str(tmp / "b"),
            "--pools",
            "retrieval,generation",
            *itertools.chain(*(("--env", e) for e in otel)),
        )
        run(
            "bench/bench_ab.py",
            "--a",
            str(a_state),
            "--b",
            str(b_state),
            "--n",
            str(args.n),
            "--warm",
            str(args.warm),
            "--data",
            str(args.data),
        )
        names = sorted({(s.service, s.name) for s in receiver.snapshot()})
        print(f"B exported {len(receiver.snapshot())} spans in {receiver.requests} OTLP requests: {names}")
    finally:
        for state in (b_state, a_state):
            if state.exists():
                subprocess.run(
                    [sys.executable, "bench/run_fleet.py", "--state", str(state), "stop", "--cleanup"],
                    cwd=ROOT,
                )
        receiver.stop()


if __name__ == "__main__":
    main()
