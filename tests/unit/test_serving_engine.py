"""The serving bundle and engine against a real pipeline run and a real MLflow registry (SQLite, temporary).

A small own-data project (tests/data/cases.py: 60 users x 120 items with attributes) goes through every stage
in-process and is registered once. The bundle is downloaded from the registry and verified as the server does.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recops.columns import Columns
from recops.config import ServingConfig, Settings
from recops.errors import RecopsError
from recops.registry.mlflow_registry import download_serving_bundle
from recops.serving.bundle import load_bundle, sha256_file
from recops.serving.engine import (COLD_USER, UNKNOWN_USER, UNNAMED_REASON, Recommender, UnknownIdError,
                                   cap_positions)
from tests.conftest import PROJECT
from tests.data.cases import trained_project
from recops.workspace import Workspace

K = 10


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return trained_project(tmp_path_factory.mktemp("serving-project"), PROJECT,
                           registry={"bootstrap_champion": False})


@pytest.fixture(scope="module")
def downloaded(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    folder, expected, _ = download_serving_bundle(settings, "1", tmp_path_factory.mktemp("bundle"))
    return folder, expected


def engine(settings: Settings, downloaded, **serving) -> Recommender:
    folder, expected = downloaded
    config = ServingConfig.model_validate({**settings.serving.model_dump(), **serving})
    return Recommender(load_bundle(folder, expected), config, "1", settings.registry.model_name)


@pytest.fixture(scope="module")
def model(settings: Settings, downloaded) -> Recommender:
    return engine(settings, downloaded)


def _stored_as(settings: Settings, folder: Path, **storage) -> Recommender:
    from recops.config import StorageConfig
    from recops.bundling import build_bundle

    config = StorageConfig(**storage)
    manifest = build_bundle(settings.model_copy(update={"export": settings.export.model_copy(
        update={"storage": config})}), folder)
    assert manifest["storage"] == config.model_dump(mode="json")
    return Recommender(load_bundle(folder, None), settings.serving, "1")


@pytest.fixture(scope="module")
def exact(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Recommender:
    """The same version's bundle with every retrieval array in float32."""
    return _stored_as(settings, tmp_path_factory.mktemp("float32") / "bundle", mf_factors="float32",
                      item_item="float32")


def seen(settings: Settings) -> dict[str, set[str]]:
    log = pd.read_parquet(settings.path("interactions"))
    return log.groupby(log[Columns.USER_ID].astype(str))[Columns.ITEM_ID].agg(lambda s: set(map(str, s))).to_dict()


# ------------------------------------------------------------------------------------------------------ bundle
def test_the_registry_vouches_for_the_bundle(settings, downloaded):
    folder, expected = downloaded
    assert sha256_file(folder / "manifest.json") == expected
    arrays = list((folder / "arrays").rglob("*.npy"))
    assert arrays and all(np.load(p, allow_pickle=False) is not None for p in arrays)  # nothing needs pickle


def test_a_changed_file_is_refused_naming_it(downloaded, tmp_path):
    folder, expected = downloaded
    copy = tmp_path / "bundle"
    shutil.copytree(folder, copy)
    target = next((copy / "arrays").rglob("*.npy"))
    array = np.load(target)
    np.save(target, array + 1 if array.dtype != bool else ~array)
    with pytest.raises(RecopsError, match=target.name):
        load_bundle(copy, expected)


def test_a_manifest_the_registry_did_not_record_is_refused(downloaded):
    folder, _ = downloaded
    with pytest.raises(RecopsError, match="registry recorded"):
        load_bundle(folder, "0" * 64)


