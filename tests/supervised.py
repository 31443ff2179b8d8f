"""README command 1's fleet for tests: supervisord with the generated infra/supervisor/fleet.conf,
started as scripts/demo.sh starts it (daemonized), on a test's own Settings, fleet dir, API port
and metrics ports, and stopped by scripts/stop.sh.

Not a fleet the tests assemble: every process, command line and restart policy is the committed
configuration's; only the environment differs (what `scripts/fleet_env.sh` would default).
"""

from __future__ import annotations

import os
import platform
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import redis

from ragfleet.fleet_status import ProcessStatus, fleet_status
from ragfleet.settings import Settings
from tests.conftest import PYTHON, REPO, free_port, settings_env
from workers.roles import WORKER_ROLES

CONF = REPO / "infra" / "supervisor" / "fleet.conf"
HOST = platform.node()


def _free_metrics_shift() -> int:
    """A shift that puts every role's metrics ports (retrieval's node ports too) on free ports."""
    ports = [r.metrics_port + n for r in WORKER_ROLES for n in range(r.concurrency if r.supervised else 1)]
    for shift in range(20_000 + os.getpid() % 1_000 * 20, 40_000, 997):
        socks = []
        try:
            for p in ports:
                s = socket.socket()
                s.bind(("127.0.0.1", p + shift))
                socks.append(s)
            return shift
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free metrics ports")


def proc_alive(pid: int) -> bool:
    """Alive and not a zombie (a dead child whose new parent has not reaped it yet)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [int(x) for x in out.stdout.split()]


class SupervisedFleet:
    def __init__(self, settings: Settings, fleet_dir: Path, retrieval_nodes: int = 2) -> None:
        self.settings = settings
        self.fleet_dir = fleet_dir
        self.api_port = free_port()
        self.api_url = f"http://127.0.0.1:{self.api_port}"
        self.retrieval_nodes = retrieval_nodes
        self.redis = redis.Redis.from_url(settings.redis_url, decode_responses=True)
        self.env = {
            **settings_env(settings),
            "RAGFLEET_FLEET_DIR": str(fleet_dir),
            "RAGFLEET_API_PORT": str(self.api_port),
            "RAGFLEET_API_URL": self.api_url,
            "RAGFLEET_RETRIEVAL_NODES": str(retrieval_nodes),
            "RAGFLEET_METRICS_PORT_SHIFT": str(_free_metrics_shift()),
            "PATH": os.pathsep.join([str(Path(PYTHON).parent), os.environ.get("PATH", "")]),
        }
        self.session = 0

    # --- what scripts/demo.sh and scripts/stop.sh do -------------------------------------------

    def start(self) -> SupervisedFleet:
        (self.fleet_dir / "log").mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [PYTHON, "-m", "supervisor.supervisord", "-c", str(CONF)], cwd=REPO, env=self.env, check=True
        )  # daemonizes: returns once supervisord has forked into its own session
        self.session = int(self.wait(lambda: self._pidfile(), 10, "supervisord pid file"))
        return self

    def _pidfile(self) -> str | None:
        path = self.fleet_dir / "supervisord.pid"
        return path.read_text().strip() or None if path.exists() else None

    def stop(self) -> subprocess.CompletedProcess[str]:
        """scripts/stop.sh on this fleet's environment: exit 1 if it left a process behind."""
        return subprocess.run(
            ["bash", "scripts/stop.sh"], cwd=REPO, env={**self.env, "PYTHON": PYTHON},
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip

    def session_pids(self) -> list[int]:
        """Every process of supervisord's session (supervisord, the programs and their children)."""
        out = subprocess.run(["pgrep", "-s", str(self.session)], capture_output=True, text=True)
        return [int(x) for x in out.stdout.split()]

    def kill_everything(self) -> None:
        """Teardown of last resort: what stop.sh would have left."""
        for pid in self.session_pids() if self.session else []:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    # --- probes ------------------------------------------------------------------------------------

    @staticmethod
    def wait(probe: Any, timeout: float, what: str, interval: float = 0.1) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = probe()
            if got:
                return got
            time.sleep(interval)
        raise TimeoutError(f"{what}: not within {timeout} s")

    def status(self) -> dict[str, ProcessStatus]:
        return {p.name: p for p in fleet_status(self.fleet_dir)}

    def pid(self, name: str) -> int:
        return self.status()[name].pid

    def node(self, name: str) -> str:
        return f"{name}@{HOST}"

    def warm(self, node: str) -> bool:
        return bool(self.redis.get(self.settings.key("warm", node)))

    def api_up(self) -> bool:
        try:
            return httpx.get(f"{self.api_url}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def beat_lock(self) -> str | None:
        """The RedBeat lock's owner token (workers/app.py: the lock key is `<prefix>:redbeat::lock`)."""
        value = self.redis.get(self.settings.key("redbeat") + "::lock")
        return str(value) if value is not None else None

    def log(self, name: str) -> str:
        path = self.fleet_dir / "log" / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""
