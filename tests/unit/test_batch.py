"""Batch scoring of a registered version against the real pipeline and a real MLflow registry (SQLite, temporary).

A tiny own-data project (60 users x 120 items, the clean log of ``tests/data/cases.py``; ids start at 1, so dense
indices leaking into the output would show) goes through every stage in-process and is registered twice
(version 1, then version 2, which takes the ``challenger`` alias). No champion alias is ever set.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recops.workspace import TABLES, read_json
from recops import steps
from recops.columns import Columns
from recops.config import Settings
from recops.errors import RecopsError
from recops.serving.batch import batch_score
from tests.conftest import PROJECT
from tests.data.cases import N_ITEMS, N_USERS, trained_project
from recops.workspace import Workspace

K = 10


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    settings = trained_project(tmp_path_factory.mktemp("batch-project"), PROJECT,
                               registry={"bootstrap_champion": False})
    steps.register(settings)  # version 2; the challenger alias moves to it
    return settings


@pytest.fixture(scope="module")
def challenger(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, pd.DataFrame]:
    out_dir = tmp_path_factory.mktemp("batch-challenger")
    manifest = batch_score(settings, "challenger", k=K, out_dir=out_dir)
    return manifest, pd.read_parquet(out_dir / manifest["file"])


def known_pairs(settings: Settings) -> set[tuple[int, int]]:
    """(user_id, item_id) of every interaction of the prepared log, in original ids."""
    log = pd.read_parquet(settings.path("interactions"))
    return set(zip(log[Columns.USER_ID].tolist(), log[Columns.ITEM_ID].tolist()))


def files_in(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


# ------------------------------------------------------------------------------------------------- the lists
def test_every_user_of_the_index_gets_exactly_k_rows(settings, challenger):
    _, frame = challenger
    index = Workspace(settings).index()
    counts = frame.groupby(Columns.USER_ID).size()
    assert sorted(counts.index.tolist()) == sorted(index.user_ids.tolist())
    assert (counts == K).all()


def test_ranks_run_from_one_to_k_for_every_user(challenger):
    _, frame = challenger
    ranks = frame.sort_values([Columns.USER_ID, Columns.RANK]).groupby(Columns.USER_ID)[Columns.RANK]
    assert ranks.apply(list).map(lambda r: r == list(range(1, K + 1))).all()


def test_no_user_is_recommended_an_item_of_their_train_valid_or_test_interactions(settings, challenger):
    _, frame = challenger
    recommended = set(zip(frame[Columns.USER_ID].tolist(), frame[Columns.ITEM_ID].tolist()))
    assert not recommended & known_pairs(settings)
    assert not frame.duplicated([Columns.USER_ID, Columns.ITEM_ID]).any()


def test_scores_are_float32_and_do_not_increase_with_rank(challenger):
    _, frame = challenger
    assert frame[Columns.SCORE].dtype == np.float32 and np.isfinite(frame[Columns.SCORE]).all()
    ordered = frame.sort_values([Columns.USER_ID, Columns.RANK])
    steps_down = ordered.groupby(Columns.USER_ID)[Columns.SCORE].diff().dropna()
    assert (steps_down <= 0).all()


def test_ids_are_the_original_ids_of_the_input_files(challenger):
    _, frame = challenger
    assert list(frame.columns) == [Columns.USER_ID, Columns.ITEM_ID, Columns.RANK, Columns.SCORE]
    assert set(frame[Columns.USER_ID]) == set(range(1, N_USERS + 1))  # dense indices would be 0..59
    assert frame[Columns.ITEM_ID].between(1, N_ITEMS).all()


def test_a_user_without_any_history_gets_the_popularity_fallback(settings, tmp_path, monkeypatch):
    """The index knows the user, the data no longer holds any of their interactions."""
    fold_tables = Workspace.fold

    def without_first_user(workspace, fold):
        return tuple(t[t[Columns.USER] != 0] for t in fold_tables(workspace, fold))

    monkeypatch.setattr(Workspace, "fold", without_first_user)
    manifest = batch_score(settings, "1", k=K, out_dir=tmp_path)
    frame = pd.read_parquet(tmp_path / manifest["file"])
    cold = frame[frame[Columns.USER_ID] == Workspace(settings).index().user_ids[0]]
    assert cold[Columns.RANK].tolist() == list(range(1, K + 1))
    assert manifest["users"] == N_USERS


# ------------------------------------------------------------------------------------------ manifest, pointer
def test_manifest_names_the_version_the_alias_and_the_data(settings, challenger, tmp_path):
    manifest, frame = challenger
    registered = read_json(settings.path("registry_report"))  # lineage of the last registration (v2)
    assert manifest["model_name"] == settings.registry.model_name
    assert (manifest["version"], manifest["alias"], manifest["requested"]) == ("2", "challenger", "challenger")
    assert manifest["file"] == "recommendations_v2.parquet"
    assert (manifest["k"], manifest["users"], manifest["rows"]) == (K, N_USERS, len(frame))
    assert manifest["users_with_fewer_than_k"] == 0
    assert manifest["data_md5"] == {name: registered[f"data_md5.{name}"] for name in TABLES}
    assert datetime.fromisoformat(manifest["created_at"]).utcoffset().total_seconds() == 0
    assert manifest["seconds"] > 0 and manifest["users_per_second"] > 0


def test_a_version_number_is_scored_as_given(settings, tmp_path):
    manifest = batch_score(settings, "1", k=3, out_dir=tmp_path)
    assert (manifest["version"], manifest["alias"], manifest["requested"]) == ("1", None, "1")
    assert read_json(tmp_path / "recommendations_v1.json") == manifest
    assert len(pd.read_parquet(tmp_path / "recommendations_v1.parquet")) == 3 * N_USERS


def test_latest_json_names_the_file_written_last(settings, tmp_path):
    batch_score(settings, "1", k=2, out_dir=tmp_path)
    batch_score(settings, "challenger", k=2, out_dir=tmp_path)
    latest = read_json(tmp_path / "latest.json")
    assert (latest["file"], latest["manifest"], latest["version"]) == (
        "recommendations_v2.parquet", "recommendations_v2.json", "2")
    batch_score(settings, "1", k=2, out_dir=tmp_path)
    assert read_json(tmp_path / "latest.json")["file"] == "recommendations_v1.parquet"


def test_default_output_folder_is_reports_batch(settings):
    manifest = batch_score(settings, "1", k=1)
    assert (settings.path("reports_dir") / "batch" / manifest["file"]).is_file()


# ------------------------------------------------------------------------------------------------------ errors
def test_champion_without_a_champion_alias_is_refused_naming_the_alias(settings, tmp_path):
    with pytest.raises(RecopsError, match="'champion' alias"):
        batch_score(settings, out_dir=tmp_path)


def test_unknown_version_is_refused_naming_it(settings, tmp_path):
    with pytest.raises(RecopsError, match="no version 99"):
        batch_score(settings, "99", k=K, out_dir=tmp_path)


@pytest.mark.parametrize("k", [0, -1])
def test_k_below_one_is_refused(settings, tmp_path, k):
    with pytest.raises(RecopsError, match="k must be a whole number of at least 1"):
        batch_score(settings, "1", k=k, out_dir=tmp_path)


def test_k_above_the_number_of_items_is_refused(settings, tmp_path):
    n_items = Workspace(settings).index().n_items
    with pytest.raises(RecopsError, match=f"more than the {n_items} items"):
        batch_score(settings, "1", k=n_items + 1, out_dir=tmp_path)


def test_k_longer_than_the_candidate_lists_gives_every_candidate_and_says_so(settings, tmp_path):
    """A list holds at most the version's ``candidates.n_candidates`` items (50 here)."""
    n_items = Workspace(settings).index().n_items
    manifest = batch_score(settings, "1", k=n_items, out_dir=tmp_path)
    frame = pd.read_parquet(tmp_path / manifest["file"])
    assert (frame.groupby(Columns.USER_ID).size() == settings.candidates.n_candidates).all()
    assert manifest["users_with_fewer_than_k"] == N_USERS


def test_a_failed_call_leaves_the_previous_outputs_as_they_were(settings, tmp_path):
    batch_score(settings, "1", k=K, out_dir=tmp_path)
    before = files_in(tmp_path)
    too_many = Workspace(settings).index().n_items + 1
    for version, k in (("champion", K), ("99", K), ("1", 0), ("1", too_many)):
        with pytest.raises(RecopsError):
            batch_score(settings, version, k=k, out_dir=tmp_path)
    assert files_in(tmp_path) == before