# ------------------------------------------------------------------------------------------------------ lists
def test_the_engine_gives_the_lists_the_pipeline_gives(settings, exact, downloaded, tmp_path):
    """The bundle's arrays and the engine's array path reproduce the pipeline's own rebuild of the version on the
    same history (the A/B path: sources refitted, DataFrames throughout), list for list — with the arrays stored
    as float32 (export.storage rounds them otherwise: measured by the compressed-storage tests below)."""
    model = exact
    from recops.evaluation.versions import rebuild_lists
    from recops.registry.mlflow_registry import download_version_files

    index = Workspace(settings).index()
    history, target = Workspace(settings).fold("test")
    history = pd.concat([history, target], ignore_index=True)
    users_attr, items_attr = Workspace(settings).attributes(index)
    users = np.arange(index.n_users, dtype=np.int32)
    files = download_version_files(settings, "1", tmp_path)
    built = rebuild_lists(settings, files, history, users, index.n_users, index.n_items, users_attr, items_attr, K,
                          measure_latency=False)
    lists, scores, explored = model.recommend_users(users, K)
    assert not explored.any()
    np.testing.assert_array_equal(lists[built.users], built.lists)
    np.testing.assert_allclose(scores[built.users], built.scores, rtol=1e-5, atol=1e-6)


def test_an_online_request_gives_the_block_paths_candidates_and_list(model):
    """One request runs the 1-D merge (``score_user`` of each source); a block of users runs the sparse block path.
    Every user's candidates, source columns and final list agree; scores exactly, but for MF's one-row BLAS
    product, which may differ from the block product in the last bits of float32 (both paths use the same
    one-row product for an online request). Compressed storages: test_a_bundle_with_compressed_retrieval_..."""
    from recops.candidates.merge import merged_candidate_blocks

    users = np.arange(model.n_users, dtype=np.int32)
    block = {}
    for columns in merged_candidate_blocks(model.sources, model.candidates_config, users, model.user_items,
                                           block_users=16):
        for name, values in columns.items():
            block.setdefault(name, []).append(values)
    single = {}
    for user in users:
        for name, values in next(merged_candidate_blocks(model.sources, model.candidates_config,
                                                         np.array([user], np.int32), model.user_items)).items():
            single.setdefault(name, []).append(values)
    for name in block:
        expected, got = np.concatenate(block[name]), np.concatenate(single[name])
        if name.startswith("mf_"):
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6 if name == "mf_score" else 1.0)
        else:
            np.testing.assert_array_equal(got, expected, err_msg=name)
    lists, _, _ = model.recommend_users(users, K)
    for user in users:
        np.testing.assert_array_equal(model.recommend_users(np.array([user]), K)[0][0], lists[user])


def test_lists_have_k_unseen_items_with_reasons_from_the_history(settings, model):
    known = seen(settings)
    for user in model.user_ids[:20]:
        rec = model.recommend(user, K)
        assert len(rec.items) == K and len(set(rec.items)) == K and rec.fallback is None
        assert not set(map(str, rec.items)) & known[str(user)]
        assert rec.scores == sorted(rec.scores, reverse=True)
        assert all(str(r["because"]) in known[str(user)] if r["because"] is not None else r["text"] == UNNAMED_REASON
                   for r in rec.reasons)


def test_explain_adds_the_rankers_top_feature_contributions(model):
    rec = model.recommend(model.user_ids[3], 5, explain=True)
    for reason in rec.reasons:
        names = [f["feature"] for f in reason["features"]]
        assert len(names) == 3 and set(names) <= set(model.feature_names)


def test_a_reason_names_only_a_pair_that_enough_other_users_share(settings, downloaded):
    """k-anonymity of reasons: "because you interacted with X" for Y says that people who had X had Y too, so X is
    named only when at least min_reason_support users other than the requester had both (counted here from the
    interaction table, not with the engine's own index)."""
    need = 6
    strict = engine(settings, downloaded, min_reason_support=need)
    log = pd.read_parquet(settings.path("interactions"))
    users_of = log.groupby(log[Columns.ITEM_ID].astype(str))[Columns.USER_ID].agg(lambda s: set(map(str, s)))
    named = unnamed = 0
    for user in strict.user_ids[:30]:
        for item, reason in zip(*(lambda r: (r.items, r.reasons))(strict.recommend(user, K))):
            if reason["because"] is None:
                unnamed += 1
                assert reason["text"] == UNNAMED_REASON and "because_title" not in reason
                continue
            named += 1
            others = (users_of[str(reason["because"])] & users_of[str(item)]) - {str(user)}
            assert len(others) >= need, (user, item, reason)
    assert named and unnamed  # both sides of the rule were exercised on this data


