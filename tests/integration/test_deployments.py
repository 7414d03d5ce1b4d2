"""Scheduled deployments against a real local Prefect server: register them, trigger each, wait for the result.

A separate `prefect server start` on a free port, `recops deploy` serving the six deployments, and runs
triggered with `prefect deployment run --watch` — the commands a user types. The project is a small own-data one
(the clean tables of tests/data/cases.py) so that each training run takes seconds; the ingest-snapshot
deployment then takes a second snapshot, with more interactions, through validation, training and the A/B.

Both servers run on the production backend: the Prefect server's database and the MLflow tracking store are
fresh PostgreSQL databases (127.0.0.1:5432), so the lifecycle — training, the bootstrapped first champion, a new
snapshot's A/B and promotion, batch scoring — runs here against PostgreSQL, and in test_lifecycle.py against the
embedded SQLite defaults.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import BIN, NO_GATES, postgres_database, postgres_uri, replace_param, run_env, set_params
from tests.data.cases import PARAMS, clean_tables, write_case

pytestmark = pytest.mark.integration

DEPLOYMENTS = ("recops-training/training", "recops-evaluate-and-promote/evaluate-and-promote",
               "recops-batch-score/batch-score", "recops-ingest-snapshot/ingest-snapshot", "recops-backtest/backtest",
               "recops-monitoring/monitoring")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(1.0)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture(scope="module")
def served(fresh_workspace):
    with contextlib.ExitStack() as stack:
        prefect_db = stack.enter_context(postgres_database("recops_prefect"))
        mlflow_db = stack.enter_context(postgres_database("recops_mlflow"))
        yield from _served(fresh_workspace, prefect_db, mlflow_db)


def _served(fresh_workspace, prefect_db: tuple[str, str], mlflow_db: tuple[str, str]):
    ws = fresh_workspace("deployments")
    events, users, items = clean_tables()
    early = events.sort_values("ts").iloc[: int(len(events) * 0.8)]
    write_case(ws, {"events.csv": early.to_csv(index=False).encode(), "users.csv": users.to_csv(index=False).encode(),
                    "items.csv": items.to_csv(index=False).encode()})
    (ws / "snapshot.csv").write_text(events.to_csv(index=False))
    set_params(ws, **PARAMS)
    set_params(ws, deployments={"batch_k": 10})
    replace_param(ws, "registry.first_model_gates", NO_GATES)
    set_params(ws, registry={"tracking_uri": postgres_uri(*mlflow_db)})
    port = free_port()
    env = {**run_env(ws), "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
           "PREFECT_API_DATABASE_CONNECTION_URL": postgres_uri(*prefect_db, driver="asyncpg"),
           "PREFECT_SERVER_API_PORT": str(port), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "5",
           "PREFECT_RUNNER_POLL_FREQUENCY": "2"}  # the served deployments pick up triggered runs sooner
    logs = ws / "logs"
    logs.mkdir()
    server = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                              cwd=ws, env=env, stdout=open(logs / "server.log", "w"), stderr=subprocess.STDOUT,
                              start_new_session=True)
    worker = None
    try:
        def healthy() -> bool:
            proc = subprocess.run([str(BIN / "prefect"), "config", "view"], cwd=ws, env=env, capture_output=True)
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    return proc.returncode == 0
            except OSError:
                return False

        wait_for(healthy, 120, "the Prefect server")
        worker = subprocess.Popen([str(BIN / "recops"), "deploy"], cwd=ws, env=env,
                                  stdout=open(logs / "deploy.log", "w"), stderr=subprocess.STDOUT,
                                  start_new_session=True)

        def deployments() -> list[str]:
            return [name for name in DEPLOYMENTS
                    if subprocess.run([str(BIN / "prefect"), "deployment", "inspect", name], cwd=ws, env=env,
                                      capture_output=True).returncode == 0]

        wait_for(lambda: len(deployments()) == len(DEPLOYMENTS), 120, "the six deployments")
        yield ws, env, prefect_db, mlflow_db
    finally:
        for proc in (worker, server):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGINT)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)


def trigger(ws: Path, env: dict, name: str, *params: str, timeout: int = 600) -> subprocess.CompletedProcess:
    args = [str(BIN / "prefect"), "deployment", "run", name, "--watch", "--watch-timeout", str(timeout)]
    for param in params:
        args += ["--param", param]
    return subprocess.run(args, cwd=ws, env=env, capture_output=True, text=True, timeout=timeout + 60)


def completed(proc: subprocess.CompletedProcess, ws: Path) -> None:
    log = (ws / "logs" / "deploy.log").read_text()[-4000:]
    assert proc.returncode == 0 and "Completed" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:] + log


def aliases(ws: Path) -> dict[str, str]:
    from mlflow.tracking import MlflowClient

    from recops.config import load_settings

    settings = load_settings(ws / "params.yaml")
    client = MlflowClient(tracking_uri=settings.tracking_uri(), registry_uri=settings.tracking_uri())
    return {k: str(v) for k, v in client.get_registered_model(settings.registry.model_name).aliases.items()}


def test_the_deployments_are_registered_with_their_schedules(served):
    ws, env, *_ = served
    proc = subprocess.run([str(BIN / "prefect"), "deployment", "inspect", "recops-training/training"], cwd=ws,
                          env=env, capture_output=True, text=True)
    assert proc.returncode == 0 and "0 3 * * *" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-2000:]


def test_the_scheduler_creates_the_scheduled_runs(served):
    ws, env, *_ = served

    def scheduled() -> bool:
        proc = subprocess.run([str(BIN / "prefect"), "flow-run", "ls", "--flow-name", "recops-training",
                               "--state-type", "SCHEDULED", "-o", "json"], cwd=ws, env=env, capture_output=True,
                              text=True)
        if proc.returncode != 0:
            return False
        runs = json.loads(proc.stdout or "[]")
        return any(run["state_type"] == "SCHEDULED" and run["deployment_id"] for run in runs)

    wait_for(scheduled, 90, "scheduled runs of recops-training from its cron schedule")


def test_training_then_promotion_then_batch_scoring_run_through_the_deployments(served):
    ws, env, *_ = served
    completed(trigger(ws, env, "recops-training/training"), ws)
    assert aliases(ws) == {"challenger": "1", "champion": "1"}  # the first model passed the gates in training
    proc = trigger(ws, env, "recops-evaluate-and-promote/evaluate-and-promote")
    completed(proc, ws)  # the challenger is the champion: nothing to evaluate, nothing moves
    assert aliases(ws) == {"challenger": "1", "champion": "1"}
    completed(trigger(ws, env, "recops-batch-score/batch-score"), ws)
    latest = json.loads((ws / "reports" / "batch" / "latest.json").read_text())
    recs = pd.read_parquet(ws / "reports" / "batch" / Path(latest["file"]).name)
    assert recs.groupby("user_id").size().eq(10).all()


def test_the_deployment_runs_log_recops_lines_and_say_what_they_did(served):
    """The served runs execute in processes no recops entry point configured: recops' lines still reach the
    runs' logs, and each run's final state says what it did."""
    from tests.prefect_runs import flow_runs, run_logs

    ws, env, *_ = served
    api = env["PREFECT_API_URL"]
    training = [run for run in flow_runs(api, "recops-training", ws / "params.yaml") if run.state.is_completed()]
    assert training, "no completed recops-training run"
    messages = [log.message for log in run_logs(api, training[0]) if log.name.startswith("recops.")]
    assert any(message.startswith("stage register done in") for message in messages), messages
    assert "version 1 registered" in training[0].state.message, training[0].state
    promotion = flow_runs(api, "recops-evaluate-and-promote", ws / "params.yaml")[0]
    assert "nothing to evaluate" in promotion.state.message, promotion.state


def test_a_new_snapshot_is_validated_trained_and_evaluated(served):
    ws, env, *_ = served
    proc = trigger(ws, env, "recops-ingest-snapshot/ingest-snapshot", f"snapshot_path={ws / 'snapshot.csv'}")
    completed(proc, ws)
    assert aliases(ws)["challenger"] == "2"
    report = json.loads((ws / "reports" / "ab.json").read_text())
    assert (report["champion_version"], report["challenger_version"]) == ("1", "2")
    prepared = pd.read_parquet(ws / "data" / "prepared" / "interactions.parquet")
    assert len(prepared) == len(pd.read_csv(ws / "snapshot.csv"))


def test_a_bad_snapshot_fails_and_keeps_the_previous_data(served):
    ws, env, *_ = served
    before = (ws / "data" / "external" / "events.csv").read_bytes()
    bad = pd.read_csv(ws / "snapshot.csv").drop(columns=["ts"])
    bad.to_csv(ws / "bad.csv", index=False)
    proc = trigger(ws, env, "recops-ingest-snapshot/ingest-snapshot", f"snapshot_path={ws / 'bad.csv'}")
    assert proc.returncode != 0 or "Failed" in proc.stdout
    assert (ws / "data" / "external" / "events.csv").read_bytes() == before
    assert aliases(ws)["challenger"] == "2"


def test_both_servers_kept_their_state_in_postgresql(served):
    import psycopg

    from tests.conftest import POSTGRES_HOST, POSTGRES_PORT

    ws, _, (user, prefect_db), (_, mlflow_db) = served

    def query(db: str, sql: str) -> list[tuple]:
        with psycopg.connect(host=POSTGRES_HOST, port=POSTGRES_PORT, dbname=db, user=user) as conn:
            return conn.execute(sql).fetchall()

    names = {row[0] for row in query(prefect_db, "SELECT name FROM deployment")}
    assert {name.split("/")[1] for name in DEPLOYMENTS} <= names
    assert query(prefect_db, "SELECT count(*) FROM flow_run WHERE state_type = 'COMPLETED'")[0][0] >= 3
    versions = query(mlflow_db, "SELECT version FROM model_versions ORDER BY version")
    assert [row[0] for row in versions] == [1, 2]
    assert not list(ws.glob("*.db")) and not (ws / ".prefect" / "prefect.db").exists()  # no SQLite fallback
