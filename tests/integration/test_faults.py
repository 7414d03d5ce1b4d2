"""Faults with a real MLflow tracking server: away for a moment (Prefect retries, the run completes), away for
good (the run fails, nothing is registered, the champion stays), and a training run killed with SIGKILL in the
middle of a stage (the champion still points at a complete model that onnxruntime loads; a rerun finishes).
Promotions killed at every write are in tests/unit/test_promotion.py. No orphans: a run killed with its temporary
Prefect server up leaves no process behind, and a run killed mid-register leaves an MLflow run that the next start
marks FAILED (while a live command's run is left alone).

The project logs to `mlflow server` over HTTP (`registry.tracking_uri`), with MLflow's own HTTP retries off so
that the outage reaches the flow. The server is started only once the export stage has written its report, so
the register task's first attempt finds nobody listening.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import BIN, NO_GATES, replace_param, run_env, set_params
from tests.data.cases import PARAMS, write_clean_case

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


class TrackingServer:
    def __init__(self, ws: Path, port: int, env: dict) -> None:
        self.ws, self.port, self.env, self.proc = ws, port, env, None

    def start(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return  # already serving (a second server would fail to bind and orphan this one)
        self.proc = subprocess.Popen(
            [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(self.port),
             "--backend-store-uri", f"sqlite:///{self.ws / 'tracking.db'}",
             "--artifacts-destination", str(self.ws / "tracking-artifacts"), "--workers", "1"],
            cwd=self.ws, env=self.env, stdout=open(self.ws / "mlflow-server.log", "a"), stderr=subprocess.STDOUT,
            start_new_session=True)
        deadline = time.monotonic() + 90
        while not listening(self.port):
            assert time.monotonic() < deadline, (self.ws / "mlflow-server.log").read_text()[-3000:]
            time.sleep(0.5)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=30)
        if self.proc is not None:
            try:  # mlflow server's job consumers (huey) can outlive it: nothing of the group may stay behind
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc = None


@pytest.fixture(scope="module")
def project(fresh_workspace, prefect_api):
    ws = fresh_workspace("faults", prefect_api)
    write_clean_case(ws)
    port = free_port()
    set_params(ws, **PARAMS)
    set_params(ws, registry={"tracking_uri": f"http://127.0.0.1:{port}"},
               orchestration={"retries": 2, "retry_delay_seconds": 20})  # room for the server to start
    replace_param(ws, "registry.first_model_gates", NO_GATES)
    env = {**run_env(ws), "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
    server = TrackingServer(ws, port, env)
    yield ws, env, server
    server.stop()


def start_run(ws: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen([str(BIN / "recops"), "run", "--no-push"], cwd=ws, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def aliases(ws: Path) -> dict[str, str]:
    from mlflow.tracking import MlflowClient

    from recops.config import load_settings

    settings = load_settings(ws / "params.yaml")
    client = MlflowClient(tracking_uri=settings.tracking_uri(), registry_uri=settings.tracking_uri())
    return {k: str(v) for k, v in client.get_registered_model(settings.registry.model_name).aliases.items()}


def test_a_tracking_server_briefly_away_is_retried_and_the_run_completes(project):
    ws, env, server = project
    export_report = ws / "reports" / "export_metrics.json"
    run = start_run(ws, env)
    deadline = time.monotonic() + 600
    while not export_report.is_file():
        assert run.poll() is None, run.stdout.read()[-4000:]
        assert time.monotonic() < deadline
        time.sleep(0.2)
    time.sleep(1.0)  # the register task's first attempt fails: nobody listens yet
    server.start()
    output, _ = run.communicate(timeout=600)
    assert run.returncode == 0, output[-5000:]
    assert "Retry 1/2 will start" in output, output[-5000:]  # the first attempt failed and was retried
    assert json.loads((ws / "reports" / "registry.json").read_text())["model_version"] == "1"
    assert aliases(ws) == {"challenger": "1", "champion": "1"}  # the retried register task bootstrapped it


def test_a_tracking_server_away_for_good_fails_the_run_and_moves_nothing(project):
    ws, env, server = project
    before = (ws / "reports" / "registry.json").read_text()
    set_params(ws, orchestration={"retries": 1, "retry_delay_seconds": 2})  # fail soon: the server stays away
    server.stop()
    run = start_run(ws, env)
    output, _ = run.communicate(timeout=600)
    assert run.returncode != 0, output[-3000:]
    assert (ws / "reports" / "registry.json").read_text() == before
    server.start()
    assert aliases(ws) == {"champion": "1", "challenger": "1"}
    from mlflow.tracking import MlflowClient

    from recops.config import load_settings

    settings = load_settings(ws / "params.yaml")
    client = MlflowClient(tracking_uri=settings.tracking_uri(), registry_uri=settings.tracking_uri())
    versions = client.search_model_versions(f"name = '{settings.registry.model_name}'")
    assert [str(v.version) for v in versions] == ["1"]


def registered(ws: Path) -> list[str]:
    from recops.config import load_settings
    from recops.registry import list_versions

    return [v["version"] for v in list_versions(load_settings(ws / "params.yaml"))]


def champion_loads_and_scores(ws: Path, tmp: Path) -> None:
    """The champion's files download whole and its ONNX ranker scores a batch in onnxruntime."""
    import numpy as np
    import onnxruntime as ort

    from recops.config import load_settings
    from recops.registry import download_version_files

    settings = load_settings(ws / "params.yaml")
    files = download_version_files(settings, aliases(ws)["champion"], tmp)
    session = ort.InferenceSession(str(files["onnx"]), providers=["CPUExecutionProvider"])
    n_features = len(files["manifest"]["features"])
    scores = session.run(None, {session.get_inputs()[0].name: np.zeros((7, n_features), np.float32)})[0]
    assert np.asarray(scores).reshape(-1).shape == (7,) and np.isfinite(scores).all()


