"""The rolling-origin backtest on small synthetic logs: the window plan and its errors, point in time (nothing at or
after a window's cut reaches what is fitted for it, and a leaky feature is caught), a known drift that the
time-aware sources and the two-stage list must follow, and the paired bootstrap lift interval."""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime, timezone
from functools import lru_cache

import numpy as np
import pandas as pd
import pytest

from recops.evaluation.backtest import (DAY, Window, check_windows, lift_interval, plan_windows, timeline_settings,
                                        warm_users, window_parts, with_overrides)
from recops.candidates.merge import fit_sources
from recops.data.matrices import interaction_matrix
from recops.candidates.sources import recommend
from recops.columns import Columns
from recops.config import BacktestConfig, CandidatesConfig, RankerConfig, Settings
from recops.errors import RecopsError
from recops.features import Attributes, build_features
from recops.pipeline import fold_candidates, run_fold, two_stage_recommend
from recops.split import history_and_holdout

T0 = 1_600_000_000  # 2020-09-13, seconds
NO_ATTRIBUTES = Attributes()


def settings_with(**backtest) -> Settings:
    return Settings(threads=1, backtest=BacktestConfig(**backtest))


# ------------------------------------------------------------------------------------------------ a uniform log
@lru_cache(maxsize=None)
def _uniform_log(n_users: int = 300, n_items: int = 200, days: float = 120.0, seed: int = 0) -> pd.DataFrame:
    """Users consuming Zipf-popular items (each at most once) at uniform times over ``days``; dense int ids,
    timestamps in whole seconds, rows in time order."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, n_items + 1) ** 0.9
    weights /= weights.sum()
    users, items = [], []
    for user in range(n_users):
        n = int(rng.integers(20, 41))
        users.append(np.full(n, user))
        items.append(rng.choice(n_items, size=n, replace=False, p=weights))
    u, i = np.concatenate(users), np.concatenate(items)
    frame = pd.DataFrame({Columns.USER: u.astype(np.int32), Columns.ITEM: i.astype(np.int32),
                          Columns.TIMESTAMP: T0 + rng.integers(0, int(days * DAY), len(u)),
                          Columns.RATING: rng.integers(1, 6, len(u)).astype(np.float64)})
    return frame.sort_values(Columns.TIMESTAMP, kind="stable").reset_index(drop=True)


def uniform_log() -> pd.DataFrame:
    return _uniform_log().copy()


def _date(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%d %H:%M")


# --------------------------------------------------------------------------------------------------- the plan
def test_a_plan_longer_than_the_log_is_refused_with_the_days_needed_and_the_span():
    log = uniform_log()
    ts = log[Columns.TIMESTAMP].to_numpy(dtype=np.float64)
    span = (ts.max() - ts.min()) / DAY
    # 10 windows of 21 days side by side, 21 validation days and 28 days of history before them
    needed = 21 + 9 * 21 + 21 + 28
    assert needed > span
    with pytest.raises(RecopsError) as err:
        plan_windows(ts, settings_with(windows=10, test_days=21))
    message = str(err.value)
    assert "10 windows" in message
    assert f"need {needed:.1f} days" in message
    assert f"spans {span:.1f} days" in message
    assert "backtest.windows" in message  # what to change


def test_a_valid_plan_steps_back_from_the_logs_end_by_step_days():
    log = uniform_log()
    ts = log[Columns.TIMESTAMP].to_numpy(dtype=np.float64)
    windows = plan_windows(ts, settings_with(windows=3, test_days=14, step_days=7, valid_days=10,
                                             min_train_days=28))
    assert [w.index for w in windows] == [0, 1, 2]
    cuts = np.array([w.cut for w in windows])
    np.testing.assert_allclose(np.diff(cuts), 7 * DAY)
    for w in windows:
        assert w.valid_start == pytest.approx(w.cut - 10 * DAY)
        assert w.test_end == pytest.approx(w.cut + 14 * DAY)
    assert windows[-1].test_end > ts.max()  # the last test period holds the log's last interaction
    assert windows[-1].test_end - ts.max() <= 1.0
    last = window_parts(log, windows[-1])["test"]
    assert last[Columns.TIMESTAMP].max() == ts.max()
    assert windows[0].valid_start - 28 * DAY >= ts.min()  # min_train_days of history before the first window


def test_thin_windows_are_refused_naming_the_window_and_its_counts():
    log = uniform_log()
    settings = settings_with(windows=2, test_days=14, min_users=100_000)
    windows = plan_windows(log[Columns.TIMESTAMP].to_numpy(dtype=np.float64), settings)
    with pytest.raises(RecopsError) as err:
        check_windows(log, windows, settings)
    message = str(err.value)
    assert "min_users=100000" in message
    ts = log[Columns.TIMESTAMP].to_numpy()
    for w in windows:
        train = log[ts < w.valid_start]
        valid = log[(ts >= w.valid_start) & (ts < w.cut)]
        test = log[(ts >= w.cut) & (ts < w.test_end)]
        n_valid = len(set(valid[Columns.USER]) & set(train[Columns.USER]))
        n_test = len(set(test[Columns.USER]) & (set(train[Columns.USER]) | set(valid[Columns.USER])))
        assert (f"window {w.index} (cut {_date(w.cut)}): {n_valid} warm validation users in {len(valid)} rows, "
                f"{n_test} warm test users in {len(test)} rows") in message


def test_check_windows_reports_the_sizes_of_windows_that_are_large_enough():
    log = uniform_log()
    settings = settings_with(windows=2, test_days=14, min_users=20)
    windows = plan_windows(log[Columns.TIMESTAMP].to_numpy(dtype=np.float64), settings)
    sizes = check_windows(log, windows, settings)
    ts = log[Columns.TIMESTAMP].to_numpy()
    for w, size in zip(windows, sizes):
        test = log[(ts >= w.cut) & (ts < w.test_end)]
        before = set(log.loc[ts < w.cut, Columns.USER])
        assert size["test_rows"] == len(test)
        assert size["test_users"] == len(set(test[Columns.USER]) & before) >= 20


def test_a_bad_override_names_the_backtest_key():
    with pytest.raises(RecopsError, match=r"backtest\.windows=0"):
        with_overrides(Settings(), windows=0)
    changed = with_overrides(Settings(), windows=3, test_days=None)
    assert changed.backtest.windows == 3 and changed.backtest.test_days == Settings().backtest.test_days


# ----------------------------------------------------------------------------------------------- point in time
PIT_SETTINGS = Settings(
    threads=1,
    candidates=CandidatesConfig(sources=["popularity", "recent_popularity", "itemknn", "mf"], factors=8,
                                iterations=3, n_candidates=30),
    backtest=BacktestConfig(windows=2, test_days=14, valid_days=14),
)


def pit_window(log: pd.DataFrame) -> Window:
    """The older of the two windows: the log already holds a test period and more after its cut."""
    return plan_windows(log[Columns.TIMESTAMP].to_numpy(dtype=np.float64), PIT_SETTINGS)[0]


def window_users(log: pd.DataFrame, window: Window) -> np.ndarray:
    """The window's warm test users (seen before the cut, active in the test period)."""
    parts = window_parts(log, window)
    return warm_users(parts["test"], pd.concat([parts["train"], parts["valid"]], ignore_index=True))


