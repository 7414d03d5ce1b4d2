"""Candidate generation: matrix factorisation (implicit) with a popularity fallback for users without history."""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recops.candidates.mf import MFCandidateGenerator, interaction_matrix
from recops.candidates.popularity import item_popularity, popular_unseen
from recops.columns import Columns
from recops.config import CandidatesConfig

__all__ = [
    "MFCandidateGenerator", "candidates_frame", "generate_candidates", "interaction_matrix",
    "item_popularity", "popular_unseen",
]


def candidates_frame(users: np.ndarray, items: np.ndarray, scores: np.ndarray) -> pd.DataFrame:
    """Long table (user_idx, item_idx, mf_score, mf_rank) from ``len(users) x n`` arrays; empty slots dropped."""
    n = items.shape[1]
    valid = items >= 0
    return pd.DataFrame({
        Columns.USER: np.repeat(users.astype(np.int32), n)[valid.ravel()],
        Columns.ITEM: items[valid].astype(np.int32),
        Columns.SOURCE_SCORE: scores[valid].astype(np.float32),
        Columns.SOURCE_RANK: np.tile(np.arange(1, n + 1, dtype=np.int32), len(users))[valid.ravel()],
    })


def generate_candidates(history: pd.DataFrame, users: np.ndarray, n_users: int, n_items: int,
                        config: CandidatesConfig, seed: int, threads: int) -> tuple[pd.DataFrame, MFCandidateGenerator]:
    """Fit MF on ``history`` and return the top ``config.n_candidates`` unseen items of each of ``users``.

    Users with no history get the most popular unseen items instead, with a missing MF score.
    """
    user_items = interaction_matrix(history, n_users, n_items, config.confidence)
    generator = MFCandidateGenerator(config, seed=seed, threads=threads).fit(user_items)
    users = np.unique(users).astype(np.int32)
    warm = generator.has_history_[users]
    items, scores = generator.recommend(users[warm], user_items, config.n_candidates)
    frames = [candidates_frame(users[warm], items, scores)]
    if (~warm).any():
        pop_items, _ = popular_unseen(item_popularity(history, n_items), users[~warm], user_items, config.n_candidates)
        cold = candidates_frame(users[~warm], pop_items, np.full(pop_items.shape, np.nan, dtype=np.float32))
        frames.append(cold)
    out = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    return out.sort_values([Columns.USER, Columns.SOURCE_RANK], kind="stable").reset_index(drop=True), generator
