"""Candidate sources: recommenders that score every item for a block of users.

Every source is a :class:`CandidateSource` (the contract below) registered by name in
``recops.candidates.registry.SOURCES``: the pipeline fits the configured ones by name (``merge.fit_sources``), a
bundle stores each one's arrays and the serving engine loads them back by the same name. The contract:

- ``configured(config, seed, threads)``: the unfitted source with params.yaml's ``candidates`` settings;
- ``fit_history(history)``: learn from a fold's :class:`History` (the source picks its own view of it: binary,
  confidence-weighted, a recent window, each user's last items, the interactions' ages) and return self;
- ``score(users, user_items) -> (len(users) x n_items) float32``: a dense block of scores, higher is better;
  ``score_user(user, items)`` the same row for one user from the item indices of their history;
- ``to_arrays()`` / ``stored_arrays(storage)`` / ``from_arrays(arrays, config, threads)``: the fitted state as
  arrays, as ``export.storage`` keeps it in a bundle, and back.

Each source also follows the scikit-learn convention for its learner (``__init__`` stores settings, ``fit`` learns
from a matrix and returns self), which the single-stage peers of the quality benchmark call directly.
Blocks keep memory bounded (``block_users x n_items`` floats at a time) and let every source share the same
top-n selection, seen-item exclusion and merging code (``recops.candidates.merge``). The same classes are the
single-stage peers of the quality benchmark (``benchmarks/quality.py``), so the ranker is compared with exactly the
models that feed it.

- ``MostPopular``: interaction counts, optionally exponentially decayed by age or limited to a recent window;
  ``RecentPopularity`` (the last N days: "trending now") and ``DecayedPopularity`` (half-life decay) are the two
  time-aware variants as sources of their own.
- ``ItemKNN``: item-item cosine similarity of the interaction columns with shrinkage, pruned to the k nearest
  neighbours of each item; a user's score for item j sums the similarities of j to the items in the history.
  ``RecentItemKNN`` counts the co-occurrences of the recent window only ("what people who just consumed X
  consume now").
- ``EASE``: the closed-form linear item-item model (Steck, 2019): ``B = I - P / diag(P)`` with
  ``P = (X'X + l2 I)^-1``. It inverts an ``n_items x n_items`` matrix, so it refuses catalogues above
  ``max_items`` (memory ~ 8 n_items^2 bytes, time ~ n_items^3).
- ``MatrixFactorization``: implicit's ALS or BPR (``recops.candidates.mf``), scores are factor dot products.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Callable, ClassVar

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recops.candidates.mf import MFCandidateGenerator
from recops.candidates.storage import (RowStore, add_rows, dense, dense_item_item, item_item, sparse_times, times_t,
                                       top_k_per_row)
from recops.columns import DAY, Columns
from recops.config import CandidatesConfig, StorageConfig
from recops.data.matrices import cooccurrence_rows, interaction_matrix
from recops.errors import RecopsError
from recops.threads import blas_limits

DEFAULTS = CandidatesConfig()  # a source built without arguments: params.yaml's values (one layer of defaults)


@dataclass(frozen=True, eq=False)
class History:
    """What a source is fitted on: one fold's history (user / item indices, timestamps, weights) over the run's
    index, with the matrices the sources learn from built once and shared. ``mf_init``: MF (user, item) factors
    of a fit on an earlier part of this history to warm-start from."""

    frame: pd.DataFrame
    n_users: int
    n_items: int
    mf_init: tuple[np.ndarray, np.ndarray] | None = None

    @cached_property
    def user_items(self) -> sp.csr_matrix:
        """The binary users x items matrix."""
        return interaction_matrix(self.frame, self.n_users, self.n_items, "binary")

    def weighted(self, confidence: str) -> sp.csr_matrix:
        """The users x items matrix with ``candidates.confidence`` weights."""
        return interaction_matrix(self.frame, self.n_users, self.n_items, confidence)

    @cached_property
    def ages_days(self) -> np.ndarray:
        """Each interaction's age in days before the history's latest timestamp."""
        ts = self.frame[Columns.TIMESTAMP].to_numpy(dtype=np.float64)
        return (ts.max(initial=0.0) - ts) / DAY

    @property
    def items(self) -> np.ndarray:
        """Each interaction's item index (aligned with ``ages_days``)."""
        return self.frame[Columns.ITEM].to_numpy()

    def recent(self, days: float) -> History:
        """The interactions at most ``days`` before the history's latest timestamp (the same index)."""
        ts = self.frame[Columns.TIMESTAMP].to_numpy(dtype=np.float64)
        if not len(ts):
            return self
        return History(self.frame[ts >= ts.max() - days * DAY], self.n_users, self.n_items)

    def cooccurrence_rows(self, max_history: int | None) -> sp.csr_matrix:
        """The binary matrix item-item co-occurrences are counted over (each user's last ``max_history`` items)."""
        return cooccurrence_rows(self.frame, self.n_users, self.n_items, max_history, self.user_items)


