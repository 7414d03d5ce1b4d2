"""Drift on a small own-data project (tests/data/cases.py): a champion is trained, then a snapshot arrives with a
planted shift — a block of new items taking 30 % of the new interactions, and the users' ages doubled. `recops
drift` names exactly those shifts, and the evaluate-and-promote flow's gate blocks the promotion when told to.
Real Prefect, MLflow, LightGBM throughout. The false-alarm rate on unshifted data is the unit tests' subject
(tests/unit/test_drift.py: 100 seeded resamples)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from tests.conftest import NO_GATES, replace_param, run_cli, run_env, set_params
from tests.data.cases import PARAMS, clean_tables, write_case

pytestmark = pytest.mark.integration


def files(events: pd.DataFrame, users: pd.DataFrame, items: pd.DataFrame) -> dict[str, bytes]:
    return {"events.csv": events.to_csv(index=False).encode(), "users.csv": users.to_csv(index=False).encode(),
            "items.csv": items.to_csv(index=False).encode()}


def shifted(events: pd.DataFrame, users: pd.DataFrame, items: pd.DataFrame, seed: int = 7):
    """30 days of new interactions after the log's end, 30 % of them on 3 items never seen before; ages x2."""
    rng = np.random.default_rng(seed)
    n = 900
    start = int(events["ts"].max()) + 3600
    new_items = np.arange(items["sku"].max() + 1, items["sku"].max() + 4)
    on_new = rng.random(n) < 0.3
    sku = np.where(on_new, rng.choice(new_items, n), rng.choice(items["sku"].to_numpy(), n))
    later = pd.DataFrame({"uid": rng.choice(users["uid"].to_numpy(), n), "sku": sku,
                          "ts": start + rng.integers(0, 30 * 86_400, n), "stars": rng.integers(1, 6, n)})
    later = later.drop_duplicates(["uid", "sku"])
    grown = pd.concat([events, later], ignore_index=True).drop_duplicates(["uid", "sku"], keep="first")
    more_items = pd.concat([items, pd.DataFrame({"sku": new_items, "price": 9.99, "tags": "a"})], ignore_index=True)
    return grown, users.assign(age=users["age"] * 2), more_items


@pytest.fixture(scope="module")
def project(fresh_workspace, prefect_api):
    ws = fresh_workspace("drift", prefect_api)
    events, users, items = clean_tables()
    write_case(ws, files(events, users, items))
    set_params(ws, **PARAMS)
    replace_param(ws, "registry.first_model_gates", NO_GATES)
    first = run_cli(ws, "run", "-q")  # version 1: the champion
    assert first.returncode == 0, first.stderr[-4000:]
    write_case(ws, files(*shifted(events, users, items)))
    second = run_cli(ws, "run", "-q")  # version 2: the challenger, on the shifted snapshot
    assert second.returncode == 0, second.stderr[-4000:]
    return ws


def test_drift_names_the_new_items_and_the_doubled_feature(project):
    ws = project
    proc = run_cli(ws, "drift")
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads((ws / "reports/monitoring/drift.json").read_text())
    assert out["version"] == "1" and "after version 1's history" in out["current"], out["current"]
    drifted = {c["name"] for c in out["report"]["checks"] if c["drifted"]}
    assert {"new_item_share", "user_age"} <= drifted, drifted
    assert "cold_user_share" not in drifted  # every user of the new period was known
    age = next(c for c in out["report"]["checks"] if c["name"] == "user_age")
    assert age["current_value"] == pytest.approx(2 * age["reference_value"], rel=0.25), age  # its mean doubled
    assert out["decision"]["drift"] and out["decision"]["decision"] == "warn only"  # the default action
    assert "new_item_share" in proc.stdout and "gate (warn)" in proc.stdout
    page = (ws / "reports/monitoring/drift.html").read_text()
    assert "new_item_share" in page and "<script" not in page


def test_the_gate_blocks_the_promotion_when_told_to(project):
    from recops.config import load_settings
    from recops.registry.promotion import current_aliases

    ws = project
    set_params(ws, monitoring={"drift": {"action": "block"}})
    settings = load_settings(ws / "params.yaml")
    assert current_aliases(settings) == {"champion": "1", "challenger": "2"}
    code = ("from flows.lifecycle import evaluate_and_promote_flow; "
            f"print(evaluate_and_promote_flow(params_path={str(ws / 'params.yaml')!r}))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ws, env=run_env(ws), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "drift" in proc.stdout and "'promotion': None" in proc.stdout, proc.stdout[-2000:]
    assert current_aliases(settings)["champion"] == "1"
    assert not (ws / "reports/ab.json").exists()  # blocked before any A/B


def test_the_gate_retrains_on_the_current_snapshot_before_the_ab_when_told_to(project):
    from recops.config import load_settings
    from recops.registry.mlflow_registry import latest_version
    from recops.registry.promotion import current_aliases

    ws = project
    set_params(ws, monitoring={"drift": {"action": "retrain"}})
    settings = load_settings(ws / "params.yaml")
    before = current_aliases(settings)
    registered = int(latest_version(settings)["version"])
    flow = ("from flows.lifecycle import evaluate_and_promote_flow; "
            f"print(evaluate_and_promote_flow(params_path={str(ws / 'params.yaml')!r}))")
    proc = subprocess.run([sys.executable, "-c", flow], cwd=ws, env=run_env(ws), capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "retraining on the current snapshot" in proc.stdout + proc.stderr
    assert int(latest_version(settings)["version"]) == registered + 1  # one new version, on the current snapshot
    report = json.loads((ws / "reports/ab.json").read_text())
    assert report["challenger_version"] == str(registered + 1)  # the A/B judged the fresh one, not the stale one
    assert report["champion_version"] == before["champion"]
