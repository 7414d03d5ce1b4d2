"""Single-stage peers of the two-stage list: the candidate sources as recommenders of their own, each tuned on a
validation fold by a fixed grid, fitted on a history and scored on a target.

The quality benchmark (``benchmarks/quality.py``) and the backtest (``recops.evaluation.backtest``) both compare recops
with these peers, so "the best peer" means the same models, the same grids and the same metrics in both. The peers
are exactly the classes that feed the ranker (``recops.candidates.sources``), time-aware popularity included:
``recent_popularity`` (the last N days before the cut) and ``decayed_popularity`` (half-life decay), their window
and half-life chosen on the validation fold like every other peer's parameters.

A ``Fold`` is a (history, target) pair as matrices; the interactions' ages (days before the history's end) travel
with it so that the time-aware peers can be fitted from it.
"""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recops.columns import Columns, DAY

log = logging.getLogger(__name__)

TUNING_METRIC = "ndcg@10"
METRICS = ("ndcg@10", "recall@10", "recall@20", "map@10", "mrr@10", "hitrate@10", "coverage@10", "novelty@10")


@dataclass(frozen=True)
class Fold:
    """(history, target) as matrices; ``users`` are the users with at least one target interaction (or the ones
    given). ``ages_days`` / ``age_items``: every history interaction's age in days before the history's end and
    its item (None when the fold was built without timestamps; then the time-aware peers cannot be fitted)."""

    history: sp.csr_matrix
    truth: sp.csr_matrix
    users: np.ndarray
    item_user_counts: np.ndarray
    n_history_users: int
    ages_days: np.ndarray | None = None
    age_items: np.ndarray | None = None

    @property
    def warm(self) -> np.ndarray:
        """Which of ``users`` have at least one history interaction."""
        return np.diff(self.history.indptr)[self.users] > 0

    @classmethod
    def from_frames(cls, history: pd.DataFrame, target: pd.DataFrame, n_users: int, n_items: int,
                    users: np.ndarray | None = None) -> Fold:
        """The fold of ``history`` -> ``target``; ``users``: the users to evaluate (default: every user with a
        target interaction)."""
        from recops.data.matrices import interaction_matrix

        seen = interaction_matrix(history, n_users, n_items, "binary")
        truth = interaction_matrix(target, n_users, n_items, "binary")
        if users is None:
            users = np.flatnonzero(np.diff(truth.indptr) > 0)
        ts = history[Columns.TIMESTAMP].to_numpy(dtype=np.float64)
        return cls(history=seen, truth=truth, users=np.asarray(users, dtype=np.int32),
                   item_user_counts=np.diff(seen.tocsc().indptr).astype(np.float64),
                   n_history_users=int((np.diff(seen.indptr) > 0).sum()),
                   ages_days=(ts.max(initial=0.0) - ts) / DAY,
                   age_items=history[Columns.ITEM].to_numpy(dtype=np.int64))


def parameter_grid(**axes: list[Any]) -> list[dict[str, Any]]:
    """Every combination of the axes, in the order written (the first axis varies slowest)."""
    names = list(axes)
    return [dict(zip(names, values)) for values in itertools.product(*(axes[n] for n in names))]


@dataclass(frozen=True)
class Peer:
    name: str
    build: Callable[[dict[str, Any], int, int], Any]  # (params, seed, threads) -> unfitted source
    grid: list[dict[str, Any]]
    quick_grid: list[dict[str, Any]]
    stochastic: bool


def _mf_builder(algorithm: str) -> Callable[[dict[str, Any], int, int], Any]:
    def build(params: dict[str, Any], seed: int, threads: int):
        from recops.candidates.sources import MatrixFactorization
        from recops.config import CandidatesConfig

        return MatrixFactorization(CandidatesConfig(algorithm=algorithm, **params), seed=seed, threads=threads)
    return build


def _popularity(params: dict[str, Any], seed: int, threads: int):
    from recops.candidates.sources import MostPopular

    return MostPopular()


def _recent_popularity(params: dict[str, Any], seed: int, threads: int):
    from recops.candidates.sources import RecentPopularity

    return RecentPopularity(params["days"])


def _decayed_popularity(params: dict[str, Any], seed: int, threads: int):
    from recops.candidates.sources import DecayedPopularity

    return DecayedPopularity(params["half_life_days"])


def _itemknn(params: dict[str, Any], seed: int, threads: int):
    from recops.candidates.sources import ItemKNN

    return ItemKNN(params["neighbours"], params["shrinkage"], threads=threads)


def _ease(params: dict[str, Any], seed: int, threads: int):
    from recops.candidates.sources import EASE

    return EASE(params["l2"], threads=threads)


