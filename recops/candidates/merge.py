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

from recops.candidates.registry import SOURCES
from recops.candidates.sources import CandidateSource, History, top_n
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
        history = user_history(user_items, int(batch[0])) if len(batch) == 1 else None
        if history is not None and len(history):  # an online request: a one-row block, scored by score_user
            scores, fallback = _user_scores(sources, names, int(batch[0]), history, n_items), None
        else:
            scores, fallback = _block_scores(sources, names, batch, user_items, n)
        # sources x users x items -> each source's top n of each user, in one selection
        top_items, top_values = (part.reshape(len(names), len(batch), -1)
                                 for part in top_n(scores.reshape(-1, n_items), n))
        row_of, item_of = round_robin([*top_items, *([fallback] if fallback is not None else [])], n, n_items)
        frame = {Columns.USER: batch[row_of], Columns.ITEM: item_of.astype(np.int32)}
        # every source's score of the merged candidates (sources x candidates), and whether it retrieved them: it
        # scores at least its n-th best (ties at the cut count as retrieved)
        value = scores[:, row_of, item_of]
        finite = np.isfinite(value)
        retrieved = finite & (value >= top_values[:, row_of, -1])
        rank = np.empty(value.shape, dtype=np.float32)
        for j in range(len(names)):  # 1 + the number of the source's top-n entries scoring higher
            if len(batch) == 1:  # one row: the same count by binary search in its (descending) top n
                rank[j] = np.searchsorted(-top_values[j, 0], -value[j], side="left")
            else:
                rank[j] = (top_values[j][row_of] > value[j][:, None]).sum(axis=1)
        rank += 1
        rank[~retrieved] = n + 1
        value[~finite] = np.nan
        for j, name in enumerate(names):
            frame[f"{name}_score"] = value[j]
            frame[f"{name}_rank"] = rank[j]
        frame["n_sources"] = retrieved.sum(axis=0, dtype=np.float32)
        yield frame


def _block_scores(sources: dict[str, CandidateSource], names: list[str], batch: np.ndarray, user_items, n: int
                  ) -> tuple[np.ndarray, np.ndarray | None]:
    """Every source's scores of a block of users (sources x users x items), seen items masked; sources that need a
    history abstain (-inf) for users without one, who get popularity's top ``n`` instead (the second value: a
    users x n list of item indices, -1 padded; None when every user has a history)."""
    rows = _BlockRows(user_items, batch)  # the block's rows, sliced once for every source
    warm = np.diff(rows.block.indptr) > 0
    all_warm = bool(warm.all())
    seen = rows.block.tocoo()
    scores = np.empty((len(names), len(batch), user_items.shape[1]), dtype=np.float32)
    for j, name in enumerate(names):
        scores[j] = sources[name].score(batch, rows)
        if SOURCES[name].needs_history and not all_warm:
            scores[j][~warm] = -np.inf  # nothing to go on: the source abstains for users without history
    scores[:, seen.row, seen.col] = -np.inf  # exclude_seen, with the rows' coordinates computed once
    if POPULARITY in names or all_warm:
        return scores, None
    fallback = sources[POPULARITY].score(batch, rows)
    fallback[seen.row, seen.col] = -np.inf
    fallback[warm] = -np.inf
    return scores, top_n(fallback, n)[0]


def _user_scores(sources: dict[str, CandidateSource], names: list[str], user: int, history: np.ndarray,
                 n_items: int) -> np.ndarray:
    """:func:`_block_scores` of a one-user block whose user has a history: each source's row by ``score_user``
    (the contract holds it to the block's row) instead of slicing a sparse block."""
    scores = np.empty((len(names), 1, n_items), dtype=np.float32)
    for j, name in enumerate(names):
        scores[j, 0] = sources[name].score_user(user, history)
    scores[:, 0, history] = -np.inf
    return scores


def user_history(user_items, user: int) -> np.ndarray:
    """The item indices (sorted, unique) of one user's row of ``user_items`` (a CSR matrix, or any matrix with a
    ``row_items`` method such as the serving engine's overlay of live events)."""
    if hasattr(user_items, "row_items"):
        return user_items.row_items(user)
    matrix = user_items if sp.issparse(user_items) and user_items.format == "csr" else sp.csr_matrix(user_items[[user]])
    row = user if matrix is user_items else 0
    return np.unique(matrix.indices[matrix.indptr[row]:matrix.indptr[row + 1]]).astype(np.int64)


def round_robin(tops: list[np.ndarray], n: int, n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """The round-robin merge of several top-n lists (``users x n`` item indices each, -1 padded, in source order):
    (row, item) of the merged candidates, at most ``n`` per row, rows in order and each row's items in merged order.

    Slots run rank-major, source-minor (the best item of each source, then the second best, ...); an item found by
    several sources keeps its first slot, found by ``np.minimum.at`` into a ``users x n_items`` scratch (the size
    of one source's score block)."""
    listed = np.stack(tops, axis=2).reshape(len(tops[0]), -1)  # users x (n * sources), in slot order
    width = listed.shape[1]
    flat = listed.ravel()
    found = np.flatnonzero(flat >= 0)  # row-major: within a row, in slot order
    row_of, item_of = found // width, flat[found]
    key = row_of * n_items + item_of
    order = np.arange(len(found))
    first = np.full(len(listed) * n_items, len(found), dtype=np.int64)
    np.minimum.at(first, key, order)
    keep = first[key] == order  # each (row, item) at its first slot
    row_of, item_of = row_of[keep], item_of[keep]
    if len(listed) == 1:
        return row_of[:n], item_of[:n]
    starts = np.searchsorted(row_of, np.arange(len(listed)))  # each row's first n
    keep = np.arange(len(row_of)) - starts[row_of] < n
    return row_of[keep], item_of[keep]


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
