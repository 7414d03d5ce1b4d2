"""The real pipeline on MovieLens-100k, end to end, through the same commands a user types.

One project copy is trained once with `recops run` (the Prefect flow); the tests then check its outputs, that
DVC considers it up to date, and that bad input afterwards fails cleanly and loses nothing. The tests share that
workspace in any order: the ones that change it (bad input, the DVC remote round trip) put it back as they found
it and check DVC agrees (:func:`restored`). That `dvc repro --force` reproduces the flow's metrics is checked on a
small own-data project (a second copy), where every stage takes seconds.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import yaml

from tests.conftest import run_cli, run_dvc, set_params
from tests.data.cases import PARAMS, cases, write_case, write_clean_case

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def trained(fresh_workspace):
    ws = fresh_workspace("pipeline")
    set_params(ws, backtest={"with_run": True, "quick": True, "windows": 2})
    proc = run_cli(ws, "run")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return ws, proc


def metrics(ws) -> dict[str, float]:
    return json.loads((ws / "reports" / "metrics.json").read_text())


def registered_versions(ws) -> list[dict]:
    from recops.config import load_settings
    from recops.registry import list_versions

    return list_versions(load_settings(ws / "params.yaml"))


@pytest.fixture
def restored(trained, tmp_path):
    """The trained workspace for a test that changes it; afterwards its params, its input folder, its reports
    (some are DVC outputs kept out of the cache: metrics, the validation summary) and every cached output DVC
    tracks (``dvc checkout``) are as they were, and ``dvc status`` says so."""
    ws = trained[0]
    params, lock = (ws / "params.yaml").read_text(), (ws / "dvc.lock").read_text()
    kept = ("reports", "data/external")
    for folder in kept:
        if (ws / folder).exists():
            shutil.copytree(ws / folder, tmp_path / folder, symlinks=True)
    yield ws
    (ws / "params.yaml").write_text(params)
    (ws / "dvc.lock").write_text(lock)
    for folder in kept:
        shutil.rmtree(ws / folder, ignore_errors=True)
        if (tmp_path / folder).exists():
            shutil.copytree(tmp_path / folder, ws / folder, symlinks=True)
    checkout = run_dvc(ws, "checkout", "--force")
    assert checkout.returncode == 0, checkout.stdout + checkout.stderr
    status = run_dvc(ws, "status")
    assert status.returncode == 0 and "up to date" in status.stdout, status.stdout + status.stderr


def test_run_prints_the_metrics_table(trained):
    _, proc = trained
    assert "test metrics" in proc.stdout
    for model in ("popularity", "mf", "ease", "itemknn", "two-stage"):
        assert model in proc.stdout
    assert "ndcg@10" in proc.stdout and "recall@20" in proc.stdout
    assert "vs best single-stage" in proc.stdout and "by user activity" in proc.stdout


BASELINES = ("popularity", "mf", "ease", "itemknn")


def test_run_reports_both_protocols_with_time_aware_popularity(trained):
    ws, proc = trained
    assert "quality on both protocols" in proc.stdout and "timeline ndcg@10" in proc.stdout
    assert "over recent popularity" in proc.stdout
    report = json.loads((ws / "reports" / "backtest.json").read_text())
    assert len(report["windows"]) == 2
    pooled = report["pooled"]["metrics"]
    assert {"recops", "recent_popularity", "decayed_popularity", "popularity"} <= set(pooled)
    for model, values in pooled.items():
        assert 0 < values["ndcg@10"] <= 1, model
    m = metrics(ws)
    for model in ("recent_popularity", "decayed_popularity"):  # the time-aware peers, on the per-user split too
        assert 0 < m[f"test.{model}.ndcg@10"] < m["test.ranker.ndcg@10"]


def test_two_stage_beats_every_single_stage_model(trained):
    m = metrics(trained[0])
    for name in ("ndcg@10", "recall@20"):
        for model in (*BASELINES, "recent_popularity", "decayed_popularity"):
            assert m[f"test.ranker.{name}"] > m[f"test.{model}.{name}"], (name, model)
    # and in every user-activity segment on NDCG@10, against MF and popularity at least
    for segment in ("light", "medium", "heavy"):
        for model in ("popularity", "mf"):
            assert m[f"test.ranker.segment.{segment}.ndcg@10"] > m[f"test.{model}.segment.{segment}.ndcg@10"]
    assert sum(m[f"test.ranker.segment.{s}.users"] for s in ("light", "medium", "heavy")) == m["test.ranker.users"]
    ranker = json.loads((trained[0] / "reports" / "ranker_metrics.json").read_text())
    assert 0 < ranker["valid.ranker.ndcg@10"] <= 1  # measured by the early-stopped model before the refit
    for model in (*BASELINES, "ranker"):
        for name in ("ndcg", "recall", "precision", "map", "mrr", "hitrate"):
            for k in (10, 20):
                assert 0.0 <= m[f"test.{model}.{name}@{k}"] <= 1.0
        for name in ("coverage@10", "novelty@10", "ild@10"):
            assert np.isfinite(m[f"test.{model}.{name}"])


def test_outputs_are_where_the_readme_says(trained):
    ws = trained[0]
    recs = pd.read_parquet(ws / "reports" / "recommendations_test.parquet")
    assert list(recs.columns) == ["user_id", "item_id", "rank", "score"]
    assert recs["user_id"].nunique() == 943  # every MovieLens user has test interactions
    assert recs.groupby("user_id")["rank"].agg(["min", "max", "count"]).eq([1, 100, 100]).all().all()
    assert recs["item_id"].between(1, 1682).all()
    ordered = recs.sort_values(["user_id", "rank"])
    assert (ordered.groupby("user_id")["score"].diff().dropna() <= 0).all()
    cands = json.loads((ws / "reports" / "candidates_metrics.json").read_text())
    assert 0 < cands["valid.candidates.recall@200"] <= 1 and 0 < cands["test.candidates.recall@200"] <= 1
    for source in BASELINES:  # merging sources finds more than any one of them
        assert cands[f"test.candidates.{source}.recall@200"] < cands["test.candidates.recall@200"]
    parity = json.loads((ws / "reports" / "export_metrics.json").read_text())
    assert parity["export.parity.top10_mismatched_users"] == 0
    assert (ws / "models" / "ranker.onnx").stat().st_size > 0
    # the serving bundle's compiled forest, checked against LightGBM on every test candidate
    compiled = json.loads((ws / "models" / "serving" / "manifest.json").read_text())["compiled_ranker"]
    assert compiled["parity"]["compiled.parity.rows"] == parity["export.parity.rows"]
    assert compiled["parity"]["compiled.parity.top10_mismatched_users"] == 0
    assert compiled["parity"]["compiled.parity.max_abs_diff"] < 1e-5  # float64 sums, like LightGBM
    assert (ws / "reports" / "validation" / "data_docs" / "index.html").is_file()
    assert (ws / "reports" / "plots" / "ranking_at_k.csv").is_file()
    registry = json.loads((ws / "reports" / "registry.json").read_text())
    versions = registered_versions(ws)
    assert [v["version"] for v in versions] == [registry["model_version"]]
    tags = versions[0]["tags"]
    assert tags["git_commit"] and tags["params_hash"] and tags["data_md5.interactions"]
    # training makes a challenger; with no champion yet, a version that passes the first-model gates becomes it
    assert sorted(versions[0]["aliases"]) == ["challenger", "champion"]
    assert registry["champion"] == registry["model_version"] and "gates" in registry["champion_note"]
    assert "the first champion" in trained[1].stdout


def test_dvc_metrics_show_is_a_headline_a_person_reads(trained):
    """One row per protocol and model, four columns, under 120 characters; the same numbers as the detail files;
    timings only in reports/timings (never in a file DVC tracks)."""
    ws = trained[0]
    proc = run_dvc(ws, "metrics", "show")
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert max(map(len, lines)) < 120, proc.stdout
    assert lines[0].split() == ["Path", "coverage@10", "ndcg@10", "novelty@10", "recall@20"]
    rows = {line.split()[0]: [float(v) for v in line.split()[1:]] for line in lines[1:]}
    for model in ("two-stage", "recent_popularity", "ease", "itemknn", "mf"):
        assert f"reports/headline/split/{model}.json" in rows and f"reports/headline/timeline/{model}.json" in rows
    detail = metrics(ws)
    assert rows["reports/headline/split/two-stage.json"][1] == pytest.approx(detail["test.ranker.ndcg@10"], abs=1e-4)
    report = json.loads((ws / "reports" / "backtest.json").read_text())
    assert rows["reports/headline/timeline/two-stage.json"][3] == pytest.approx(
        report["pooled"]["metrics"]["recops"]["recall@20"], abs=1e-4)
    lock = yaml.safe_load((ws / "dvc.lock").read_text())
    tracked = [ws / out["path"] for stage in lock["stages"].values() for out in stage.get("outs", [])]
    for path in tracked:
        if path.suffix == ".json":
            assert "seconds" not in path.read_text(), path
    assert "outs" not in lock["stages"]["register"]  # the registry's state is not an output of the deps
    timings = {p.stem for p in (ws / "reports" / "timings").glob("*.json")}
    assert {"ingest", "candidates", "train_ranker", "register"} <= timings
    shown = run_cli(ws, "metrics", "--verbose")
    assert "timings of the last run" in shown.stdout and "train_ranker" in shown.stdout
    assert "timings" not in run_cli(ws, "metrics").stdout


def test_dvc_plots_colour_every_model(trained):
    ws = trained[0]
    proc = run_dvc(ws, "plots", "show", "--json")
    assert proc.returncode == 0, proc.stderr
    plots = json.loads(proc.stdout)["data"]
    assert {"ndcg@k", "recall@k", "feature_importance"} <= set(plots)  # and no plot of the raw folder
    spec = plots["ndcg@k"][0]["content"]
    assert spec["encoding"]["color"]["field"] == "model"
    models = {row["model"] for row in spec["data"]["values"]}
    assert {"two-stage", "ease", "itemknn", "mf", "recent_popularity"} <= models


def test_the_champion_answers_every_movielens_user_with_k_unseen_items(trained):
    """What `recops serve` answers after `make run`: the app on the registry's champion, every ML-100k user."""
    from fastapi.testclient import TestClient

    from recops.config import load_settings
    from recops.serving.api import create_app

    ws = trained[0]
    settings = load_settings(ws / "params.yaml")
    log = pd.read_parquet(ws / "data" / "prepared" / "interactions.parquet")
    seen = log.groupby("user_id")["item_id"].agg(set)
    assert len(seen) == 943
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        for user, items in seen.items():
            body = client.get(f"/recommendations/{user}", params={"k": 10}).json()
            got = [entry["item_id"] for entry in body["items"]]
            assert len(got) == 10 == len(set(got)) and not set(got) & items, (user, body)
            # a reason names one of the user's own items, or none when too few others share the pair
            # (serving.min_reason_support: "based on your activity")
            named = [entry["reason"] for entry in body["items"] if entry["reason"]["because"] is not None]
            assert body["fallback"] is None and all(reason["because"] in items for reason in named)
            assert len(named) >= 5, body
            # the films by their titles (item_attributes.title), in the list and in its reasons
            assert all(entry["title"] for entry in body["items"]) and all(
                reason["because_title"] in reason["text"] for reason in named), body
        assert client.get("/ready").json()["version"] == json.loads(
            (ws / "reports" / "registry.json").read_text())["champion"]