PEERS = (
    Peer("popularity", _popularity, [{}], [{}], stochastic=False),
    Peer("recent_popularity", _recent_popularity, parameter_grid(days=[1.0, 3.0, 7.0, 14.0, 30.0, 60.0, 90.0]),
         parameter_grid(days=[7.0, 30.0]), stochastic=False),
    Peer("decayed_popularity", _decayed_popularity,
         parameter_grid(half_life_days=[0.5, 1.0, 3.0, 7.0, 14.0, 30.0, 60.0]),
         parameter_grid(half_life_days=[3.0, 14.0]), stochastic=False),
    Peer("itemknn", _itemknn,
         parameter_grid(neighbours=[50, 100, 200, 400], shrinkage=[0.0, 10.0, 50.0]),
         parameter_grid(neighbours=[100, 200], shrinkage=[10.0]), stochastic=False),
    Peer("ease", _ease,
         parameter_grid(l2=[10.0, 50.0, 100.0, 200.0, 500.0, 1000.0]),
         parameter_grid(l2=[100.0, 500.0]), stochastic=False),
    Peer("als", _mf_builder("als"),
         parameter_grid(factors=[16, 32, 64, 128], regularization=[0.01, 0.1, 1.0], alpha=[1.0, 5.0, 10.0, 20.0],
                        iterations=[15]),
         parameter_grid(factors=[32, 64], regularization=[0.1], alpha=[10.0], iterations=[15]), stochastic=True),
    Peer("bpr", _mf_builder("bpr"),
         parameter_grid(factors=[32, 64, 128], learning_rate=[0.01, 0.05, 0.1], regularization=[0.001, 0.01],
                        iterations=[50, 100]),
         parameter_grid(factors=[64], learning_rate=[0.01, 0.05], regularization=[0.01], iterations=[100]),
         stochastic=True),
)
PEER_NAMES = tuple(peer.name for peer in PEERS)


def peers_named(names: list[str] | tuple[str, ...]) -> list[Peer]:
    by_name = {peer.name: peer for peer in PEERS}
    return [by_name[name] for name in names]


def fit_peer(model, fold: Fold):
    """``model`` fitted on the fold's history (with the interactions' ages for the time-aware peers)."""
    from recops.candidates.sources import MostPopular

    if isinstance(model, MostPopular) and (model.half_life_days or model.window_days):
        if fold.ages_days is None:
            raise ValueError(f"{model.name} needs a fold built with timestamps (Fold.from_frames)")
        return model.fit(fold.history, fold.ages_days, fold.age_items)
    return model.fit(fold.history)


def list_metrics(fold: Fold, users: np.ndarray, recommended: np.ndarray) -> dict[str, float]:
    """The comparison's metrics of one list set (rows aligned with ``users``)."""
    from recops.evaluation.metrics import catalog_coverage, novelty, ranking_metrics

    ranking = ranking_metrics(users, recommended, fold.truth, [10, 20])
    out = {name: ranking[name] for name in METRICS if name in ranking}
    out["coverage@10"] = catalog_coverage(recommended, 10, fold.truth.shape[1])
    out["novelty@10"] = novelty(recommended, 10, fold.item_user_counts, fold.n_history_users)
    return out


def recommend_lists(model, fold: Fold, users: np.ndarray, k: int) -> np.ndarray:
    """Top-k lists of a fitted peer for ``users``, their history items excluded."""
    from recops.candidates.sources import recommend

    items, _ = recommend(model, users, fold.history, k)
    return items


def tune(peer: Peer, grid: list[dict[str, Any]], fold: Fold, seed: int, threads: int) -> dict[str, Any]:
    """Grid search on the validation fold by NDCG@10; returns the chosen params and every grid point's score.
    Ties go to the first grid point."""
    trials = []
    for params in grid:
        started = time.perf_counter()
        model = fit_peer(peer.build(params, seed, threads), fold)
        score = list_metrics(fold, fold.users, recommend_lists(model, fold, fold.users, 10))[TUNING_METRIC]
        trials.append({"params": params, TUNING_METRIC: score, "seconds": time.perf_counter() - started})
        log.debug("%s %s valid %s=%.4f", peer.name, params, TUNING_METRIC, score)
    best = max(range(len(trials)), key=lambda i: (trials[i][TUNING_METRIC], -i))
    log.info("%s: %d grid points, best %s valid %s=%.4f", peer.name, len(trials), trials[best]["params"],
             TUNING_METRIC, trials[best][TUNING_METRIC])
    return {"params": trials[best]["params"], f"valid_{TUNING_METRIC}": trials[best][TUNING_METRIC],
            "tuning": trials}