# stage to kill -> the last file the stage before it writes (atomically): once it is new, the stage is running
KILL_AFTER = {"train_ranker": "data/features/feature_names.json", "export": "reports/plots/feature_importance.csv"}


@pytest.mark.parametrize("stage", list(KILL_AFTER))
def test_a_run_killed_mid_stage_leaves_the_champion_whole(project, tmp_path, stage):
    ws, env, server = project
    server.start()
    before = (registered(ws), aliases(ws))
    params = (ws / "params.yaml").read_text()
    set_params(ws, ranker={"n_estimators": 2000, "early_stopping_rounds": 2000})  # a stage that lasts seconds
    marker = ws / KILL_AFTER[stage]
    started = time.time()
    run = subprocess.Popen([str(BIN / "recops"), "run", "--no-push"], cwd=ws, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        while not (marker.exists() and marker.stat().st_mtime > started):
            assert run.poll() is None, "the run ended before the stage: " + run.stdout.read()[-3000:]
            time.sleep(0.05)
        time.sleep(0.5)
        os.killpg(run.pid, signal.SIGKILL)
        run.wait(timeout=30)
    finally:
        (ws / "params.yaml").write_text(params)
    assert run.returncode == -signal.SIGKILL
    assert (registered(ws), aliases(ws)) == before  # nothing registered, no alias moved
    champion_loads_and_scores(ws, tmp_path)


def test_the_rerun_after_a_killed_run_finishes_the_job(project, tmp_path):
    ws, env, server = project
    before = registered(ws)
    proc = subprocess.run([str(BIN / "recops"), "run", "--no-push"], cwd=ws, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    new = str(int(before[-1]) + 1)
    assert registered(ws) == [*before, new]
    assert aliases(ws) == {"champion": "1", "challenger": new}
    champion_loads_and_scores(ws, tmp_path)


# --- no orphans: a killed command leaves no process behind, and its MLflow runs are closed at the next start -----

def descendants(pid: int) -> list:
    """Every process below ``pid`` (Linux /proc), as identities that tell a reused pid apart."""
    from recops.processes import ProcessId

    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        children.setdefault(int(text[text.rfind(")") + 2:].split()[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(ProcessId.of(child))
            todo.append(child)
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process tree from /proc")
def test_a_run_killed_with_its_temporary_prefect_server_up_leaves_no_process(project):
    ws, env, server = project
    env = {k: v for k, v in env.items() if k != "PREFECT_API_URL"}  # the newcomer's path: a temporary server
    records = ws / ".prefect" / "temporary-servers"
    run = subprocess.Popen([str(BIN / "recops"), "run", "--no-push"], cwd=ws, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    tree = []
    try:
        deadline = time.monotonic() + 180
        while not list(records.glob("*.json")):
            assert run.poll() is None, "the run ended before its server started: " + run.stdout.read()[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.1)
        port = int(json.loads(next(records.glob("*.json")).read_text())["url"].split(":")[2].split("/")[0])
        while not listening(port):
            assert run.poll() is None, run.stdout.read()[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.1)
        tree = descendants(run.pid)
        assert tree, "the temporary server is not a child of the run"
        run.kill()  # SIGKILL to the command alone, as `kill -9 <pid>` does: no atexit, no finally
        run.wait(timeout=30)
        deadline = time.monotonic() + 10  # grace: the kernel's die-with-parent signal is immediate
        while any(p.is_running() for p in tree) or listening(port):
            assert time.monotonic() < deadline, f"left behind: {[p for p in tree if p.is_running()]}, port {port}"
            time.sleep(0.1)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
        for process in tree:  # a failed check must not leave them to the next test
            if process.is_running():
                os.kill(process.pid, signal.SIGKILL)


def test_a_run_killed_mid_register_is_failed_at_the_next_start_and_a_live_commands_run_is_not(project):
    from mlflow.tracking import MlflowClient

    from recops.config import load_settings
    from recops.registry.orphans import ORPHANED_TAG, OWNER_PID_TAG
    from tests.unit.test_orphans import start_owner

    ws, env, server = project
    server.start()
    settings = load_settings(ws / "params.yaml")
    client = MlflowClient(tracking_uri=settings.tracking_uri())
    before = registered(ws)
    started = time.time()
    run = subprocess.Popen([str(BIN / "recops"), "run", "--no-push"], cwd=ws, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, start_new_session=True)
    export_report = ws / "reports" / "export_metrics.json"

    def owned_runs() -> list:
        experiment = client.get_experiment_by_name(settings.registry.experiment)
        return [] if experiment is None else client.search_runs(
            [experiment.experiment_id], filter_string=f"tags.`{OWNER_PID_TAG}` = '{run.pid}'")

    try:
        deadline = time.monotonic() + 600
        while not (export_report.is_file() and export_report.stat().st_mtime > started):  # register is next
            assert run.poll() is None, "the run ended before export: " + run.stdout.read()[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.1)
        while not (found := owned_runs()):
            assert run.poll() is None, "the run ended before register: " + run.stdout.read()[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.02)
        os.killpg(run.pid, signal.SIGKILL)  # mid-register: its MLflow run exists and is logging artifacts
        run.wait(timeout=30)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()
    killed_run = found[0].info.run_id
    assert client.get_run(killed_run).info.status == "RUNNING"  # what the kill leaves
    live, live_run = start_owner(settings, "still-registering")  # a command that is still at it
    try:
        proc = subprocess.run([str(BIN / "recops"), "promote", "--version", "999999"], cwd=ws, env=env,
                              capture_output=True, text=True, timeout=300)  # the next start (its promotion fails)
        failed = client.get_run(killed_run)
        assert failed.info.status == "FAILED", proc.stderr[-3000:]
        assert failed.data.tags[ORPHANED_TAG] == str(run.pid)
        assert client.get_run(live_run).info.status == "RUNNING"  # its owner still runs: untouched
    finally:
        live.kill()
        live.wait()
    assert registered(ws) == before  # the killed run registered nothing
