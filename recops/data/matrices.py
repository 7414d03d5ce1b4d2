"""Sparse matrices of a log: who interacted with what (users x items), and over which rows items co-occur.

The data layer's view of a history, used by the candidate sources, the features and the evaluation alike (so none
of them imports another for it).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recops.columns import Columns
from recops.data.order import user_time_order


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
