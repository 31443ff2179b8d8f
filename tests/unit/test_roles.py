"""The Procfile and infra/supervisor/*.conf run what workers/roles.py declares: the same command
lines, queues, pools, concurrency, metrics ports and time-limit mode."""

from __future__ import annotations

import configparser
import shlex

import pytest

from ragfleet.names import Queue
from tests.conftest import REPO
from tests.fleet import POOLS
from workers import roles
from workers.roles import Pool, TimeLimitMode, WarmUp, WorkerRole


def _procfile() -> dict[str, str]:
    lines = (REPO / "Procfile").read_text().splitlines()
    return dict(line.split(": ", 1) for line in lines if line.strip())


def test_the_procfile_is_rendered_from_the_roles() -> None:
    assert (REPO / "Procfile").read_text() == roles.procfile(), "run: python -m workers.roles > Procfile"


@pytest.mark.parametrize("role", [r for r in roles.WORKER_ROLES if not r.supervised], ids=lambda r: r.name)
def test_a_procfile_worker_line_runs_its_role(role: WorkerRole) -> None:
    argv = shlex.split(_procfile()[role.name])
    assert argv[0] == f"RAGFLEET_METRICS_PORT={role.metrics_port}"
    assert argv[1:] == role.worker_argv()
    assert argv[argv.index("-Q") + 1].split(",") == [q.value for q in role.queues]
    assert argv[argv.index("--pool") + 1] == role.pool.value
    if role.pool is not Pool.SOLO:
        assert argv[argv.index("-c") + 1] == str(role.concurrency)


@pytest.mark.parametrize("role", [r for r in roles.WORKER_ROLES if r.supervised], ids=lambda r: r.name)
def test_a_supervised_role_runs_its_solo_nodes_as_declared(role: WorkerRole) -> None:
    line = _procfile()[role.name]
    assert f"{role.nodes_env}=${{{role.nodes_env}:-{role.concurrency}}}" in line
    assert f"RAGFLEET_METRICS_PORT={role.metrics_port}" in line
    conf_path = REPO / "infra" / "supervisor" / f"{role.name}.conf"
    assert line.endswith(f"supervisord -c {conf_path.relative_to(REPO)}")

    conf = configparser.ConfigParser(interpolation=None)
    conf.read(conf_path)
    program = conf[f"program:{role.name}"]
    node = f"{role.name}%(process_num)d@%(host_node_name)s"
    assert program["command"] == shlex.join(role.worker_argv(node)).replace("'", "")
    assert program["numprocs"] == f"%(ENV_{role.nodes_env})s"
    env = dict(item.split("=", 1) for item in program["environment"].split(","))
    # node n serves metrics on RAGFLEET_METRICS_PORT + n
    assert env.pop("RAGFLEET_METRICS_PORT_OFFSET") == '"%(process_num)d"'
    assert {k: v.strip('"') for k, v in env.items()} == role.env
    assert role.time_limits is TimeLimitMode.WATCHDOG_EXIT and role.env  # the node exits, restarted
    assert program["autorestart"] == "true"


def test_the_metrics_ports_do_not_collide() -> None:
    ports: list[int] = []
    for role in roles.WORKER_ROLES:
        n = role.concurrency if role.supervised else 1
        ports += range(role.metrics_port, role.metrics_port + n)
    assert len(ports) == len(set(ports)), ports


def test_every_queue_has_a_role_and_the_derived_sets_are_the_declared_ones() -> None:
    assert {q for r in roles.WORKER_ROLES for q in r.queues} == set(Queue)
    assert {"retrieval", "generation"} == roles.INTERACTIVE_QUEUES
    assert {"retrieval", "indexing", "maintenance"} == roles.MODEL_QUEUES  # generation never embeds


def test_the_test_fleets_run_the_roles_pools() -> None:
    """tests/fleet.py starts each pool with its role's queues and pool (a smaller concurrency);
    `retrieval-prefork` is the prefork pool the retrieval role ran before 2026-12-03."""
    for name, (queues, pool, _) in POOLS.items():
        role = roles.ROLES[name.removesuffix("-prefork")]
        assert queues.split(",") == [q.value for q in role.queues]
        assert pool == ("prefork" if name.endswith("-prefork") else role.pool.value)


def test_a_role_whose_time_limit_mode_does_not_fit_its_pool_is_refused() -> None:
    with pytest.raises(ValueError, match="runs time limits as celery"):
        WorkerRole("x", (Queue.INDEXING,), Pool.PREFORK, 1, WarmUp.MODEL, TimeLimitMode.WATCHDOG, 9999)
    with pytest.raises(ValueError, match="watchdog-exit"):
        WorkerRole(
            "x", (Queue.RETRIEVAL,), Pool.SOLO, 2, WarmUp.MODEL, TimeLimitMode.WATCHDOG, 9999, supervised=True
        )


def test_the_running_pool_decides_the_time_limit_mode() -> None:
    assert roles.time_limit_mode("prefork", exit_on_hard_limit=True) is TimeLimitMode.CELERY
    assert roles.time_limit_mode("celery.concurrency.thread:TaskPool", exit_on_hard_limit=True) is (
        TimeLimitMode.WATCHDOG
    )
    assert roles.time_limit_mode("solo", exit_on_hard_limit=False) is TimeLimitMode.WATCHDOG
    assert roles.time_limit_mode("solo", exit_on_hard_limit=True) is TimeLimitMode.WATCHDOG_EXIT
