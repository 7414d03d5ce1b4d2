"""Bad-input cases: a small valid interaction log and attribute tables, and one corruption per case.

Each case is (name, files to write into data/external, params overrides, words the error must contain).
The clean log is synthetic but shaped like a real one (users x items with timestamps in 2020 and 1-5 ratings).
Row numbers in the messages are data rows of the file counted from 1 without the header: ``e.loc[i]`` is row i + 1.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from recops.config import Settings

N_USERS, N_ITEMS, PER_USER = 60, 120, 25


def clean_tables(seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    users = np.repeat(np.arange(1, N_USERS + 1), PER_USER)
    items = np.concatenate([rng.choice(np.arange(1, N_ITEMS + 1), size=PER_USER, replace=False)
                            for _ in range(N_USERS)])
    ts = 1_577_836_800 + rng.integers(0, 300 * 86_400, size=len(users))
    events = pd.DataFrame({"uid": users, "sku": items, "ts": ts, "stars": rng.integers(1, 6, size=len(users))})
    user_table = pd.DataFrame({"uid": np.arange(1, N_USERS + 1), "age": rng.integers(18, 70, N_USERS),
                               "country": rng.choice(["de", "fr", "us"], N_USERS)})
    item_table = pd.DataFrame({"sku": np.arange(1, N_ITEMS + 1), "price": rng.uniform(1, 50, N_ITEMS).round(2),
                               "tags": rng.choice(["a|b", "b", "c|a", "d"], N_ITEMS)})
    return events, user_table, item_table


PARAMS = {
    "data": {
        "source": "file",
        "interactions_path": "data/external/events.csv",
        "users_path": "data/external/users.csv",
        "items_path": "data/external/items.csv",
        "columns": {"user": "uid", "item": "sku", "timestamp": "ts", "rating": "stars", "weight": None,
                    "split": None},
        "user_attributes": {"id": "uid", "numeric": ["age"], "categorical": ["country"], "multi_label": []},
        "item_attributes": {"id": "sku", "numeric": ["price"], "categorical": [], "multi_label": ["tags"], "title": None,
                            "separator": "|"},
    },
    "validation": {"min_rows": 500, "min_users": 20, "min_items": 20},
    "candidates": {"n_candidates": 50, "iterations": 5, "factors": 16},
    "ranker": {"n_estimators": 30},
}


def _csv(frame: pd.DataFrame) -> bytes:
    return frame.to_csv(index=False).encode()


def cases() -> list[tuple[str, dict[str, bytes], dict, list[str]]]:
    events, users, items = clean_tables()
    base = {"users.csv": _csv(users), "items.csv": _csv(items)}

    def with_events(frame: pd.DataFrame) -> dict[str, bytes]:
        return {**base, "events.csv": _csv(frame)}

    out = []
    out.append(("missing_column", with_events(events.drop(columns=["ts"])), {}, ["events.csv", "'ts'", "missing"]))
    e = events.astype({"stars": object}).copy()
    e.loc[[1400, 1450], "stars"] = "five"  # deep in the file: the examples are these rows, not the first ones
    out.append(("non_numeric_rating", with_events(e), {},
                ["events.csv", "rating", "2 of 1500 rows are not numbers, e.g. 'five' at rows 1401, 1451",
                 "data rows of each file, counted from 1"]))
    e = events.astype({"ts": object}).copy()
    e.loc[[1300], "ts"] = "yesterday"
    out.append(("word_in_timestamp", with_events(e), {},
                ["events.csv", "timestamp",
                 "1 of 1500 rows are neither numbers nor dates, e.g. 'yesterday' at row 1301"]))
    e = events.astype({"uid": object}).copy()
    e.loc[[5], "uid"] = "u-17"
    out.append(("non_numeric_id", with_events(e), {}, ["user_id", "'u-17' at row 6"]))
    e = events.copy()
    e.loc[[2], "sku"] = -4
    out.append(("negative_id", with_events(e), {}, ["item_id", "-4 at row 3"]))
    e = events.astype({"uid": "float64"}).copy()
    e.loc[[9, 10], "uid"] = np.nan
    out.append(("null_key", with_events(e), {}, ["user_id", "empty", "rows 10, 11"]))
    e = pd.concat([events, events.iloc[[0, 1, 2]]], ignore_index=True)
    out.append(("duplicated_rows", with_events(e), {}, ["user_id, item_id, timestamp", "(1, 86, 1585807416)"]))
    e = events.copy()
    e.loc[[4], "ts"] = 4_102_444_800  # 2100-01-01
    out.append(("future_timestamp", with_events(e), {}, ["timestamp", "4102444800 (2100-01-01 00:00:00 UTC) at row 5"]))
    e = events.copy()
    e.loc[[4], "ts"] = 86_400 * 365  # 1971
    out.append(("timestamp_before_1990", with_events(e), {}, ["timestamp", "31536000"]))
    e = events.copy()
    e.loc[[11], "stars"] = 9
    out.append(("rating_out_of_range", with_events(e), {}, ["rating", "9 at row 12"]))
    out.append(("empty_file", {**base, "events.csv": b""}, {}, ["events.csv", "empty"]))
    out.append(("header_only", {**base, "events.csv": b"uid,sku,ts,stars\n"}, {}, ["events.csv", "no rows"]))
    full = _csv(events)
    cut = full.index(b",", len(full) // 2) + 1  # the file ends inside a row, after its first field
    out.append(("truncated_csv", {**base, "events.csv": full[:cut]}, {}, ["events.csv", "truncated"]))
    out.append(("non_utf8", {**base, "events.csv": full[:200] + b"\xff\xfe\xfa" + full[200:]}, {},
                ["events.csv", "UTF-8"]))
    out.append(("users_table_missing_ids", {**with_events(events), "users.csv": _csv(users[users.uid > 5])}, {},
                ["users", "user_id", "1"]))
    out.append(("items_table_missing_ids", {**with_events(events), "items.csv": _csv(items[items.sku != 7])}, {},
                ["items", "item_id", "7"]))
    out.append(("too_few_rows", with_events(events.head(100)), {}, ["500"]))
    e = events.astype({"stars": "float64"}).copy()
    e.loc[[3, 8], "stars"] = np.nan  # used to pass silently
    out.append(("null_rating", with_events(e), {}, ["rating", "empty", "rows 4, 9"]))
    e = events.astype({"uid": object}).copy()
    e.loc[[12], "uid"] = 1234567890123456789012  # used to end in an OverflowError traceback after retries
    out.append(("id_beyond_int64", with_events(e), {}, ["events.csv", "'uid'", "64-bit", "row 13: 1234567890123456789012"]))
    u = users.astype({"uid": object}).copy()
    u.loc[[40], "uid"] = 2**70  # an attribute table's ids are held to the same rule
    out.append(("attribute_id_beyond_int64", {**with_events(events), "users.csv": _csv(u)}, {},
                ["users.csv", "'uid'", "64-bit", "row 41: 1180591620717411303424"]))
    return out


def trained_project(root: Path, project: Path, **params) -> Settings:
    """A small own-data project in ``root`` (the clean tables, ``PARAMS``, then ``params``) with every stage run
    in-process, registration included (version 1 in the project's own MLflow store)."""
    from recops import steps
    from recops.config import load_settings
    from tests.conftest import set_params

    shutil.copy(project / "params.yaml", root / "params.yaml")
    set_params(root, **PARAMS)
    set_params(root, paths={"expectations_dir": str(project / "expectations"), "cache_dir": str(root / "cache")},
               **params)
    write_clean_case(root)
    settings = load_settings(root / "params.yaml")
    for stage in steps.STAGES.values():
        stage(settings)
    return settings


def write_case(workspace: Path, files: dict[str, bytes]) -> None:
    external = workspace / "data" / "external"
    external.mkdir(parents=True, exist_ok=True)
    for name, payload in files.items():
        (external / name).write_bytes(payload)


def clean_files(seed: int = 0) -> dict[str, bytes]:
    """The clean own-data case as the three CSV files ``PARAMS`` maps."""
    events, users, items = clean_tables(seed)
    return {"events.csv": _csv(events), "users.csv": _csv(users), "items.csv": _csv(items)}


def write_clean_case(workspace: Path) -> None:
    """The clean own-data case's files in ``workspace/data/external`` (set ``PARAMS`` to read them)."""
    write_case(workspace, clean_files())
