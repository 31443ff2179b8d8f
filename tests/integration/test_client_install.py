"""A producer installs the client alone: the built wheel, in a fresh venv with none of the fleet's
libraries, answers a question through the running fleet over the broker (the `ragfleet` CLI) and over
HTTP (`FleetClient.over_http`), and the fleet-side commands say which extra they need.

The venv gets the wheel's declared dependencies only, pinned to the versions this venv runs (the client
speaks to the fleet with the same celery/kombu). Their wheels are kept under the system temp dir, so a
second run installs without an index in a few seconds.
"""

from __future__ import annotations

import fcntl
import importlib.metadata
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ragfleet.extras import EXIT_NEEDS_WORKER, WORKER_EXTRA
from ragfleet.settings import Settings
from tests.conftest import REPO, settings_env
from tests.fleet import Fleet
from tests.helpers import index, serve_api
from tests.integration.test_fleet_e2e import DOCS

pytestmark = [pytest.mark.redis, pytest.mark.workers, pytest.mark.model, pytest.mark.slow]

# the fleet's heavy libraries: none may come with the client
FLEET_ONLY = ("torch", "sentence_transformers", "transformers", "lancedb", "pyarrow", "numpy", "fastapi")
QUESTION = "Which database stores vectors on local disk?"
SOURCES = ("pyproject.toml", "README.md", "ragfleet", "workers", "tasks", "api_shim")


def run(cmd: list[str], *, env: dict[str, str] | None = None, cwd: Path, timeout: float = 180) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (
        f"{cmd[:4]} exited {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    )
    return proc.stdout


def build_client_venv(root: Path) -> Path:
    """The wheel `pip install ragfleet` would get (built from a copy of the sources: an in-tree build
    leaves build/ and egg-info behind), installed with its dependencies into a venv of its own."""
    src = root / "src"
    src.mkdir()
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(path, src / name)
    pip = [sys.executable, "-m", "pip"]
    run([*pip, "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(root / "dist"), "."], cwd=src)
    (wheel,) = (root / "dist").glob("ragfleet-*.whl")
    venv = root / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=root)
    pins = sorted(
        f"{d.metadata['Name']}=={d.version}"
        for d in importlib.metadata.distributions()
        if d.metadata["Name"] and d.metadata["Name"].lower() != "ragfleet"
    )
    (root / "pins.txt").write_text("\n".join(pins) + "\n")
    # the dependencies' wheels, kept between runs: an install from them needs no index (~3x faster);
    # the first run, or one whose pins or dependencies changed, fills in what is missing first
    shelf = Path(tempfile.gettempdir()) / "ragfleet-test-client-wheels"
    shelf.mkdir(exist_ok=True)
    install = [*pip, "--python", str(venv / "bin" / "python"), "install", "-q", "--no-compile"]
    offline = [*install, "--no-index", "--find-links", str(shelf), str(wheel)]
    with (shelf / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another session may be filling the shelf
        if subprocess.run(offline, cwd=root, capture_output=True, timeout=300).returncode != 0:
            fill = ["wheel", "-q", "--constraint", str(root / "pins.txt"), "-w", str(shelf)]
            run([*pip, *fill, "--cache-dir", str(shelf / "cache"), str(wheel)], cwd=root, timeout=300)
            (shelf / wheel.name).unlink()  # only the dependencies stay: each run builds its own
            run(offline, cwd=root, timeout=300)
    return venv


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    started = time.monotonic()
    venv = build_client_venv(tmp_path_factory.mktemp("client-install"))
    size = sum(f.stat().st_size for f in venv.rglob("*") if f.is_file() and not f.is_symlink())
    print(f"\nclient venv: {size / 1e6:.0f} MB, built and installed in {time.monotonic() - started:.1f} s")
    return venv


@pytest.fixture(scope="module")
def client_env(base_settings: Settings, client_venv: Path) -> dict[str, str]:
    """The session's RAGFLEET_* settings, and nothing of this checkout on the path."""
    env = settings_env(base_settings)
    env.pop("PYTHONPATH")
    env["PATH"] = f"{client_venv / 'bin'}:/usr/bin:/bin"
    env["COLUMNS"] = "200"
    return env


@pytest.fixture(scope="module")
def api_url(fleet: Fleet, base_settings: Settings) -> Iterator[str]:
    assert index(base_settings, DOCS)["status"] == "done"
    with serve_api(base_settings.model_copy(update={"rate_limit": "100000/minute"})) as url:
        yield url


def test_the_client_installs_without_the_fleets_libraries(
    client_venv: Path, client_env: dict[str, str], tmp_path: Path
) -> None:
    probe = (
        "import importlib.util, json, sys, ragfleet, ragfleet.client, ragfleet.cli\n"
        "print(json.dumps({'file': ragfleet.__file__,"
        " 'present': [m for m in sys.argv[1:] if importlib.util.find_spec(m) is not None]}))"
    )
    python = str(client_venv / "bin" / "python")
    got = json.loads(run([python, "-c", probe, *FLEET_ONLY], env=client_env, cwd=tmp_path))
    assert got["present"] == []
    assert got["file"].startswith(str(client_venv))  # the wheel's code, not this checkout's


def test_the_installed_client_answers_over_the_broker_and_over_http(
    api_url: str, client_venv: Path, client_env: dict[str, str], tmp_path: Path
) -> None:
    ragfleet = str(client_venv / "bin" / "ragfleet")
    rec = json.loads(run([ragfleet, "ask", QUESTION, "--no-cache", "--json"], env=client_env, cwd=tmp_path))
    assert rec["status"] == "done", rec
    assert rec["result"]["sources"][0]["doc_id"] == "lancedb"
    assert "[1]" in rec["result"]["answer"]
    polled = json.loads(run([ragfleet, "job", rec["job_id"]], env=client_env, cwd=tmp_path))
    assert polled["result"]["answer"] == rec["result"]["answer"]

    over_http = (
        "import json, sys\nfrom ragfleet.client import FleetClient\n"
        "print(json.dumps(FleetClient.over_http(sys.argv[1]).ask(sys.argv[2], use_cache=False)))"
    )
    python = str(client_venv / "bin" / "python")
    result = json.loads(run([python, "-c", over_http, api_url, QUESTION], env=client_env, cwd=tmp_path))
    assert result["sources"][0]["doc_id"] == "lancedb"
    assert "[1]" in result["answer"]


@pytest.mark.parametrize("command", [["index", "status"], ["feedback", "candidates", "-n", "3"]])
def test_a_fleet_side_command_names_the_extra_it_needs(
    command: list[str], client_venv: Path, client_env: dict[str, str], tmp_path: Path
) -> None:
    proc = subprocess.run(
        [str(client_venv / "bin" / "ragfleet"), *command],
        cwd=tmp_path,
        env=client_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == EXIT_NEEDS_WORKER, proc.stderr
    assert f"pip install '{WORKER_EXTRA}'" in proc.stderr
    assert "Traceback" not in proc.stderr
