"""Temporal splits: sizes, ordering, ties, and that nothing from a later period reaches an earlier one."""

import numpy as np
import pandas as pd
import pytest

from recops.columns import Columns
from recops.config import RankerConfig, SplitConfig
from recops.errors import RecopsError
from recops.split import check_no_leakage, history_and_holdout, holdout_kind, split_interactions


def log(n_users=20, per_user=20, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        ts = np.sort(rng.integers(0, 10_000, size=per_user))
        for j, t in enumerate(ts):
            rows.append((u, (u * 7 + j) % 50, int(t)))
    return pd.DataFrame(rows, columns=[Columns.USER, Columns.ITEM, Columns.TIMESTAMP]).sample(frac=1, random_state=1)


def test_per_user_temporal_takes_each_users_latest_interactions():
    frame = log()
    parts = split_interactions(frame, SplitConfig(valid_fraction=0.1, test_fraction=0.1))
    assert len(parts["train"]) == 20 * 16 and len(parts["valid"]) == 40 and len(parts["test"]) == 40
    for part in ("valid", "test"):
        assert parts[part].groupby(Columns.USER).size().eq(2).all()
    last_train = parts["train"].groupby(Columns.USER)[Columns.TIMESTAMP].max()
    first_test = parts["test"].groupby(Columns.USER)[Columns.TIMESTAMP].min()
    assert (last_train <= first_test).all()


def test_ties_are_broken_by_item_so_the_split_is_deterministic():
    frame = pd.DataFrame({Columns.USER: [0] * 10, Columns.ITEM: list(range(10))[::-1], Columns.TIMESTAMP: [5] * 10})
    a = split_interactions(frame, SplitConfig())
    b = split_interactions(frame.sample(frac=1, random_state=3), SplitConfig())
    assert a["test"][Columns.ITEM].tolist() == [9] and b["test"][Columns.ITEM].tolist() == [9]
    assert a["valid"][Columns.ITEM].tolist() == [8]


def test_global_time_cut_puts_all_later_interactions_in_test():
    frame = log()
    parts = split_interactions(frame, SplitConfig(method="global_time", valid_fraction=0.1, test_fraction=0.1))
    assert parts["train"][Columns.TIMESTAMP].max() < parts["valid"][Columns.TIMESTAMP].min()
    assert parts["valid"][Columns.TIMESTAMP].max() < parts["test"][Columns.TIMESTAMP].min()


def test_predefined_split_uses_the_split_column():
    frame = log(n_users=3, per_user=3)
    frame[Columns.SPLIT] = np.tile(["train", "valid", "test"], 3)
    parts = split_interactions(frame, SplitConfig(method="predefined"))
    assert {len(p) for p in parts.values()} == {3}
    assert Columns.SPLIT not in parts["train"].columns


def test_leakage_check_rejects_a_test_interaction_older_than_training():
    train = pd.DataFrame({Columns.USER: [0], Columns.ITEM: [1], Columns.TIMESTAMP: [100]})
    test = pd.DataFrame({Columns.USER: [0], Columns.ITEM: [2], Columns.TIMESTAMP: [50]})
    with pytest.raises(RecopsError, match="leaks"):
        check_no_leakage({"train": train, "valid": train.iloc[:0], "test": test}, per_user=True)


def test_ranker_holdout_is_the_most_recent_part_of_training_only():
    parts = split_interactions(log(), SplitConfig())
    history, holdout = history_and_holdout(parts["train"], RankerConfig(holdout_fraction=0.25), "per_user")
    assert len(history) + len(holdout) == len(parts["train"])
    assert (history.groupby(Columns.USER)[Columns.TIMESTAMP].max()
            <= holdout.groupby(Columns.USER)[Columns.TIMESTAMP].min()).all()
    # nothing of valid/test is in either
    keys = lambda f: set(zip(f[Columns.USER], f[Columns.ITEM], f[Columns.TIMESTAMP]))
    assert not (keys(history) | keys(holdout)) & (keys(parts["valid"]) | keys(parts["test"]))


def test_too_short_histories_are_reported():
    frame = pd.DataFrame({Columns.USER: [0, 1], Columns.ITEM: [0, 1], Columns.TIMESTAMP: [1, 2]})
    with pytest.raises(RecopsError, match="empty"):
        split_interactions(frame, SplitConfig())


def test_global_holdout_is_one_cut_for_everybody_and_auto_follows_the_split():
    parts = split_interactions(log(), SplitConfig(method="global_time"))
    ranker = RankerConfig(holdout_fraction=0.25, label_days=None)  # the most recent quarter of the rows
    assert holdout_kind(ranker, SplitConfig(method="global_time"), parts) == "global_time"
    assert holdout_kind(ranker, SplitConfig(), split_interactions(log(), SplitConfig())) == "per_user"
    # a predefined split whose periods follow each other globally is a global cut
    assert holdout_kind(ranker, SplitConfig(method="predefined"), parts) == "global_time"
    assert holdout_kind(RankerConfig(holdout="per_user"), SplitConfig(method="global_time"), parts) == "per_user"
    history, holdout = history_and_holdout(parts["train"], ranker, "global_time")
    assert len(history) + len(holdout) == len(parts["train"])
    assert history[Columns.TIMESTAMP].max() <= holdout[Columns.TIMESTAMP].min()
    span = parts["train"][Columns.TIMESTAMP].max() - parts["train"][Columns.TIMESTAMP].min()
    with pytest.raises(RecopsError, match="label window"):
        history_and_holdout(parts["train"], RankerConfig(label_days=span / 86_400 * 2), "global_time")


def test_a_predefined_global_cut_gets_the_same_ranker_labels_as_global_time():
    # The user's own split column holding one global time cut: same parts, same (stacked) label windows, so the
    # same candidates, features and ranker as split.method global_time on that cut.
    from recops.columns import Columns as C
    from recops.split import global_time_labels, label_folds

    frame = log(n_users=40, per_user=30).reset_index(drop=True)
    frame[C.TIMESTAMP] = frame[C.TIMESTAMP] * 600  # ~70 days
    ranker = RankerConfig(label_days=7, label_windows=3)
    by_time = split_interactions(frame, SplitConfig(method="global_time"))
    labelled = frame.assign(**{C.SPLIT: global_time_labels(frame, 0.1, 0.1)})
    predefined = split_interactions(labelled, SplitConfig(method="predefined"))
    for name in ("train", "valid", "test"):
        pd.testing.assert_frame_equal(by_time[name], predefined[name])
    kinds = [holdout_kind(ranker, SplitConfig(method=m), p)
             for m, p in (("global_time", by_time), ("predefined", predefined))]
    assert kinds == ["global_time", "global_time"]
    a, b = (label_folds(p["train"], ranker, "global_time") for p in (by_time, predefined))
    assert len(a) == len(b) == 3
    for (h1, l1), (h2, l2) in zip(a, b):
        pd.testing.assert_frame_equal(h1, h2)
        pd.testing.assert_frame_equal(l1, l2)
        assert h1[C.TIMESTAMP].max() < l1[C.TIMESTAMP].min()  # each label window strictly after its history
