"""Online metrics from the impression and event logs (``recops.monitoring.online``): click attribution by user,
item and window, and the per-version, per-day rates, on tiny logs whose answers are counted by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recops.monitoring.online import attribute_clicks, online_metrics

DAY = 1_700_000_000.0 - 1_700_000_000.0 % 86_400  # a UTC midnight


def shown_rows(lists: list[tuple[str, float, str, str, list]], explored_last: bool = False) -> pd.DataFrame:
    """(impression id, time, user, version, items) -> one row per shown item."""
    rows = []
    for impression, when, user, version, items in lists:
        for position, item in enumerate(items):
            rows.append({"impression_id": impression, "time": when, "user_id": user, "version": version,
                         "position": position, "item_id": item, "propensity": 1.0,
                         "explored": explored_last and position == len(items) - 1, "cached": False,
                         "fallback": None})
    return pd.DataFrame(rows)


def events(rows: list[tuple[str, str, float]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])


def test_a_click_is_credited_to_the_latest_list_that_showed_the_item_within_the_window():
    shown = shown_rows([("a", DAY + 10, "u1", "1", [1, 2, 3]), ("b", DAY + 100, "u1", "1", [3, 4, 5]),
                        ("c", DAY + 10, "u2", "1", [1, 2, 3])])
    clicks = events([("u1", "3", DAY + 150),  # shown by a and b: b, the latest
                     ("u1", "1", DAY + 150),  # shown by a, 140 s earlier
                     ("u2", "2", DAY + 10 + 3600),  # outside a 30-minute window
                     ("u1", "9", DAY + 120),  # never shown
                     ("u3", "1", DAY + 20)])  # another user
    out = attribute_clicks(shown, clicks, window_seconds=1800)
    clicked = set(map(tuple, out.loc[out["clicked"], ["impression_id", "item_id"]].to_numpy().tolist()))
    assert clicked == {("b", 3), ("a", 1)}


def test_an_event_before_the_list_was_served_is_no_click_on_it():
    shown = shown_rows([("a", DAY + 100, "u1", "1", [1, 2])])
    assert not attribute_clicks(shown, events([("u1", "1", DAY + 99)]), 1800)["clicked"].any()


def test_rates_per_version_and_day_are_counted_by_list_and_by_slot():
    shown = shown_rows([
        ("a", DAY + 10, "u1", "1", [1, 2, 3, 4]),
        ("b", DAY + 20, "u2", "1", [1, 5, 6, 7]),
        ("c", DAY + 30, "u3", "2", [8, 9, 1, 2]),
        ("d", DAY + 86_400 + 5, "u1", "1", [1, 2, 3, 4]),  # the next day
    ], explored_last=True)
    clicks = events([("u1", "4", DAY + 60),  # a, position 3 (explored)
                     ("u2", "1", DAY + 60),  # b, position 0
                     ("u3", "2", DAY + 60)])  # c, position 3 (explored)
    out = online_metrics(attribute_clicks(shown, clicks, 1800), ks=[1, 4], n_items=10,
                         reference_counts=pd.Series({"1": 6, "2": 2, "3": 1, "4": 1}))
    first = out[(out["version"] == "1") & (out["day"] == pd.Timestamp(DAY, unit="s").strftime("%Y-%m-%d"))]
    assert len(out) == 3 and len(first) == 1
    row = first.iloc[0]
    assert row["lists"] == 2 and row["users"] == 2
    assert row["ctr@1"] == 0.5 and row["ctr@4"] == 1.0  # b clicked at the top; a and b both in the first 4
    assert row["item_ctr@4"] == pytest.approx(2 / 8) and row["item_ctr@1"] == pytest.approx(1 / 2)
    assert row["coverage@1"] == pytest.approx(1 / 10) and row["coverage@4"] == pytest.approx(7 / 10)
    assert row["explored_share"] == pytest.approx(2 / 8) and row["explored_ctr"] == 0.5
    # novelty: -log2 of the item's share of the 10 reference interactions (an unseen item counts once)
    shares = np.array([6, 2, 1, 1, 6, 1, 1, 1]) / 10
    assert row["novelty@4"] == pytest.approx(float(np.mean(-np.log2(shares))))
    other = out[out["version"] == "2"].iloc[0]
    assert other["ctr@1"] == 0.0 and other["ctr@4"] == 1.0 and other["explored_ctr"] == 1.0
    assert out["fallback_share"].eq(0).all() and out["cached_share"].eq(0).all()


def test_nothing_served_gives_an_empty_table():
    assert online_metrics(shown_rows([]), ks=[10], n_items=5).empty