def test_the_support_table_and_the_counts_cut_short_then_finished_name_the_same_reasons(settings, downloaded,
                                                                                        monkeypatch):
    """A small catalogue's pair supports come from a table; a large one's are counted by binary searches, first on
    the first SUPPORT_CHUNK users of the pair's rarer item, the undecided ones exactly after (with a chunk of one
    user nearly every pair takes the exact round). All three name the same reasons."""
    import recops.serving.engine as engine_module

    strict = engine(settings, downloaded, min_reason_support=4)
    users = strict.user_ids[:30]
    usual = [strict.recommend(user, K).reasons for user in users]
    assert strict.support_table() is not None  # this catalogue's table was used
    strict._support_table = None  # the binary searches, as for a catalogue above SUPPORT_TABLE_ITEMS
    assert [strict.recommend(user, K).reasons for user in users] == usual
    monkeypatch.setattr(engine_module, "SUPPORT_CHUNK", 1)
    assert [strict.recommend(user, K).reasons for user in users] == usual
    monkeypatch.setattr(engine_module, "SUPPORT_TABLE_ITEMS", strict.n_items - 1)
    assert engine(settings, downloaded, min_reason_support=4).support_table() is None


def test_without_reasons_no_answer_carries_one_and_explain_adds_nothing(settings, downloaded):
    quiet = engine(settings, downloaded, reasons=False)
    user = quiet.user_ids[3]
    rec = quiet.recommend(user, K, explain=True)
    assert len(rec.items) == K and rec.reasons == [None] * K
    assert quiet.reasons_for(user, np.arange(K)) == [None] * K  # what a cached list is served with
    assert quiet._booster is None  # explain computed nothing


def test_an_unknown_user_gets_the_popularity_fallback_marked_as_such(model):
    rec = model.recommend("someone-new", K)
    assert rec.fallback == UNKNOWN_USER and len(rec.items) == K
    popularity = model.sources["popularity"].popularity_
    counts = [popularity[model.item_index(i)] for i in rec.items]
    assert counts == sorted(counts, reverse=True) and counts[0] == popularity.max()


def test_blocked_items_never_appear(settings, downloaded, model):
    users = np.arange(model.n_users)
    before, _, _ = model.recommend_users(users, K)
    top = pd.Series(before[:, 0]).value_counts().index[:3]
    blocked = [str(model.item_ids[i]) for i in top]
    strict = engine(settings, downloaded, blocked_items=blocked)
    after, _, _ = strict.recommend_users(users, K)
    assert not np.isin(after, top).any() and (after >= 0).all()
    assert not set(map(str, strict.recommend("someone-new", K).items)) & set(blocked)


def test_the_category_cap_limits_items_per_category(settings, downloaded):
    capped = engine(settings, downloaded, category_cap=2, cap_attribute="tags")
    lists, _, _ = capped.recommend_users(np.arange(capped.n_users), K)
    categories = np.where(lists >= 0, capped.categories[np.maximum(lists, 0)], -1)
    for row in categories:
        values, counts = np.unique(row[row >= 0], return_counts=True)
        assert counts.max() <= 2
    assert (lists >= 0).sum(axis=1).min() >= K // 2