class CandidateSource(ABC):
    """The contract every source keeps (see the module's docstring); ``registry.SOURCES`` maps each name to its
    class.

    ``needs_history``: the source has nothing to say about a user without history (it abstains for them in the
    merge); the popularity sources score everyone and are the cold-start fallback. ``exact_one_row``: see below."""

    name: ClassVar[str]
    needs_history: ClassVar[bool] = True
    # score_user gives the block's row bit for bit (False: the score is a BLAS product, and a one-row product may
    # take another kernel than the block's, equal to float32 rounding)
    exact_one_row: ClassVar[bool] = True

    @classmethod
    @abstractmethod
    def configured(cls, config: CandidatesConfig, seed: int = 0, threads: int = 1) -> Any: ...

    @abstractmethod
    def fit_history(self, history: History) -> Any: ...

    @abstractmethod
    def score(self, users: np.ndarray, user_items: sp.csr_matrix) -> np.ndarray: ...

    @abstractmethod
    def score_user(self, user: int, history: np.ndarray) -> np.ndarray:
        """``score`` of one user from the item indices of their history (sorted, unique), as a new 1-D float32
        array the caller may write into: the row ``score`` gives for that user (an online request, a one-row block
        of ``merge.merged_candidate_blocks``): bit for bit for the item-item and popularity sources, to BLAS's
        float32 rounding for MF's one-row product (tests/unit/test_source_contract.py)."""
        ...

    def live_event(self, user: int, item: int, latest: bool,
                   history: Callable[[], tuple[np.ndarray, np.ndarray]]) -> None:
        """A live interaction of ``user`` with ``item`` in a server (``latest``: it is the user's most recent one;
        ``history()``: the user's whole history now, as sorted items and summed weights). Sources that follow a
        user between versions update that user here (MF folds them in, the sequence source re-encodes them); the
        item-item and popularity sources read the live history matrix at request time and keep their state."""

    @abstractmethod
    def to_arrays(self) -> dict[str, Any]:
        """The fitted state as arrays (what a serving bundle stores; see ``from_arrays``)."""
        ...

    def stored_arrays(self, storage: StorageConfig) -> dict[str, Any]:
        """``to_arrays`` as ``export.storage`` keeps them in a bundle (``recops.candidates.storage``)."""
        return dict(self.to_arrays())

    @classmethod
    @abstractmethod
    def from_arrays(cls, arrays: dict, config: CandidatesConfig, threads: int = 1) -> Any: ...



