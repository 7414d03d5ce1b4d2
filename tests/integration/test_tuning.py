"""`recops tune` on MovieLens-100k with a small budget: Optuna on the valid fold, MLflow nested runs, params.yaml."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.conftest import run_cli

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tuned(fresh_workspace):
    ws = fresh_workspace("tuning")
    before = (ws / "params.yaml").read_text()
    proc = run_cli(ws, "tune", "--budget", "30", "--write", "-q")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return ws, before, proc


def test_every_search_ran_and_started_from_the_current_params(tuned):
    ws, before, proc = tuned
    report = json.loads((ws / "reports" / "tuning.json").read_text())
    old = yaml.safe_load(before)
    # tuning.sources that are among candidates.sources (the time-aware ones too)
    assert set(report["sources"]) == {"mf", "ease", "itemknn", "recent_popularity"}
    for name, result in report["sources"].items():
        first = result["trials"][0]
        assert all(old["candidates"][key] == pytest.approx(value) for key, value in first["params"].items())
        # the best is the best of the trials, never worse than where the search started
        assert result["valid_ndcg@10"] == max(t["valid_ndcg@10"] for t in result["trials"])
        assert result["valid_ndcg@10"] >= first["valid_ndcg@10"]
    ranker = report["ranker"]
    assert ranker["trials"] and ranker["valid_ndcg@10"] >= ranker["trials"][0]["valid_ndcg@10"]
    assert "tuning on the valid fold" in proc.stdout


def test_best_values_are_written_into_params_yaml_keeping_comments(tuned):
    ws, before, _ = tuned
    after_text = (ws / "params.yaml").read_text()
    report = json.loads((ws / "reports" / "tuning.json").read_text())
    old, new = yaml.safe_load(before), yaml.safe_load(after_text)
    for section, values in report["updates"].items():
        for key, value in values.items():
            assert new[section][key] == pytest.approx(value)
    # nothing else changed
    for section in old:
        if section not in report["updates"]:
            assert new[section] == old[section]
        else:
            untouched = {k: v for k, v in old[section].items() if k not in report["updates"][section]}
            assert {k: new[section][k] for k in untouched} == untouched
    comments = [line.strip() for line in before.splitlines() if line.strip().startswith("#")]
    assert comments and all(c in after_text for c in comments)


def test_trials_are_nested_mlflow_runs_under_one_tune_run(tuned):
    ws, _, _ = tuned
    from mlflow.tracking import MlflowClient

    from recops.config import load_settings

    settings = load_settings(ws / "params.yaml")
    client = MlflowClient(tracking_uri=settings.tracking_uri())
    experiment = client.get_experiment_by_name(settings.registry.experiment)
    report = json.loads((ws / "reports" / "tuning.json").read_text())
    parent = client.get_run(report["mlflow_run_id"])
    assert parent.info.run_name == "tune" and parent.info.status == "FINISHED"
    children = client.search_runs([experiment.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
                                  max_results=1000)
    n_trials = sum(len(r["trials"]) for r in report["sources"].values()) + len(report["ranker"]["trials"])
    assert len(children) == n_trials
    assert all("valid.ndcg_at_10" in child.data.metrics for child in children)
    assert "valid.ranker.ndcg_at_10" in parent.data.metrics