def post_cut_rows(log: pd.DataFrame, window: Window, seed: int = 1) -> pd.DataFrame:
    """Interactions at or after ``window.cut`` only: new users, new items, more rows of existing users and items
    (the window's own users among them, in its test period), some exactly at the cut."""
    rng = np.random.default_rng(seed)
    n_users, n_items = int(log[Columns.USER].max()) + 1, int(log[Columns.ITEM].max()) + 1
    start, stop = math.ceil(window.cut), int(log[Columns.TIMESTAMP].max() + 10 * DAY)
    own = window_users(log, window)

    def rows(users, items, ts) -> pd.DataFrame:
        return pd.DataFrame({Columns.USER: np.asarray(users, np.int32), Columns.ITEM: np.asarray(items, np.int32),
                             Columns.TIMESTAMP: np.asarray(ts, np.int64),
                             Columns.RATING: rng.integers(1, 6, len(users)).astype(np.float64)})

    new_users, new_items = n_users + np.arange(30), n_items + np.arange(20)
    blocks = [
        # the window's own users, inside its test period
        rows(np.repeat(own, 2), rng.integers(0, n_items, 2 * len(own)),
             rng.integers(start, int(window.test_end), 2 * len(own))),
        # existing users and items, anywhere after the cut
        rows(rng.integers(0, n_users, 600), rng.integers(0, n_items, 600), rng.integers(start, stop, 600)),
        # new users, on old and new items
        rows(np.repeat(new_users, 8), rng.choice(np.r_[np.arange(n_items), new_items], 240),
             rng.integers(start, stop, 240)),
        # new items, consumed by existing users
        rows(rng.integers(0, n_users, 300), rng.choice(new_items, 300), rng.integers(start, stop, 300)),
        # exactly at the cut
        rows(rng.choice(own, 20), rng.integers(0, n_items, 20), np.full(20, start)),
    ]
    return pd.concat(blocks, ignore_index=True)


