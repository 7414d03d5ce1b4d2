"""Shared fixtures: a throw-away copy of the project (its own git repo, DVC cache, MLflow db, Prefect home)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

PROJECT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def project_files() -> list[str]:
    """Tracked and untracked-but-not-ignored files: what a fresh clone plus the working changes would hold."""
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=PROJECT, capture_output=True,
                         text=True, check=True).stdout.split("\n")
    # dvc.lock records the last committed run; each test workspace starts as a first run, without one.
    return [f for f in out if f and f != "dvc.lock" and (PROJECT / f).is_file()]


def make_workspace(target: Path) -> Path:
    for rel in project_files():
        dest = target / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(PROJECT / rel, dest)
    # `recops run` ends with the timeline backtest (backtest.with_run); test workspaces leave it out to keep the
    # suite's time, and the tests of both protocols turn it on (test_pipeline, test_backtest)
    params = target / "params.yaml"  # a text edit: the workspace's params.yaml keeps its comments
    text = params.read_text()
    assert text.count("\n  with_run: true") == 1, "params.yaml: backtest.with_run not found"
    params.write_text(text.replace("\n  with_run: true", "\n  with_run: false"))
    git = ["git", "-c", "user.name=recops-tests", "-c", "user.email=tests@recops.invalid"]
    subprocess.run([*git, "init", "-q"], cwd=target, check=True)
    subprocess.run([*git, "add", "-A"], cwd=target, check=True)
    subprocess.run([*git, "commit", "-qm", "workspace"], cwd=target, check=True)
    return target


# workspace -> API URL of the session's shared Prefect server, for workspaces created with prefect_api=...
_PREFECT_API: dict[Path, str] = {}


def run_env(workspace: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PREFECT_HOME"] = str(workspace / ".prefect")
    if workspace in _PREFECT_API:
        env["PREFECT_API_URL"] = _PREFECT_API[workspace]
    return env


def run_cli(workspace: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "recops"), *args], cwd=workspace, env=run_env(workspace), capture_output=True,
                          text=True, timeout=timeout)


def run_dvc(workspace: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "dvc"), *args], cwd=workspace, env=run_env(workspace), capture_output=True,
                          text=True, timeout=timeout)


def set_params(workspace: Path, **sections) -> None:
    """Overwrite top-level sections of the workspace's params.yaml (nested dicts merge)."""
    path = workspace / "params.yaml"
    params = yaml.safe_load(path.read_text())

    def merge(base, new):
        for key, value in new.items():
            if isinstance(value, dict) and isinstance(base.get(key), dict):
                merge(base[key], value)
            else:
                base[key] = value

    merge(params, sections)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def replace_param(workspace: Path, dotted: str, value) -> None:
    """Set one params.yaml entry (``"registry.first_model_gates"``) to ``value`` as a whole, without merging."""
    path = workspace / "params.yaml"
    params = yaml.safe_load(path.read_text())
    *parents, key = dotted.split(".")
    node = params
    for parent in parents:
        node = node.setdefault(parent, {})
    node[key] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


# params.yaml's ranker learning 4x faster: on ML-100k early stopping keeps 106 trees instead of 388, and the
# train_ranker stage takes 27 s instead of 72 s. For the tests that check what the system does with a model, not the
# default ranker's quality (test_pipeline checks that, with params.yaml as it is).
FAST_RANKER = {"ranker": {"learning_rate": 0.1}}

# The modules that take longest, longest first (seconds of their tests in a quiet fresh-clone `make test` of
# 2026-12-07, BENCHMARKS.md "The test suite's schedule"). `make test` hands whole modules to its two workers in
# collection order (--dist loadfile --no-loadscope-reorder): started first, the long ones end together instead of
# one worker running the last long module alone (it did: test_forget_ml100k, 212 s, began 899 s into the run,
# when xdist's own order — most tests first — reached it, and the other worker idled its last 175 s).
LONGEST_FIRST = [f"tests/integration/test_{name}.py" for name in (
    "pipeline",  # 303 s
    "lifecycle",  # 264
    "forget_ml100k",  # 212
    "faults",  # 187
    "serving",  # 160
    "backtest",  # 157
    "privacy",  # 138
    "deployments",  # 125
    "dask",  # 66
    "drift",  # 63
    "replay",  # 62
    "prefect_ui",  # 61
    "tuning",  # 56
    "browser",  # 29
    "sequence_run",  # 28
)]