def test_dvc_has_nothing_to_do_after_the_flow_and_outputs_round_trip_the_remote(restored):
    ws = restored
    status = run_dvc(ws, "status")
    assert status.returncode == 0 and "up to date" in status.stdout, status.stdout + status.stderr
    lock = yaml.safe_load((ws / "dvc.lock").read_text())
    outs = {out["path"]: out["md5"] for out in lock["stages"]["ingest"]["outs"]}
    assert outs["data/prepared/interactions.parquet"] == registered_versions(ws)[0]["tags"]["data_md5.interactions"]
    shutil.rmtree(ws / "data" / "split")
    shutil.rmtree(ws / ".dvc" / "cache")
    pulled = run_dvc(ws, "pull")
    assert pulled.returncode == 0, pulled.stderr
    assert (ws / "data" / "split" / "train.parquet").is_file()
    assert "up to date" in run_dvc(ws, "status").stdout


@pytest.fixture(scope="module")
def own_data(fresh_workspace, prefect_api):
    """A small own-data project (tests/data/cases.py) trained with `recops run`: the flow, in seconds."""
    ws = fresh_workspace("pipeline-own-data", prefect_api)
    write_clean_case(ws)
    set_params(ws, **PARAMS)
    proc = run_cli(ws, "run", "-q")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return ws