def with_post_cut_rows(log: pd.DataFrame, window: Window) -> pd.DataFrame:
    """``log`` grown by :func:`post_cut_rows`, in time order (the earlier rows keep their order)."""
    grown = pd.concat([log, post_cut_rows(log, window)], ignore_index=True)
    return grown.sort_values(Columns.TIMESTAMP, kind="stable").reset_index(drop=True)


FoldBuilder = Callable[[pd.DataFrame, Window, np.ndarray, int, int], dict[str, pd.DataFrame]]


def assert_point_in_time(build_fold: FoldBuilder) -> None:
    """``build_fold(log, window, users, n_users, n_items)`` -> the named tables of a window's fold. They must not
    change when the log grows by interactions at or after the window's cut.

    ``users`` (whose lists are built) are the base log's warm test users in both runs: who is judged depends on
    the test period by design, what they are given must not. ``n_users`` / ``n_items`` are those of the grown log
    in both runs (the ids are dense ints that appending does not change), so that matrix shapes match."""
    log = uniform_log()
    window = pit_window(log)
    grown = with_post_cut_rows(log, window)
    n_users, n_items = int(grown[Columns.USER].max()) + 1, int(grown[Columns.ITEM].max()) + 1
    users = window_users(log, window)
    before = build_fold(log, window, users, n_users, n_items)
    after = build_fold(grown, window, users, n_users, n_items)
    assert list(before) == list(after)
    for name in before:
        pd.testing.assert_frame_equal(before[name], after[name], obj=name)


def test_the_appended_rows_are_at_or_after_the_cut_and_touch_new_and_existing_users_and_items():
    log = uniform_log()
    window = pit_window(log)
    added = post_cut_rows(log, window)
    assert len(added) >= 1000
    assert (added[Columns.TIMESTAMP] >= window.cut).all()
    assert (added[Columns.TIMESTAMP] == window.cut).sum() >= 20
    assert (added[Columns.USER] > log[Columns.USER].max()).any()
    assert (added[Columns.ITEM] > log[Columns.ITEM].max()).any()
    existing = (added[Columns.USER] <= log[Columns.USER].max()) & (added[Columns.ITEM] <= log[Columns.ITEM].max())
    assert existing.sum() >= 600
    assert set(window_users(log, window)) <= set(added[Columns.USER])
    # the grown log's test period differs: the point-in-time check does not compare identical inputs
    grown = with_post_cut_rows(log, window)
    assert len(grown) == len(log) + len(added)
    assert len(window_parts(grown, window)["test"]) > len(window_parts(log, window)["test"])


