"""recops.registry against a real MLflow (SQLite backend in a temporary project), no mocks.

One tiny LightGBM LambdaRank ranker is exported to ONNX once per module and registered twice; the tests read
back what MLflow stored. Failure cases use real broken inputs (a missing artifact, a corrupt ONNX file).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from pathlib import Path

import lightgbm as lgb
import mlflow
import mlflow.artifacts
import mlflow.onnx
import numpy as np
import onnxmltools
import onnxruntime as ort
import pandas as pd
import pytest
from mlflow import MlflowClient
from onnxmltools.convert.common.data_types import FloatTensorType

from recops.workspace import TABLES
from recops import steps
from recops.config import RegistryConfig, Settings
from recops.errors import RecopsError
from recops.registry import download_version, latest_version, list_versions, log_and_register, mlflow_metric_key
from recops.registry.mlflow_registry import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, _experiment_id, experiment_page

N_FEATURES = 6
METRICS = {"test.ranker.ndcg@10": 0.131, "test.ranker.recall@20": 0.42, "test.mf.coverage": 0.8,
           "test.candidates.mf.fit_seconds": 2.5}
# the second registration: a training whose first stage started PIPELINE_S before it registered
PIPELINE_S = 90.0
STAGE_SECONDS = {"ingest": 1.5, "train_ranker": 30.0}
Registered = list[dict[str, str]]  # what log_and_register returned, first call first
LINEAGE = {"git_commit": "0123abc", "data_md5.interactions": "d41d8cd98f00b204e9800998ecf8427e"}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project folder holding an exported ranker, a reports folder with a plot, and an MF model folder."""
    root = tmp_path_factory.mktemp("project")
    rng = np.random.default_rng(0)
    features = rng.random((200, N_FEATURES)).astype(np.float32)
    relevance = np.minimum((features[:, 0] * 4).astype(int), 3)
    train = lgb.Dataset(features, relevance, group=[20] * 10)
    booster = lgb.train(
        {"objective": "lambdarank", "min_data_in_leaf": 5, "verbose": -1, "num_threads": 1},
        train,
        num_boost_round=5,
    )
    onnx_model = onnxmltools.convert_lightgbm(
        booster, initial_types=[("input", FloatTensorType([None, N_FEATURES]))], target_opset=15
    )
    (root / "models" / "mf").mkdir(parents=True)
    (root / "models" / "ranker.onnx").write_bytes(onnx_model.SerializeToString())
    np.save(root / "models" / "mf" / "item_factors.npy", rng.random((10, 4)).astype(np.float32))
    (root / "reports" / "plots").mkdir(parents=True)
    (root / "reports" / "metrics.json").write_text(json.dumps(METRICS))
    (root / "reports" / "plots" / "ndcg.csv").write_text("k,ndcg\n10,0.131\n")
    # the prepared tables and split folds a training reads (logged as the run's datasets)
    log = pd.DataFrame({"user_id": [1, 1, 2], "item_id": [10, 11, 10], "timestamp": [1.0, 2.0, 3.0]})
    settings = Settings(root=root)
    for name in TABLES:
        settings.path(name).parent.mkdir(parents=True, exist_ok=True)
        log.to_parquet(settings.path(name), index=False)
    settings.path("split_dir").mkdir(parents=True)
    for number, fold in enumerate(("train", "valid", "test"), start=1):
        log.head(number).to_parquet(settings.path("split_dir") / f"{fold}.parquet", index=False)
    return root


def artifacts_of(root: Path) -> dict[str, Path]:
    return {"mf": root / "models" / "mf", "reports": root / "reports", "plots": root / "reports" / "plots"}


def feature_rows(n: int = 8) -> np.ndarray:
    return np.random.default_rng(1).random((n, N_FEATURES)).astype(np.float32)


@pytest.fixture(scope="module")
def settings(project: Path) -> Settings:
    return Settings(root=project)


@pytest.fixture(scope="module")
def client(settings: Settings) -> MlflowClient:
    return MlflowClient(tracking_uri=settings.tracking_uri(), registry_uri=settings.tracking_uri())


@pytest.fixture(scope="module")
def empty_cwd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("empty_cwd")


@pytest.fixture(scope="module")
def registered(settings: Settings, project: Path, empty_cwd: Path) -> Registered:
    """Two registrations of the same ranker with the same params, run from an empty directory; the second with an
    input example, the pipeline's start and stage durations, and the datasets it read."""
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(empty_cwd)
        first = log_and_register(settings, onnx_path=project / "models" / "ranker.onnx",
                                 artifacts=artifacts_of(project), metrics=METRICS,
                                 lineage={**LINEAGE, "params_hash": settings.params_hash()})
        second = log_and_register(settings, onnx_path=project / "models" / "ranker.onnx",
                                  artifacts=artifacts_of(project), metrics=METRICS,
                                  lineage={**LINEAGE, "params_hash": settings.params_hash()},
                                  input_example=feature_rows(3), started_at=time.time() - PIPELINE_S,
                                  stage_seconds=STAGE_SECONDS, datasets=steps.input_datasets(settings))
    return [first, second]