def test_dvc_repro_gives_the_same_metrics_as_the_flow(own_data):
    """One implementation behind both engines: `dvc repro --force` recomputes every stage and lands on the very
    numbers the Prefect flow produced (on a small project: the property does not depend on the data's size)."""
    ws = own_data
    before, lock_before = metrics(ws), (ws / "dvc.lock").read_text()
    proc = run_dvc(ws, "repro", "--force")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Running stage 'train_ranker'" in proc.stdout
    after = metrics(ws)
    assert after.keys() == before.keys()
    for key in before:
        assert after[key] == pytest.approx(before[key], rel=1e-9, abs=1e-12), key
    assert [v["version"] for v in registered_versions(ws)] == ["1", "2"]
    # byte for byte: every output DVC tracks is the same (no timings, no run ids, no registry state in them), so
    # a clone's `make run` leaves the committed dvc.lock as it was, the serving bundle included (its manifest
    # carries a build id computed from its files, not a build time)
    def hashes(text: str) -> dict[str, str]:
        lock = yaml.safe_load(text)
        return {f"{stage}:{entry['path']}": entry.get("md5") for stage, body in lock["stages"].items()
                for entry in [*body.get("deps", []), *body.get("outs", [])]}

    assert hashes((ws / "dvc.lock").read_text()) == hashes(lock_before)


def _snapshot(ws) -> dict[str, bytes]:
    files = ["reports/metrics.json", "reports/export_metrics.json", "reports/registry.json", "models/ranker.onnx",
             "models/ranker.txt", "reports/recommendations_test.parquet", "dvc.lock"]
    return {f: (ws / f).read_bytes() for f in files}


@pytest.mark.parametrize("case", ["duplicated_rows", "missing_column"])
@pytest.mark.parametrize("engine", ["prefect", "dvc"])
def test_bad_input_fails_cleanly_and_loses_nothing(restored, case, engine):
    ws = restored
    before, versions = _snapshot(ws), registered_versions(ws)
    name, files, overrides, words = next(c for c in cases() if c[0] == case)
    write_case(ws, files)
    set_params(ws, **PARAMS, **overrides)
    proc = run_cli(ws, "run", "--engine", engine)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "Traceback" not in output
    for word in words:
        assert word in output
    # the previous good run's reports, models and registry are untouched
    after = _snapshot(ws)
    for path, content in before.items():
        if path != "dvc.lock":
            assert after[path] == content, f"{path} changed after a failed run"
    assert registered_versions(ws) == versions
