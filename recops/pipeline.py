"""The two-stage recommender as in-memory functions over one fold: candidates, features, ranker, lists.

``recops.steps`` wraps these with file reads and writes (one DVC stage / Prefect task each); the quality benchmark
(``benchmarks/quality.py``) and the tuner (``recops.tuning``) call them directly on in-memory splits, so all three
run exactly the same code. A fold is a (history, target) pair: sources and features are computed from the
history only, labels come from the target.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from recops.columns import Columns
from recops.config import Settings
from recops.features import Attributes
from recops.ranking import ranked_lists

log = logging.getLogger(__name__)


@dataclass
class FoldResult:
    candidates: pd.DataFrame
    table: pd.DataFrame
    sources: dict[str, object]
    seconds: dict[str, float] = field(default_factory=dict)


def fold_candidates(settings: Settings, history: pd.DataFrame, users: np.ndarray, n_users: int,
                    n_items: int, seed: int | None = None, previous: dict[str, object] | None = None
                    ) -> tuple[pd.DataFrame, dict[str, object], dict[str, float]]:
    """Merged multi-source candidates of ``users`` from ``history``; the fitted sources; fit seconds per source.
    ``previous``: the sources of a fold whose history this one extends (MF warm start, when configured)."""
    from recops.candidates import fit_sources, interaction_matrix, merged_candidates

    seed = settings.seed if seed is None else seed
    sources, seconds = fit_sources(history, n_users, n_items, settings.candidates, seed, settings.threads,
                                   mf_init(previous))
    started = time.perf_counter()
    user_items = interaction_matrix(history, n_users, n_items, "binary")
    frame = merged_candidates(sources, settings.candidates, np.unique(users).astype(np.int32), user_items)
    seconds["merge"] = time.perf_counter() - started
    return frame, sources, seconds


def mf_init(sources: dict[str, object] | None) -> tuple[np.ndarray, np.ndarray] | None:
    """The (user, item) factors of ``sources``' MF, to warm-start the next fold's fit from (None without)."""
    mf = None if sources is None else sources.get("mf")
    return None if mf is None else (mf.user_factors_, mf.item_factors_)


def fold_features(settings: Settings, candidates: pd.DataFrame, history: pd.DataFrame, target: pd.DataFrame | None,
                  n_users: int, n_items: int, users_attr: Attributes, items_attr: Attributes,
                  item_factors: np.ndarray | None, client=None) -> pd.DataFrame:
    """The labelled feature table of a fold's candidates; with a Dask ``client`` (``compute.engine: dask``) the
    history statistics are computed here and the rows gathered on the cluster, partition by partition."""
    from recops.features import build_features

    if client is None:
        return build_features(candidates, history, n_users, n_items, settings.features, users_attr, items_attr,
                              target=target, item_factors=item_factors)
    from recops.features.builder import history_statistics
    from recops.features.distributed import build_features_distributed

    stats = history_statistics(history, n_users, n_items, settings.features, users_attr, items_attr, item_factors)
    return build_features_distributed(client, candidates, stats, n_items, settings.features.chunk_rows, target)


def run_fold(settings: Settings, history: pd.DataFrame, target: pd.DataFrame | None, users: np.ndarray,
             n_users: int, n_items: int, users_attr: Attributes, items_attr: Attributes,
             seed: int | None = None, previous: dict[str, object] | None = None) -> FoldResult:
    cands, sources, seconds = fold_candidates(settings, history, users, n_users, n_items, seed, previous)
    started = time.perf_counter()
    mf = sources.get("mf")
    table = fold_features(settings, cands, history, target, n_users, n_items, users_attr, items_attr,
                          None if mf is None else mf.item_factors_)
    seconds["features"] = time.perf_counter() - started
    return FoldResult(cands, table, sources, seconds)


def feature_columns(table: pd.DataFrame) -> list[str]:
    return [c for c in table.columns if c not in (Columns.USER, Columns.ITEM, Columns.LABEL)]


def label_weights(settings: Settings, n_fit: int) -> list[float]:
    """Query weights of ``n_fit`` stacked label folds, most recent first (``ranker.label_window_decay ** j``)."""
    return [settings.ranker.label_window_decay ** j for j in range(n_fit)]


def fit_ranker(settings: Settings, fit_table: pd.DataFrame | list[pd.DataFrame], valid_table: pd.DataFrame,
               names: list[str], seed: int | None = None, client=None):
    """(final booster, early-stopped booster): LambdaRank on ``fit`` early-stopped on ``valid``, then (with
    ``ranker.refit_on_valid``) the same number of trees refitted on fit + valid. With a Dask ``client``: the
    same on the cluster with ``lightgbm.dask`` (recops.ranking.dask_ranker: the stopping point is chosen by a
    validation pass over the trees, as lightgbm.dask has no early stopping)."""
    from recops.ranking import refit_lambdarank, train_lambdarank

    seed = settings.seed if seed is None else seed
    fit_tables = fit_table if isinstance(fit_table, list) else [fit_table]
    if client is not None:
        from recops.errors import RecopsError
        from recops.ranking.dask_ranker import refit_lambdarank_dask, train_lambdarank_dask

        if len(fit_tables) > 1:
            raise RecopsError("ranker.label_windows > 1 (stacked label windows) runs on compute.engine: local only")
        fit_table = fit_tables[0]

        retries = settings.compute.ranker_retries
        stopped = train_lambdarank_dask(client, fit_table, valid_table, names, settings.ranker, seed, settings.threads,
                                    retries=retries)
        if not settings.ranker.refit_on_valid:
            return stopped, stopped
        n_trees = stopped.best_iteration or stopped.num_trees()
        final = refit_lambdarank_dask(client, [fit_table, valid_table], names, settings.ranker, seed, settings.threads,
                                  n_trees, retries=retries)
        return final, stopped
    weights = label_weights(settings, len(fit_tables))
    stopped = train_lambdarank(fit_tables, valid_table, names, settings.ranker, seed, settings.threads, weights)
    if not settings.ranker.refit_on_valid:
        return stopped, stopped
    n_trees = stopped.best_iteration or stopped.num_trees()
    # the valid fold's labels are the most recent: weight 1, the fit folds one decay step further back
    refit_weights = [w * settings.ranker.label_window_decay for w in weights] + [1.0]
    final = refit_lambdarank([*fit_tables, valid_table], names, settings.ranker, seed, settings.threads, n_trees,
                         refit_weights)
    return final, stopped


def two_stage_recommend(settings: Settings, train: pd.DataFrame, valid: pd.DataFrame, users: np.ndarray,
                        n_users: int, n_items: int, users_attr: Attributes, items_attr: Attributes, k: int,
                        seed: int | None = None) -> np.ndarray:
    """Top-k lists (``len(users) x k`` item indices, -1 padded, in ``users`` order) of the full pipeline fitted on
    ``train`` (ranker labels from its holdout, early stopping on ``valid``) and applied with train + valid as
    history — what the DVC / Prefect pipeline computes for the test fold, in memory."""
    return two_stage_lists(settings, train, valid, users, n_users, n_items, users_attr, items_attr, k, seed)[0]


def two_stage_lists(settings: Settings, train: pd.DataFrame, valid: pd.DataFrame, users: np.ndarray,
                    n_users: int, n_items: int, users_attr: Attributes, items_attr: Attributes, k: int,
                    seed: int | None = None) -> tuple[np.ndarray, pd.DataFrame]:
    """``two_stage_recommend``'s lists and the merged candidate table they were ranked from (every source's
    score and rank per (user, item): per-source candidate recall)."""
    from recops.ranking import predict_scores
    from recops.split import folds

    seed = settings.seed if seed is None else seed
    args = (n_users, n_items, users_attr, items_attr, seed)
    results: dict[str, FoldResult] = {}
    previous = None  # the previous fold's sources: its history is part of this fold's (MF warm start)
    for name, (history, target) in folds({"train": train, "valid": valid}, settings.ranker, settings.split).items():
        fold_users = np.unique(users) if name == "test" else np.unique(target[Columns.USER])
        results[name] = run_fold(settings, history, target, fold_users, *args, previous=previous)
        previous = results[name].sources
    fit, valid_fold, test_fold = results["fit"], results["valid"], results["test"]
    earlier = [results[f"fit_{j}"].table for j in range(1, len(results) - 2)]  # most recent first, as weighted
    names = feature_columns(fit.table)
    booster, _ = fit_ranker(settings, [fit.table, *earlier], valid_fold.table, names, seed)
    scores = predict_scores(booster, test_fold.table, names, settings.threads)
    listed_users, items, _ = ranked_lists(test_fold.table, scores, k)
    out = np.full((len(users), k), -1, dtype=np.int64)
    position = pd.Index(listed_users).get_indexer(np.asarray(users))
    found = position >= 0
    out[found] = items[position[found]]
    return out, test_fold.candidates
