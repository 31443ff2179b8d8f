"""Deployment files rendered from the role declaration (workers/roles.py): Kubernetes manifests
(infra/k8s/) and systemd units for bare hosts (infra/systemd/).

    python -m workers.manifests          # rewrites both; commit the result

tests/unit/test_deploy_artifacts.py fails when a committed file differs from what this renders,
and validates the manifests (kubernetes-validate; the vendored KEDA schema for ScaledObjects).
docs/deployment.md explains the choices; the numbers that are no role's are here, each with its
source.
"""

from __future__ import annotations

import math
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ragfleet.settings import Settings
from workers.hooks.heartbeat import STALE_AFTER_S
from workers.roles import API_PORT, API_ROLE, ROLES, WORKER_ROLES, WorkerRole, process_argv, process_env

REPO = Path(__file__).resolve().parents[1]
K8S_DIR = REPO / "infra" / "k8s"
SYSTEMD_DIR = REPO / "infra" / "systemd"

APP = "ragfleet"
IMAGE = APP  # kustomization.yaml's `images:` sets the registry and tag (the rollback handle)
CONFIG = f"{APP}-config"
SECRET = f"{APP}-secrets"
HEARTBEAT_FILE = "/tmp/ragfleet/heartbeat"  # noqa: S108  (the container's own /tmp)
BLOBS = f"{APP}-blobs"  # the ReadWriteMany volume of uploaded files: the API writes, indexing reads
BLOB_DIR = "/var/lib/ragfleet/blobs"
BLOB_ROLES = ("api", "indexing")  # who opens a blob (api_shim/routes/files.py, ragfleet/indexing_files.py)
PROMETHEUS = "http://prometheus-server.monitoring.svc:80"  # KEDA's Prometheus: set to yours
UNIT_PREFIX = "/opt/ragfleet/venv/bin/"  # where a bare host installs the project (docs/deployment.md)
STOP_MARGIN_S = 30  # terminationGracePeriodSeconds / TimeoutStopSec above the drain grace


@dataclass(frozen=True, slots=True)
class Sizing:
    """Per role: memory request/limit (MiB), CPU request, and KEDA's bounds and target backlog.

    Sources: a retrieval node's RSS is 964 MB at 10k chunks and 1,219 MB at 1M
    (docs/performance.md); the model alone is ~770 MB (README, Pools); the indexing pool's parser
    child may take `parse_max_memory_mb` (1 GiB) on top of its model. The pools without a model
    (generation, feedback, the API, beat) were not measured: 512 MiB is a guess with room to spare.
    """

    memory_mib: int
    memory_limit_mib: int
    cpu: str
    min_replicas: int
    max_replicas: int
    backlog_per_replica: int  # KEDA's target: waiting messages per replica before it adds one


SIZING: dict[str, Sizing] = {
    "retrieval": Sizing(
        1_229, 2_048, "1", min_replicas=ROLES["retrieval"].concurrency, max_replicas=8, backlog_per_replica=4
    ),
    "generation": Sizing(512, 1_024, "250m", min_replicas=1, max_replicas=4, backlog_per_replica=16),
    "indexing": Sizing(1_536, 2_560, "1", min_replicas=0, max_replicas=4, backlog_per_replica=8),
    "feedback": Sizing(256, 512, "100m", min_replicas=0, max_replicas=2, backlog_per_replica=50),
    # min 1: a delivery should not wait for a pod to start; a delivery mostly waits on receivers
    "callbacks": Sizing(384, 768, "100m", min_replicas=1, max_replicas=4, backlog_per_replica=50),
    # one reindex at a time (it also takes a fleet-wide lock)
    "maintenance": Sizing(1_229, 2_048, "500m", min_replicas=0, max_replicas=1, backlog_per_replica=1),
    "api": Sizing(512, 1_024, "500m", min_replicas=2, max_replicas=2, backlog_per_replica=0),
    "beat": Sizing(192, 384, "50m", min_replicas=1, max_replicas=1, backlog_per_replica=0),
}

