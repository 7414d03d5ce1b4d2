"""Candidate generation by matrix factorisation with ``implicit`` (ALS by default, BPR selectable).

``MFCandidateGenerator`` follows the scikit-learn convention: ``__init__`` stores settings, ``fit`` learns
``user_factors_`` / ``item_factors_`` and returns self. Recommending is batched over users (implicit's own top-k
in C++) so memory stays bounded at millions of users; already-seen items are excluded.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import scipy.sparse as sp
from implicit.cpu.als import AlternatingLeastSquares
from implicit.cpu.bpr import BayesianPersonalizedRanking
from recops.threads import blas_limits

from recops.columns import Columns
from recops.config import CandidatesConfig
from recops.data.order import user_time_order

log = logging.getLogger(__name__)


def interaction_matrix(frame: pd.DataFrame, n_users: int, n_items: int, confidence: str = "binary") -> sp.csr_matrix:
    """users x items CSR matrix of interaction strength (repeated pairs summed, binary capped at 1)."""
    if confidence == "rating" and Columns.RATING in frame.columns:
        values = frame[Columns.RATING].to_numpy(dtype=np.float32)
    elif confidence == "weight" and Columns.WEIGHT in frame.columns:
        values = frame[Columns.WEIGHT].to_numpy(dtype=np.float32)
    else:
        values = np.ones(len(frame), dtype=np.float32)
    matrix = sp.csr_matrix(
        (values, (frame[Columns.USER].to_numpy(), frame[Columns.ITEM].to_numpy())),
        shape=(n_users, n_items), dtype=np.float32,
    )
    matrix.sum_duplicates()
    if confidence == "binary":
        matrix.data[:] = 1.0
    return matrix


def warm_start_mismatch(config: CandidatesConfig, n_users: int, n_items: int, users: np.ndarray,
                        items: np.ndarray) -> str | None:
    """Why (user, item) factors cannot start a fit of ``n_users x n_items`` with ``config``, or None when they
    can (implicit's BPR keeps an item bias in one extra factor column)."""
    width = config.factors + (1 if config.algorithm == "bpr" else 0)
    if users.shape != (n_users, width) or items.shape != (n_items, width):
        return (f"warm start factors of shape {users.shape} / {items.shape} do not fit a ({n_users}, {n_items}) "
                f"matrix with {width} factor columns")
    return None


class MFCandidateGenerator:
    """Implicit-feedback matrix factorisation producing the top-N unseen items per user."""

    def __init__(self, config: CandidatesConfig, seed: int = 0, threads: int = 1) -> None:
        self.config = config
        self.seed = seed
        self.threads = threads

    def _model(self):
        if self.config.algorithm == "bpr":
            return BayesianPersonalizedRanking(
                factors=self.config.factors, learning_rate=self.config.learning_rate,
                regularization=self.config.regularization, iterations=self.config.iterations,
                random_state=self.seed, num_threads=self.threads,
            )
        return AlternatingLeastSquares(
            factors=self.config.factors, regularization=self.config.regularization, alpha=self.config.alpha,
            iterations=self.config.iterations, random_state=self.seed, num_threads=self.threads,
            calculate_training_loss=False,
        )

    def fit(self, user_items: sp.csr_matrix,
            init: tuple[np.ndarray, np.ndarray] | None = None) -> MFCandidateGenerator:
        """Fit from random factors, or, with ``init`` (user and item factors of an earlier fit on a history this
        one extends, same index) and ``config.warm_start_iterations`` set, continue from them for that many
        iterations (implicit keeps factors that are already set)."""
        with blas_limits(self.threads):
            model = self._model()  # implicit checks the BLAS thread pool when a model is built
            warm = init is not None and self.config.warm_start_iterations is not None
            if warm:
                users, items = init
                problem = warm_start_mismatch(self.config, *user_items.shape, users, items)
                if problem:
                    raise ValueError(problem)
                model.user_factors = np.array(users, dtype=np.float32)
                model.item_factors = np.array(items, dtype=np.float32)
                model.iterations = self.config.warm_start_iterations
            model.fit(user_items.tocsr().astype(np.float32), show_progress=False)
        self.iterations_ = model.iterations
        self.model_ = model
        self.user_factors_ = np.ascontiguousarray(model.user_factors, dtype=np.float32)
        self.item_factors_ = np.ascontiguousarray(model.item_factors, dtype=np.float32)
        self.has_history_ = np.diff(user_items.indptr) > 0
        return self

    def recommend(self, users: np.ndarray, user_items: sp.csr_matrix, n: int,
                  batch_size: int = 4096) -> tuple[np.ndarray, np.ndarray]:
        """(items, scores), each ``len(users) x n``; unfilled slots (tiny catalogues) have item -1."""
        if not hasattr(self, "model_"):
            raise RuntimeError("MFCandidateGenerator.recommend called before fit")
        n_items = user_items.shape[1]
        n = min(n, n_items)
        items = np.full((len(users), n), -1, dtype=np.int32)
        scores = np.full((len(users), n), -np.inf, dtype=np.float32)
        with blas_limits(self.threads):
            for start in range(0, len(users), batch_size):
                batch = users[start:start + batch_size]
                ids, vals = self.model_.recommend(batch, user_items[batch], N=n, filter_already_liked_items=True)
                items[start:start + len(batch), : ids.shape[1]] = ids
                scores[start:start + len(batch), : ids.shape[1]] = vals
        items[~np.isfinite(scores)] = -1
        return items, scores


def most_recent(history: pd.DataFrame, max_per_user: int | None) -> pd.DataFrame:
    """Each user's ``max_per_user`` most recent interactions (ties: the higher item index first, as the sequence
    features order them), in ``history``'s row order; ``history`` itself when ``max_per_user`` is None."""
    if max_per_user is None or not len(history):
        return history
    users = history[Columns.USER].to_numpy()
    order = user_time_order(users, history[Columns.ITEM].to_numpy(), history[Columns.TIMESTAMP].to_numpy(),
                            newest_first=True)
    sorted_users = users[order]
    starts = np.flatnonzero(np.r_[True, sorted_users[1:] != sorted_users[:-1]])
    position = np.arange(len(order)) - np.repeat(starts, np.diff(np.r_[starts, len(order)]))
    kept = np.sort(order[position < max_per_user])
    return history if len(kept) == len(history) else history.iloc[kept]


def cooccurrence_rows(history: pd.DataFrame, n_users: int, n_items: int, max_history: int | None,
                      seen: sp.csr_matrix) -> sp.csr_matrix:
    """The binary users x items matrix item-item co-occurrences are counted over: ``seen`` (the whole history),
    or with ``max_history`` each user's most recent ``max_history`` items only (``candidates.knn_max_history``,
    ``features.similarity_max_history``)."""
    if max_history is None:
        return seen
    return interaction_matrix(most_recent(history, max_history), n_users, n_items, "binary")
