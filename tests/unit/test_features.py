"""Ranker features: computed from the history only, aligned to the right users and items."""

import numpy as np
import pandas as pd
import pytest

from recops.columns import Columns
from recops.config import AttributeColumns, FeaturesConfig
from recops.features import align_attributes, build_features

DAY = 86_400


def tiny():
    history = pd.DataFrame({
        Columns.USER: [0, 0, 1, 1, 1],
        Columns.ITEM: [0, 1, 0, 2, 1],
        Columns.TIMESTAMP: [0, DAY, 2 * DAY, 3 * DAY, 40 * DAY],
        Columns.RATING: [5.0, 3.0, 4.0, 2.0, 1.0],
    })
    items = pd.DataFrame({Columns.ITEM_ID: [10, 11, 12, 13], "year": [1990, 2000, np.nan, 2010],
                          "genres": ["a|b", "b", "c", "a"]})
    item_attr = align_attributes(items, Columns.ITEM_ID, np.array([10, 11, 12, 13]),
                                 AttributeColumns(id="item_id", numeric=["year"], multi_label=["genres"]))
    users = pd.DataFrame({Columns.USER_ID: [100, 101], "gender": ["F", "M"]})
    user_attr = align_attributes(users, Columns.USER_ID, np.array([100, 101]),
                                 AttributeColumns(id="user_id", categorical=["gender"]))
    cands = pd.DataFrame({Columns.USER: [0, 0, 1], Columns.ITEM: [2, 3, 3],
                          "mf_score": [0.5, 0.4, 0.9], "mf_rank": [1, 2, 1]})
    return history, cands, user_attr, item_attr


def test_statistics_and_labels():
    history, cands, user_attr, item_attr = tiny()
    target = pd.DataFrame({Columns.USER: [0], Columns.ITEM: [3], Columns.TIMESTAMP: [50 * DAY]})
    f = build_features(cands, history, 2, 4, FeaturesConfig(recent_window_days=30), user_attr, item_attr, target)
    assert f[Columns.LABEL].tolist() == [0, 1, 0]
    assert f["item_pop"].tolist() == [1, 0, 0]
    assert f["item_pop_recent"].tolist() == [0, 0, 0]  # item 2 was seen 37 days before the reference time
    assert f["user_activity"].tolist() == [2, 2, 3]
    assert f["user_mean_rating"].tolist() == pytest.approx([4.0, 4.0, 7 / 3])
    assert f["item_year"].iloc[0] != f["item_year"].iloc[0]  # NaN: unknown year stays missing
    assert f["user_gender"].tolist() == [0, 0, 1]
    assert f["item_age_days"].iloc[0] == pytest.approx(37.0)


def test_genre_affinity_is_cosine_of_profile_and_item_labels():
    history, cands, user_attr, item_attr = tiny()
    f = build_features(cands, history, 2, 4, FeaturesConfig(), user_attr, item_attr)
    # user 0 saw items 0 (a,b) and 1 (b): profile a=1, b=2 -> normalised (1,2)/sqrt5; item 3 is 'a'
    assert f["affinity_genres"].iloc[1] == pytest.approx(1 / np.sqrt(5), rel=1e-5)
    # item 2 is 'c', which user 0 never saw
    assert f["affinity_genres"].iloc[0] == pytest.approx(0.0)


def test_features_ignore_the_future():
    history, cands, user_attr, item_attr = tiny()
    f1 = build_features(cands, history, 2, 4, FeaturesConfig(), user_attr, item_attr)
    target = pd.DataFrame({Columns.USER: [0, 1], Columns.ITEM: [2, 3], Columns.TIMESTAMP: [99 * DAY, 99 * DAY]})
    f2 = build_features(cands, history, 2, 4, FeaturesConfig(), user_attr, item_attr, target)
    pd.testing.assert_frame_equal(f1.drop(columns=[Columns.LABEL]), f2.drop(columns=[Columns.LABEL]))


def test_attribute_alignment_follows_the_dense_index_not_the_table_order():
    table = pd.DataFrame({Columns.ITEM_ID: [3, 1, 2], "year": [2003, 2001, 2002]})
    attrs = align_attributes(table, Columns.ITEM_ID, np.array([1, 2, 3, 4]),
                             AttributeColumns(id="item_id", numeric=["year"]))
    assert attrs.numeric["year"][:3].tolist() == [2001, 2002, 2003]
    assert np.isnan(attrs.numeric["year"][3])


def test_source_columns_pass_through_in_order():
    history, cands, user_attr, item_attr = tiny()
    f = build_features(cands, history, 2, 4, FeaturesConfig(), user_attr, item_attr)
    assert list(f.columns[3:5]) == ["mf_score", "mf_rank"]
    assert f["mf_score"].tolist() == pytest.approx([0.5, 0.4, 0.9])


