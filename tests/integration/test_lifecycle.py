"""The daily lifecycle on MovieLens-100k through the CLI: train -> challenger, A/B, promote, hold, rollback.

One project copy; the tests run in order and share it. A deliberately weak configuration (MF with 8 factors and
popularity as the only sources, a 20-tree ranker) plays the model to beat or the bad challenger; the default
params.yaml (with a faster-learning ranker, to keep the test short) plays the better one. Real Prefect, MLflow
(SQLite), LightGBM and onnxruntime throughout.
"""

from __future__ import annotations

import hashlib
import json

import pytest

from tests.conftest import FAST_RANKER, run_cli, set_params

pytestmark = pytest.mark.integration

WEAK = {"candidates": {"sources": ["mf", "popularity"], "factors": 8}, "ranker": {"n_estimators": 20}}
# the default configuration with a faster-learning ranker (fewer trees to fit): still far better than WEAK
STRONG = FAST_RANKER
# what the held challenger is trained with: clearly below STRONG (WEAK itself came within noise of it once users
# were numbered by first interaction)
WORSE = {"candidates": {"sources": ["mf", "popularity"], "factors": 4, "iterations": 2},
         "ranker": {"n_estimators": 5, "num_leaves": 4}}


def client_and_name(ws):
    from mlflow.tracking import MlflowClient

    from recops.config import load_settings

    settings = load_settings(ws / "params.yaml")
    uri = settings.tracking_uri()
    return MlflowClient(tracking_uri=uri, registry_uri=uri), settings.registry.model_name


def alias(ws, name: str) -> str | None:
    client, model = client_and_name(ws)
    aliases = client.get_registered_model(model).aliases
    return str(aliases[name]) if name in aliases else None


def ok(proc) -> None:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]


def refused(proc, *words: str) -> None:
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    for word in words:
        assert word in proc.stderr, (word, proc.stderr[-3000:])


@pytest.fixture(scope="module")
def ws(fresh_workspace, prefect_api):
    ws = fresh_workspace("lifecycle", prefect_api)
    ws.joinpath("params.default.yaml").write_text((ws / "params.yaml").read_text())
    return ws


def use_params(ws, weak: bool) -> None:
    (ws / "params.yaml").write_text((ws / "params.default.yaml").read_text())
    set_params(ws, **(WEAK if weak else STRONG))


def test_training_registers_a_challenger_and_the_first_model_is_promoted_on_gates(ws):
    use_params(ws, weak=True)
    set_params(ws, registry={"bootstrap_champion": False})  # the first promotion by hand (make run does it itself)
    ok(run_cli(ws, "run", "-q"))
    assert alias(ws, "challenger") == "1" and alias(ws, "champion") is None
    refused(run_cli(ws, "ab", "-q"), "no 'champion' alias")
    ok(run_cli(ws, "promote", "-q", "--reason", "first model"))
    assert alias(ws, "champion") == "1"
    client, model = client_and_name(ws)
    tags = client.get_model_version(model, "1").tags
    assert tags["recops.promoted_on"] == "first_model_gates" and tags["recops.promotion_reason"] == "first model"
    refused(run_cli(ws, "promote", "-q"), "already")


def test_a_better_challenger_is_shipped_and_promoted(ws):
    use_params(ws, weak=False)
    ok(run_cli(ws, "run", "-q"))
    assert alias(ws, "challenger") == "2" and alias(ws, "champion") == "1"
    proc = run_cli(ws, "ab", "-q")
    ok(proc)
    assert "SHIP" in proc.stdout
    report = json.loads((ws / "reports" / "ab.json").read_text())
    assert report["decision"] == "ship"
    assert (report["champion_version"], report["challenger_version"]) == ("1", "2")
    assert report["delta"] > 0 and report["ci_low"] > 0 and report["p_value"] < 0.05
    assert {"primary_metric", "guardrails", "online", "interleaving", "mde", "segments"} <= set(report)
    assert all(g["passed"] for g in report["guardrails"] if g.get("passed") is not None)
    html = (ws / "reports" / "ab.html").read_text()
    assert "SHIP" in html and "data:image/png;base64" in html
    client, model = client_and_name(ws)
    run_id = client.get_model_version(model, "2").run_id
    run = client.get_run(run_id)
    assert run.data.tags["recops.ab.decision"] == "ship" and "ab.delta" in run.data.metrics
    assert {f.path for f in client.list_artifacts(run_id, "ab")} == {"ab/ab.json", "ab/ab.html"}
    digest = hashlib.sha256((ws / "reports" / "ab.json").read_bytes()).hexdigest()
    assert run.data.tags["recops.ab.report_sha256"] == digest  # the unedited report: promote acts on it
    ok(run_cli(ws, "promote", "-q"))
    assert alias(ws, "champion") == "2"
    tags = client.get_model_version(model, "2").tags
    assert tags["recops.promoted_on"] == "ab_test" and float(tags["recops.ab.delta"]) > 0
    assert tags["recops.ab.report_sha256"] == digest


