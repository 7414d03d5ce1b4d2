"""Multi-source candidate generation: several sources, one merged list per user, every source's view of it.

For a block of users, each configured source scores all items (seen items masked), its top ``n`` is taken, and the
lists are merged round-robin by rank (the best item of each source first, in the configured source order, then the
second best, ...; an item found by several sources keeps its best slot) and cut at ``n``. Then, for every merged
candidate, each source's score and rank (its position in that source's top ``n``; ``n + 1`` when outside it) are
recorded, with the number of sources that retrieved it. These columns are ranker features: the ranker learns which
source to trust for which user and item.

Users without history get the popularity source only (the other sources have nothing to go on); popularity is
fitted for this even when it is not a configured source. Work is done in user blocks of ``block_users x n_items``
floats per source, so memory does not grow with the number of users.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recops.candidates.sources import SOURCES, CandidateSource, History, top_n
from recops.columns import Columns
from recops.config import CandidatesConfig

log = logging.getLogger(__name__)

POPULARITY = "popularity"


def fit_sources(history: pd.DataFrame, n_users: int, n_items: int, config: CandidatesConfig, seed: int,
                threads: int, mf_init: tuple[np.ndarray, np.ndarray] | None = None
                ) -> tuple[dict[str, CandidateSource], dict[str, float]]:
    """Every configured source (plus popularity, the cold-start fallback) fitted on ``history``; fit seconds.
    ``mf_init``: MF (user, item) factors of a fit on an earlier part of ``history`` to warm-start from."""
    shared = History(history, n_users, n_items, mf_init)  # the matrices the sources learn from, built once
    fitted: dict[str, CandidateSource] = {}
    seconds: dict[str, float] = {}
    for name in dict.fromkeys([*config.sources, POPULARITY]):
        started = time.perf_counter()
        fitted[name] = SOURCES[name].configured(config, seed=seed, threads=threads).fit_history(shared)
        seconds[name] = time.perf_counter() - started
    return fitted, seconds


def source_columns(config: CandidatesConfig) -> list[str]:
    """Names of the per-source columns of a candidate table, in order."""
    cols = []
    for name in config.sources:
        cols += [f"{name}_score", f"{name}_rank"]
    return [*cols, "n_sources"]


def merged_candidates(sources: dict[str, CandidateSource], config: CandidatesConfig, users: np.ndarray,
                      user_items: sp.csr_matrix, block_users: int = 512) -> pd.DataFrame:
    """(user_idx, item_idx, <source>_score, <source>_rank ..., n_sources), ``config.n_candidates`` rows per user
    at most, in merged order (``merged_rank`` ascending) within each user."""
    from recops.progress import progress

    frames = []
    with progress("candidates: scoring users", len(users), "users") as step:
        for columns in merged_candidate_blocks(sources, config, users, user_items, block_users):
            frames.append(pd.DataFrame(columns))
            step.advance(min(block_users, len(users) - step.done))
    if not frames:
        return pd.DataFrame({c: pd.Series(dtype=np.float32) for c in [Columns.USER, Columns.ITEM,
                                                                        *source_columns(config)]})
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


def merged_candidate_blocks(sources: dict[str, CandidateSource], config: CandidatesConfig, users: np.ndarray,
                            user_items: sp.csr_matrix, block_users: int = 512):
    """The columns of :func:`merged_candidates` (a dict of arrays) for each block of users, as a generator: the
    serving engine uses them directly, without a DataFrame."""
    n_items = user_items.shape[1]
    n = min(config.n_candidates, n_items)
    names = list(config.sources)
    for start in range(0, len(users), block_users):
        batch = np.asarray(users[start:start + block_users], dtype=np.int32)
        if len(batch) == 1:  # an online request: the same columns from 1-D arrays, without sparse blocks
            history = user_history(user_items, int(batch[0]))
            if len(history):
                yield _merge_user(sources, names, int(batch[0]), history, n_items, n)
                continue
        rows = _BlockRows(user_items, batch)  # the block's rows, sliced once for every source
        warm = np.diff(rows.block.indptr) > 0
        seen = rows.block.tocoo()
        scores: dict[str, np.ndarray] = {}
        tops: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        all_warm = bool(warm.all())
        for name in names:
            block = sources[name].score(batch, rows)
            block[seen.row, seen.col] = -np.inf  # exclude_seen, with the rows' coordinates computed once
            if SOURCES[name].needs_history and not all_warm:
                block[~warm] = -np.inf  # nothing to go on: the source abstains for users without history
            scores[name] = block
            tops[name] = top_n(block, n)
        if POPULARITY not in names and (~warm).any():
            block = sources[POPULARITY].score(batch, rows)
            block[seen.row, seen.col] = -np.inf
            block[warm] = -np.inf
            tops[POPULARITY] = top_n(block, n)
        # Round-robin merge: slot = rank * n_lists + list position; the smallest slot of each item wins.
        slot = np.full((len(batch), n_items), np.inf, dtype=np.float32)
        row_index = np.arange(len(batch))[:, None]
        for j, (items, values) in enumerate(tops.values()):
            found = items >= 0
            position = (np.arange(items.shape[1])[None, :] * len(tops) + j).astype(np.float32)
            r, c = np.broadcast_to(row_index, items.shape)[found], items[found]
            slot[r, c] = np.minimum(slot[r, c], np.broadcast_to(position, items.shape)[found])
        merged, merged_slot = top_n(-slot, n)
        keep = merged >= 0
        row_of = np.broadcast_to(row_index, merged.shape)[keep]
        item_of = merged[keep]
        frame = {Columns.USER: batch[row_of], Columns.ITEM: item_of.astype(np.int32)}
        n_sources = np.zeros(len(item_of), dtype=np.float32)
        for name in names:
            value = scores[name][row_of, item_of]
            top_values = tops[name][1]
            # rank in the source's top n: 1 + number of its top-n entries scoring higher (n + 1 when outside)
            if len(batch) == 1:  # one request: the same count by binary search in the (descending) top n
                rank = 1 + np.searchsorted(-top_values[0], -value, side="left")
            else:
                rank = 1 + (top_values[row_of] > value[:, None]).sum(axis=1)
            # retrieved: scores at least the source's n-th best (ties at the cut count as retrieved)
            retrieved = np.isfinite(value) & (value >= top_values[row_of, -1])
            frame[f"{name}_score"] = np.where(np.isfinite(value), value, np.nan).astype(np.float32)
            frame[f"{name}_rank"] = np.where(retrieved, rank, n + 1).astype(np.float32)
            n_sources += retrieved
        frame["n_sources"] = n_sources
        yield frame


def user_history(user_items, user: int) -> np.ndarray:
    """The item indices (sorted, unique) of one user's row of ``user_items`` (a CSR matrix, or any matrix with a
    ``row_items`` method such as the serving engine's overlay of live events)."""
    if hasattr(user_items, "row_items"):
        return user_items.row_items(user)
    matrix = user_items if sp.issparse(user_items) and user_items.format == "csr" else sp.csr_matrix(user_items[[user]])
    row = user if matrix is user_items else 0
    return np.unique(matrix.indices[matrix.indptr[row]:matrix.indptr[row + 1]]).astype(np.int64)


