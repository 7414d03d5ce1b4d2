"""Faults with a real MLflow tracking server: away for a moment (Prefect retries, the run completes) and away for
good (the run fails, nothing is registered, the champion stays).

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
from tests.data.cases import PARAMS, clean_tables, write_case

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
        self.proc = None


@pytest.fixture(scope="module")
def project(fresh_workspace):
    ws = fresh_workspace("faults")
    events, users, items = clean_tables()
    write_case(ws, {"events.csv": events.to_csv(index=False).encode(), "users.csv": users.to_csv(index=False).encode(),
                    "items.csv": items.to_csv(index=False).encode()})
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
