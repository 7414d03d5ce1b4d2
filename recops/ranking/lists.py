"""Turning scored (user, item) rows into per-user top-k lists, vectorised (one sort, no loop over users)."""

from __future__ import annotations

import numpy as np


def ranked_lists(table, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``top_k_lists`` of a candidate table's (user, item) rows scored by ``scores``."""
    from recops.columns import Columns

    return top_k_lists(table[Columns.USER].to_numpy(), table[Columns.ITEM].to_numpy(), scores, k)


def top_k_lists(users: np.ndarray, items: np.ndarray, scores: np.ndarray,
                k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(user ids, items ``n x k``, scores ``n x k``), best first; ties broken by item index; short lists padded -1."""
    if len(users) > k and users[0] == users[-1] and (users == users[0]).all():
        return _one_user(users, items, scores, k)
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


def _one_user(users: np.ndarray, items: np.ndarray, scores: np.ndarray,
              k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``top_k_lists`` of one user's rows (an online request): the rows scoring at least the k-th best score
    (ties at the cut included) sorted like the general path, the same k."""
    negative = -scores.astype(np.float64)
    cut = np.partition(negative, k - 1)[k - 1]
    if not np.isfinite(cut):  # NaN or infinite scores: the general path's order
        order = np.lexsort((items, negative, users))[:k]
    else:
        within = np.flatnonzero(negative <= cut)
        order = within[np.lexsort((items[within], negative[within]))][:k]
    out_items = np.full((1, k), -1, dtype=np.int32)
    out_scores = np.full((1, k), -np.inf, dtype=np.float32)
    out_items[0, :len(order)] = items[order]
    out_scores[0, :len(order)] = scores[order]
    return users[:1], out_items, out_scores