def version_numbers(settings: Settings) -> list[str]:
    return [v["version"] for v in list_versions(settings)]


def test_registering_twice_creates_versions_one_and_two(registered: Registered, settings: Settings) -> None:
    assert [r["model_version"] for r in registered] == ["1", "2"]
    assert registered[1]["model_uri"] == f"models:/{settings.registry.model_name}/2"
    assert registered[0]["run_id"] != registered[1]["run_id"]


def test_model_version_carries_lineage_tags(registered: Registered, client: MlflowClient, settings: Settings) -> None:
    version = client.get_model_version(settings.registry.model_name, registered[1]["model_version"])
    assert version.tags["git_commit"] == LINEAGE["git_commit"]
    assert version.tags["data_md5.interactions"] == LINEAGE["data_md5.interactions"]
    assert version.tags["params_hash"] == settings.params_hash()
    assert version.run_id == registered[1]["run_id"]


def test_run_is_finished_with_lineage_tags_and_all_params(
    registered: Registered,
    client: MlflowClient,
    settings: Settings,
) -> None:
    run = client.get_run(registered[0]["run_id"])
    assert run.info.status == "FINISHED"
    assert run.info.experiment_id == registered[0]["experiment_id"]
    assert run.data.tags["git_commit"] == LINEAGE["git_commit"]
    assert set(run.data.params) == set(settings.flat())
    assert run.data.params["evaluation.ks"] == "[10, 20]"


def test_metrics_are_logged_under_sanitised_keys_with_their_mapping(
    registered: Registered,
    client: MlflowClient,
) -> None:
    run_id = registered[0]["run_id"]
    logged = client.get_run(run_id).data.metrics
    mapping = mlflow.artifacts.load_dict(f"{client.get_run(run_id).info.artifact_uri}/metric_keys.json")
    assert set(mapping) == set(METRICS)
    assert {key: logged[mapping[key]] for key in METRICS} == pytest.approx(METRICS)
    assert mapping["test.ranker.ndcg@10"] == "test.ranker.ndcg_at_10"
    assert mapping["test.candidates.mf.fit_seconds"] == "timing/test.candidates.mf.fit_seconds"
    # nothing else outside the headline and timing sections
    assert {k for k in logged if "/" not in k} == {mlflow_metric_key(k) for k in METRICS if "seconds" not in k}


def test_headline_metrics_are_logged_again_in_the_section_mlflow_shows_first(
    registered: Registered, client: MlflowClient
) -> None:
    logged = client.get_run(registered[0]["run_id"]).data.metrics
    headline = {k for k in logged if k.startswith("headline/")}
    assert headline == {"headline/test.ranker.ndcg_at_10", "headline/test.ranker.recall_at_20"}
    assert all(logged[k] == logged[k.removeprefix("headline/")] for k in headline)
    # MLflow's chart sections: the part before the last "/", sorted, the unprefixed keys ("Model metrics") last
    sections = sorted({k.rsplit("/", 1)[0] for k in logged if "/" in k})
    assert sections[0] == "headline"


def test_two_trainings_with_the_same_params_get_unique_readable_run_names(
    registered: Registered, client: MlflowClient
) -> None:
    names = [client.get_run(r["run_id"]).info.run_name for r in registered]
    assert len(set(names)) == 2, names
    for record, name in zip(registered, names):
        assert re.fullmatch(rf"ranker-v{record['model_version']}-\d{{8}}-\d{{4}}", name), name


def test_the_run_spans_the_pipeline_and_logs_each_stage_duration(registered: Registered, client: MlflowClient) -> None:
    run = client.get_run(registered[1]["run_id"])
    assert (run.info.end_time - run.info.start_time) / 1000 >= PIPELINE_S
    metrics = run.data.metrics
    assert {k: metrics[f"timing/{k}_s"] for k in STAGE_SECONDS} == STAGE_SECONDS
    assert metrics["timing/pipeline_s"] >= PIPELINE_S
    assert 0 < metrics["timing/registration_s"] < metrics["timing/pipeline_s"]
    # without a given start the run starts when registration does
    first = client.get_run(registered[0]["run_id"])
    assert (first.info.end_time - first.info.start_time) / 1000 < PIPELINE_S


