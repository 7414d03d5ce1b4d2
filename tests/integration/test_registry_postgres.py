"""The production tracking backend: MLflow on the real PostgreSQL server (127.0.0.1:5432, trust auth).

Each test run creates its own database and drops it afterwards. Without a reachable server the test is
skipped on a developer machine and fails under CI (CI=true), where the server is part of the machine.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pytest

from recops.config import RegistryConfig, Settings
from recops.export import convert_ranker

HOST, PORT, ADMIN_DB = "127.0.0.1", 5432, "test"


def _admin_connection():
    import psycopg

    for user in ("postgres", "root", os.environ.get("USER", "postgres")):
        try:
            conn = psycopg.connect(host=HOST, port=PORT, dbname=ADMIN_DB, user=user, connect_timeout=3,
                                   autocommit=True)
            return conn, user
        except psycopg.OperationalError as exc:
            last = exc
    message = f"PostgreSQL not reachable at {HOST}:{PORT}: {last}"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture
def postgres_uri():
    conn, user = _admin_connection()
    name = f"recops_test_{uuid.uuid4().hex[:12]}"
    with conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://{user}@{HOST}:{PORT}/{name}"  # psycopg 3 (SQLAlchemy 2.0 defaults to psycopg2)
    finally:
        with conn.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.close()


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
