"""The production tracking backend: MLflow on the real PostgreSQL server (127.0.0.1:5432, trust auth).

Each test creates its own database and drops it afterwards (tests.conftest.postgres_database). The whole
lifecycle through the CLI and Prefect deployments on PostgreSQL is in test_deployments.py.
"""

from __future__ import annotations

from pathlib import Path

import lightgbm as lgb
import numpy as np
import pytest

from recops.config import RegistryConfig, Settings
from recops.export import convert_ranker
from tests.conftest import postgres_database
from tests.conftest import postgres_uri as make_uri


@pytest.fixture
def postgres_uri():
    with postgres_database() as (user, name):
        yield make_uri(user, name)


def tiny_ranker_onnx(tmp_path) -> Path:
    """A 5-tree LambdaRank model on 4 random features, exported to ONNX: something real to register."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 4)).astype(np.float32)
    booster = lgb.train({"objective": "lambdarank", "verbose": -1, "min_data_in_leaf": 5},
                        lgb.Dataset(x, label=rng.integers(0, 2, 200), group=[20] * 10), num_boost_round=5)
    onnx_path = tmp_path / "ranker.onnx"
    onnx_path.write_bytes(convert_ranker(booster, 4, 15).SerializeToString())
    return onnx_path


def test_versions_are_registered_with_lineage_in_postgres(tmp_path, postgres_uri):
    from recops.registry import list_versions, log_and_register

    onnx_path = tiny_ranker_onnx(tmp_path)
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "metrics.json").write_text('{"test.ranker.ndcg@10": 0.5}')
    settings = Settings(root=tmp_path, registry=RegistryConfig(tracking_uri=postgres_uri))

    first = log_and_register(settings, onnx_path=onnx_path, artifacts={"reports": tmp_path / "reports"},
                             metrics={"test.ranker.ndcg@10": 0.5}, lineage={"git_commit": "abc"})
    second = log_and_register(settings, onnx_path=onnx_path, artifacts={"reports": tmp_path / "reports"},
                              metrics={"test.ranker.ndcg@10": 0.6}, lineage={"git_commit": "def"})

    versions = list_versions(settings)
    assert [v["version"] for v in versions] == [first["model_version"], second["model_version"]] == ["1", "2"]
    assert [v["tags"]["git_commit"] for v in versions] == ["abc", "def"]
    assert all(not v["aliases"] for v in versions)
    # the artifacts went to the project's artifact folder, the metadata to PostgreSQL
    assert any((tmp_path / "mlartifacts").rglob("metrics.json"))
    assert not (tmp_path / "mlflow.db").exists()


def test_promotion_lifecycle_in_postgres(tmp_path, postgres_uri):
    from mlflow import MlflowClient

    from recops.registry import list_models, log_and_register, promote, promotion_history, rollback, set_challenger

    onnx_path = tiny_ranker_onnx(tmp_path)
    settings = Settings(root=tmp_path, registry=RegistryConfig(tracking_uri=postgres_uri))
    client = MlflowClient(tracking_uri=postgres_uri, registry_uri=postgres_uri)

    def register(ndcg: float) -> str:
        version = log_and_register(settings, onnx_path=onnx_path, artifacts={},
                                   metrics={"test.ranker.ndcg@10": ndcg, "test.popularity.ndcg@10": 0.1},
                                   lineage={"git_commit": "abc"})["model_version"]
        set_challenger(settings, version)
        return version

    first = register(0.15)
    assert promote(settings, ab_report=None, actor="ci")["promoted_on"] == "first_model_gates"
    second = register(0.16)
    report = {"decision": "ship", "champion_version": first, "challenger_version": second,
              "delta": 0.01, "p_value": 0.004}
    promote(settings, ab_report=report, actor="ci", reason="A/B ship")
    assert str(client.get_model_version_by_alias(settings.registry.model_name, "champion").version) == second
    assert client.get_model_version(settings.registry.model_name, second).tags["recops.ab.p_value"] == "0.004"

    rollback(settings, actor="ci", reason="latency alarm")
    assert str(client.get_model_version_by_alias(settings.registry.model_name, "champion").version) == first
    assert [(e["action"], e["from_version"], e["to_version"]) for e in promotion_history(settings)] == [
        ("promote", None, first), ("promote", first, second), ("rollback", second, first)]
    assert {m["version"]: m["aliases"] for m in list_models(settings)} == {first: ["champion"],
                                                                           second: ["challenger"]}
