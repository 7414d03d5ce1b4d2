"""The project's files: the one object that knows where every stage table, model and report lives.

Every path comes from ``settings.paths`` (params.yaml ``paths:``); nothing else in recops joins a folder and a
file name of its own. The stage functions (``recops.steps``), the A/B rebuild, tuning, batch scoring, the serving
bundle and the benchmarks read the split, the folds, the attributes and the feature names through a
:class:`Workspace`, so a table's layout is decided in one place. Writers are atomic (``recops.io``): a failing
stage never leaves a half-written file behind.

Folds (defined once, by ``recops.split.folds``: the split stage writes them, :meth:`Workspace.fold` reads them
back). Three (history, target) pairs share the same candidate/feature code:
- ``fit``: the training period minus its most recent part (history) -> that recent part (ranker labels);
- ``valid``: the whole training period -> the validation period (early stopping, validation metrics);
- ``test``: training + validation periods -> the test period (the reported metrics).
With ``ranker.label_windows`` > 1 (a global-time holdout), ``fit_1``, ``fit_2`` .. are earlier label windows of
the same length, each with only the interactions before it as history, stacked as more ranker queries.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from recops.columns import Columns
from recops.config import Settings
from recops.errors import RecopsError

FOLDS = ("fit", "valid", "test")
TABLES = ("interactions", "users", "items")  # the prepared tables the ingest stage writes


def read_json(path: Path) -> Any:
    if not path.is_file():
        raise RecopsError(f"{path} not found: run the stage that produces it first (recops run)")
    return json.loads(path.read_text(encoding="utf-8"))


def read_parquet(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise RecopsError(f"{path} not found: run the stage that produces it first (recops run)")
    return pd.read_parquet(path)


class Workspace:
    """The files of one project (``settings.root``), as ``settings.paths`` names them."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.root = settings.root

    def path(self, name: str) -> Path:
        """The absolute path of ``paths.<name>``."""
        return self.settings.path(name)

    # --- the split stage's outputs ------------------------------------------------------------------------------

    def index(self):
        """The dense id index (``IdIndex``) of the split: every user and item of the project."""
        from recops.data import IdIndex

        split_dir = self.path("split_dir")
        return IdIndex.from_frames(read_parquet(split_dir / "users_index.parquet"),
                                   read_parquet(split_dir / "items_index.parquet"))

    def fit_folds(self) -> list[str]:
        """The ranker's label folds written by the split stage, most recent first: ``fit``, then ``fit_1`` ..
        (``ranker.label_windows`` > 1 with a global-time holdout)."""
        summary = self.path("split_dir") / "summary.json"
        n = int(read_json(summary).get("split.label_windows", 1)) if summary.is_file() else 1
        return ["fit", *(f"fit_{j}" for j in range(1, n))]

    def all_folds(self) -> list[str]:
        """Every fold the candidates and features stages build, oldest history first (each fold's history extends
        the previous one's, so MF can warm-start from it): the earlier label windows, fit, valid, test."""
        return [*reversed(self.fit_folds()[1:]), *FOLDS]

    def fold(self, name: str) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(history, target) of fold ``name``, read from the split outputs."""
        split_dir = self.path("split_dir")
        if name.startswith("fit"):
            suffix = name[len("fit"):]
            return (read_parquet(split_dir / f"ranker_history{suffix}.parquet"),
                    read_parquet(split_dir / f"ranker_holdout{suffix}.parquet"))
        train = read_parquet(split_dir / "train.parquet")
        if name == "valid":
            return train, read_parquet(split_dir / "valid.parquet")
        if name != "test":
            raise RecopsError(f"unknown fold {name!r}: one of {', '.join(self.all_folds())}")
        valid = read_parquet(split_dir / "valid.parquet")
        return pd.concat([train, valid], ignore_index=True), read_parquet(split_dir / "test.parquet")

    # --- prepared tables ----------------------------------------------------------------------------------------

    def table_md5s(self) -> dict[str, str]:
        """The MD5 of each prepared table (what DVC hashes): the data a report or a batch was computed on."""
        from recops.io import file_digest

        return {name: file_digest(self.path(name), "md5") for name in TABLES}

    def attributes(self, index=None, settings: Settings | None = None):
        """(user attributes, item attributes) aligned to ``index`` (the split's by default), as ``settings``
        (the workspace's by default: a rebuilt version passes its own) declares them."""
        from recops.features import align_attributes

        index = self.index() if index is None else index
        cfg = (settings or self.settings).data
        use_users = cfg.source == "movielens100k" or bool(cfg.users_path)
        use_items = cfg.source == "movielens100k" or bool(cfg.items_path)
        users = align_attributes(read_parquet(self.path("users")) if use_users else None, Columns.USER_ID,
                                 index.user_ids, cfg.user_attributes if use_users else None)
        items = align_attributes(read_parquet(self.path("items")) if use_items else None, Columns.ITEM_ID,
                                 index.item_ids, cfg.item_attributes if use_items else None)
        return users, items

    # --- candidates, features, models ---------------------------------------------------------------------------

    def candidates(self, fold: str) -> pd.DataFrame:
        return read_parquet(self.path("candidates_dir") / f"{fold}.parquet")

    def features(self, fold: str) -> pd.DataFrame:
        return read_parquet(self.path("features_dir") / f"{fold}.parquet")

    def feature_names(self) -> list[str]:
        """The ranker's features in input order, as the features stage wrote them."""
        return read_json(self.path("features_dir") / "feature_names.json")["features"]

    def booster(self):
        """The trained LightGBM ranker (its text model)."""
        import lightgbm as lgb

        path = self.path("ranker_model")
        if not path.is_file():
            raise RecopsError(f"{path} not found: run the train_ranker stage first (recops run)")
        return lgb.Booster(model_file=str(path))