def test_a_worse_challenger_is_held_and_cannot_be_promoted(ws):
    use_params(ws, weak=True)
    set_params(ws, **WORSE)
    ok(run_cli(ws, "run", "-q"))
    assert alias(ws, "challenger") == "3"
    proc = run_cli(ws, "ab", "-q")
    ok(proc)
    assert "HOLD" in proc.stdout
    report = json.loads((ws / "reports" / "ab.json").read_text())
    assert report["decision"] == "hold" and report["delta"] < 0
    assert any(r.startswith("against:") for r in report["reasons"])
    refused(run_cli(ws, "promote", "-q"), "hold")
    assert alias(ws, "champion") == "2"
    # the decision edited by hand to ship: not the report recops ab logged on version 3's run
    path = ws / "reports" / "ab.json"
    logged = hashlib.sha256(path.read_bytes()).hexdigest()
    path.write_text(path.read_text().replace('"decision": "hold"', '"decision": "ship"'))
    edited = hashlib.sha256(path.read_bytes()).hexdigest()
    refused(run_cli(ws, "promote", "-q"), "reports/ab.json", logged, edited, "Re-run the A/B test (recops ab)")
    assert alias(ws, "champion") == "2"
    # a report written by hand (about another pair, saying ship) is refused as well
    stale = {**report, "decision": "ship", "champion_version": "1"}
    (ws / "reports" / "stale.json").write_text(json.dumps(stale))
    refused(run_cli(ws, "promote", "-q", "--report", "reports/stale.json"), "stale.json", logged, "recops ab")
    assert alias(ws, "champion") == "2"
    # the same pair judged on the rolling timeline too: both configurations refitted before each cut
    set_params(ws, backtest={"windows": 2, "quick": True})
    proc = run_cli(ws, "ab", "-q", "--timeline")
    ok(proc)
    report = json.loads(path.read_text())
    assert report["decision"] == "hold" and report["timeline"]["delta"] < 0, report.get("timeline")
    assert report["timeline"]["n_users"] > 100
    assert any(r.startswith("against: on the rolling timeline") for r in report["reasons"]), report["reasons"]


def test_rollback_restores_the_previous_champion_once(ws):
    ok(run_cli(ws, "rollback", "-q", "--reason", "bad numbers in production"))
    assert alias(ws, "champion") == "1"
    refused(run_cli(ws, "rollback", "-q"), "previous champion")
    assert alias(ws, "champion") == "1"
    proc = run_cli(ws, "models")
    ok(proc)
    assert "champion" in proc.stdout and "challenger" in proc.stdout
    rows = {line.split()[0]: line for line in proc.stdout.splitlines() if line.strip()[:1].isdigit()}
    assert "rolled back" in rows["2"] and "promoted" not in rows["2"], rows  # not "promoted A/B" any more
    assert "promoted" in rows["1"] and max(len(line) for line in proc.stdout.splitlines()) > 80  # not cut at 80
    listed = json.loads(run_cli(ws, "models", "--json").stdout)
    assert [v["version"] for v in listed] == ["1", "2", "3"]
    assert all(v["lineage"]["params_hash"] and 0 < v["metrics"]["test.ranker.ndcg@10"] < 1 for v in listed)
    from recops.config import load_settings
    from recops.registry import promotion_history

    history = promotion_history(load_settings(ws / "params.yaml"))
    assert [(h["action"], h["to_version"]) for h in history] == [("promote", "1"), ("promote", "2"),
                                                                 ("rollback", "1")]
    assert history[-1]["reason"] == "bad numbers in production"


# --- what a user sees in MLflow after the three trainings, two A/B tests, two promotions and a rollback above ---