class MostPopular(CandidateSource):
    """Interaction counts as of the history's end: all of them, or (``window_days``) only those at most that many
    days old, each optionally weighed ``2 ** (-age / half_life_days)``."""

    name = "popularity"
    needs_history = False

    def __init__(self, half_life_days: float | None = None, window_days: float | None = None) -> None:
        self.half_life_days = half_life_days
        self.window_days = window_days

    def fit(self, user_items: sp.csr_matrix, item_ages_days: np.ndarray | None = None,
            ages_item_index: np.ndarray | None = None) -> MostPopular:
        """Counts per item; ``item_ages_days`` (days before the history's end of every interaction) and
        ``ages_item_index`` (its item) are needed for a window or a decay, which a time-blind matrix cannot give."""
        n_items = user_items.shape[1]
        timed = item_ages_days is not None and ages_item_index is not None
        if (self.half_life_days or self.window_days) and not timed:
            raise ValueError(f"{self.name}: a window or a half-life needs the interactions' ages")
        if timed and (self.half_life_days or self.window_days):
            ages = np.asarray(item_ages_days, dtype=np.float64)
            weights = np.exp2(-ages / self.half_life_days) if self.half_life_days else np.ones(len(ages))
            if self.window_days:
                weights = np.where(ages <= self.window_days, weights, 0.0)
            counts = np.bincount(ages_item_index, weights=weights, minlength=n_items)
        else:
            counts = np.bincount(user_items.indices, minlength=n_items).astype(np.float64)
        self.popularity_ = counts.astype(np.float32)
        return self

    def fit_history(self, history: History) -> MostPopular:
        return self.fit(history.user_items, history.ages_days, history.items)

    def score(self, users: np.ndarray, user_items: sp.csr_matrix) -> np.ndarray:
        return np.broadcast_to(self.popularity_, (len(users), len(self.popularity_))).copy()

    def score_user(self, user: int, history: np.ndarray) -> np.ndarray:
        return self.popularity_.copy()

    def to_arrays(self) -> dict[str, np.ndarray | sp.csr_matrix]:
        return {"popularity": self.popularity_}

    @classmethod
    def configured(cls, config: CandidatesConfig, seed: int = 0, threads: int = 1) -> MostPopular:
        return cls(config.popularity_half_life_days)

    @classmethod
    def from_arrays(cls, arrays: dict, config: CandidatesConfig, threads: int = 1) -> MostPopular:
        source = cls.configured(config)
        source.popularity_ = np.asarray(arrays["popularity"], dtype=np.float32)
        return source


class RecentPopularity(MostPopular):
    """What is trending now: interactions of the last ``candidates.recent_popularity_days`` before the history's
    end. On a global timeline this is a strong peer (ML-100k: far above all-time counts), so it is a source and
    a baseline of its own, not only a feature."""

    name = "recent_popularity"

    def __init__(self, window_days: float = DEFAULTS.recent_popularity_days) -> None:
        super().__init__(None, window_days)

    @classmethod
    def configured(cls, config: CandidatesConfig, seed: int = 0, threads: int = 1) -> RecentPopularity:
        return cls(config.recent_popularity_days)


class DecayedPopularity(MostPopular):
    """Counts decayed by age with half-life ``candidates.decayed_popularity_half_life_days``: recent
    interactions count most, older ones still a little (smoother than a hard window for sparse catalogues)."""

    name = "decayed_popularity"

    def __init__(self, half_life_days: float = DEFAULTS.decayed_popularity_half_life_days) -> None:
        super().__init__(half_life_days, None)

    @classmethod
    def configured(cls, config: CandidatesConfig, seed: int = 0, threads: int = 1) -> DecayedPopularity:
        return cls(config.decayed_popularity_half_life_days)