def pytest_collection_modifyitems(session, config, items) -> None:
    """Whole modules in :data:`LONGEST_FIRST` order, then the others with the most tests first (xdist's own order);
    each module's tests stay together and in their order."""
    stale = [name for name in LONGEST_FIRST if not (PROJECT / name).is_file()]
    if stale:  # a renamed module would silently go back to xdist's order
        raise pytest.UsageError(f"tests/conftest.py LONGEST_FIRST names modules that do not exist: {stale}")
    rank = {name: n for n, name in enumerate(LONGEST_FIRST)}
    modules: dict[str, list] = {}
    for item in items:
        modules.setdefault(item.nodeid.split("::")[0], []).append(item)
    order = sorted(modules, key=lambda name: (rank.get(name, len(rank)), -len(modules[name]) if name not in rank
                                              else 0))
    items[:] = [item for name in order for item in modules[name]]


# synthetic random data: a first model only has to be a valid model, not to beat popularity
NO_GATES = {"metric": "ndcg@10", "min_lift_over": {}, "min_value": 0.0}


@pytest.fixture(scope="session")
def fresh_workspace(tmp_path_factory):
    """Factory of fresh project copies; ``prefect_api`` (the :func:`prefect_api` fixture's URL) makes their
    commands run their flows on that server instead of each starting Prefect's temporary one."""
    def make(name: str, prefect_api: str | None = None) -> Path:
        workspace = make_workspace(tmp_path_factory.mktemp(name))
        if prefect_api:
            _PREFECT_API[workspace] = prefect_api
        return workspace
    return make


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory) -> Iterator[str]:
    """One local Prefect server (SQLite) for the session: the API URL.

    Every command without PREFECT_API_URL starts a temporary server of its own (8 s, 16 s on a new database); the
    lifecycle tests run many commands and share this one. The temporary-server path a newcomer's `make run` takes
    stays covered by the ML-100k run in test_pipeline.py.
    """
    import signal
    import socket
    import time
    import urllib.request

    home = tmp_path_factory.mktemp("prefect-server")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**run_env(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_SERVER_API_PORT": str(port)}
    server = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                              cwd=home, env=env, stdout=open(home / "server.log", "w"), stderr=subprocess.STDOUT,
                              start_new_session=True)
    url = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the Prefect server did not start: " + (home / "server.log").read_text()[-3000:])
            time.sleep(0.5)
        yield url
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGINT)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)


POSTGRES_HOST, POSTGRES_PORT, POSTGRES_ADMIN_DB = "127.0.0.1", 5432, "test"


@contextlib.contextmanager
def postgres_database(prefix: str = "recops_test") -> Iterator[tuple[str, str]]:
    """A fresh database on the machine's PostgreSQL (trust auth), dropped afterwards: yields ``(user, name)``.

    Without a reachable server the test is skipped on a developer machine and fails under CI (CI=true), where the
    server is part of the machine.
    """
    import psycopg

    conn, last = None, None
    for user in ("postgres", "root", os.environ.get("USER", "postgres")):
        try:
            conn = psycopg.connect(host=POSTGRES_HOST, port=POSTGRES_PORT, dbname=POSTGRES_ADMIN_DB, user=user,
                                   connect_timeout=3, autocommit=True)
            break
        except psycopg.OperationalError as exc:
            last = exc
    if conn is None:
        message = f"PostgreSQL not reachable at {POSTGRES_HOST}:{POSTGRES_PORT}: {last}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    try:
        yield user, name
    finally:
        with conn.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.close()


def postgres_uri(user: str, name: str, driver: str = "psycopg") -> str:
    """SQLAlchemy URI of a database: ``psycopg`` for MLflow (SQLAlchemy 2.0 defaults to psycopg2, not installed),
    ``asyncpg`` for the Prefect server."""
    return f"postgresql+{driver}://{user}@{POSTGRES_HOST}:{POSTGRES_PORT}/{name}"
