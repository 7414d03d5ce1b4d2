"""Turning scored (user, item) rows into per-user top-k lists, vectorised (one sort, no loop over users)."""

from __future__ import annotations

import numpy as np


def top_k_lists(users: np.ndarray, items: np.ndarray, scores: np.ndarray,
                k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(user ids, items ``n x k``, scores ``n x k``), best first; ties broken by item index; short lists padded -1."""
    order = np.lexsort((items, -scores.astype(np.float64), users))
    u, i, s = users[order], items[order], scores[order]
    starts = np.flatnonzero(np.r_[True, u[1:] != u[:-1]])
    sizes = np.diff(np.r_[starts, len(u)])
    position = np.arange(len(u)) - np.repeat(starts, sizes)
    keep = position < k
    row = np.repeat(np.arange(len(starts)), sizes)[keep]
    out_items = np.full((len(starts), k), -1, dtype=np.int32)
    out_scores = np.full((len(starts), k), -np.inf, dtype=np.float32)
    out_items[row, position[keep]] = i[keep]
    out_scores[row, position[keep]] = s[keep]
    return u[starts], out_items, out_scores
