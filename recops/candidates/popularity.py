"""Popularity: the most interacted items of a history, as a baseline list and as a cold-start fallback."""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recops.columns import Columns


def item_popularity(history: pd.DataFrame, n_items: int) -> np.ndarray:
    """Number of interactions of each item in ``history`` (float64, length n_items)."""
    return np.bincount(history[Columns.ITEM].to_numpy(), minlength=n_items).astype(np.float64)


def popular_unseen(popularity: np.ndarray, users: np.ndarray, seen: sp.csr_matrix, n: int,
                   batch_size: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """(items, scores) ``len(users) x n``: the most popular items each user has not seen, best first."""
    n = min(n, len(popularity))
    order = np.argsort(-popularity, kind="stable")
    items = np.full((len(users), n), -1, dtype=np.int32)
    scores = np.full((len(users), n), -np.inf, dtype=np.float32)
    # Take a few more than n from the global top list, enough to survive removing each user's seen items.
    max_seen = int(np.diff(seen.indptr)[users].max(initial=0))
    head = order[: min(len(order), n + max_seen)]
    for start in range(0, len(users), batch_size):
        batch = users[start:start + batch_size]
        seen_head = seen[batch][:, head].toarray() > 0
        rank_of_unseen = np.cumsum(~seen_head, axis=1) - 1
        keep = ~seen_head & (rank_of_unseen < n)
        rows, cols = np.nonzero(keep)
        items[start + rows, rank_of_unseen[rows, cols]] = head[cols]
        scores[start + rows, rank_of_unseen[rows, cols]] = popularity[head[cols]]
    return items, scores