def test_the_inputs_are_logged_as_datasets_with_the_md5_dvc_records(
    registered: Registered, client: MlflowClient, settings: Settings
) -> None:
    inputs = client.get_run(registered[1]["run_id"]).inputs.dataset_inputs
    by_name = {i.dataset.name: i for i in inputs}
    source = settings.data.source
    expected = {f"{source}.{name}": settings.path(name) for name in TABLES}
    split_dir = settings.path("split_dir")
    expected |= {f"{source}.{fold}": split_dir / f"{fold}.parquet" for fold in ("train", "valid", "test")}
    assert set(by_name) == set(expected)
    for name, path in expected.items():
        assert by_name[name].dataset.digest == hashlib.md5(path.read_bytes()).hexdigest()
        assert json.loads(by_name[name].dataset.profile)["num_rows"] == len(pd.read_parquet(path))
    contexts = {name: {t.value for t in i.tags if t.key == "mlflow.data.context"} for name, i in by_name.items()}
    assert contexts[f"{source}.train"] == {"train"} and contexts[f"{source}.test"] == {"test"}
    assert contexts[f"{source}.interactions"] == {"prepared"}
    schema = json.loads(by_name[f"{source}.interactions"].dataset.schema)["mlflow_colspec"]
    assert [c["name"] for c in schema] == ["user_id", "item_id", "timestamp"]


def test_the_experiment_opens_on_the_model_training_view(
    registered: Registered, client: MlflowClient, settings: Settings
) -> None:
    assert client.get_experiment(registered[0]["experiment_id"]).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    # an experiment an older recops made gets the tag too
    older = client.create_experiment("made-by-an-older-recops")
    moved = Settings(root=settings.root, registry=RegistryConfig(experiment="made-by-an-older-recops"))
    assert _experiment_id(client, moved, settings.tracking_uri()) == older
    assert client.get_experiment(older).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    # MLflow 3.17's UI takes the view from its GenAI / Model training switch or the URL: recops' links say it
    served = Settings(root=settings.root, registry=RegistryConfig(tracking_uri="http://mlflow.internal:5000/"))
    assert experiment_page(served, older) == (
        f"http://mlflow.internal:5000/#/experiments/{older}?workflowType=machine_learning")


def test_the_model_its_versions_and_runs_are_described(
    registered: Registered, client: MlflowClient, settings: Settings
) -> None:
    model = client.get_registered_model(settings.registry.model_name)
    assert "recops promote" in model.description and "recops rollback" in model.description
    first, second = (client.get_model_version(settings.registry.model_name, r["model_version"]) for r in registered)
    assert "first version" in first.description
    assert "the same as version 1" in second.description  # what changed: nothing in the params
    assert f"{METRICS['test.ranker.ndcg@10']:.4f}" in second.description
    note = client.get_run(registered[1]["run_id"]).data.tags["mlflow.note.content"]
    assert "train_ranker" in note and f"{settings.data.source}.interactions" in note


def test_artifacts_are_stored_in_the_project_artifact_folder(
    registered: Registered,
    client: MlflowClient,
    settings: Settings,
) -> None:
    run_id = registered[0]["run_id"]
    top = {a.path for a in client.list_artifacts(run_id)}
    assert {"mf", "reports", "plots", "metric_keys.json"} <= top
    assert {a.path for a in client.list_artifacts(run_id, "plots")} == {"plots/ndcg.csv"}
    artifact_root = settings.path("mlflow_artifacts").resolve()
    assert client.get_experiment(registered[0]["experiment_id"]).artifact_location == artifact_root.as_uri()
    assert (artifact_root / run_id / "artifacts" / "mf" / "item_factors.npy").is_file()


