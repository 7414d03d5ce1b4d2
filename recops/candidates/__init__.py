"""Candidate generation: several sources (implicit MF, EASE, item-kNN, popularity) merged per user."""

from __future__ import annotations

import numpy as np
import pandas as pd

from recops.candidates.merge import fit_sources, merged_candidates, source_columns
from recops.candidates.mf import MFCandidateGenerator, interaction_matrix
from recops.candidates.popularity import item_popularity, popular_unseen
from recops.candidates.sources import (EASE, DecayedPopularity, ItemKNN, MatrixFactorization, MostPopular,
                                       RecentItemKNN, RecentPopularity, recommend, top_n)
from recops.columns import Columns
from recops.config import CandidatesConfig

__all__ = [
    "EASE", "DecayedPopularity", "ItemKNN", "MFCandidateGenerator", "MatrixFactorization", "MostPopular",
    "RecentItemKNN", "RecentPopularity", "fit_sources",
    "generate_candidates", "interaction_matrix", "item_popularity", "merged_candidates", "popular_unseen",
    "recommend", "source_columns", "top_n",
]


def generate_candidates(history: pd.DataFrame, users: np.ndarray, n_users: int, n_items: int,
                        config: CandidatesConfig, seed: int, threads: int) -> tuple[pd.DataFrame, dict[str, object]]:
    """Fit the configured sources on ``history``; the merged top ``config.n_candidates`` unseen items of each of
    ``users`` with every source's score and rank (see ``recops.candidates.merge``), and the fitted sources."""
    sources, _ = fit_sources(history, n_users, n_items, config, seed, threads)
    user_items = interaction_matrix(history, n_users, n_items, "binary")
    frame = merged_candidates(sources, config, np.unique(users).astype(np.int32), user_items)
    return frame.reset_index(drop=True), sources
