"""Candidate generation by matrix factorisation with ``implicit`` (ALS by default, BPR selectable).

``MFCandidateGenerator`` follows the scikit-learn convention: ``__init__`` stores settings, ``fit`` learns
``user_factors_`` / ``item_factors_`` and returns self. Scoring is the :class:`~recops.candidates.sources.
MatrixFactorization` source's (user factors times item factors, in user blocks).
"""

from __future__ import annotations

import logging

import numpy as np
import scipy.sparse as sp
from implicit.cpu.als import AlternatingLeastSquares
from implicit.cpu.bpr import BayesianPersonalizedRanking
from recops.threads import blas_limits

from recops.config import CandidatesConfig

log = logging.getLogger(__name__)


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
