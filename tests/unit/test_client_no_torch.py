"""Other services import the Python client: it must not drag in the model or the store libraries."""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import json
import subprocess
import sys
import tomllib
from pathlib import Path

from tests.conftest import REPO, heavy_modules_loaded_by

SCRIPT = """
from ragfleet.client import BrokerTransport, FleetClient
from ragfleet.settings import Settings
import ragfleet.cli  # the CLI's enqueue-and-poll commands are as light as the client

s = Settings(redis_url="redis://127.0.0.1:1/0")  # nothing connects until a call
FleetClient(BrokerTransport(s))
FleetClient.over_http("http://127.0.0.1:1")
"""


def test_importing_and_building_the_client_imports_no_heavy_module() -> None:
    assert heavy_modules_loaded_by(SCRIPT) == []


def base_requirements_closure() -> set[str]:
    """Every distribution `pip install ragfleet` brings (the pyproject's dependencies, no extra, and
    theirs, extras included where asked for), as installed in this venv."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    todo = [Requirement(r) for r in project["dependencies"]]
    seen: set[str] = set()
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name in seen:
            continue
        seen.add(name)
        for raw in importlib.metadata.requires(req.name) or []:
            sub = Requirement(raw)
            wanted = ["", *sorted(req.extras)]
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in wanted):
                todo.append(sub)
    return seen


def runtime_imports(path: Path) -> set[str]:
    """Modules a module imports when it loads (not those under `if TYPE_CHECKING:`, nor the lazy
    ones inside functions)."""
    names: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        for stmt in node.body if isinstance(node, ast.Try) else [node]:
            if isinstance(stmt, ast.Import):
                names |= {a.name for a in stmt.names}
            elif isinstance(stmt, ast.ImportFrom) and stmt.level == 0 and stmt.module:
                names |= {_submodule_or_module(stmt.module, a.name) for a in stmt.names}
    return names


def _submodule_or_module(module: str, name: str) -> str:
    """`from package import name`: the submodule `package.name` if there is one, else the module."""
    try:
        return f"{module}.{name}" if importlib.util.find_spec(f"{module}.{name}") else module
    except (ImportError, AttributeError, ValueError):
        return module


def owning_distributions(module: str, owners: dict[str, list[str]]) -> set[str]:
    """The distribution(s) a module comes from. A namespace package (`opentelemetry`: the API, the
    SDK and each exporter install into it) has several owners: the module's file decides."""
    dists = owners[module.split(".")[0]]
    if len(dists) == 1:
        return set(dists)
    spec = importlib.util.find_spec(module)
    if spec is not None and spec.origin is None:
        return set()  # a namespace package itself: its portions are imported by name and checked
    origin = Path(spec.origin).resolve() if spec is not None and spec.origin else None
    for dist in dists:
        files = importlib.metadata.distribution(dist).files or []
        if any(Path(str(f.locate())).resolve() == origin for f in files):
            return {dist}
    raise AssertionError(f"no distribution owns {module} ({origin})")


def test_the_client_imports_only_what_the_bare_package_installs() -> None:
    """The fast twin of tests/integration/test_client_install.py: a library that only
    `ragfleet[worker]` installs, imported by a module the client or a client command loads, would
    break `pip install ragfleet`."""
    from packaging.utils import canonicalize_name

    # the client, and the modules of every client command (ragfleet.cli itself would load the
    # fleet-side `feedback` group, which the full venv can import: its own imports are read below)
    client_side = [
        *("client", "extras", "ingest_cli", "sync_cli", "eval_cli", "dead_letters_cli", "blobs"),
        *("fleet_status", "status_cli", "checks_cli"),  # ps, status, check: loaded with ragfleet.cli
    ]
    probe = (
        f"import json, sys\nimport {', '.join('ragfleet.' + m for m in client_side)}\n"
        "print(json.dumps(sorted(m.__file__ for n, m in sys.modules.items() if n.startswith('ragfleet'))))"
    )
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    run = [sys.executable, "-c", probe]
    proc = subprocess.run(run, cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=True)
    modules = [Path(f) for f in json.loads(proc.stdout)] + [REPO / "ragfleet" / "cli.py"]
    assert REPO / "ragfleet" / "client.py" in modules
    owners = importlib.metadata.packages_distributions()
    imported = {
        canonicalize_name(dist)
        for path in modules
        for module in runtime_imports(path)
        if module.split(".")[0] not in sys.stdlib_module_names and module.split(".")[0] != "ragfleet"
        for dist in owning_distributions(module, owners)
    }
    assert {"celery", "httpx", "redis"} <= imported  # the probe sees third-party imports at all
    assert imported - base_requirements_closure() == set()