# What the Secret holds (placeholders: create the real one with kubectl, docs/deployment.md)
SECRET_KEYS: dict[str, str] = {
    "RAGFLEET_REDIS_URL": "redis://:CHANGE_ME@redis:6379/0",
    "RAGFLEET_PG_URL": "postgresql://ragfleet:CHANGE_ME@postgres:5432/ragfleet",
    "RAGFLEET_FEEDBACK_DB_URL": "postgresql+psycopg://ragfleet:CHANGE_ME@postgres:5432/ragfleet",
    "RAGFLEET_LLM_API_KEY": "CHANGE_ME",
    "RAGFLEET_LLM_PROVIDER_CONFIG": "",
    "RAGFLEET_FEEDBACK_ALERT_WEBHOOK": "",
    "RAGFLEET_API_KEYS": "",
    "RAGFLEET_CALLBACK_SECRETS": "",
}
CONFIG_VARS: dict[str, str] = {
    "RAGFLEET_STORE": "postgres",  # pods share no disk: no embedded LanceDB
    "RAGFLEET_LOG_LEVEL": "INFO",
    "RAGFLEET_HEARTBEAT_FILE": HEARTBEAT_FILE,
    "RAGFLEET_BLOB_DIR": BLOB_DIR,
}


def drain_grace_s(settings: Settings) -> int:
    """How long a process may take after SIGTERM (workers/drain.py, api_shim/serve.py): the
    deployment's `drain_grace_s` (the ConfigMap sets it), rounded up. A task still running then is
    handed back to its queue, so no pool waits for its longest time limit."""
    return math.ceil(settings.drain_grace_s)


def image() -> str:
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    return f"{IMAGE}:{version}"


def _labels(name: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": APP, "app.kubernetes.io/component": name}


def _resources(s: Sizing) -> dict[str, Any]:
    return {
        "requests": {"cpu": s.cpu, "memory": f"{s.memory_mib}Mi"},
        "limits": {"memory": f"{s.memory_limit_mib}Mi"},  # no CPU limit: throttling hurts latency
    }


def _heartbeat_probe(period_s: int, failures: int) -> dict[str, Any]:
    # the file's age, by the shell: no Python start, no broker round trip
    check = f'test $(( $(date +%s) - $(stat -c %Y "$RAGFLEET_HEARTBEAT_FILE") )) -lt {STALE_AFTER_S}'
    return {"exec": {"command": ["sh", "-c", check]}, "periodSeconds": period_s, "failureThreshold": failures}


def _security() -> dict[str, Any]:
    return {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def _deployment(
    name: str, replicas: int, container: dict[str, Any], grace_s: int, *, recreate: bool = False
) -> dict[str, Any]:
    strategy: dict[str, Any] = (
        {"type": "Recreate"}
        if recreate
        else {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    )
    spec: dict[str, Any] = {
        "terminationGracePeriodSeconds": grace_s,
        "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001, "fsGroup": 10001},
        "containers": [
            {
                "name": name,
                "image": image(),
                "envFrom": [{"configMapRef": {"name": CONFIG}}, {"secretRef": {"name": SECRET}}],
                "securityContext": _security(),
                **container,
            }
        ],
    }
    if name in BLOB_ROLES:
        spec["containers"][0]["volumeMounts"] = [{"name": "blobs", "mountPath": BLOB_DIR}]
        spec["volumes"] = [{"name": "blobs", "persistentVolumeClaim": {"claimName": BLOBS}}]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": f"{APP}-{name}", "labels": _labels(name)},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": _labels(name)},
            "strategy": strategy,
            "template": {
                "metadata": {"labels": _labels(name)},
                "spec": spec,
            },
        },
    }


def _pdb(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": f"{APP}-{name}", "labels": _labels(name)},
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": _labels(name)}},
    }


def backlog_query(role: WorkerRole) -> str:
    """The pool's whole backlog: `ragfleet_queue_depth` sums every priority list of a queue
    (ragfleet/metrics/queue_depth.py); each API replica exports the same value, hence `max`."""
    queues = "|".join(q.value for q in role.queues)
    return f'sum(max by (queue) (ragfleet_queue_depth{{queue=~"{queues}"}}))'


def _scaled_object(role: WorkerRole, s: Sizing) -> dict[str, Any]:
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"name": f"{APP}-{role.name}", "labels": _labels(role.name)},
        "spec": {
            "scaleTargetRef": {"name": f"{APP}-{role.name}"},
            "minReplicaCount": s.min_replicas,
            "maxReplicaCount": s.max_replicas,
            "pollingInterval": 15,
            "cooldownPeriod": 300,
            "triggers": [
                {
                    "type": "prometheus",
                    "metadata": {
                        "serverAddress": PROMETHEUS,
                        "query": backlog_query(role),
                        "threshold": str(s.backlog_per_replica),
                        "activationThreshold": "0",
                    },
                }
            ],
        },
    }