def pipeline_fold(log: pd.DataFrame, window: Window, users: np.ndarray, n_users: int,
                  n_items: int) -> dict[str, pd.DataFrame]:
    """What the backtest fits for one window, as in ``two_stage_recommend``: the ranker's label fold (history cut
    once more at a global time), the validation fold, and the test-period fold over the window's users."""
    parts = window_parts(log, window)
    train, valid = parts["train"], parts["valid"]
    ranker_history, labels = history_and_holdout(train, PIT_SETTINGS.ranker, "global_time")
    args = (n_users, n_items, NO_ATTRIBUTES, NO_ATTRIBUTES, 0)
    fit = run_fold(PIT_SETTINGS, ranker_history, labels, np.unique(labels[Columns.USER]), *args)
    valid_fold = run_fold(PIT_SETTINGS, train, valid, np.unique(valid[Columns.USER]), *args)
    test = run_fold(PIT_SETTINGS, pd.concat([train, valid], ignore_index=True), None, users, *args)
    return {"train": train, "valid": valid,
            "fit_candidates": fit.candidates, "fit_features": fit.table,
            "valid_candidates": valid_fold.candidates, "valid_features": valid_fold.table,
            "test_candidates": test.candidates, "test_features": test.table}


def test_nothing_at_or_after_the_cut_changes_a_windows_parts_candidates_or_features():
    built: list[dict[str, pd.DataFrame]] = []

    def recorded(*args):
        built.append(pipeline_fold(*args))
        return built[-1]

    assert_point_in_time(recorded)
    # what was compared is a real fold: labels, every source and the trending features are there
    outputs = built[0]
    assert outputs["fit_features"][Columns.LABEL].sum() > 0 and outputs["valid_features"][Columns.LABEL].sum() > 0
    for column in ("mf_score", "recent_popularity_rank", "item_pop_7d", "item_velocity_14d"):
        assert outputs["test_features"][column].notna().any()


def scoring_table(log: pd.DataFrame, window: Window, users: np.ndarray, n_users: int, n_items: int,
                  leak: bool) -> dict[str, pd.DataFrame]:
    parts = window_parts(log, window)
    history = pd.concat([parts["train"], parts["valid"]], ignore_index=True)
    candidates, _, _ = fold_candidates(PIT_SETTINGS, history, users, n_users, n_items, seed=0)
    table = build_features(candidates, history, n_users, n_items, PIT_SETTINGS.features, NO_ATTRIBUTES,
                           NO_ATTRIBUTES)
    if leak:  # each item's count over the whole log, post-cut rows included
        counts = np.bincount(log[Columns.ITEM].to_numpy(), minlength=n_items).astype(np.float32)
        table["item_count_whole_log"] = counts[table[Columns.ITEM].to_numpy()]
    return {"test_features": table}


def test_the_point_in_time_check_catches_a_feature_computed_from_the_whole_log():
    def honest(log, window, users, n_users, n_items):
        return scoring_table(log, window, users, n_users, n_items, leak=False)

    def leaky(log, window, users, n_users, n_items):
        return scoring_table(log, window, users, n_users, n_items, leak=True)

    assert_point_in_time(honest)
    with pytest.raises(AssertionError, match="item_count_whole_log"):
        assert_point_in_time(leaky)


# ------------------------------------------------------------------------------------------------- known drift
DRIFT_DAYS, NEW_LAUNCH_DAY, N_HEAD, N_TAIL = 120.0, 96.0, 40, 60


