"""The Procfile and infra/supervisor/*.conf (fleet.conf: README command 1's supervisord, rendered
from the roles) run what workers/roles.py declares: the same command lines, queues, pools,
concurrency, metrics ports and time-limit mode."""

from __future__ import annotations

import configparser
import re
import shlex

import pytest

from ragfleet.names import Queue
from ragfleet.settings import Settings
from tests.conftest import REPO
from tests.fleet import POOLS
from workers import roles, supervisord
from workers.flower import NOT_CONFIGURED
from workers.manifests import drain_grace_s
from workers.roles import Pool, TimeLimitMode, WarmUp, WorkerRole
from workers.supervisord import fleet_conf


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


def _fleet_conf() -> configparser.ConfigParser:
    conf = configparser.ConfigParser(interpolation=None)
    conf.read(REPO / "infra" / "supervisor" / "fleet.conf")
    return conf


def test_the_fleet_supervisord_conf_is_rendered_from_the_roles() -> None:
    text = (REPO / "infra" / "supervisor" / "fleet.conf").read_text()
    assert text == fleet_conf(), f"run: {supervisord.COMMAND}"


def test_the_fleet_conf_runs_every_process_of_the_fleet_as_declared() -> None:
    conf = _fleet_conf()
    programs = {s.removeprefix("program:") for s in conf.sections() if s.startswith("program:")}
    assert programs == {roles.API_ROLE.name, *roles.ROLES, *(r.name for r in roles.PROCESS_ROLES)}
    for role in roles.WORKER_ROLES:
        program = conf[f"program:{role.name}"]
        argv = shlex.split(program["command"])
        assert argv[: argv.index("-n")] == role.worker_argv()[: role.worker_argv().index("-n")]
        assert argv[argv.index("-n") + 2 :] == role.worker_argv()[role.worker_argv().index("-n") + 2 :]
        env = dict(item.split("=", 1) for item in program["environment"].split(","))
        assert env.pop("RAGFLEET_METRICS_PORT") == f'"{role.metrics_port}"'
        if role.supervised:  # one solo node a program process, node n named <role><n>@host
            assert program["numprocs"] == f"%(ENV_{role.nodes_env})s"
            assert argv[argv.index("-n") + 1] == f"{role.name}%(process_num)d@%(host_node_name)s"
            assert env.pop("RAGFLEET_METRICS_PORT_OFFSET") == '"%(process_num)d"'
        assert {k: v.strip('"') for k, v in env.items()} == role.env
    for other in roles.PROCESS_ROLES:
        assert conf[f"program:{other.name}"]["command"] == other.command
    flower = conf["program:flower"]  # it needs a password: started on demand, not restarted without one
    assert (flower["autostart"], flower["exitcodes"]) == ("false", f"0,{NOT_CONFIGURED}")


def test_every_program_restarts_logs_alone_and_stops_as_a_group_after_its_drain() -> None:
    conf = _fleet_conf()
    s = Settings.model_construct()
    for section in (s for s in conf.sections() if s.startswith("program:")):
        program, name = conf[section], section.removeprefix("program:")
        assert program["autorestart"] == ("unexpected" if name == "flower" else "true")
        assert int(program["startsecs"]) > 0 and int(program["startretries"]) > 1  # backoff on a crash loop
        assert program["stopasgroup"] == program["killasgroup"] == "true"
        assert program["stdout_logfile"].startswith("%(ENV_RAGFLEET_FLEET_DIR)s/log/%(program_name)s")
        assert program["redirect_stderr"] == "true"
        if name in roles.ROLES:
            assert int(program["stopwaitsecs"]) > drain_grace_s(s)
    assert int(conf["program:api"]["stopwaitsecs"]) > drain_grace_s(s)
    assert conf["supervisorctl"]["serverurl"] == "unix://%(ENV_RAGFLEET_FLEET_DIR)s/supervisor.sock"
    assert conf["unix_http_server"]["file"] == "%(ENV_RAGFLEET_FLEET_DIR)s/supervisor.sock"


def test_the_scripts_give_every_variable_the_fleet_conf_reads() -> None:
    """supervisord refuses a configuration whose `%(ENV_X)s` is unset: scripts/fleet_env.sh (sourced
    by demo.sh and stop.sh) defaults each one."""
    text = (REPO / "infra" / "supervisor" / "fleet.conf").read_text()
    used = set(re.findall(r"%\(ENV_(\w+)\)s", text))
    assert used == set(supervisord.FLEET_VARIABLES)
    fleet_env = (REPO / "scripts" / "fleet_env.sh").read_text()
    for name in used:
        assert re.search(rf'^export {name}="\${{{name}:-[^}}]+}}"$', fleet_env, re.M), name