def worker_manifests(role: WorkerRole, settings: Settings) -> list[dict[str, Any]]:
    s = SIZING[role.name]
    env = {**process_env(role.name)}
    container = {
        "args": process_argv(role.name),
        "env": [{"name": k, "value": v} for k, v in env.items()],
        "ports": [{"name": "metrics", "containerPort": role.metrics_port}],
        "resources": _resources(s),
        # warm-up (model load ~10 s, slower on a busy node) before the first beat: 5 minutes
        "startupProbe": _heartbeat_probe(5, 60),
        "livenessProbe": _heartbeat_probe(10, 3),
        "readinessProbe": _heartbeat_probe(10, 1),
    }
    grace = drain_grace_s(settings) + STOP_MARGIN_S
    return [
        _deployment(role.name, max(s.min_replicas, 1), container, grace),
        _pdb(role.name),
        _scaled_object(role, s),
    ]


def api_manifests(settings: Settings) -> list[dict[str, Any]]:
    s = SIZING["api"]
    # /healthz, not /readyz: /readyz needs a consumer on every queue, so with a pool scaled to zero
    # the API would never be ready, no job would be queued, and KEDA would never scale it up
    http = {"httpGet": {"path": "/healthz", "port": "http"}}
    container = {
        "args": process_argv(API_ROLE.name),
        "ports": [{"name": "http", "containerPort": API_PORT}],
        "resources": _resources(s),
        "readinessProbe": {**http, "periodSeconds": 5, "failureThreshold": 2},
        "livenessProbe": {**http, "periodSeconds": 10, "failureThreshold": 3, "timeoutSeconds": 5},
    }
    grace = drain_grace_s(settings) + STOP_MARGIN_S  # long polls and streams end within the grace
    deployment = _deployment(API_ROLE.name, s.min_replicas, container, grace)
    deployment["spec"]["template"]["metadata"]["annotations"] = {
        "prometheus.io/scrape": "true",  # the queue depth KEDA scales on is read here
        "prometheus.io/port": str(API_PORT),
        "prometheus.io/path": "/metrics",
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": f"{APP}-{API_ROLE.name}", "labels": _labels(API_ROLE.name)},
        "spec": {
            "selector": _labels(API_ROLE.name),
            "ports": [{"name": "http", "port": 80, "targetPort": "http"}],
        },
    }
    return [deployment, service, _pdb(API_ROLE.name)]


def beat_manifests() -> list[dict[str, Any]]:
    """One replica, replaced by Recreate: RedBeat's lock would make a second one a standby anyway,
    but a rollout need not wait for the old one's lock to lapse."""
    s = SIZING["beat"]
    container = {"args": process_argv("beat"), "resources": _resources(s)}
    return [_deployment("beat", 1, container, STOP_MARGIN_S, recreate=True)]


def config_manifests(settings: Settings) -> list[dict[str, Any]]:
    """The ConfigMap, and the one volume pods share: uploaded files wait there (by blob id) until an
    indexing pod parses them, so the API and every indexing pod mount it, ReadWriteMany (NFS, CephFS,
    EFS, Azure Files...). The index itself is in PostgreSQL (`RAGFLEET_STORE=postgres`)."""
    meta = {"labels": {"app.kubernetes.io/name": APP}}
    pvc = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": BLOBS, **meta},
        "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "20Gi"}}},
    }
    # the drain grace every pod runs with: terminationGracePeriodSeconds is this + STOP_MARGIN_S
    data = {**CONFIG_VARS, "RAGFLEET_DRAIN_GRACE_S": f"{settings.drain_grace_s:g}"}
    return [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": CONFIG, **meta}, "data": data},
        pvc,
    ]


def secret_manifests() -> list[dict[str, Any]]:
    """Placeholders: create the real Secret with kubectl and leave this file out of the kustomization."""
    meta = {"labels": {"app.kubernetes.io/name": APP}}
    secret = {"name": SECRET, **meta}
    return [
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": secret,
            "type": "Opaque",
            "stringData": SECRET_KEYS,
        }
    ]