@lru_cache(maxsize=None)
def _drift_log(seed: int = 0, n_users: int = 400) -> tuple[pd.DataFrame, int]:
    """(log, the new item). Users join over the first 100 days and binge old items right after joining: 28 of 40
    classics (each seen by about 70% of the users) and a few of 60 Zipf-popular others, with 1-3 more old items
    later. Every 4 days a hit is launched that a share of the users consume about 8 days after (exponential): big
    ones between days 50 and 72, small ones in the month before the cut. The new item, launched on day 96 (10
    days before the cut of a 14-day test period at the log's end), reaches everybody about 14 days after, so
    about half of the users before the cut and many more after it."""
    rng = np.random.default_rng(seed)
    n_old = N_HEAD + N_TAIL
    weights = 1.0 / np.arange(1, N_TAIL + 1)
    weights /= weights.sum()
    join = rng.uniform(0, 100, n_users)
    users, items, days = [], [], []
    for user in range(n_users):
        binge = np.r_[rng.choice(N_HEAD, size=28, replace=False),
                      N_HEAD + rng.choice(N_TAIL, size=int(rng.integers(5, 15)), replace=False, p=weights)]
        later = rng.choice(np.setdiff1d(np.arange(n_old), binge), size=int(rng.integers(1, 4)), replace=False)
        users.append(np.full(len(binge) + len(later), user))
        items.append(np.r_[binge, later])
        days.append(np.r_[join[user] + rng.exponential(2.0, len(binge)),
                          rng.uniform(join[user], DRIFT_DAYS, len(later))])
    launches = np.arange(6, NEW_LAUNCH_DAY - 5, 4)
    shares = np.where(launches > 72, 0.3, np.where(launches >= 50, 0.9, np.resize([0.2, 0.5, 0.8], len(launches))))
    hits = [(launch, share, 8.0) for launch, share in zip(launches, shares)] + [(NEW_LAUNCH_DAY, 1.0, 14.0)]
    for item, (launch, share, mean_delay) in enumerate(hits, start=n_old):
        when = launch + rng.exponential(mean_delay, n_users)
        takes = (rng.random(n_users) < share) & (when >= join)
        users.append(np.flatnonzero(takes))
        items.append(np.full(int(takes.sum()), item))
        days.append(when[takes])
    frame = pd.DataFrame({Columns.USER: np.concatenate(users).astype(np.int32),
                          Columns.ITEM: np.concatenate(items).astype(np.int32),
                          Columns.TIMESTAMP: (T0 + np.concatenate(days) * DAY).astype(np.int64)})
    frame = frame[frame[Columns.TIMESTAMP] < T0 + DRIFT_DAYS * DAY]
    return frame.sort_values(Columns.TIMESTAMP, kind="stable").reset_index(drop=True), n_old + len(launches)


DRIFT_SETTINGS = Settings(
    threads=1,
    candidates=CandidatesConfig(sources=["popularity", "recent_popularity", "decayed_popularity", "itemknn"],
                                n_candidates=40),
    ranker=RankerConfig(n_estimators=50, early_stopping_rounds=10),
    backtest=BacktestConfig(windows=1, test_days=14, valid_days=14),
)


def drift_window() -> tuple[pd.DataFrame, int, dict[str, pd.DataFrame], int, int]:
    """(log, new item, the window's train / valid / test, n_users, n_items) of the drift log's one window."""
    log, new_item = _drift_log()
    log = log.copy()
    window = plan_windows(log[Columns.TIMESTAMP].to_numpy(dtype=np.float64), DRIFT_SETTINGS)[0]
    n_users, n_items = int(log[Columns.USER].max()) + 1, int(log[Columns.ITEM].max()) + 1
    return log, new_item, window_parts(log, window), n_users, n_items


def without_the_new_item(users: np.ndarray, history: pd.DataFrame, new_item: int) -> np.ndarray:
    """Which of ``users`` have not consumed the new item in ``history``."""
    return ~np.isin(users, history.loc[history[Columns.ITEM] == new_item, Columns.USER].to_numpy())