def score(session_source: str | bytes, rows: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(session_source, providers=["CPUExecutionProvider"])
    return session.run(None, {"input": rows})[0]


def test_downloaded_version_scores_like_the_exported_file(
    registered: Registered,
    settings: Settings,
    project: Path,
    tmp_path: Path,
) -> None:
    folder = download_version(settings, registered[1]["model_version"], tmp_path)
    rows = feature_rows()
    expected = score(str(project / "models" / "ranker.onnx"), rows)
    np.testing.assert_array_equal(score(str(folder / "model.onnx"), rows), expected)
    assert (folder / "input_example.json").is_file()
    requirements = (folder / "requirements.txt").read_text()
    assert "onnxruntime==" in requirements and "numpy==" in requirements


def test_models_uri_loads_with_mlflow_onnx(
    registered: Registered,
    settings: Settings,
    project: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # MLflow resolves models:/ URIs with the global registry URI only (hence download_version).
    monkeypatch.setenv("MLFLOW_TRACKING_URI", settings.tracking_uri())
    model = mlflow.onnx.load_model(registered[0]["model_uri"])
    rows = feature_rows()
    expected = score(str(project / "models" / "ranker.onnx"), rows)
    np.testing.assert_array_equal(score(model.SerializeToString(), rows), expected)


def test_downloading_an_unknown_version_names_it(registered: Registered, settings: Settings, tmp_path: Path) -> None:
    with pytest.raises(RecopsError, match="no version 999"):
        download_version(settings, 999, tmp_path)


def test_no_alias_is_set_on_new_versions(registered: Registered, client: MlflowClient, settings: Settings) -> None:
    assert client.get_registered_model(settings.registry.model_name).aliases == {}
    assert all(v["aliases"] == [] for v in list_versions(settings))


def test_list_and_latest_version_report_versions_with_tags(registered: Registered, settings: Settings) -> None:
    versions = list_versions(settings)
    assert [v["version"] for v in versions][:2] == ["1", "2"]
    assert versions[0]["run_id"] == registered[0]["run_id"]
    assert versions[0]["tags"]["git_commit"] == LINEAGE["git_commit"]
    assert versions[0]["creation_timestamp"] > 0
    latest = latest_version(settings)
    assert latest is not None and latest["version"] == versions[-1]["version"]


def test_latest_version_is_none_for_an_unregistered_model(registered: Registered, project: Path) -> None:
    other = Settings(root=project, registry=RegistryConfig(model_name="never-registered"))
    assert latest_version(other) is None
    assert list_versions(other) == []


def test_missing_artifact_is_named_before_mlflow_is_touched(tmp_path: Path, project: Path) -> None:
    fresh = Settings(root=tmp_path)
    missing = tmp_path / "reports" / "nope"
    with pytest.raises(RecopsError, match="nope"):
        log_and_register(
            fresh,
            onnx_path=project / "models" / "ranker.onnx",
            artifacts={"reports": missing},
            metrics=METRICS,
            lineage=LINEAGE,
        )
    assert not fresh.path("mlflow_db").exists()
    assert not fresh.path("mlflow_artifacts").exists()


def test_corrupt_onnx_fails_the_run_and_registers_no_version(
    registered: Registered,
    settings: Settings,
    client: MlflowClient,
    project: Path,
    tmp_path: Path,
) -> None:
    before = version_numbers(settings)
    corrupt = tmp_path / "ranker.onnx"
    corrupt.write_bytes((project / "models" / "ranker.onnx").read_bytes()[:100])  # a truncated write
    with pytest.raises(RecopsError, match="ranker.onnx"):
        log_and_register(
            settings, onnx_path=corrupt, artifacts=artifacts_of(project), metrics=METRICS, lineage=LINEAGE
        )
    assert version_numbers(settings) == before
    newest_run = client.search_runs([registered[0]["experiment_id"]], order_by=["attributes.start_time DESC"])[0]
    assert newest_run.info.status == "FAILED"
    assert newest_run.data.metrics  # it failed midway: metrics were already logged


def test_metric_keys_that_collide_after_sanitising_are_rejected(settings: Settings, project: Path) -> None:
    with pytest.raises(RecopsError, match="ndcg_at_10"):
        log_and_register(
            settings,
            onnx_path=project / "models" / "ranker.onnx",
            artifacts={},
            metrics={"ndcg@10": 0.1, "ndcg_at_10": 0.2},
            lineage=LINEAGE,
        )


def test_non_numeric_metric_is_rejected(settings: Settings, project: Path) -> None:
    with pytest.raises(RecopsError, match="test.bad"):
        log_and_register(
            settings,
            onnx_path=project / "models" / "ranker.onnx",
            artifacts={},
            metrics={"test.bad": "0.3"},  # type: ignore[dict-item]
            lineage=LINEAGE,
        )


def test_metric_key_sanitising_is_deterministic() -> None:
    assert mlflow_metric_key("test.ranker.ndcg@10") == "test.ranker.ndcg_at_10"
    assert mlflow_metric_key("ab.test.p-value(ndcg@10)") == "ab.test.p-value_ndcg_at_10_"
    assert mlflow_metric_key("plain.key") == "plain.key"


def test_nothing_is_written_to_the_working_directory(registered: Registered, empty_cwd: Path) -> None:
    assert list(empty_cwd.iterdir()) == []


def test_global_tracking_uri_is_left_as_it_was(registered: Registered, settings: Settings) -> None:
    assert mlflow.get_tracking_uri() != settings.tracking_uri()
    assert os.environ.get("MLFLOW_TRACKING_URI") != settings.tracking_uri()
