"""Start and stop a local fleet for benchmarks: its own Redis key prefix, data dir and workers.

    python bench/run_fleet.py start [--prefix P] [--data-dir D] [--pools retrieval,generation,indexing]
    eval "$(python bench/run_fleet.py env)"   # point `ragfleet ingest/eval` at it
    python bench/run_fleet.py stop
    python bench/run_fleet.py --state /tmp/b.json start --prefix b ...   # a second fleet beside it

or, from a benchmark, `with BenchFleet.create(...) as fleet: ...`.

Each pool is a real `celery -A workers.app worker` subprocess consuming only its own queue, started
as the Procfile does (same pool kinds and concurrency), with the isolated Settings passed through
RAGFLEET_* variables. The fleet shares the machine's Redis with everything else, so isolation is
by prefix (job records, cache, locks) and kombu `global_keyprefix` (queues); `cleanup()` deletes
only keys under this fleet's prefix. A state file in the data dir lets `stop` find the workers
of a fleet started by another command.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import redis

from ragfleet.settings import Settings

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
STATE = Path("/tmp/ragfleet-bench/fleet.json")

# queue, pool kind, concurrency: as in the Procfile ("supervised": solo nodes under supervisord,
# infra/supervisor/retrieval.conf, concurrency = how many nodes)
POOLS: dict[str, tuple[str, str, int]] = {
    "retrieval": ("retrieval", "supervised", 2),
    "generation": ("generation", "threads", 8),
    "indexing": ("indexing", "prefork", 1),
    "maintenance": ("maintenance", "solo", 1),
    "callbacks": ("callbacks", "threads", 8),
}


@dataclass
class BenchFleet:
    prefix: str
    data_dir: Path
    redis_url: str = "redis://127.0.0.1:6379/0"
    extra_env: dict[str, str] = field(default_factory=dict)
    pids: dict[str, int] = field(default_factory=dict)
    nodes: dict[str, str] = field(default_factory=dict)
    # the checkout whose code the processes run: a second fleet started from another worktree's
    # `bench/run_fleet.py` runs that code (an A/B of two versions, bench/bench_ab.py)
    repo: Path = REPO
    state: Path = STATE

    @classmethod
    def create(
        cls,
        *,
        prefix: str | None = None,
        data_dir: Path | None = None,
        redis_url: str | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> BenchFleet:
        p = prefix or f"rfbench-{uuid.uuid4().hex[:8]}"
        return cls(
            prefix=p,
            data_dir=data_dir or Path("/tmp/ragfleet-bench") / p,
            redis_url=redis_url or os.environ.get("RAGFLEET_REDIS_URL", "redis://127.0.0.1:6379/0"),
            extra_env=dict(extra_env or {}),
        )

    # -- what a process needs to talk to this fleet ---------------------------------------------
    def settings_env(self) -> dict[str, str]:
        return {
            "RAGFLEET_REDIS_URL": self.redis_url,
            "RAGFLEET_KEY_PREFIX": self.prefix,
            "RAGFLEET_BROKER_KEY_PREFIX": f"{self.prefix}:q:",
            "RAGFLEET_DATA_DIR": str(self.data_dir),
            "RAGFLEET_FEEDBACK_DB_URL": f"sqlite:///{self.data_dir / 'feedback.db'}",
            **{k: v for k, v in self.extra_env.items() if k.startswith("RAGFLEET_")},
        }

    def settings(self) -> Settings:
        """A Settings for this fleet, for in-process clients of the benchmark."""
        env = self.settings_env()
        return Settings.model_validate({k.removeprefix("RAGFLEET_").lower(): v for k, v in env.items()})

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAGFLEET_")}
        env.update(self.settings_env())
        env.update(self.extra_env)
        # the checkout's code, after any directory the caller puts first (bench/hop_timeline.py's probe)
        first = self.extra_env.get("PYTHONPATH")
        env["PYTHONPATH"] = os.pathsep.join([first, str(self.repo)] if first else [str(self.repo)])
        env.setdefault("HF_HUB_OFFLINE", "1")
        env["OPENBLAS_NUM_THREADS"] = "1"
        env["TOKENIZERS_PARALLELISM"] = "false"
        env["PYTHONUNBUFFERED"] = "1"
        return env

    # -- lifecycle -------------------------------------------------------------------------------
    def start(
        self,
        *pools: str,
        concurrency: dict[str, int] | None = None,
        pool_env: dict[str, dict[str, str]] | None = None,
        timeout: float = 180.0,
    ) -> BenchFleet:
        """`pool_env` overrides variables per pool, e.g. {"indexing": {"RAGFLEET_TORCH_THREADS": "2"}}."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        for pool in pools:
            env = {**self._env(), **(pool_env or {}).get(pool, {})}
            queue, kind, conc = POOLS[pool]
            conc = (concurrency or {}).get(pool, conc)
            node = f"{pool}-{uuid.uuid4().hex[:6]}@bench"
            log = (self.data_dir / f"{pool}.log").open("ab")
            if kind == "supervised":
                pidfile = self.data_dir / f"{pool}-supervisord.pid"
                cmd, names = supervised_command(self.repo, env, conc, pidfile)
            else:
                names = [node]
                cmd = [
                    sys.executable, "-m", "celery", "-A", "workers.app", "worker", "-Q", queue, "-n", node,
                    "--pool", kind, "-c", str(conc), "-l", "WARNING", "--without-mingle", "--without-gossip",
                ]  # fmt: skip
            if kind == "prefork":
                cmd += ["-O", "fair"]
            proc = subprocess.Popen(
                cmd, cwd=self.repo, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
            self.pids[pool] = proc.pid
            for i, name in enumerate(names):
                self.nodes[pool if i == 0 else f"{pool}#{i}"] = name
        self._save()
        self.wait_ready(timeout)
        return self

    def start_api(self, port: int = 8765, *, workers: int = 2, env: dict[str, str] | None = None) -> str:
        """The HTTP API in front of this fleet, as the Procfile runs it (`api_shim.serve`, `workers`
        processes); returns its base URL once /healthz answers."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = (self.data_dir / "api.log").open("ab")
        cmd = [
            sys.executable, "-m", "api_shim.serve", "--host", "127.0.0.1", "--port", str(port),
            "--workers", str(workers), "--log-level", "warning",
        ]  # fmt: skip
        proc = subprocess.Popen(
            cmd, cwd=self.repo, env={**self._env(), **(env or {})}, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        self.pids["api"] = proc.pid
        self._save()
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    return url
            if not _alive(proc.pid):
                raise RuntimeError((self.data_dir / "api.log").read_text(errors="replace")[-3000:])
            time.sleep(0.2)
        raise TimeoutError(f"API on {url} not up after 60 s")

    def wait_ready(self, timeout: float = 180.0) -> None:
        r = redis.Redis.from_url(self.redis_url, decode_responses=True)
        deadline = time.monotonic() + timeout
        waiting = dict(self.nodes)
        while waiting and time.monotonic() < deadline:
            for label, node in list(waiting.items()):
                pool = label.split("#")[0]
                if r.get(f"{self.prefix}:warm:{node}"):
                    del waiting[label]
                elif not _alive(self.pids[pool]):
                    log = (self.data_dir / f"{pool}.log").read_text(errors="replace")[-3000:]
                    raise RuntimeError(f"{pool} worker exited:\n{log}")
            time.sleep(0.2)
        if waiting:
            raise TimeoutError(f"pools not ready after {timeout} s: {sorted(waiting)}")

    def stop(self) -> None:
        for pid in self.pids.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(_alive(p) for p in self.pids.values()):
            time.sleep(0.2)
        for pid in self.pids.values():
            if _alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
        self.pids.clear()

    def cleanup(self, *, remove_data: bool = True) -> None:
        """Delete this fleet's Redis keys (and its data dir): never anything outside the prefix."""
        r = redis.Redis.from_url(self.redis_url)
        for pattern in (f"{self.prefix}:*", f"{self.prefix}*"):
            for key in r.scan_iter(pattern, count=1000):
                r.delete(key)
        if remove_data and self.data_dir.exists():
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> BenchFleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- state file for the CLI ------------------------------------------------------------------
    def _save(self) -> None:
        self.state.parent.mkdir(parents=True, exist_ok=True)
        self.state.write_text(
            json.dumps(
                {
                    "prefix": self.prefix,
                    "data_dir": str(self.data_dir),
                    "redis_url": self.redis_url,
                    "extra_env": self.extra_env,
                    "pids": self.pids,
                    "nodes": self.nodes,
                    "repo": str(self.repo),
                }
            )
        )

    @classmethod
    def load(cls, state: Path = STATE) -> BenchFleet:
        d = json.loads(state.read_text())
        repo = Path(d.get("repo") or REPO)
        pids, nodes = d["pids"], d["nodes"]
        return cls(d["prefix"], Path(d["data_dir"]), d["redis_url"], d["extra_env"], pids, nodes, repo, state)


def supervised_command(
    repo: Path, env: dict[str, str], nodes: int, pidfile: Path
) -> tuple[list[str], list[str]]:
    """The Procfile's retrieval line: supervisord running `nodes` solo nodes (infra/supervisor/
    retrieval.conf, which names them retrieval<n>@<host>). Fills `env` with what that file reads."""
    env["RAGFLEET_RETRIEVAL_NODES"] = str(nodes)
    env["RAGFLEET_SUPERVISOR_PIDFILE"] = str(pidfile)
    # the nodes' `celery` is this interpreter's
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    conf = repo / "infra" / "supervisor" / "retrieval.conf"
    cmd = [sys.executable, "-m", "supervisor.supervisord", "-c", str(conf)]
    return cmd, [f"retrieval{i}@{platform.node()}" for i in range(nodes)]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie child of this process still answers kill(0)
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            return False
    return True


@contextlib.contextmanager
def bench_fleet(*pools: str, keep_data: bool = False, **kwargs: object) -> Iterator[BenchFleet]:
    fleet = BenchFleet.create(**kwargs)  # type: ignore[arg-type]
    try:
        fleet.start(*pools)
        yield fleet
    finally:
        fleet.stop()
        fleet.cleanup(remove_data=not keep_data)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--state", type=Path, default=STATE, help=f"this fleet's state file (default {STATE})")
    sub = ap.add_subparsers(dest="cmd", required=True)
    st = sub.add_parser("start", help="start workers and wait until they are warm")
    st.add_argument("--prefix")
    st.add_argument("--data-dir", type=Path)
    st.add_argument("--pools", default="retrieval,generation,indexing")
    st.add_argument("--env", action="append", default=[], help="extra KEY=VALUE for the workers")
    sub.add_parser("env", help="print `export` lines for this fleet's settings")
    sp = sub.add_parser("stop", help="stop the workers started by `start`")
    sp.add_argument("--cleanup", action="store_true", help="also delete its Redis keys and data dir")
    args = ap.parse_args()
    if args.cmd == "start":
        extra = dict(kv.split("=", 1) for kv in args.env)
        fleet = BenchFleet.create(prefix=args.prefix, data_dir=args.data_dir, extra_env=extra)
        fleet.state = args.state
        t0 = time.perf_counter()
        fleet.start(*[p.strip() for p in args.pools.split(",") if p.strip()])
        print(
            f"fleet {fleet.prefix} ready in {time.perf_counter() - t0:.1f} s; pids {fleet.pids}",
            file=sys.stderr,
        )
    elif args.cmd == "env":
        for k, v in BenchFleet.load(args.state).settings_env().items():
            print(f"export {k}={v}")
    else:
        fleet = BenchFleet.load(args.state)
        fleet.stop()
        if args.cleanup:
            fleet.cleanup()
        args.state.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