def test_cap_positions_keeps_order_and_the_first_of_each_category():
    lists = np.array([[5, 6, 7, 8, 9], [1, 2, 3, -1, -1]])
    categories = np.array([0, 0, 0, 1, 1, 0, 0, 0, 1, -1])
    kept = cap_positions(lists, categories, cap=1, k=3)
    assert kept.tolist() == [[0, 3, 4], [0, 2, -1]]  # 5 (cat 0), 8 (cat 1), 9 (none); 1 (cat 0), 3 (cat 1)


def test_exploration_marks_the_explored_slot_and_is_deterministic(settings, downloaded):
    exploring = engine(settings, downloaded, exploration={"policy": "epsilon_greedy", "epsilon": 1.0, "slots": 1})
    user = exploring.user_ids[5]
    first = exploring.recommend(user, K, request_id="req-1")
    again = exploring.recommend(user, K, request_id="req-1")
    assert first.items == again.items and first.explored == again.explored
    assert first.explored[-1] and not any(first.explored[:-1])
    assert exploring.item_index(first.items[-1]) in set(exploring.exploration.pool.tolist())


# --------------------------------------------------------------------------------------------------- live events
def test_an_event_changes_the_very_next_answer(settings, downloaded):
    live = engine(settings, downloaded)
    user = live.user_ids[7]
    before = live.recommend(user, K)
    vector = live.sources["mf"].user_factors_[live.user_index(user)].copy()
    clicked = before.items[0]
    change = live.add_event(user, clicked)
    after = live.recommend(user, K)
    assert clicked not in after.items  # now seen
    assert not np.allclose(vector, live.sources["mf"].user_factors_[live.user_index(user)])  # folded in
    assert change["fold_in_ms"] < 1000
    assert live.stats.last_items[live.user_index(user)][0] == live.item_index(clicked)


def test_repeated_events_keep_a_users_live_state_to_its_distinct_items_and_sum_their_weights(settings, downloaded):
    # a flood of duplicates used to make every next event of that user cost O(events so far), under the lock
    once, flooded = engine(settings, downloaded), engine(settings, downloaded)
    user = once.user_ids[3]
    item = once.recommend(user, K).items[0]
    once.add_event(user, item, weight=300.0)
    for _ in range(300):
        flooded.add_event(user, item, weight=1.0)
    index = flooded.user_index(user)
    assert flooded.user_items.added[index] == {flooded.item_index(item): 300.0}
    assert np.allclose(once.sources["mf"].user_factors_[index], flooded.sources["mf"].user_factors_[index])
    assert flooded.recommend(user, K).items == once.recommend(user, K).items


def test_fold_in_of_a_users_own_history_reproduces_the_trained_vector(model):
    mf = model.sources["mf"]
    user = 11
    stored = mf.user_factors_[user].copy()
    row = model.confidence[user]
    vector = mf.fold_in(user, row.indices, row.data)
    cosine = float(vector @ stored / np.linalg.norm(vector) / np.linalg.norm(stored))
    mf.user_factors_[user] = stored
    assert cosine > 0.95


def test_events_for_unknown_ids_are_refused_naming_them(model):
    with pytest.raises(UnknownIdError, match="user 'ghost'"):
        model.add_event("ghost", model.item_ids[0])
    with pytest.raises(UnknownIdError, match="item 'nothing'"):
        model.add_event(model.user_ids[0], "nothing")


def test_a_cold_user_is_marked(settings, downloaded):
    cold = engine(settings, downloaded)
    user = cold.user_index(cold.user_ids[0])
    cold.user_items.base = cold.user_items.base.tolil()
    cold.user_items.base[user] = 0
    cold.user_items.base = cold.user_items.base.tocsr()
    cold.user_items.base.eliminate_zeros()
    cold.sources["mf"].generator_.has_history_[user] = False
    rec = cold.recommend(cold.user_ids[0], K)
    assert rec.fallback == COLD_USER and len(rec.items) == K