def version_runs(ws):
    client, model = client_and_name(ws)
    return client, model, {v: client.get_run(client.get_model_version(model, v).run_id) for v in ("1", "2", "3")}


def test_each_training_is_one_run_with_a_unique_name_that_spans_its_pipeline(ws):
    import re

    client, _, runs = version_runs(ws)
    names = [run.info.run_name for run in runs.values()]
    assert len(set(names)) == 3, names
    for version, run in runs.items():
        assert re.fullmatch(rf"ranker-v{version}-\d{{8}}-\d{{4}}", run.info.run_name), run.info.run_name
        stages = {k: v for k, v in run.data.metrics.items() if k.startswith("timing/") and k.endswith("_s")
                  and k not in ("timing/pipeline_s", "timing/registration_s")}
        assert {"timing/ingest_s", "timing/train_ranker_s", "timing/bundle_s"} <= set(stages), sorted(stages)
        span = (run.info.end_time - run.info.start_time) / 1000
        assert span >= sum(stages.values()) + run.data.metrics["timing/registration_s"], (span, stages)
        headline = {k for k in run.data.metrics if k.startswith("headline/")}
        assert {"headline/test.ranker.ndcg_at_10", "headline/test.ranker.recall_at_20"} <= headline
    experiment = client.get_experiment(runs["1"].info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # not the GenAI traces view


def test_the_runs_datasets_carry_the_md5_dvc_recorded_for_them(ws):
    import yaml

    _, _, runs = version_runs(ws)
    datasets = {i.dataset.name: i.dataset for i in runs["3"].inputs.dataset_inputs}  # the last training
    lock = yaml.safe_load((ws / "dvc.lock").read_text())
    outs = {out["path"]: out["md5"] for stage in lock["stages"].values() for out in stage.get("outs", [])}
    assert datasets["movielens100k.interactions"].digest == outs["data/prepared/interactions.parquet"]
    folder = outs["data/split"]  # a tracked folder: DVC's listing of it holds each file's md5
    listing = json.loads((ws / ".dvc" / "cache" / "files" / "md5" / folder[:2] / folder[2:]).read_text())
    recorded = {entry["relpath"]: entry["md5"] for entry in listing}
    for fold in ("train", "valid", "test"):
        assert datasets[f"movielens100k.{fold}"].digest == recorded[f"{fold}.parquet"]


def test_ab_metrics_are_logged_at_step_zero(ws):
    client, _, runs = version_runs(ws)
    for version in ("2", "3"):
        history = client.get_metric_history(runs[version].info.run_id, "ab.delta")
        assert history and {m.step for m in history} == {0}, history


def test_the_model_and_versions_describe_moves_decisions_and_changes(ws):
    client, model, _ = version_runs(ws)
    description = client.get_registered_model(model).description
    assert "`recops promote`" in description and "`recops rollback`" in description
    moves = [line.split("|")[2:4] for line in description.splitlines() if line.startswith("| 20")]
    assert [(action.strip(), move.strip()) for action, move in moves] == [
        ("rollback", "2 → 1"), ("promote", "1 → 2"), ("promote", "— → 1")]
    second = client.get_model_version(model, "2").description
    assert "**SHIP** against champion version 1" in second and "rolled back" in second
    third = client.get_model_version(model, "3").description
    assert "**HOLD** against champion version 2" in third
    assert "`candidates.sources`" in third and "changed since version 2" in third  # the weak config's params


def test_a_champion_alias_moved_outside_recops_is_marked_in_recops_models(ws):
    client, model = client_and_name(ws)
    client.set_registered_model_alias(model, "champion", "3")  # what the registry UI's alias button does
    try:
        proc = run_cli(ws, "models")
        ok(proc)
        rows = {line.split()[0]: line for line in proc.stdout.splitlines() if line.strip()[:1].isdigit()}
        assert "champion (moved outside recops)" in rows["3"], proc.stdout
        assert "moved outside recops" in proc.stderr and "ends at 1" in proc.stderr, proc.stderr
        listed = {v["version"]: v for v in json.loads(run_cli(ws, "models", "--json").stdout)}
        assert listed["3"]["alias_warning"] and listed["1"]["alias_warning"] is None
    finally:
        client.set_registered_model_alias(model, "champion", "1")  # set back (tests/unit/test_promotion.py: clean)