def test_item_age_at_the_users_last_activity():
    history, cands, user_attr, item_attr = tiny()
    f = build_features(cands, history, 2, 4, FeaturesConfig(), user_attr, item_attr)
    # user 0 was last active on day 1; item 2 first appeared on day 3 (2 days later); item 3 never
    assert f["item_age_at_user_days"].iloc[0] == pytest.approx(-2.0)
    assert np.isnan(f["item_age_at_user_days"].iloc[1])


def test_sequence_similarity_uses_the_users_last_items():
    history, cands, user_attr, item_attr = tiny()
    config = FeaturesConfig(sequence_length=1, similarity_shrinkage=0.0)
    factors = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 2.0], [1.0, 1.0]], dtype=np.float32)
    f = build_features(cands, history, 2, 4, config, user_attr, item_attr, item_factors=factors)
    # user 0's last item is 1 (day 1): cos(item 2, item 1) = 1, cos(item 3, item 1) = 1/sqrt2
    assert f["seq_mf_max"].iloc[0] == pytest.approx(1.0)
    assert f["seq_mf_mean"].iloc[1] == pytest.approx(1 / np.sqrt(2), rel=1e-5)
    # co-occurrence cosine from the history: items 1 and 2 share user 1 -> 1 / sqrt(2 * 1)
    assert f["seq_cooc_max"].iloc[0] == pytest.approx(1 / np.sqrt(2), rel=1e-5)
    # item 3 never occurs: no co-occurrence
    assert f["seq_cooc_max"].iloc[1] == pytest.approx(0.0)
    without = build_features(cands, history, 2, 4, config, user_attr, item_attr)
    assert "seq_mf_max" not in without.columns


def test_category_lift_compares_the_items_share_among_the_users_group_with_its_overall_share():
    history, cands, user_attr, item_attr = tiny()
    f = build_features(cands, history, 2, 4, FeaturesConfig(), user_attr, item_attr)
    # gender M (user 1) made 3 of 5 interactions, 1 of them with item 2: share 1/3; overall share of item 2: 1/5
    assert f["lift_among_gender"].iloc[0] == pytest.approx(0.0)  # user 0 is F: no F interaction with item 2
    assert np.isnan(f["lift_among_gender"].iloc[2])  # item 3 never seen overall


def test_one_users_rows_get_exactly_the_features_they_get_in_a_block_of_users():
    """An online request gathers one user's rows (values taken once and broadcast, rows with a full sequence summed
    unmasked); a block of users gathers row by row. The same rows must get the same bits either way."""
    from recops.features.builder import gather_feature_matrix, history_statistics

    rng = np.random.default_rng(5)
    n_users, n_items = 40, 60
    rows = 900
    history = pd.DataFrame({Columns.USER: rng.integers(0, n_users, rows), Columns.ITEM: rng.integers(0, n_items, rows),
                            Columns.TIMESTAMP: rng.integers(0, 90 * DAY, rows).astype(float),
                            Columns.RATING: rng.integers(1, 6, rows).astype(float)})
    history = history[~((history[Columns.USER] >= 30) & (history.index % 3 > 0))]  # some users with < 5 items
    items = pd.DataFrame({Columns.ITEM_ID: np.arange(n_items), "year": rng.integers(1950, 2020, n_items),
                          "genres": rng.choice(["a|b", "b", "c", "a|c"], n_items)})
    item_attr = align_attributes(items, Columns.ITEM_ID, np.arange(n_items),
                                 AttributeColumns(id="item_id", numeric=["year"], multi_label=["genres"]))
    users = pd.DataFrame({Columns.USER_ID: np.arange(n_users), "gender": rng.choice(["F", "M"], n_users)})
    user_attr = align_attributes(users, Columns.USER_ID, np.arange(n_users),
                                 AttributeColumns(id="user_id", categorical=["gender"]))
    factors = rng.normal(size=(n_items, 6)).astype(np.float32)
    config = FeaturesConfig(sequence_length=5, similarity_neighbours=n_items)
    stats = history_statistics(history, n_users, n_items, config, user_attr, item_attr, factors)
    u = np.repeat(np.arange(n_users), 25).astype(np.int32)
    i = rng.integers(0, n_items, len(u)).astype(np.int32)
    sources = rng.normal(size=(len(u), 3)).astype(np.float32)
    block = gather_feature_matrix(u, i, sources, stats, 10_000)
    assert (stats.last_items[:, -1] < 0).any() and (stats.last_items[:, -1] >= 0).any()
    for dense_similarity in (False, True):
        if dense_similarity:
            stats.similarity = stats.similarity.toarray()
        for user in range(n_users):
            mine = u == user
            one = gather_feature_matrix(u[mine], i[mine], sources[mine], stats, 10_000)
            np.testing.assert_array_equal(one, block[mine], err_msg=f"user {user}")