def test_download_folders_of_servers_that_are_gone_are_removed_at_start(tmp_path):
    import os
    import subprocess
    import sys

    from recops.serving.api import TMP_PREFIX, remove_stale_download_folders

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()  # a pid that has just exited
    stale = tmp_path / f"{TMP_PREFIX}{gone}-abc"
    (stale / "v3-1234").mkdir(parents=True)
    (stale / "v3-1234" / "ranker.onnx").write_bytes(b"x" * 1000)
    alive = tmp_path / f"{TMP_PREFIX}{os.getpid()}-def"
    alive.mkdir()
    other = tmp_path / "recops-register-xyz"
    other.mkdir()
    assert remove_stale_download_folders(tmp_path) == [stale]
    assert not stale.exists() and alive.is_dir() and other.is_dir()


def test_a_read_never_waits_for_another_users_event_application(settings, downloaded):
    import threading

    from recops.serving.engine import LOCK_STRIPES

    fresh = engine(settings, downloaded)
    busy, other = 0, next(u for u in range(1, fresh.n_users) if u % LOCK_STRIPES != 0)
    done: dict[int, bool] = {}

    def read(user: int) -> None:
        fresh.recommend(fresh.user_ids[user], 5)
        done[user] = True

    with fresh._locks[busy % LOCK_STRIPES]:  # an event of user `busy` being applied, as long as it takes
        threads = [threading.Thread(target=read, args=(u,), daemon=True) for u in (other, busy)]
        for thread in threads:
            thread.start()
        threads[0].join(timeout=30)
        assert done.get(other), "a read of another user waited for the event application"
        threads[1].join(timeout=0.3)
        assert not done.get(busy)  # the same user's read waits: it must see the event whole
    threads[1].join(timeout=30)
    assert done.get(busy)


# ------------------------------------------------------------------------------------------- compressed storage
@pytest.mark.parametrize("storage", [{"mf_factors": "int8", "item_item": "int8"},
                                     {"mf_factors": "float16", "item_item": "float16"},
                                     {"mf_factors": "float32", "item_item": "float32", "ease_top_k": 30}])
def test_a_bundle_with_compressed_retrieval_serves_nearly_the_same_lists(settings, exact, storage, tmp_path):
    """export.storage: int8 / float16 factors and item-item matrices and pruned EASE weights are what the bundle
    holds and what the server reads (no float32 copy of the item factors), and the lists barely move."""
    from recops.candidates.storage import RowStore

    model = exact
    assert isinstance(model.sources["mf"].generator_.item_factors_, np.ndarray)
    served = _stored_as(settings, tmp_path / "bundle", **storage)
    mf = served.sources["mf"].generator_.item_factors_
    if storage["mf_factors"] != "float32":
        assert isinstance(mf, RowStore) and mf.storage == storage["mf_factors"]
        n_items, width = model.sources["mf"].generator_.item_factors_.shape  # float32: 4 bytes per entry
        # int8: one byte per entry and a float32 scale per row (ML-100k's 28 factors: 29 % of float32)
        assert mf.nbytes == (n_items * (width + 4) if storage["mf_factors"] == "int8" else n_items * width * 2)
    if "ease_top_k" in storage:
        weights = served.sources["ease"].weights_
        assert np.all(np.diff(weights.indptr) == 30)
    if storage["item_item"] != "float32":
        weights = served.sources["ease"].weights_
        assert isinstance(weights, RowStore) and weights.storage == storage["item_item"]
    users = np.arange(model.n_users, dtype=np.int32)
    exact, approximate = model.recommend_users(users, K)[0], served.recommend_users(users, K)[0]
    overlap = np.mean([len(set(a) & set(b)) / K for a, b in zip(exact, approximate)])
    assert overlap >= 0.8, overlap
    answer = served.recommend(str(model.user_ids[0]), K)
    assert len(answer.items) == K and answer.items == served.item_ids[approximate[0]].tolist()
    for user in users:  # one request (each source's score_user) gives the block's list, to the last bit
        np.testing.assert_array_equal(served.recommend_users(np.array([user]), K)[0][0], approximate[user])
