"""MovieLens-100k replayed as weekly snapshots: each goes through the snapshot flow (validate, train, DVC commit
and push, A/B, promote), and every registered version's lineage points at the DVC version of its own data.

The project reads ML-100k as a user's own Parquet log (the prepared tables of the embedded dataset), with a light
model configuration so that each training takes seconds. `recops replay` runs the snapshots in one process.
"""

from __future__ import annotations

import hashlib
import shutil

import pandas as pd
import pytest
import yaml

from tests.conftest import run_cli, set_params

pytestmark = pytest.mark.integration

WEEKS = 2


def md5(path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def replayed(fresh_workspace, prefect_api):
    ws = fresh_workspace("replay", prefect_api)
    from recops import steps
    from recops.config import load_settings

    steps.ingest(load_settings(ws / "params.yaml"))  # the embedded ML-100k, prepared
    external = ws / "data" / "external"
    shutil.copy(ws / "data" / "prepared" / "interactions.parquet", ws / "ml100k.parquet")
    for name in ("users", "items"):
        shutil.copy(ws / "data" / "prepared" / f"{name}.parquet", external / f"{name}.parquet")
    set_params(ws, data={
        "source": "file", "interactions_path": "data/external/interactions.parquet",
        "users_path": "data/external/users.parquet", "items_path": "data/external/items.parquet",
        "columns": {"user": "user_id", "item": "item_id", "timestamp": "timestamp", "rating": "rating",
                    "weight": None, "split": None},
    }, candidates={"sources": ["mf", "popularity"], "factors": 8}, ranker={"n_estimators": 20})
    proc = run_cli(ws, "replay", "ml100k.parquet", "--weeks", str(WEEKS))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-6000:]
    return ws, proc


def versions(ws):
    from recops.config import load_settings
    from recops.registry import list_models

    return list_models(load_settings(ws / "params.yaml"))


def test_each_snapshot_registered_a_version_and_the_first_became_champion(replayed):
    ws, proc = replayed
    found = versions(ws)
    assert [v["version"] for v in found] == [str(n) for n in range(1, WEEKS + 1)]
    assert "champion" in found[0]["aliases"] or any("champion" in v["aliases"] for v in found)
    assert "challenger" in found[-1]["aliases"]
    snapshots = sorted((ws / "data" / "snapshots").glob("snapshot_*.parquet"))
    sizes = [len(pd.read_parquet(path)) for path in snapshots]
    assert len(snapshots) == WEEKS and sizes == sorted(sizes) and sizes[-1] == 100_000
    for path in snapshots:
        assert path.name in proc.stdout


def test_every_version_points_at_the_dvc_version_of_its_own_data(replayed):
    ws, _ = replayed
    found = versions(ws)
    hashes = [v["lineage"]["data_md5.interactions"] for v in found]
    assert len(set(hashes)) == WEEKS  # the data changed with every snapshot
    # the newest version's data is what dvc.lock records now
    lock = yaml.safe_load((ws / "dvc.lock").read_text())
    outs = {o["path"]: o["md5"] for o in lock["stages"]["ingest"]["outs"]}
    assert outs["data/prepared/interactions.parquet"] == hashes[-1]
    # every version's data is in the DVC cache and in the DVC remote, and holds its snapshot's interactions
    snapshots = sorted((ws / "data" / "snapshots").glob("snapshot_*.parquet"))
    for digest, snapshot in zip(hashes, snapshots):
        cached = ws / ".dvc" / "cache" / "files" / "md5" / digest[:2] / digest[2:]
        assert cached.is_file() and md5(cached) == digest
        pushed = ws / ".dvc-remote" / "files" / "md5" / digest[:2] / digest[2:]  # remote url ../.dvc-remote from .dvc/
        assert pushed.is_file()
        assert len(pd.read_parquet(cached)) == len(pd.read_parquet(snapshot))


def test_the_second_snapshot_was_a_b_tested_against_the_first(replayed):
    ws, _ = replayed
    import json

    report = json.loads((ws / "reports" / "ab.json").read_text())
    assert (report["champion_version"], report["challenger_version"]) == ("1", "2")
    assert report["decision"] in ("ship", "hold") and report["reasons"]