def _merge_user(sources: dict[str, CandidateSource], names: list[str], user: int, history: np.ndarray, n_items: int,
                n: int) -> dict[str, np.ndarray]:
    """The columns of ``merged_candidate_blocks`` for one user with a history: each source scores the user
    (``score_user``) into one row of a sources x items block, seen items are masked, the block's tops are taken
    by ``top_n`` (row by row the very selection of the block path), merged by the same round-robin slots, and the
    ranks are found by binary search. A test checks it against the block path on every user."""
    scores = np.empty((len(names), n_items), dtype=np.float32)
    for j, name in enumerate(names):
        scores[j] = sources[name].score_user(user, history)
    scores[:, history] = -np.inf
    top_items, top_values = top_n(scores, n)
    # round-robin slots (rank * n_sources + source); an item keeps its smallest: the listed items in slot order,
    # each at its first occurrence
    listed = top_items.T.ravel()
    listed = listed[listed >= 0]
    order = np.arange(len(listed))
    first = np.full(n_items, len(listed), dtype=np.int64)
    np.minimum.at(first, listed, order)  # each item's first position in slot order
    item_of = listed[first[listed] == order][:n].astype(np.int32)
    value = scores[:, item_of]
    finite = np.isfinite(value)
    retrieved = finite & (value >= top_values[:, -1:])  # ties at the cut count as retrieved
    rank = np.empty(value.shape, dtype=np.float32)
    descending, wanted = -top_values, -value
    for j in range(len(names)):  # 1 + the number of the source's top-n entries scoring higher
        rank[j] = np.searchsorted(descending[j], wanted[j], side="left")
    rank += 1
    rank[~retrieved] = n + 1
    value[~finite] = np.nan
    frame = {Columns.USER: np.full(len(item_of), user, dtype=np.int32), Columns.ITEM: item_of}
    for j, name in enumerate(names):
        frame[f"{name}_score"] = value[j]
        frame[f"{name}_rank"] = rank[j]
    frame["n_sources"] = retrieved.sum(axis=0, dtype=np.float32)
    return frame


class _BlockRows:
    """``user_items`` for one block of users: indexing with exactly that block returns the rows sliced once.

    The rows stay sparse: a user's history row times an item-item matrix costs nnz x n_items, far less than the
    dense product (tried: an online request got slower)."""

    def __init__(self, user_items, batch: np.ndarray) -> None:
        self.user_items, self.batch = user_items, batch
        self.block = user_items[batch].tocsr()
        self.shape = user_items.shape

    def __getitem__(self, users):
        if users is self.batch or (isinstance(users, np.ndarray) and users.shape == self.batch.shape
                                   and np.array_equal(users, self.batch)):
            return self.block
        return self.user_items[users]
