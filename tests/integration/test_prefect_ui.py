"""What a user sees of recops in Prefect: the flow runs' logs carry recops' own lines, the runs leave artifacts
(the metrics table, the A/B decision, the backtest), a held promotion is "Held" in the run's state, and the
terminal of `recops run` shows Prefect's per-task lines only with -v.

A small own-data project (tests/data/cases.py: every stage takes seconds) on the session's Prefect server; what
the runs left there is read back through Prefect's client (tests/prefect_runs.py). The tests run in order and
share the project: a first `recops run` (the first champion), a second with -v (a challenger with the same
configuration, hence the same lists: the A/B cannot ship it), the evaluate-and-promote flow, then a backtest.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import NO_GATES, replace_param, run_cli, run_env, set_params
from tests.data.cases import PARAMS, write_clean_case
from tests.prefect_runs import flow_runs, run_artifacts, run_logs, table_rows

pytestmark = pytest.mark.integration

TASK_CHATTER = "Finished in state Completed()"  # what Prefect logs for every task run


def ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]


@pytest.fixture(scope="module")
def project(fresh_workspace, prefect_api):
    ws = fresh_workspace("prefect-ui", prefect_api)
    write_clean_case(ws)
    set_params(ws, **PARAMS)
    replace_param(ws, "registry.first_model_gates", NO_GATES)  # random data: the first model is the champion
    proc = run_cli(ws, "run")
    ok(proc)
    return ws, proc


def settings_of(ws):
    from recops.config import load_settings

    return load_settings(ws / "params.yaml")


def only_run(prefect_api, flow_name: str, ws, index: int = -1):
    runs = flow_runs(prefect_api, flow_name, ws / "params.yaml")
    assert runs, f"no {flow_name} run of {ws} on the server"
    return runs[index]


def test_the_terminal_shows_recops_lines_but_not_prefects_per_task_lines(project):
    _, proc = project
    assert "recops.steps: stage train_ranker done" in proc.stderr, proc.stderr[-3000:]
    assert TASK_CHATTER not in proc.stderr and "Beginning flow run" not in proc.stderr, proc.stderr[-3000:]


def test_the_training_run_logs_hold_recops_lines_of_every_stage(project, prefect_api):
    from recops.steps import STAGES

    ws, _ = project
    logs = run_logs(prefect_api, only_run(prefect_api, "recops-training", ws, 0))
    recops = [log.message for log in logs if log.name.startswith("recops.")]
    for stage in STAGES:
        assert any(message.startswith(f"stage {stage} done in") for message in recops), (stage, recops)


def test_the_training_run_has_the_test_metrics_table_and_says_what_it_registered(project, prefect_api):
    from recops.steps import all_metrics
    from recops.workspace import read_json

    ws, _ = project
    settings = settings_of(ws)
    run = only_run(prefect_api, "recops-training", ws, 0)
    artifacts = run_artifacts(prefect_api, run)
    assert f"{settings.registry.model_name}-metrics" in artifacts, sorted(artifacts)
    rows = table_rows(artifacts[f"{settings.registry.model_name}-metrics"])
    metrics = all_metrics(settings)
    models = {key.split(".")[1] for key in metrics if key.startswith("test.") and key.endswith(".ndcg@10")}
    assert {row["model"] for row in rows} == {"two-stage" if m == "ranker" else m for m in models}
    for row in rows:
        model = "ranker" if row["model"] == "two-stage" else row["model"]
        assert row["ndcg@10"] == pytest.approx(metrics[f"test.{model}.ndcg@10"], abs=1e-4), row
    version = read_json(settings.path("registry_report"))["model_version"]
    assert run.state.is_completed() and f"version {version} registered" in run.state.message, run.state


def test_run_verbose_shows_prefects_per_task_lines(project):
    ws, _ = project
    proc = run_cli(ws, "run", "-v")  # also trains the challenger of the next test
    ok(proc)
    assert TASK_CHATTER in proc.stderr and "recops.steps: stage train_ranker done" in proc.stderr, proc.stderr[-3000:]


def test_a_held_promotion_is_held_in_the_run_state_with_the_decision_as_artifact(project, prefect_api):
    from recops.registry.promotion import current_aliases

    ws, _ = project
    settings = settings_of(ws)
    aliases = current_aliases(settings)
    if aliases.get("challenger") == aliases.get("champion"):  # run alone: train a challenger first
        ok(run_cli(ws, "run", "-q"))
    # the flow as a deployment runs it: in a process no recops entry point configured
    code = ("from flows.lifecycle import evaluate_and_promote_flow; "
            f"evaluate_and_promote_flow(params_path={str(ws / 'params.yaml')!r})")
    ok(subprocess.run([sys.executable, "-c", code], cwd=ws, env=run_env(ws), capture_output=True, text=True,
                      timeout=600))
    report = json.loads((settings.path("reports_dir") / "ab.json").read_text())
    assert report["decision"] == "hold", report["reasons"]
    assert current_aliases(settings)["champion"] == aliases["champion"]
    run = only_run(prefect_api, "recops-evaluate-and-promote", ws)
    against = next(r for r in report["reasons"] if r.startswith("against:")).removeprefix("against:").strip()
    assert run.state.is_completed() and run.state.name == "Held", run.state
    assert run.state.message.startswith("held: ") and against in run.state.message, run.state.message
    decision = run_artifacts(prefect_api, run)[f"{settings.registry.model_name}-ab-decision"].data
    assert "HOLD" in decision and all(reason in decision for reason in report["reasons"]), decision
    assert any(log.name.startswith("recops.") for log in run_logs(prefect_api, run))


def test_the_backtest_run_has_pooled_metrics_and_lift_intervals_as_artifact(project, prefect_api):
    ws, _ = project
    settings = settings_of(ws)
    ok(run_cli(ws, "backtest", "-q", "--quick", "--windows", "2", "--test-days", "21"))
    report = json.loads(settings.path("backtest_report").read_text())
    run = only_run(prefect_api, "recops-backtest", ws)
    text = run_artifacts(prefect_api, run)[f"{settings.registry.model_name}-backtest"].data
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ")}
    for model, values in report["pooled"]["metrics"].items():
        assert all(f" {value:.4f} " in rows[model] for value in values.values()), (model, text)
    for lift in report["lift"].values():
        for over in lift["over"].values():
            assert f"{over['low_pct']:+.1f}% to {over['high_pct']:+.1f}%" in text, text
    assert f"best peer {report['lift']['ndcg@10']['best_peer']}" in run.state.message, run.state
