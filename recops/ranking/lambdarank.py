"""The second stage: a LightGBM LambdaRank model re-ranking each user's candidates.

Training rows are grouped by user (a query); groups without a single positive carry no ranking signal and are
dropped from training. The model is saved as LightGBM's text format (no pickles) with a JSON manifest naming the
features in input order; the ONNX export and the serving path rely on that order.
"""

from __future__ import annotations

import logging

import lightgbm as lgb
import numpy as np
import pandas as pd

from recops.columns import Columns
from recops.config import RankerConfig
from recops.progress import progress

log = logging.getLogger(__name__)


def _groups(frame: pd.DataFrame, require_positive: bool) -> tuple[pd.DataFrame, np.ndarray]:
    frame = frame.sort_values(Columns.USER, kind="stable")
    if require_positive:
        positives = frame.groupby(Columns.USER, sort=False)[Columns.LABEL].transform("max")
        frame = frame[positives.to_numpy() > 0]
    users = frame[Columns.USER].to_numpy()
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]]) if len(users) else np.array([], int)
    return frame, np.diff(np.r_[starts, len(users)])


def _params(config: RankerConfig, seed: int, threads: int) -> dict:
    return {
        "objective": "lambdarank", "metric": "ndcg", "eval_at": [10],
        "learning_rate": config.learning_rate, "num_leaves": config.num_leaves,
        "min_data_in_leaf": config.min_child_samples, "feature_fraction": config.feature_fraction,
        "bagging_fraction": config.bagging_fraction, "bagging_freq": 1 if config.bagging_fraction < 1 else 0,
        "lambdarank_truncation_level": config.lambdarank_truncation_level,
        "num_threads": threads, "seed": seed, "deterministic": True, "force_row_wise": True, "verbose": -1,
    }


def _require_signal(groups: np.ndarray) -> None:
    if len(groups) == 0:
        from recops.errors import RecopsError
        raise RecopsError("the ranker has no training signal: no candidate of any user is in the label holdout "
                          "(raise candidates.n_candidates or ranker.holdout_fraction)")


def _stacked(tables: list[pd.DataFrame], weights: list[float] | None = None
             ) -> tuple[pd.DataFrame, np.ndarray, np.ndarray | None]:
    """Labelled folds stacked as queries (a user is one query per fold): rows, group sizes, and per-row weights
    (one weight per fold, constant within its queries; None when all are 1)."""
    parts, groups, row_weights = [], [], []
    for j, table in enumerate(tables):
        table, table_groups = _groups(table, require_positive=True)
        parts.append(table)
        groups.append(table_groups)
        row_weights.append(np.full(len(table), 1.0 if weights is None else weights[j], dtype=np.float32))
    group = np.concatenate(groups) if groups else np.array([], dtype=np.int64)
    stacked = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
    weight = np.concatenate(row_weights) if weights is not None and any(w != 1.0 for w in weights) else None
    return stacked, group, weight


def _advance(step):
    """A LightGBM callback moving ``step`` on by one tree per boosting round."""
    def callback(env) -> None:
        step.advance()

    callback.order = 100  # after early stopping's own callback (order 30)
    return callback


def train_lambdarank(train: pd.DataFrame | list[pd.DataFrame], valid: pd.DataFrame | None, features: list[str],
                 config: RankerConfig, seed: int, threads: int, weights: list[float] | None = None) -> lgb.Booster:
    """Fit LambdaRank on labelled candidate rows (or several label folds stacked as queries, weighted by
    ``weights``); ``valid`` (if it has positives) drives early stopping."""
    train, train_groups, weight = _stacked(train if isinstance(train, list) else [train], weights)
    _require_signal(train_groups)
    params = _params(config, seed, threads)
    train_set = lgb.Dataset(train[features].to_numpy(np.float32), label=train[Columns.LABEL].to_numpy(),
                            group=train_groups, weight=weight, feature_name=features, free_raw_data=True)
    valid_sets, callbacks = [], []
    if valid is not None:
        valid, valid_groups = _groups(valid, require_positive=True)
        if len(valid_groups):
            valid_sets = [lgb.Dataset(valid[features].to_numpy(np.float32), label=valid[Columns.LABEL].to_numpy(),
                                      group=valid_groups, reference=train_set)]
            callbacks = [lgb.early_stopping(config.early_stopping_rounds, verbose=False)]
    with progress("ranker: training trees", config.n_estimators, "trees") as step:  # early stopping: fewer
        booster = lgb.train(params, train_set, num_boost_round=config.n_estimators, valid_sets=valid_sets,
                            valid_names=["valid"] if valid_sets else None, callbacks=[*callbacks, _advance(step)])
    log.info("ranker: %d trees (best iteration %s)", booster.num_trees(), booster.best_iteration)
    return booster


def refit_lambdarank(tables: list[pd.DataFrame], features: list[str], config: RankerConfig, seed: int, threads: int,
                 n_trees: int, weights: list[float] | None = None) -> lgb.Booster:
    """Fit ``n_trees`` trees (chosen by early stopping before) on several labelled folds stacked as queries.

    Each fold's users are separate queries (a user appears once per fold), so the fold with the most recent labels
    (``valid``) adds training signal without being mixed with the other's history.
    """
    stacked, group, weight = _stacked(tables, weights)
    _require_signal(group)
    data = lgb.Dataset(stacked[features].to_numpy(np.float32), label=stacked[Columns.LABEL].to_numpy(),
                       group=group, weight=weight, feature_name=features, free_raw_data=True)
    with progress("ranker: refitting trees", max(int(n_trees), 1), "trees") as step:
        booster = lgb.train(_params(config, seed, threads), data, num_boost_round=max(int(n_trees), 1),
                            callbacks=[_advance(step)])
    log.info("ranker refit on %d folds: %d trees, %d queries", len(tables), booster.num_trees(), len(group))
    return booster


def predict_scores(booster: lgb.Booster, frame: pd.DataFrame, features: list[str], threads: int) -> np.ndarray:
    return booster.predict(frame[features].to_numpy(np.float32), num_threads=threads,
                           num_iteration=booster.best_iteration or None)
