"""The serving engine: a loaded bundle turned into ranked, rule-checked, explained lists — for one request or for
every user at once, through the same code.

For a block of known users (one user for an online request; thousands for batch scoring) the engine runs the
pipeline's own functions on the bundle's arrays: ``merged_candidates`` over the version's sources (seen items
masked), ``gather_features`` from the precomputed statistics, the ONNX ranker in onnxruntime, then the business
rules of ``serving`` in params: blocked items never appear, at most ``category_cap`` items per value of
``cap_attribute`` (e.g. genre) per list, and the exploration policy (``recops.serving.exploration``) on the last
``exploration.slots`` positions. Users unknown to the version get the popularity list (blocked items removed),
marked ``fallback: unknown_user``; known users without history get their candidates from popularity (the merge's
cold-start rule) ranked with their attributes, marked ``fallback: cold_user``.

Live updates (:meth:`Recommender.add_event`): the interaction joins the user's history (an overlay on the
bundle's matrix: seen-item masking, EASE and item-kNN scores use it at once), the user's MF vector is recomputed
by fold-in (least squares with the item factors fixed, :meth:`MatrixFactorization.fold_in`), and the user's
sequence features (last items, last activity) move on; the very next request reflects it. Other statistics
(popularity, co-occurrence) change only with the next training run.

Reasons: each item Y of a list names the item X of the user's history most similar to it (cosine of MF item
factors, or item-kNN similarity without MF): "because you interacted with X" — but only a pair that at least
``serving.min_reason_support`` *other* users interacted with both of, in the version's interactions (otherwise
the next most similar history item that is; else no item is named). A pair backed by one or two people would tell
the requester what those people did (k-anonymity; docs/architecture.md, "API privacy"). ``explain=True`` adds the
ranker's top feature contributions (LightGBM ``pred_contrib`` on the version's text model, read — never
unpickled — from the bundle and loaded on first use). With ``serving.reasons: false`` there are no reasons and
``explain`` adds nothing: nothing of the user's history (or anyone else's) is in an answer.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recops.candidates.registry import SOURCES
from recops.candidates.sources import ItemKNN
from recops.candidates.storage import dense_item_item
from recops.columns import Columns
from recops.config import CandidatesConfig, FeaturesConfig, ServingConfig, StorageConfig
from recops.errors import RecopsError
from recops.features.builder import HistoryStatistics
from recops.serving.bundle import Bundle

log = logging.getLogger(__name__)

UNKNOWN_USER = "unknown_user"
COLD_USER = "cold_user"
LOCK_STRIPES = 64
# history items tried per listed item, most similar first, before its reason names none (bounds a request's cost
# when the most similar pairs are rare ones)
REASON_TRIES = 32
SUPPORT_CHUNK = 256  # users of a pair's rarer item looked up at first (most pairs are decided by them)
# The pair-support table (Recommender.support_table): min(users who had both items, 255), uint8, one entry per item
# pair, kept when the catalogue has at most this many items (16 MiB) and computing it (the sparse product of the
# interactions with themselves: the sum over users of their history length squared) takes at most this much work.
SUPPORT_TABLE_ITEMS = 4096
SUPPORT_TABLE_WORK = 500_000_000
UNNAMED_REASON = "based on your activity"


class UnknownIdError(RecopsError):
    """A user or item id the served version does not know."""


class OverlayMatrix:
    """The bundle's users x items binary matrix plus the items live events added, indexed like a CSR matrix.

    ``matrix[users]`` (what the sources and the merge call) returns the CSR rows with the added items, so a live
    event reaches every source without rebuilding the whole matrix.
    """

    def __init__(self, base: sp.csr_matrix) -> None:
        self.base = base.tocsr()
        self.shape = self.base.shape
        # sorted, duplicate-free rows (what the bundle writes): a user's items are then a slice of the row
        self._canonical = bool(self.base.has_canonical_format)
        # user -> {item: summed weight of the live events}: a repeated event costs O(1) here and the user's
        # state stays O(distinct items), however many events arrive
        self.added: dict[int, dict[int, float]] = {}
        self._rows: dict[int, sp.csr_matrix] = {}  # merged row of a user with live events, built on first use

    def add(self, user: int, item: int, weight: float = 1.0) -> None:
        items = self.added.setdefault(int(user), {})
        items[int(item)] = items.get(int(item), 0.0) + float(weight)
        self._rows.pop(int(user), None)

    def __getitem__(self, users: Any) -> sp.csr_matrix:
        users = np.atleast_1d(np.asarray(users, dtype=np.int64))
        if len(users) == 1 and int(users[0]) in self.added:  # an online request of a user with live events
            user = int(users[0])
            row = self._rows.get(user)
            if row is None:
                items = self.row_items(user)
                row = self._rows[user] = sp.csr_matrix(
                    (np.ones(len(items), np.float32), items, np.array([0, len(items)])), shape=(1, self.shape[1]))
            return row
        rows = self.base[users]
        if not self.added:
            return rows
        hit = [(r, self.added[u]) for r, u in enumerate(users.tolist()) if u in self.added]
        if not hit:
            return rows
        r = np.concatenate([np.full(len(items), row) for row, items in hit])
        c = np.concatenate([np.fromiter(items, dtype=np.int64, count=len(items)) for _, items in hit])
        extra = sp.csr_matrix((np.ones(len(r), np.float32), (r, c)), shape=rows.shape)
        out = (rows + extra).tocsr()
        out.data[:] = 1.0
        return out

    def row_items(self, user: int) -> np.ndarray:
        base = self.base.indices[self.base.indptr[user]:self.base.indptr[user + 1]]
        added = self.added.get(int(user), {})
        if not added and self._canonical:
            return base.astype(np.int64)
        return np.unique(np.r_[base, np.fromiter(added, dtype=np.int64, count=len(added))]).astype(np.int64)


@dataclass
class Recommendation:
    user_id: str
    items: list[Any]
    scores: list[float]
    version: str
    fallback: str | None = None
    explored: list[bool] = field(default_factory=list)
    reasons: list[dict[str, Any] | None] = field(default_factory=list)
    # the probability that this policy shows each item at its position (exploration.apply_logged); None unknown
    propensities: list[float | None] = field(default_factory=list)


def cap_positions(lists: np.ndarray, categories: np.ndarray, cap: int, k: int) -> np.ndarray:
    """Positions (``n x k``, -1 padded) of the entries of each row of ``lists`` to keep so that at most ``cap``
    items of any one category are kept (first come, first kept; category -1 is never capped), the first ``k``
    of them in list order. Vectorised over rows."""
    n, depth = lists.shape
    cat = np.where(lists >= 0, categories[np.maximum(lists, 0)], -1).astype(np.int64)
    n_cat = int(cat.max(initial=-1)) + 2
    key = (np.arange(n, dtype=np.int64)[:, None] * n_cat + cat + 1).ravel()
    order = np.argsort(key, kind="stable")  # groups (row, category), positions ascending within a group
    sorted_key = key[order]
    first = np.r_[True, sorted_key[1:] != sorted_key[:-1]]
    group_start = np.maximum.accumulate(np.where(first, np.arange(len(key)), 0))
    occurrence = np.empty(len(key), dtype=np.int64)
    occurrence[order] = np.arange(len(key)) - group_start
    keep = ((occurrence.reshape(n, depth) < cap) | (cat < 0)) & (lists >= 0)
    position = np.argsort(~keep, axis=1, kind="stable")[:, :k]
    return np.where(np.take_along_axis(keep, position, axis=1), position, -1)


class Recommender:
    """One served model version: ``recommend`` (one request), ``recommend_users`` (a block), ``add_event``."""

    def __init__(self, bundle: Bundle, config: ServingConfig, version: str, model_name: str = "") -> None:
        from recops.serving.exploration import ExplorationPolicy
        from recops.serving.ranker_runtime import load_scorer

        self.version = str(version)
        self.model_name = model_name
        self.config = config
        self.bundle_sha256 = bundle.manifest_sha256
        manifest = bundle.manifest
        self.candidates_config = CandidatesConfig.model_validate(manifest["settings"]["candidates"])
        self.features_config = FeaturesConfig.model_validate(manifest["settings"]["features"])
        self.feature_names: list[str] = list(manifest["feature_names"])
        self.source_columns: list[str] = list(manifest["source_columns"])
        self.user_ids, self.item_ids = bundle.user_ids, bundle.item_ids
        self.item_titles = bundle.item_titles  # display names, or None
        self._titles = None if self.item_titles is None else self.item_titles.tolist()  # as a list: read per answer
        self.n_users, self.n_items = len(self.user_ids), len(self.item_ids)
        self._user_lookup = {str(u): i for i, u in enumerate(self.user_ids.tolist())}
        self._item_lookup = {str(v): i for i, v in enumerate(self.item_ids.tolist())}
        threads = config.threads
        self.sources = {name: SOURCES[name].from_arrays(arrays, self.candidates_config, threads)
                        for name, arrays in bundle.sources.items()}
        # export.storage.item_item: dense copies of item-item matrices kept in the bundle's precision
        self.storage = StorageConfig.model_validate(manifest.get("storage", {}))
        for source in self.sources.values():
            if isinstance(source, ItemKNN):
                source.dense_storage = self.storage.item_item
        self.stats = HistoryStatistics(**bundle.stats)
        similarity = self.stats.similarity
        n = similarity.shape[0]
        if similarity.nnz >= 0.02 * n * n and 4 * n * n <= 512 * 2**20:
            # gathered 5 x 200 times per request: a dense lookup instead of scipy's sparse sampling
            self.stats.similarity = dense_item_item(similarity, self.storage.item_item)
        self.user_items = OverlayMatrix(bundle.user_items)
        self.confidence = bundle.confidence.tocsr()
        from recops.features.builder import feature_names

        computed = feature_names(self.stats, self.source_columns)
        if computed != self.feature_names:
            raise RecopsError(f"version {version}'s ranker expects features {self.feature_names}, this recops "
                              f"computes {computed} from its bundle: serve it with the recops that trained it")
        # the compiled forest (lleaves) or onnxruntime (serving.ranker_runtime), checked on reference rows
        self.scorer, self.ranker_runtime = load_scorer(bundle.root, manifest, bundle.onnx_bytes,
                                                       config.ranker_runtime, threads)
        log.info("version %s ranks with %s", self.version, self.ranker_runtime)
        self._booster_path = bundle.booster_path
        self._booster = None
        self.blocked = np.zeros(self.n_items, dtype=bool)
        for item in config.blocked_items:
            if item in self._item_lookup:
                self.blocked[self._item_lookup[item]] = True
        self._any_blocked = bool(self.blocked.any())
        self.categories = self._cap_categories(bundle, config)
        popularity = self.sources["popularity"].popularity_
        order = np.lexsort((np.arange(self.n_items), -popularity))
        self.popular = order[~self.blocked[order]]
        self.exploration = ExplorationPolicy(config.exploration, exposure=self.stats.item["item_pop"])
        # one lock per stripe of users: a user's read waits only for events of users in its stripe (1 in
        # LOCK_STRIPES), never for every other user's event application
        self._locks = [threading.Lock() for _ in range(LOCK_STRIPES)]
        self._item_user_keys: tuple[np.ndarray, np.ndarray] | None = None  # for reasons' support, built on first use
        self._users_of: np.ndarray | None = None  # the number of users of each item, with it
        self._support_table: np.ndarray | None | bool = False  # for reasons' support too (False: not decided yet)
        self._plain_item_ids = [_plain(v) for v in self.item_ids.tolist()]  # the ids answers name, as Python values
        self.loaded_at = time.time()
        self.events_applied = 0

    @staticmethod
    def _cap_categories(bundle: Bundle, config: ServingConfig) -> np.ndarray | None:
        if config.category_cap is None:
            return None
        multi, categorical = bundle.item_attributes.get("multi_label") or {}, bundle.item_attributes.get(
            "categorical") or {}
        name = config.cap_attribute or next(iter(multi), None) or next(iter(categorical), None)
        if name in multi:  # an item's category for the cap: its first label
            labels = multi[name].tocsr()
            has = np.diff(labels.indptr) > 0
            first = np.where(has, labels.indices[np.minimum(labels.indptr[:-1], max(len(labels.indices) - 1, 0))],
                             -1)
            return first.astype(np.int64)
        if name in categorical:
            return np.asarray(categorical[name], dtype=np.int64)
        raise RecopsError(f"serving.cap_attribute {name!r} is not an item attribute of this version "
                          f"(multi-label: {sorted(multi)}, categorical: {sorted(categorical)})")

    @contextlib.contextmanager
    def _locked(self, users: np.ndarray):
        """Hold the stripe of one user (an online request, an event), or every stripe in a fixed order (a block
        of users: batch scoring, which no event reaches while it runs, so the wait is for nothing)."""
        stripes = ([self._locks[int(users[0]) % LOCK_STRIPES]] if len(users) == 1 else self._locks)
        with contextlib.ExitStack() as stack:
            for lock in stripes:
                stack.enter_context(lock)
            yield

    # --- lookups ------------------------------------------------------------------------------------------------

    def user_index(self, user_id: Any) -> int | None:
        return self._user_lookup.get(str(user_id))

    def item_index(self, item_id: Any) -> int | None:
        return self._item_lookup.get(str(item_id))

    def original_user_id(self, user_id: str) -> Any:
        """``user_id`` (as a request names it: text) in the type of the version's ids: an integer when the data's
        ids are integers, so that a response's user and item ids are of one type."""
        index = self.user_index(user_id)
        if index is not None:
            return _plain(self.user_ids[index])
        digits = user_id[1:] if user_id.startswith("-") else user_id
        if self.user_ids.dtype.kind in "iu" and digits.isascii() and digits.isdigit():
            return int(user_id)
        return user_id

    def reasons_for(self, user_id: Any, items: np.ndarray) -> list[dict[str, Any] | None]:
        """The reasons of a list (dense item indices) for ``user_id``: what a cached list is served with, so that
        a cached and a live answer have the same fields."""
        index = self.user_index(user_id)
        if index is None or not self.config.reasons:
            return [None] * len(items)
        return self._reasons(index, self.user_items.row_items(index), np.asarray(items, dtype=np.int64))

    def seen_items(self, user_id: Any) -> list[Any]:
        index = self.user_index(user_id)
        return [] if index is None else self.item_ids[self.user_items.row_items(index)].tolist()

    # --- scoring ------------------------------------------------------------------------------------------------

    def recommend_users(self, users: np.ndarray, k: int, keys: np.ndarray | None = None,
                        block_users: int = 512, on_block=None, propensities: bool = False):
        """(lists, scores, explored) of ``users`` (dense indices), each ``len(users) x k``, -1 / -inf padded;
        ``on_block(n)`` after each block of ``n`` users (batch scoring's progress). With ``propensities``, a
        fourth array: the probability of each shown item at its position (``ExplorationPolicy.apply_logged``)."""
        from recops.candidates.merge import merged_candidate_blocks
        from recops.features.builder import gather_feature_matrix
        from recops.ranking import top_k_lists
        from recops.serving.exploration import request_keys

        users = np.asarray(users, dtype=np.int32)
        k = int(k)
        lists = np.full((len(users), k), -1, dtype=np.int64)
        scores = np.full((len(users), k), -np.inf, dtype=np.float32)
        depth = max(k, self.candidates_config.n_candidates) if self.categories is not None else k
        with self._locked(users):
            for start in range(0, len(users), block_users):
                batch = users[start:start + block_users]
                for columns in merged_candidate_blocks(self.sources, self.candidates_config, batch, self.user_items,
                                                       block_users=block_users):
                    if self._any_blocked:
                        allowed = ~self.blocked[columns[Columns.ITEM]]
                        if not allowed.any():
                            continue
                        columns = {name: values[allowed] for name, values in columns.items()}
                    cand_users, cand_items = columns[Columns.USER], columns[Columns.ITEM]
                    source_values = np.column_stack([columns[c] for c in self.source_columns])
                    x = gather_feature_matrix(cand_users, cand_items, source_values.astype(np.float32), self.stats,
                                              self.features_config.chunk_rows)
                    raw = self.scorer.predict(x)
                    listed, items, values = top_k_lists(cand_users, cand_items, raw, depth)
                    if self.categories is not None:
                        kept = cap_positions(items, self.categories, self.config.category_cap, k)
                        safe = np.maximum(kept, 0)
                        items = np.where(kept >= 0, np.take_along_axis(items, safe, axis=1), -1)
                        values = np.where(kept >= 0, np.take_along_axis(values, safe, axis=1), -np.inf)
                    position = start + (np.searchsorted(batch, listed) if _sorted(batch)
                                        else pd.Index(batch).get_indexer(listed))
                    lists[position] = items[:, :k]
                    scores[position] = values[:, :k]
                if on_block is not None:
                    on_block(len(batch))
            if not self.exploration.active:
                plain = (lists, scores, np.zeros(lists.shape, dtype=bool))
                return (*plain, np.where(lists >= 0, 1.0, np.nan)) if propensities else plain
            if keys is None:
                keys = request_keys(users, None, self.config.exploration.seed)
            excluded = self.user_items[users]
            blocked = np.flatnonzero(self.blocked)
            if len(blocked):
                rows = np.repeat(np.arange(len(users)), len(blocked))
                excluded = (excluded + sp.csr_matrix((np.ones(len(rows), np.float32), (rows, np.tile(blocked,
                            len(users)))), shape=excluded.shape)).tocsr()
            explored_lists, explored, chance = self.exploration.apply_logged(lists, keys, excluded)
        scores = np.where(explored, np.nan, scores).astype(np.float32)
        return (explored_lists, scores, explored, chance) if propensities else (explored_lists, scores, explored)

    def recommend(self, user_id: Any, k: int, request_id: str | None = None,
                  explain: bool = False) -> Recommendation:
        """One request: the top-``k`` of ``user_id`` with reasons (and feature contributions when ``explain``)."""
        from recops.serving.exploration import request_keys

        index = self.user_index(user_id)
        if index is None:
            items = self.popular[:k]
            return Recommendation(str(user_id), self.item_ids[items].tolist(),
                                  self.sources["popularity"].popularity_[items].astype(float).tolist(),
                                  self.version, fallback=UNKNOWN_USER, explored=[False] * len(items),
                                  reasons=[None] * len(items), propensities=[1.0] * len(items))
        users = np.array([index], dtype=np.int32)
        keys = (request_keys(users, None if request_id is None else [request_id], self.config.exploration.seed)
                if self.exploration.active else None)
        lists, scores, explored, chance = self.recommend_users(users, k, keys, propensities=True)
        keep = lists[0] >= 0
        items = lists[0][keep]
        history = self.user_items.row_items(index)
        if not self.config.reasons:  # no reason, and nothing to explain them with
            reasons: list[dict[str, Any] | None] = [None] * len(items)
        else:
            reasons = self._reasons(index, history, items)
            if explain:
                for reason, contribution in zip(reasons, self._contributions(index, items)):
                    reason["features"] = contribution
        return Recommendation(
            str(user_id), self.item_ids[items].tolist(),
            [None if not np.isfinite(s) else float(s) for s in scores[0][keep]], self.version,
            fallback=None if len(history) else COLD_USER, explored=explored[0][keep].tolist(), reasons=reasons,
            propensities=[None if not np.isfinite(c) else float(c) for c in chance[0][keep]])

    def _reasons(self, user: int, history: np.ndarray, items: np.ndarray) -> list[dict[str, Any] | None]:
        if not len(history) or not len(items):
            return [{"because": None, "text": "popular with users like you"} for _ in items]
        unit = self.stats.item_unit_factors
        if unit is not None:
            similarity = unit[items] @ unit[history].T
        else:
            block = self.stats.similarity[history][:, items]
            similarity = (block.toarray() if sp.issparse(block) else np.asarray(block)).T
        best = self._supported_pairs(user, history, items, similarity)
        out: list[dict[str, Any] | None] = []
        for row, item in enumerate(items):
            if best[row] < 0:  # no history item shares this one with enough other users to be named
                out.append({"because": None, "text": UNNAMED_REASON})
                continue
            because = history[best[row]]
            title = self.title(because)
            named = self._plain_item_ids[because]
            out.append({"because": named, "because_title": title, "similarity": float(similarity[row, best[row]]),
                        "text": f"because you interacted with {title or named}"})
        return out

    def _supported_pairs(self, user: int, history: np.ndarray, items: np.ndarray,
                         similarity: np.ndarray) -> np.ndarray:
        """For each listed item, the position in ``history`` of the most similar history item that at least
        ``serving.min_reason_support`` users other than ``user`` interacted with too (-1: none among the
        :data:`REASON_TRIES` most similar eligible ones). At most three vectorised rounds: each listed item's most
        similar history item (the usual case), the next ones of the items that failed, then an exact count of the
        pairs the first two left undecided."""
        need = self.config.min_reason_support
        if need == 0:
            return similarity.argmax(axis=1)
        self.item_user_keys()
        users_of = self._users_of
        # an item fewer than `need` users had cannot be shared by `need` of them: never tried
        masked = np.where((users_of[history] >= need)[None, :], similarity, -np.inf)
        masked[users_of[items] < need] = -np.inf
        out = np.full(len(items), -1, dtype=np.int64)
        best = masked.argmax(axis=1)
        rows = np.flatnonzero(np.isfinite(masked[np.arange(len(items)), best]))
        ok, _ = self._shared_by_others(history[best[rows]], items[rows], user, need, SUPPORT_CHUNK)
        out[rows[ok]] = best[rows[ok]]
        pending = rows[~ok]
        if not len(pending):
            return out
        ranked = np.argsort(-masked[pending], axis=1, kind="stable")[:, :REASON_TRIES]  # most similar first
        pair_rows, positions = np.repeat(pending, ranked.shape[1]), ranked.ravel()
        keep = np.isfinite(masked[pair_rows, positions])
        pair_rows, positions = pair_rows[keep], positions[keep]
        ok, undecided = self._shared_by_others(history[positions], items[pair_rows], user, need, SUPPORT_CHUNK)
        # an undecided pair matters only ranked before its row's first ok pair
        order = np.arange(len(pair_rows))
        first_ok = np.full(len(items), len(pair_rows))
        np.minimum.at(first_ok, pair_rows[ok], order[ok])
        unresolved = undecided & (order < first_ok[pair_rows])
        if unresolved.any():
            ok[unresolved], _ = self._shared_by_others(history[positions[unresolved]], items[pair_rows[unresolved]],
                                                       user, need, None)
        # per row, the first pair (most similar) that passed: pairs are grouped by row, in rank order
        rows_ok, first = np.unique(pair_rows[ok], return_index=True)
        out[rows_ok] = positions[ok][first]
        return out

    def item_user_keys(self) -> tuple[np.ndarray, np.ndarray]:
        """(indptr, keys): ``keys[indptr[i]:indptr[i + 1]]`` are ``i * (n_users + 1) + user`` for the users of item
        ``i`` in the bundle's interactions, ascending overall — so that whether a user had an item is one binary
        search, for any number of (item, user) pairs at once. 8 bytes per interaction, built on first use. Live
        events are not in it: they could only add support, so leaving them out errs on the side of privacy."""
        if self._item_user_keys is None:
            by_item = self._interaction_ones(np.int8).tocsc()
            by_item.sort_indices()
            item = np.repeat(np.arange(self.n_items, dtype=np.int64), np.diff(by_item.indptr))
            self._users_of = np.diff(by_item.indptr).astype(np.int64)
            self._item_user_keys = (by_item.indptr.astype(np.int64),
                                item * (self.n_users + 1) + by_item.indices.astype(np.int64))
        return self._item_user_keys

    def _interaction_ones(self, dtype) -> sp.csr_matrix:
        """The bundle's users x items interactions as a 0/1 matrix of ``dtype``, one entry per (user, item)."""
        base = self.user_items.base
        ones = sp.csr_matrix((np.ones(len(base.indices), dtype=dtype), base.indices, base.indptr), shape=base.shape)
        ones.sum_duplicates()
        ones.data[:] = 1
        return ones

    def support_table(self) -> np.ndarray | None:
        """``table[a, b]``: the number of users who had both items ``a`` and ``b`` in the bundle's interactions,
        capped at 255 (uint8) — so that a pair's support is one lookup instead of :meth:`_shared_by_others`' binary
        searches (5 % of a worker's time under load on ML-100k). Built on first use when the catalogue has at most
        :data:`SUPPORT_TABLE_ITEMS` items, the product costs at most :data:`SUPPORT_TABLE_WORK` and
        ``serving.min_reason_support`` is below the cap; None otherwise (the binary searches then count)."""
        if self._support_table is False:
            ones = self._interaction_ones(np.int32)
            work = float(np.square(np.diff(ones.indptr).astype(np.float64)).sum())
            if (self.n_items > SUPPORT_TABLE_ITEMS or work > SUPPORT_TABLE_WORK
                    or self.config.min_reason_support >= 255):
                self._support_table = None
            else:
                both = (ones.T @ ones).tocsr()
                table = np.zeros((self.n_items, self.n_items), dtype=np.uint8)
                rows = np.repeat(np.arange(self.n_items), np.diff(both.indptr))
                table[rows, both.indices] = np.minimum(both.data, 255)
                self._support_table = table
        return self._support_table

    def _shared_by_others(self, a: np.ndarray, b: np.ndarray, user: int, need: int,
                          cap: int | None) -> tuple[np.ndarray, np.ndarray]:
        """(ok, undecided) for the item pairs ``(a[r], b[r])``: ok where at least ``need`` users other than ``user``
        interacted with both. With the :meth:`support_table`, the pair's count less the requester's own (never
        undecided). Otherwise each user of the pair's smaller list (its first ``cap`` only, when given: most pairs
        are decided by them) is looked up among the other item's users; undecided: not ok, but only because the
        list was cut at ``cap``."""
        table = self.support_table()
        if table is not None:
            base = self.user_items.base
            own = np.zeros(self.n_items, dtype=bool)  # the requester's items in the bundle (np.isin sorts: slower)
            own[base.indices[base.indptr[user]:base.indptr[user + 1]]] = True
            count = table[a, b].astype(np.int64) - (own[a] & own[b])
            return count >= need, np.zeros(len(a), dtype=bool)
        indptr, keys = self.item_user_keys()
        span = np.int64(self.n_users + 1)
        lengths = self._users_of
        swap = lengths[a] > lengths[b]
        small, large = np.where(swap, b, a), np.where(swap, a, b)
        size = lengths[small]
        take = size if cap is None else np.minimum(size, cap)
        row = np.repeat(np.arange(len(a)), take)
        within = np.arange(len(row)) - np.repeat(np.cumsum(take) - take, take)
        users = keys[indptr[small][row] + within] % span
        wanted = large[row] * span + users
        found = keys[np.minimum(np.searchsorted(keys, wanted), len(keys) - 1)] == wanted
        count = np.bincount(row[found & (users != user)], minlength=len(a))
        ok = count >= need
        return ok, ~ok & (take < size)

    def title(self, item: int) -> str | None:
        """The display name of dense item ``item`` (None without a title column, or for an item without one)."""
        return None if self._titles is None else self._titles[item]

    def _contributions(self, user: int, items: np.ndarray, top: int = 3) -> list[list[dict[str, Any]]]:
        """The ranker's ``top`` largest feature contributions (LightGBM pred_contrib) for each listed item."""
        from recops.candidates import merged_candidates
        from recops.features.builder import gather_features

        if not len(items):
            return []
        if self._booster is None:
            import lightgbm as lgb

            self._booster = lgb.Booster(model_file=str(self._booster_path))  # LightGBM's text format
        with self._locked(np.array([user])):
            cands = merged_candidates(self.sources, self.candidates_config, np.array([user], np.int32),
                                      self.user_items)
            cands = cands.set_index(Columns.ITEM).reindex(items).reset_index()
            cands[Columns.USER] = user
            cands = cands[[Columns.USER, Columns.ITEM, *self.source_columns]]
            features = gather_features(cands, self.stats, self.features_config.chunk_rows)
        contrib = self._booster.predict(features[self.feature_names].to_numpy(np.float64), pred_contrib=True)
        contrib = contrib[:, :-1]  # the last column is the expected value
        order = np.argsort(-np.abs(contrib), axis=1)[:, :top]
        return [[{"feature": self.feature_names[j], "contribution": float(contrib[r, j])} for j in order[r]]
                for r in range(len(items))]

    # --- live updates -------------------------------------------------------------------------------------------

    def add_event(self, user_id: Any, item_id: Any, timestamp: float | None = None,
                  weight: float = 1.0) -> dict[str, Any]:
        """Apply one interaction now (see the module docstring); return what changed."""
        user, item = self.user_index(user_id), self.item_index(item_id)
        if user is None:
            raise UnknownIdError(f"user {user_id!r} is not known to version {self.version}: the event is logged "
                                 "for the next snapshot but cannot change this version's recommendations")
        if item is None:
            raise UnknownIdError(f"item {item_id!r} is not in the catalogue of version {self.version}")
        ts = time.time() if timestamp is None else float(timestamp)
        started = time.perf_counter()
        with self._locked(np.array([user])):
            self.user_items.add(user, item, weight)
            stats = self.stats
            latest = ts >= stats.user_last_ts[user] or not np.isfinite(stats.user_last_ts[user])

            def history() -> tuple[np.ndarray, np.ndarray]:  # the user's items and summed weights, live ones too
                row = self.confidence[user]
                added = self.user_items.added[user]  # item -> summed live weight
                extra_items = np.fromiter(added, dtype=np.int64, count=len(added))
                items = np.r_[row.indices.astype(np.int64), extra_items]
                weights = np.r_[row.data.astype(np.float64), np.fromiter(added.values(), dtype=np.float64,
                                                                         count=len(added))]
                unique, where = np.unique(items, return_inverse=True)
                summed = np.bincount(where, weights=weights)  # a repeated pair sums, as in training
                if self.candidates_config.confidence == "binary":
                    summed[:] = 1.0
                return unique, summed

            for source in self.sources.values():  # MF folds the user in, the sequence source re-encodes them
                source.live_event(user, item, latest, history)
            if latest:
                last = stats.last_items[user]
                stats.last_items[user] = np.r_[item, last[last != item]][: last.shape[0]]
                stats.user_last_ts[user] = ts
            stats.user["user_activity"][user] += 1.0
            self.events_applied += 1  # a counter for /ready: a lost increment under a race is harmless
        return {"user_index": user, "item_index": item, "fold_in_ms": (time.perf_counter() - started) * 1000.0}

    def describe(self) -> dict[str, Any]:
        return {"model_name": self.model_name, "version": self.version, "bundle_sha256": self.bundle_sha256,
                "users": self.n_users, "items": self.n_items, "loaded_at": self.loaded_at,
                "events_applied": self.events_applied, "ranker_runtime": self.ranker_runtime}


def _sorted(values: np.ndarray) -> bool:
    return bool(len(values) < 2 or (np.diff(values) > 0).all())


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value