def _sum_rows(matrix: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``binary_row @ matrix`` for one user's history rows: the rows summed in index order, in float32 — the same
    additions in the same order as the sparse-times-dense product of ``score``, without building a sparse row.
    ``matrix`` may also be a compressed :class:`RowStore` or sparse (``export.storage``)."""
    if not len(rows):
        return np.zeros(matrix.shape[1], dtype=np.float32)
    if isinstance(matrix, RowStore):
        return matrix.sum_rows(rows)
    if sp.issparse(matrix):
        return sparse_times(_history_row(rows, matrix.shape[0]), matrix)[0]
    if matrix.dtype != np.float32 or not matrix.flags.c_contiguous:
        return np.asarray(_history_row(rows, matrix.shape[0]) @ matrix, dtype=np.float32)[0]
    out = np.zeros(matrix.shape[1], dtype=np.float32)
    add_rows(matrix, rows, np.ones(len(rows), dtype=np.float32), out)  # the history's rows read in place
    return out


def _history_row(history: np.ndarray, n_items: int) -> sp.csr_matrix:
    return sp.csr_matrix((np.ones(len(history), np.float32), np.asarray(history, np.int32),
                          np.array([0, len(history)], np.int32)), shape=(1, n_items))


def _binary(user_items: sp.csr_matrix) -> sp.csr_matrix:
    matrix = user_items.tocsr().astype(np.float32, copy=True)
    matrix.data[:] = 1.0
    return matrix


class ItemKNN(CandidateSource):
    """Item-item cosine similarity with shrinkage, the ``neighbours`` nearest of each item kept; co-occurrences
    counted over each user's last ``max_history`` items (``candidates.knn_max_history``; None: all of them)."""

    name = "itemknn"

    def __init__(self, neighbours: int = DEFAULTS.knn_neighbours, shrinkage: float = DEFAULTS.knn_shrinkage,
                 threads: int = 1, max_history: int | None = DEFAULTS.knn_max_history) -> None:
        self.neighbours = neighbours
        self.shrinkage = shrinkage
        self.threads = threads
        self.max_history = max_history
        # how the dense copy is kept (export.storage.item_item of the bundle it was loaded from)
        self.dense_storage = "float32"

    # The co-occurrence matrix is built a block of items at a time, at most about this many item-item entries per
    # block (block items x catalogue), each block pruned to its k neighbours before the next: memory stays
    # bounded whatever the catalogue (one 5M-interaction log took 12.5 GB unblocked).
    BLOCK_ENTRIES = 40_000_000

    @classmethod
    def configured(cls, config: CandidatesConfig, seed: int = 0, threads: int = 1) -> ItemKNN:
        return cls(config.knn_neighbours, config.knn_shrinkage, threads=threads, max_history=config.knn_max_history)

    def fit_history(self, history: History) -> ItemKNN:
        return self.fit(history.cooccurrence_rows(self.max_history))

    def fit(self, user_items: sp.csr_matrix) -> ItemKNN:
        x = _binary(user_items).tocsr()
        n = x.shape[1]
        counts = np.asarray(x.sum(axis=0)).ravel()
        norms = np.sqrt(counts).astype(np.float32)
        items_by_user = x.T.tocsr()
        step = max(1, self.BLOCK_ENTRIES // max(n, 1))
        parts = []
        for start in range(0, n, step):
            # rows start.. of the symmetric co-occurrences: row j holds item j's co-occurrence with every item
            co = (items_by_user[start:start + step] @ x).tocsr()
            parts.append(_top_k_of_rows(co, start, norms, self.shrinkage, self.neighbours))
        rows, cols, values = (np.concatenate(arrays) for arrays in zip(*parts)) if parts else ([], [], [])
        self.similarity_ = sp.csr_matrix((values, (rows, cols)), shape=(n, n), dtype=np.float32)
        return self

    # A similarity matrix denser than this, small enough to hold as a dense float32 matrix, is scored with BLAS:
    # with hundreds of neighbours per item (ML-100k: 30% dense) that is 5x faster than the sparse product.
    DENSE_DENSITY = 0.02
    DENSE_MAX_BYTES = 512 * 2**20

    def _dense_similarity(self) -> np.ndarray | None:
        dense = getattr(self, "_dense", None)
        if dense is None:
            n = self.similarity_.shape[0]
            use_dense = (self.similarity_.nnz >= self.DENSE_DENSITY * n * n and 4 * n * n <= self.DENSE_MAX_BYTES)
            dense = self._dense = dense_item_item(self.similarity_, self.dense_storage) if use_dense else False
        return None if dense is False else dense

    def score(self, users: np.ndarray, user_items: sp.csr_matrix) -> np.ndarray:
        rows = _binary(user_items[users])
        dense = self._dense_similarity()
        with blas_limits(self.threads):
            return sparse_times(rows, self.similarity_ if dense is None else dense)

    def score_user(self, user: int, history: np.ndarray) -> np.ndarray:
        dense = self._dense_similarity()
        if dense is None:
            return self.score(np.zeros(1, np.int32), _history_row(history, self.similarity_.shape[0]))[0]
        return _sum_rows(dense, history)

    def to_arrays(self) -> dict[str, np.ndarray | sp.csr_matrix]:
        return {"similarity": self.similarity_}

    def stored_arrays(self, storage: StorageConfig) -> dict[str, Any]:
        return {"similarity": item_item(self.similarity_, storage.item_item)}

    @classmethod
    def from_arrays(cls, arrays: dict, config: CandidatesConfig, threads: int = 1) -> ItemKNN:
        source = cls.configured(config, threads=threads)
        source.similarity_ = arrays["similarity"].tocsr()
        return source


class RecentItemKNN(ItemKNN):
    """Item-kNN whose co-occurrences are counted over the last ``candidates.recent_cooccurrence_days`` of the
    history only: the neighbours of what a user just consumed are what people consume with it now, not over the
    catalogue's whole life."""

    name = "recent_itemknn"

    def __init__(self, neighbours: int = DEFAULTS.knn_neighbours, shrinkage: float = DEFAULTS.knn_shrinkage,
                 threads: int = 1, max_history: int | None = DEFAULTS.knn_max_history,
                 window_days: float = DEFAULTS.recent_cooccurrence_days) -> None:
        super().__init__(neighbours, shrinkage, threads, max_history)
        self.window_days = window_days

    @classmethod
    def configured(cls, config: CandidatesConfig, seed: int = 0, threads: int = 1) -> RecentItemKNN:
        return cls(config.knn_neighbours, config.knn_shrinkage, threads=threads, max_history=config.knn_max_history,
                   window_days=config.recent_cooccurrence_days)

    def fit_history(self, history: History) -> RecentItemKNN:
        return self.fit(history.recent(self.window_days).cooccurrence_rows(self.max_history))


def _top_k_of_rows(co: sp.csr_matrix, start: int, norms: np.ndarray, shrinkage: float,
                   k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Item j's k nearest neighbours from row ``j - start`` of a block of co-occurrence counts ``co``: entries
    (neighbour, item, cosine) with cosine ``count / (norm_i * norm_j + shrinkage)``, the item itself excluded; per
    item, the k largest similarities, ties to the lower neighbour index.

    One sort of one 64-bit key per entry does the selection: block row, then the similarity's bits inverted (for
    non-negative float32 the bit pattern orders as the value), then the neighbour index. The key is unique, so
    the plain (vectorised) sort is deterministic, and every field is read back from the sorted keys. The fields
    fit since a block holds at most about ``BLOCK_ENTRIES`` = rows x items entries (block rows x catalogue <
    2**33 by far); a selection by lexsort over the block instead took 4x longer.
    """
    n_rows, n = co.shape
    item_bits, row_bits = max(int(n - 1).bit_length(), 1), max(int(n_rows - 1).bit_length(), 1)
    local = np.repeat(np.arange(n_rows, dtype=np.int64), np.diff(co.indptr))
    neighbours = co.indices.astype(np.int64)
    keep = neighbours != local + start
    local, neighbours = local[keep], neighbours[keep]
    sims = (co.data[keep].astype(np.float32)
            / (norms[neighbours] * norms[local + start] + np.float32(shrinkage + 1e-12))).astype(np.float32)
    if item_bits + row_bits + 31 > 64 or (len(sims) and sims.min() < 0):  # not reachable with counts; kept exact
        order = np.lexsort((neighbours, -sims, local))
        local, neighbours, sims = local[order], neighbours[order], sims[order]
    else:
        inverted = np.uint64(0x7FFFFFFF) - sims.view(np.uint32).astype(np.uint64)
        key = ((local.astype(np.uint64) << np.uint64(31 + item_bits)) | (inverted << np.uint64(item_bits))
               | neighbours.astype(np.uint64))
        key.sort()
        local = (key >> np.uint64(31 + item_bits)).astype(np.int64)
        sims = (np.uint64(0x7FFFFFFF) - ((key >> np.uint64(item_bits)) & np.uint64(0x7FFFFFFF))).astype(
            np.uint32).view(np.float32)
        neighbours = (key & np.uint64((1 << item_bits) - 1)).astype(np.int64)
    position = np.arange(len(local)) - np.searchsorted(local, np.arange(n_rows))[local]
    top = position < k
    return neighbours[top].astype(np.int32), (local[top] + start).astype(np.int32), sims[top]


class EASE(CandidateSource):
    """The closed-form linear item-item model (see the module's docstring)."""

    name = "ease"

    def __init__(self, l2: float = DEFAULTS.ease_l2, max_items: int = DEFAULTS.ease_max_items,
                 threads: int = 1) -> None:
        self.l2 = l2
        self.max_items = max_items
        self.threads = threads

    @classmethod
    def configured(cls, config: CandidatesConfig, seed: int = 0, threads: int = 1) -> EASE:
        return cls(config.ease_l2, config.ease_max_items, threads=threads)

    def fit_history(self, history: History) -> EASE:
        return self.fit(history.user_items)

    def fit(self, user_items: sp.csr_matrix) -> EASE:
        n_items = user_items.shape[1]
        if n_items > self.max_items:
            raise RecopsError(
                f"EASE needs an {n_items} x {n_items} matrix inverse, above candidates.ease_max_items="
                f"{self.max_items}; remove 'ease' from candidates.sources or raise the limit")
        x = _binary(user_items)
        with blas_limits(self.threads):
            gram = (x.T @ x).toarray().astype(np.float64)
            gram[np.diag_indices(n_items)] += self.l2
            precision = np.linalg.inv(gram)
            weights = precision / (-np.diag(precision))
        weights[np.diag_indices(n_items)] = 0.0
        self.weights_ = weights.astype(np.float32)
        return self

    def score(self, users: np.ndarray, user_items: sp.csr_matrix) -> np.ndarray:
        with blas_limits(self.threads):
            return sparse_times(_binary(user_items[users]), self.weights_)

    def score_user(self, user: int, history: np.ndarray) -> np.ndarray:
        return _sum_rows(self.weights_, history)

    def to_arrays(self) -> dict[str, np.ndarray | sp.csr_matrix]:
        return {"weights": self.weights_}

    def stored_arrays(self, storage: StorageConfig) -> dict[str, Any]:
        weights = self.weights_
        if storage.ease_top_k is not None:
            weights = top_k_per_row(weights, storage.ease_top_k)
        return {"weights": item_item(weights, storage.item_item)}

    @classmethod
    def from_arrays(cls, arrays: dict, config: CandidatesConfig, threads: int = 1) -> EASE:
        """Weights dense float32, compressed (a :class:`RowStore`) or sparse (``export.storage``), as stored."""
        source = cls.configured(config, threads=threads)
        weights = arrays["weights"]
        source.weights_ = (weights.tocsr() if sp.issparse(weights) else weights if isinstance(weights, RowStore)
                           else np.asarray(weights, dtype=np.float32))
        return source


class MatrixFactorization(CandidateSource):
    """implicit ALS / BPR as a source, fitted on the ``candidates.confidence``-weighted matrix (warm-started from
    the history's ``mf_init`` when configured); users without history score 0 everywhere."""

    name = "mf"
    exact_one_row = False

    def __init__(self, config: CandidatesConfig, seed: int = 0, threads: int = 1) -> None:
        self.config = config
        self.seed = seed
        self.threads = threads

    @classmethod
    def configured(cls, config: CandidatesConfig, seed: int = 0, threads: int = 1) -> MatrixFactorization:
        return cls(config, seed=seed, threads=threads)

    def fit_history(self, history: History) -> MatrixFactorization:
        return self.fit(history.weighted(self.config.confidence), history.mf_init)

    def fit(self, user_items: sp.csr_matrix, init: tuple[np.ndarray, np.ndarray] | None = None) -> MatrixFactorization:
        """``init``: (user, item) factors to warm-start from (see ``CandidatesConfig.warm_start_iterations``)."""
        self.generator_ = MFCandidateGenerator(self.config, seed=self.seed, threads=self.threads).fit(user_items, init)
        return self

    @property
    def user_factors_(self) -> np.ndarray:
        return self.generator_.user_factors_

    @property
    def item_factors_(self) -> np.ndarray:
        return self.generator_.item_factors_

    def score(self, users: np.ndarray, user_items: sp.csr_matrix) -> np.ndarray:
        with blas_limits(self.threads):
            out = times_t(self.generator_.user_factors_[users], self.generator_.item_factors_)
        out[~self.generator_.has_history_[users]] = 0.0
        return out.astype(np.float32, copy=False)

    def score_user(self, user: int, history: np.ndarray) -> np.ndarray:
        """``score`` of one user (the same product, on a one-row block), as a 1-D array."""
        g = self.generator_
        with blas_limits(self.threads):
            out = times_t(g.user_factors_[user:user + 1], g.item_factors_)
        if not g.has_history_[user]:
            out[:] = 0.0
        return out[0].astype(np.float32, copy=False)

    def to_arrays(self) -> dict[str, np.ndarray | sp.csr_matrix]:
        g = self.generator_
        return {"user_factors": g.user_factors_, "item_factors": g.item_factors_, "has_history": g.has_history_}

    def stored_arrays(self, storage: StorageConfig) -> dict[str, Any]:
        arrays = dict(self.to_arrays())
        for key in ("user_factors", "item_factors"):
            arrays[key] = RowStore.compress(arrays[key], storage.mf_factors)
        return arrays

    @classmethod
    def from_arrays(cls, arrays: dict, config: CandidatesConfig, threads: int = 1) -> MatrixFactorization:
        """A fitted source from stored factors: the user factors as a writable float32 copy (live updates fold
        users in), the item factors as stored (float32, or a compressed :class:`RowStore`)."""
        source = cls(config, threads=threads)
        generator = MFCandidateGenerator(config, threads=threads)
        generator.user_factors_ = np.array(dense(arrays["user_factors"]), dtype=np.float32)
        items = arrays["item_factors"]
        generator.item_factors_ = items if isinstance(items, RowStore) else np.ascontiguousarray(items, np.float32)
        generator.has_history_ = np.array(arrays["has_history"], dtype=bool)
        source.generator_ = generator
        return source

    def live_event(self, user: int, item: int, latest: bool,
                   history: Callable[[], tuple[np.ndarray, np.ndarray]]) -> None:
        self.fold_in(user, *history())

    def fold_in(self, user: int, items: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """Recompute one user's factor vector from their whole history with the item factors fixed (ALS's
        closed-form user step, as in implicit's ``recalculate_user``): ``(Y'CY + reg I)^-1 Y'C p`` with
        confidence ``C = 1 + alpha * weight``. BPR has no closed form; the same least-squares step is its
        fold-in approximation. Updates the source in place and returns the vector."""
        g = self.generator_
        y = g.item_factors_[np.asarray(items, dtype=np.int64)].astype(np.float64)
        confidence = 1.0 + self.config.alpha * np.asarray(weights, dtype=np.float64)
        with blas_limits(self.threads):
            if getattr(self, "_gram", None) is None:  # Y'Y (the zero-preference part), once per item factors
                full = dense(g.item_factors_).astype(np.float64)
                self._gram = full.T @ full
            a = self._gram + (y.T * (confidence - 1.0)) @ y + self.config.regularization * np.eye(y.shape[1])
            b = (y.T * confidence).sum(axis=1)
            vector = np.linalg.solve(a, b).astype(np.float32)
        g.user_factors_[user] = vector
        g.has_history_[user] = len(items) > 0
        return vector


def exclude_seen(scores: np.ndarray, users: np.ndarray, user_items: sp.csr_matrix) -> np.ndarray:
    """Set the scores of items in each user's history to -inf (in place) and return the block."""
    block = user_items[users].tocoo()
    scores[block.row, block.col] = -np.inf
    return scores


def top_n(scores: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(items, scores) of the n best entries of each row, best first; -inf entries come back as item -1."""
    n = min(n, scores.shape[1])
    if n < scores.shape[1]:
        part = np.argpartition(-scores, n - 1, axis=1)[:, :n]
    else:
        part = np.broadcast_to(np.arange(scores.shape[1]), scores.shape).copy()
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-part_scores, axis=1, kind="stable")
    items = np.take_along_axis(part, order, axis=1).astype(np.int32)
    values = np.take_along_axis(part_scores, order, axis=1)
    items[~np.isfinite(values)] = -1
    return items, values


def recommend(source, users: np.ndarray, user_items: sp.csr_matrix, n: int,
              block_users: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Top-n unseen items of each user by one source, in user blocks (the single-stage recommender)."""
    n = min(n, user_items.shape[1])
    items = np.full((len(users), n), -1, dtype=np.int32)
    values = np.full((len(users), n), -np.inf, dtype=np.float32)
    for start in range(0, len(users), block_users):
        batch = users[start:start + block_users]
        block = exclude_seen(source.score(batch, user_items), batch, user_items)
        items[start:start + len(batch)], values[start:start + len(batch)] = top_n(block, n)
    return items, values
