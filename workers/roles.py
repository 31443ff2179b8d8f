"""Each process of the fleet declared once: what a worker role consumes and how it runs.

The Procfile is rendered from here (`python -m workers.roles > Procfile`) and a test holds the
Procfile and infra/supervisor/*.conf to it (tests/unit/test_roles.py); the container image runs a
role by name (`python -m workers.roles --command ROLE`), and infra/k8s and infra/systemd are
rendered from here (`python -m workers.manifests`); the worker hooks read the warm-up and
interactive queue sets from here. A new pool (parsing, callbacks) is one `WorkerRole`
here plus its `Queue`, `TaskName`s and `TaskSpec`s in ragfleet/names.py, and its task module
`tasks/<queue>.py` (workers.app imports one module per queue).
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass
from enum import StrEnum

from ragfleet.names import Queue


class Pool(StrEnum):
    PREFORK = "prefork"
    THREADS = "threads"
    SOLO = "solo"


class TimeLimitMode(StrEnum):
    """Who stops a task past its limits (workers/time_limits.py)."""

    CELERY = "celery"  # prefork: the parent signals a child at the soft limit, kills it at the hard one
    WATCHDOG = "watchdog"  # threads, solo: a watchdog fails the job at the hard limit; the call runs on
    WATCHDOG_EXIT = "watchdog-exit"  # a supervised solo node also exits; its supervisor restarts it


class WarmUp(StrEnum):
    """What a node loads before it reports warm (the `<prefix>:warm:<node>` marker tests wait for)."""

    MODEL = "model"  # Redis clients, the store and the embedding model
    CLIENTS = "clients"  # Redis clients and the store only: this pool never embeds


def time_limit_mode(pool: str, *, exit_on_hard_limit: bool) -> TimeLimitMode:
    """The mode a running node is in: from the pool it was started with (`--pool`), since a test or
    an operator may start any role's queues on another pool."""
    if "prefork" in pool.lower():
        return TimeLimitMode.CELERY
    if "solo" in pool.lower() and exit_on_hard_limit:
        return TimeLimitMode.WATCHDOG_EXIT
    return TimeLimitMode.WATCHDOG


@dataclass(frozen=True, slots=True)
class WorkerRole:
    """A Celery worker role. `supervised`: `concurrency` solo nodes under supervisord
    (infra/supervisor/<name>.conf), node n named `<name><n>@host` and serving metrics on
    `metrics_port + n`; otherwise one node `<name>@host` with `concurrency` pool slots.
    `interactive`: it serves queries, on broker options of its own (a short visibility timeout:
    workers/hooks/interactive.py)."""

    name: str
    queues: tuple[Queue, ...]
    pool: Pool
    concurrency: int
    warm_up: WarmUp
    time_limits: TimeLimitMode
    metrics_port: int
    interactive: bool = False
    supervised: bool = False
    options: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        pool_runs = "solo" if self.supervised else self.pool.value
        expected = time_limit_mode(pool_runs, exit_on_hard_limit=self.supervised)
        if self.time_limits is not expected:
            raise ValueError(f"role {self.name}: a {pool_runs} pool runs time limits as {expected}")
        if self.supervised and self.pool is not Pool.SOLO:
            raise ValueError(f"role {self.name}: supervised nodes are solo nodes")

    def worker_argv(self, node: str | None = None) -> list[str]:
        """`celery worker` for one node of this role (`node`: its `-n`, `<name>@%h` by default)."""
        argv = ["celery", "-A", "workers.app", "worker", "-Q", ",".join(q.value for q in self.queues)]
        argv += ["-n", node or f"{self.name}@%h", "--pool", self.pool.value]
        if not self.supervised and self.pool is not Pool.SOLO:
            argv += ["-c", str(self.concurrency)]
        return [*argv, *self.options, "--without-mingle", "--without-gossip"]

    @property
    def env(self) -> dict[str, str]:
        """What each node's environment must set beyond the deployment's RAGFLEET_* settings."""
        if self.time_limits is TimeLimitMode.WATCHDOG_EXIT:
            return {"RAGFLEET_EXIT_ON_HARD_TIME_LIMIT": "true"}  # read by workers/hooks/time_limits.py
        return {}

    @property
    def nodes_env(self) -> str:
        return f"RAGFLEET_{self.name.upper()}_NODES"

    def procfile_command(self) -> str:
        if self.supervised:
            pidfile = f"${{RAGFLEET_SUPERVISOR_PIDFILE:-$PWD/var/{self.name}-supervisord.pid}}"
            return " ".join(
                [
                    f"{self.nodes_env}=${{{self.nodes_env}:-{self.concurrency}}}",
                    f"RAGFLEET_METRICS_PORT={self.metrics_port}",
                    f"RAGFLEET_SUPERVISOR_PIDFILE={pidfile}",
                    f"supervisord -c infra/supervisor/{self.name}.conf",
                ]
            )
        return f"RAGFLEET_METRICS_PORT={self.metrics_port} {shlex.join(self.worker_argv())}"


@dataclass(frozen=True, slots=True)
class ProcessRole:
    """A process of the fleet that is no Celery worker (the API, beat, Flower)."""

    name: str
    command: str

    def procfile_command(self) -> str:
        return self.command