def test_the_drift_log_has_a_new_item_launched_before_the_cut_that_leads_the_test_period():
    log, new_item, parts, _, n_items = drift_window()
    assert new_item == n_items - 1
    first_day = (log.loc[log[Columns.ITEM] == new_item, Columns.TIMESTAMP].min() - T0) / DAY
    cut_day = (parts["test"][Columns.TIMESTAMP].min() - T0) / DAY
    assert 8 <= cut_day - first_day <= 11
    assert not (parts["train"][Columns.ITEM] == new_item).any()  # it appears in the validation period
    assert parts["test"][Columns.ITEM].value_counts().index[0] == new_item


def test_time_aware_popularity_ranks_the_new_item_first_and_all_time_popularity_does_not():
    _, new_item, parts, n_users, n_items = drift_window()
    history = pd.concat([parts["train"], parts["valid"]], ignore_index=True)
    sources, _ = fit_sources(history, n_users, n_items, DRIFT_SETTINGS.candidates, seed=0, threads=1)
    order = {name: np.argsort(-sources[name].popularity_, kind="stable")
             for name in ("popularity", "recent_popularity", "decayed_popularity")}
    assert order["recent_popularity"][0] == new_item
    assert order["decayed_popularity"][0] == new_item
    assert new_item not in order["popularity"][:5]


def test_all_time_popularity_lists_miss_the_new_item_for_users_who_have_not_seen_it():
    """The drift is not visible to a time-blind list: the classics a user has not seen outrank the new item."""
    _, new_item, parts, n_users, n_items = drift_window()
    history = pd.concat([parts["train"], parts["valid"]], ignore_index=True)
    users = warm_users(parts["test"], history)
    sources, _ = fit_sources(history, n_users, n_items, DRIFT_SETTINGS.candidates, seed=0, threads=1)
    lists, _ = recommend(sources["popularity"], users, interaction_matrix(history, n_users, n_items), 10)
    unseen = without_the_new_item(users, history, new_item)
    assert (lists[unseen] == new_item).any(axis=1).mean() < 0.2


def test_the_two_stage_list_follows_the_drift_for_users_who_have_not_seen_the_new_item():
    _, new_item, parts, n_users, n_items = drift_window()
    history = pd.concat([parts["train"], parts["valid"]], ignore_index=True)
    users = warm_users(parts["test"], history)
    lists = two_stage_recommend(timeline_settings(DRIFT_SETTINGS), parts["train"], parts["valid"], users, n_users,
                                n_items, NO_ATTRIBUTES, NO_ATTRIBUTES, k=10, seed=0)
    assert lists.shape == (len(users), 10)
    unseen = without_the_new_item(users, history, new_item)
    assert unseen.sum() >= 50
    share = (lists[unseen] == new_item).any(axis=1).mean()
    assert share >= 0.8, f"the new item is in the top 10 of {share:.0%} of the {unseen.sum()} users without it"


# ----------------------------------------------------------------------------------------------- lift interval
def test_identical_rows_give_no_lift_and_an_interval_around_zero():
    rows = np.random.default_rng(0).random(300)
    lift = lift_interval(rows, rows.copy(), resamples=500, confidence=0.95, seed=0)
    assert lift["lift_pct"] == 0.0
    assert lift["low_pct"] <= 0.0 <= lift["high_pct"]


def test_a_clearly_better_model_has_a_positive_lower_bound():
    rng = np.random.default_rng(1)
    peer = (rng.random(500) < 0.2).astype(np.float64)
    ours = (rng.random(500) < 0.35).astype(np.float64)
    lift = lift_interval(ours, peer, resamples=1000, confidence=0.95, seed=0)
    assert lift["lift_pct"] == pytest.approx(100 * (ours.mean() / peer.mean() - 1))
    assert 0.0 < lift["low_pct"] <= lift["lift_pct"] <= lift["high_pct"]
