"""`recops backtest` on MovieLens-100k through the command a user types: bad parameters stop before anything is
written or logged, and a small real run (2 windows, quick grids) writes its reports and one MLflow parent run with
a nested run per window, registering nothing.

The run uses ``--engine local``: the Prefect engine (a temporary server, then the flow) adds 40-50 s on two cores,
more than this module's budget; its window plan is checked before the flow starts, which the bad-parameter tests
cover (they run with the default engine, prefect)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import FAST_RANKER, run_cli, set_params

pytestmark = pytest.mark.integration

DAY = 86_400.0
SMALL = ("--quick", "--windows", "2", "--test-days", "21")


def tracking(ws: Path):
    """(MlflowClient of the workspace's own store, the workspace's settings)."""
    from mlflow.tracking import MlflowClient

    from recops.config import load_settings

    settings = load_settings(ws / "params.yaml")
    return MlflowClient(tracking_uri=settings.tracking_uri()), settings


def runs_named(ws: Path, name: str) -> list:
    from mlflow.entities import ViewType

    client, _ = tracking(ws)
    experiments = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    if not experiments:
        return []
    return client.search_runs(experiments, filter_string=f"attributes.run_name = '{name}'",
                              run_view_type=ViewType.ALL, max_results=1000)


def model_versions(ws: Path) -> list:
    client, _ = tracking(ws)
    return client.search_model_versions()


def reports(ws: Path) -> list[Path]:
    return [ws / "reports" / "backtest.json", ws / "reports" / "backtest.html"]


# ---------------------------------------------------------------------------------------------- bad parameters
@pytest.fixture(scope="module")
def untouched(fresh_workspace) -> Path:
    return fresh_workspace("backtest-bad")


def log_span_days(ws: Path) -> float:
    ts = pd.read_parquet(ws / "data" / "prepared" / "interactions.parquet", columns=["timestamp"])["timestamp"]
    return float(ts.max() - ts.min()) / DAY


def test_more_windows_than_the_log_holds_exit_1_naming_the_numbers_and_write_nothing(untouched):
    proc = run_cli(untouched, "backtest", "-p", "params.yaml", "--windows", "30", "--test-days", "21")
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-4000:]
    output = proc.stdout + proc.stderr
    needed = 21 + 29 * 21 + 21 + 28  # test days of 30 windows side by side, valid_days, min_train_days
    for words in ("30 windows", f"need {needed:.1f} days", f"spans {log_span_days(untouched):.1f} days"):
        assert words in output, (words, output[-3000:])
    assert "Traceback" not in output
    assert not any(path.exists() for path in reports(untouched))
    assert runs_named(untouched, "backtest") == []
    assert model_versions(untouched) == []


def test_zero_windows_exit_1_naming_the_key_and_write_nothing(untouched):
    proc = run_cli(untouched, "backtest", "-p", "params.yaml", "--windows", "0")
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-4000:]
    output = proc.stdout + proc.stderr
    assert "backtest.windows" in output, output[-3000:]
    assert "Traceback" not in output
    assert not any(path.exists() for path in reports(untouched))
    assert runs_named(untouched, "backtest") == []
    assert model_versions(untouched) == []


# ------------------------------------------------------------------------------------------------ a small run
@pytest.fixture(scope="module")
def local_run(fresh_workspace):
    ws = fresh_workspace("backtest")
    set_params(ws, **FAST_RANKER)  # the backtest's rankers and the run of the last test: a third of the time
    proc = run_cli(ws, "backtest", "-p", "params.yaml", "--engine", "local", *SMALL)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return ws, json.loads((ws / "reports" / "backtest.json").read_text())


def test_the_report_has_two_windows_pooled_metrics_and_lift_intervals(local_run):
    _, report = local_run
    windows = report["windows"]
    assert [w["window"] for w in windows] == [0, 1]
    assert windows[1]["cut_ts"] - windows[0]["cut_ts"] == pytest.approx(21 * DAY)
    assert all(w["test_users"] >= report["config"]["min_users"] for w in windows)
    assert report["pooled"]["rows"] == sum(w["test_users"] for w in windows)
    pooled = report["pooled"]["metrics"]
    for model in ("recops", "recent_popularity"):
        assert set(pooled[model]) >= {"ndcg@10", "recall@20"}
        assert all(0.0 <= value <= 1.0 for value in pooled[model].values())
    for metric in ("ndcg@10", "recall@20"):
        lift = report["lift"][metric]
        assert lift["recops_value"] == pytest.approx(pooled["recops"][metric])
        assert "recent_popularity" in lift["over"]
        for peer, interval in lift["over"].items():
            low, value, high = interval["low_pct"], interval["lift_pct"], interval["high_pct"]
            assert all(math.isfinite(v) for v in (low, value, high)), (metric, peer, interval)
            assert low <= value <= high, (metric, peer, interval)
            ours, theirs = pooled["recops"][metric], pooled[peer][metric]
            assert value == pytest.approx(100 * (ours / theirs - 1))


def test_the_html_page_shows_two_plots(local_run):
    ws, _ = local_run
    html = (ws / "reports" / "backtest.html").read_text(encoding="utf-8")
    assert html.count("<img") == 2


def test_mlflow_has_one_backtest_run_with_a_nested_run_per_window_and_no_model_version(local_run):
    ws, report = local_run
    client, settings = tracking(ws)
    parents = runs_named(ws, "backtest")
    assert [run.info.run_id for run in parents] == [report["mlflow_run_id"]]
    parent = parents[0]
    assert parent.data.tags["recops.kind"] == "backtest" and parent.info.status == "FINISHED"
    experiment = client.get_experiment_by_name(settings.registry.experiment)
    children = client.search_runs([experiment.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(run.info.run_name for run in children) == ["backtest-window-0", "backtest-window-1"]
    assert all(run.data.tags["recops.kind"] == "backtest-window" for run in children)
    assert model_versions(ws) == []
    assert client.search_registered_models() == []


def test_first_model_gates_on_the_timeline_use_the_backtest_of_this_configuration_logged_on_the_version(local_run):
    """Last in this module: it registers a version. The small run above had the backtest of exactly the
    configuration trained here (the same windows, set in params now), so registration reuses it."""
    ws, report = local_run
    set_params(ws, backtest={"quick": True, "windows": 2, "test_days": 21},
               registry={"first_model_gates": {"fold": "timeline", "metric": "ndcg@10",
                                               "min_lift_over": {"recent_popularity": 0.0},
                                               "min_ci_low_over": {"popularity": 0.0}}})
    proc = run_cli(ws, "run", "-q", "--no-backtest")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    client, settings = tracking(ws)
    [version] = model_versions(ws)
    assert client.get_registered_model(settings.registry.model_name).aliases.get("champion") == version.version
    assert client.get_model_version(version.name, version.version).tags["recops.promoted_on"] == "first_model_gates"
    logged = client.get_run(version.run_id).data.metrics
    assert logged["timeline.ranker.ndcg_at_10"] == pytest.approx(report["pooled"]["metrics"]["recops"]["ndcg@10"])
    assert logged["timeline.recent_popularity.ndcg_at_10"] == pytest.approx(
        report["pooled"]["metrics"]["recent_popularity"]["ndcg@10"])
    assert len(runs_named(ws, "backtest")) == 1  # reused, not run again