WORKER_ROLES: tuple[WorkerRole, ...] = (
    # supervised solo nodes, one per core, not one prefork node: the prefork parent's hand-over to a
    # child cost 0.5-1.2 ms a query; a dead node is restarted under its name and requeues what it held
    WorkerRole(
        "retrieval",
        (Queue.RETRIEVAL,),
        Pool.SOLO,
        concurrency=2,
        warm_up=WarmUp.MODEL,
        time_limits=TimeLimitMode.WATCHDOG_EXIT,
        metrics_port=9110,
        interactive=True,
        supervised=True,
    ),
    # threads: its tasks wait on an LLM (I/O); the extractive answer is ~1 ms of CPU
    WorkerRole(
        "generation",
        (Queue.GENERATION,),
        Pool.THREADS,
        concurrency=8,
        warm_up=WarmUp.CLIENTS,
        time_limits=TimeLimitMode.WATCHDOG,
        metrics_port=9102,
        interactive=True,
    ),
    # prefork: embedding is CPU-bound and holds the GIL; -O fair: a long batch never holds back a short one
    WorkerRole(
        "indexing",
        (Queue.INDEXING,),
        Pool.PREFORK,
        concurrency=1,
        warm_up=WarmUp.MODEL,
        time_limits=TimeLimitMode.CELERY,
        metrics_port=9103,
        options=("-O", "fair"),
    ),
    WorkerRole(
        "feedback",
        (Queue.FEEDBACK,),
        Pool.THREADS,
        concurrency=2,
        warm_up=WarmUp.CLIENTS,
        time_limits=TimeLimitMode.WATCHDOG,
        metrics_port=9104,
    ),
    # threads: a delivery waits on a receiver and on backoff delays (I/O), never on the CPU
    WorkerRole(
        "callbacks",
        (Queue.CALLBACKS,),
        Pool.THREADS,
        concurrency=8,
        warm_up=WarmUp.CLIENTS,
        time_limits=TimeLimitMode.WATCHDOG,
        metrics_port=9106,
    ),
    # solo: one reindex at a time (it also takes a fleet-wide lock)
    WorkerRole(
        "maintenance",
        (Queue.MAINTENANCE,),
        Pool.SOLO,
        concurrency=1,
        warm_up=WarmUp.MODEL,
        time_limits=TimeLimitMode.WATCHDOG,
        metrics_port=9105,
    ),
)

PROCESS_ROLES: tuple[ProcessRole, ...] = (
    # its tick interval and lock timeout are Settings (RAGFLEET_BEAT_MAX_INTERVAL_S, _LOCK_TIMEOUT_S)
    ProcessRole("beat", "celery -A workers.app beat -S redbeat.RedBeatScheduler"),
    ProcessRole("flower", "python -m workers.flower"),
)


def api_argv(host: str, port: str) -> list[str]:
    return ["python", "-m", "api_shim.serve", "--host", host, "--port", port, "--workers", "2"]


API_ROLE = ProcessRole("api", " ".join(api_argv("127.0.0.1", "${RAGFLEET_API_PORT:-8000}")))
API_PORT = 8000  # in a container or a unit; the Procfile's is RAGFLEET_API_PORT

ROLES: dict[str, WorkerRole] = {r.name: r for r in WORKER_ROLES}

# queues whose nodes load the embedding model / run on the interactive broker options
MODEL_QUEUES: frozenset[str] = frozenset(
    q.value for r in WORKER_ROLES if r.warm_up is WarmUp.MODEL for q in r.queues
)
INTERACTIVE_QUEUES: frozenset[str] = frozenset(
    q.value for r in WORKER_ROLES if r.interactive for q in r.queues
)


def procfile() -> str:
    """The Procfile: the API, the worker roles, beat, Flower."""
    roles: list[WorkerRole | ProcessRole] = [API_ROLE, *WORKER_ROLES, *PROCESS_ROLES]
    return "".join(f"{r.name}: {r.procfile_command()}\n" for r in roles)


def process_env(name: str) -> dict[str, str]:
    """What one process of role `name` needs in its environment beyond the deployment's RAGFLEET_*
    settings, where a process manager (kubelet, systemd) runs it: a worker's metrics port and its
    role's variables."""
    if name in ROLES:
        return {"RAGFLEET_METRICS_PORT": str(ROLES[name].metrics_port), **ROLES[name].env}
    return {}


def process_argv(name: str, *, api_host: str = "0.0.0.0") -> list[str]:
    """The command line of one process of role `name` under a process manager that restarts it
    (infra/docker/entrypoint.sh, infra/k8s, infra/systemd). The manager is the supervisor: a
    supervised role runs one solo node per process (per pod, per unit instance), not supervisord,
    and its deployment's replica count is the role's node count. KeyError: no such role."""
    if name in ROLES:
        return ROLES[name].worker_argv()
    if name == API_ROLE.name:
        return api_argv(api_host, str(API_PORT))
    others = {r.name: r for r in PROCESS_ROLES}
    return shlex.split(others[name].command)


def process_command(name: str) -> str:
    """`process_argv` with `process_env` in front (`env K=V ...`), quoted for a POSIX shell."""
    env = [f"{k}={v}" for k, v in process_env(name).items()]
    return shlex.join([*(["env", *env] if env else []), *process_argv(name)])


def main(argv: list[str] | None = None) -> None:
    """No arguments: print the Procfile. `--supervisord`: print the local fleet's supervisord
    configuration (infra/supervisor/fleet.conf). `--command ROLE`: print the command line of one
    process of ROLE (what the container image's entrypoint runs)."""
    args = sys.argv[1:] if argv is None else argv
    if not args:
        sys.stdout.write(procfile())
        return
    if args == ["--supervisord"]:
        from workers.supervisord import fleet_conf  # it imports this module

        sys.stdout.write(fleet_conf())
        return
    if len(args) != 2 or args[0] != "--command":
        sys.exit("usage: python -m workers.roles [--supervisord | --command ROLE]")
    try:
        sys.stdout.write(process_command(args[1]) + "\n")
    except KeyError:
        names = [API_ROLE.name, *ROLES, *(r.name for r in PROCESS_ROLES)]
        sys.exit(f"unknown role {args[1]!r}; one of: {', '.join(names)}")


if __name__ == "__main__":
    main()