def _yaml(docs: list[dict[str, Any]]) -> str:
    import yaml  # a dev dependency: only this renderer needs it

    head = "# generated by `python -m workers.manifests` from workers/roles.py; do not edit\n"
    return head + "---\n".join(yaml.safe_dump(d, sort_keys=False, width=1_000) for d in docs)


def k8s_files(settings: Settings | None = None) -> dict[str, str]:
    """infra/k8s/<name>.yaml -> its text."""
    s = settings or Settings.model_construct()  # the defaults, whatever the environment says
    files = {"config.yaml": _yaml(config_manifests(s)), "secret.yaml": _yaml(secret_manifests())}
    files["api.yaml"] = _yaml(api_manifests(s))
    files |= {f"{r.name}.yaml": _yaml(worker_manifests(r, s)) for r in WORKER_ROLES}
    files["beat.yaml"] = _yaml(beat_manifests())
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": list(files),
        # rollback = set the previous tag here (or `kustomize edit set image`) and apply again
        "images": [{"name": IMAGE, "newTag": image().split(":")[1]}],
    }
    files["kustomization.yaml"] = _yaml([kustomization])
    return files


def _unit(description: str, argv: list[str], env: dict[str, str], stop_s: int) -> str:
    lines = [
        "# generated by `python -m workers.manifests` from workers/roles.py; do not edit",
        "[Unit]",
        f"Description={description}",
        "After=network-online.target",
        "Wants=network-online.target",
        "",
        "[Service]",
        "User=ragfleet",
        "Group=ragfleet",
        "WorkingDirectory=/var/lib/ragfleet",
        "EnvironmentFile=/etc/ragfleet/env",
        *(f"Environment={k}={v}" for k, v in env.items()),
        f"ExecStart={UNIT_PREFIX}{argv[0]} {' '.join(argv[1:])}",
        # SIGTERM to the main process only (Celery's warm shutdown; a prefork parent stops its
        # children itself), SIGKILL to what is left after TimeoutStopSec
        "KillMode=mixed",
        "KillSignal=SIGTERM",
        f"TimeoutStopSec={stop_s}",
        "Restart=always",
        "RestartSec=2",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
    ]
    return "\n".join(lines) + "\n"


def systemd_files(settings: Settings | None = None) -> dict[str, str]:
    """infra/systemd/<unit> -> its text. A supervised role becomes a template unit, one instance
    per node (`ragfleet-retrieval@0`, `@1`, ...): node n named `<role><n>@host`, metrics on
    RAGFLEET_METRICS_PORT + n, as under supervisord."""
    s = settings or Settings.model_construct()
    env = {"OPENBLAS_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    files: dict[str, str] = {}
    for role in WORKER_ROLES:
        stop_s = drain_grace_s(s) + STOP_MARGIN_S
        node_env = {**env, **process_env(role.name)}
        if role.supervised:
            argv = role.worker_argv(f"{role.name}%i@%H")  # systemd: %i the instance, %H the host
            node_env["RAGFLEET_METRICS_PORT_OFFSET"] = "%i"
            name, what = f"ragfleet-{role.name}@.service", f"ragfleet {role.name} node %i"
        else:
            argv = [a.replace("%h", "%H") for a in process_argv(role.name)]
            name, what = f"ragfleet-{role.name}.service", f"ragfleet {role.name} pool"
        files[name] = _unit(what, argv, node_env, stop_s)
    api = process_argv(API_ROLE.name, api_host="127.0.0.1")  # behind the host's reverse proxy
    files["ragfleet-api.service"] = _unit("ragfleet API", api, env, drain_grace_s(s) + STOP_MARGIN_S)
    files["ragfleet-beat.service"] = _unit(
        "ragfleet beat (RedBeat)", process_argv("beat"), env, STOP_MARGIN_S
    )
    return files


def write() -> None:
    for folder, files in ((K8S_DIR, k8s_files()), (SYSTEMD_DIR, systemd_files())):
        folder.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            (folder / name).write_text(text)


if __name__ == "__main__":
    write()
    sys.stdout.write(f"wrote {K8S_DIR.relative_to(REPO)}/ and {SYSTEMD_DIR.relative_to(REPO)}/\n")
