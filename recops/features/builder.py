"""Ranker features for (user, candidate item) pairs, computed from one history table only.

Everything is derived from the interactions *before* the period being predicted (``history``) and from static
attribute tables, so a fold's features never see its targets. Per-user and per-item statistics are computed
once as arrays indexed by the dense ids, then gathered for the candidate rows (numpy fancy indexing, chunked for
very large candidate sets). The reference time of a history is its latest timestamp.

Feature groups:
- item: popularity (all time, recent window, exponentially decayed), trending signals (counts over the short
  ``trend_windows_days`` and their velocity against the window before), mean rating, freshness (age and days
  since last seen), numeric and categorical attributes;
- user: activity, mean rating, active span, mean log-popularity of the items consumed, attributes;
- candidate sources: each source's score and rank and the number of sources that retrieved the item (passed
  through from the candidate table);
- user x item: affinity of the user's multi-label profile (e.g. genres) to the item's labels, the item's
  popularity relative to the user's usual popularity, the item's numeric attributes relative to the user's mean
  over past items (e.g. release year), the item's age when the user was last active, the item's popularity among
  users sharing each categorical attribute with the user (e.g. gender, occupation) relative to its overall
  popularity, and the similarity of the item to the user's last ``sequence_length`` items: cosine of
  co-occurrence (item-kNN from the same history, mean and max) and, when MF item factors of the same history are
  given, cosine of the factors (mean and max).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recops.data.matrices import cooccurrence_rows, interaction_matrix
from recops.columns import Columns, DAY
from recops.config import AttributeColumns, FeaturesConfig
from recops.data.order import user_time_order

log = logging.getLogger(__name__)



@dataclass
class Attributes:
    """Attribute columns aligned to dense ids: numeric values, categorical codes and multi-label indicators."""

    numeric: dict[str, np.ndarray] = field(default_factory=dict)
    categorical: dict[str, np.ndarray] = field(default_factory=dict)
    multi_label: dict[str, sp.csr_matrix] = field(default_factory=dict)


def align_attributes(table: pd.DataFrame | None, id_column: str, ids: np.ndarray,
                     spec: AttributeColumns | None) -> Attributes:
    """Attributes of the entities ``ids`` (dense index order); entities absent from the table get NaN / -1 / none."""
    out = Attributes()
    if table is None or spec is None:
        return out
    table = table.drop_duplicates(id_column, keep="last")
    pos = pd.Index(table[id_column].to_numpy()).get_indexer(ids)
    present = pos >= 0
    take = np.where(present, pos, 0)
    for name in spec.numeric:
        values = pd.to_numeric(table[name], errors="coerce").to_numpy(dtype=np.float64)
        out.numeric[name] = np.where(present, values[take], np.nan).astype(np.float32)
    for name in spec.categorical:
        codes, _ = pd.factorize(table[name].astype("string"), sort=True)
        out.categorical[name] = np.where(present, codes[take], -1).astype(np.float32)
    for name in spec.multi_label:
        labels = table[name].fillna("").astype(str).str.split(spec.separator)
        exploded = labels.explode()
        exploded = exploded[exploded.str.len() > 0]
        codes, _ = pd.factorize(exploded, sort=True)
        rows = exploded.index.to_numpy()
        row_pos = pd.Index(table.index).get_indexer(rows)
        matrix = sp.csr_matrix((np.ones(len(codes), np.float32), (row_pos, codes)),
                               shape=(len(table), max(int(codes.max(initial=-1)) + 1, 1)))
        matrix.sum_duplicates()
        matrix.data[:] = 1.0
        selector = sp.csr_matrix((present.astype(np.float32), (np.arange(len(ids)), take)),
                                 shape=(len(ids), len(table)))
        out.multi_label[name] = (selector @ matrix).tocsr()
    return out


def _rows_normalised(matrix: sp.csr_matrix) -> sp.csr_matrix:
    norms = np.sqrt(np.asarray(matrix.multiply(matrix).sum(axis=1)).ravel())
    return sp.diags(np.where(norms > 0, 1.0 / np.maximum(norms, 1e-12), 0.0)) @ matrix


@dataclass
class HistoryStatistics:
    """Per-user and per-item arrays computed once from a history; ``gather`` turns them into feature columns."""

    user: dict[str, np.ndarray]
    item: dict[str, np.ndarray]
    user_profiles: dict[str, sp.csr_matrix]
    item_labels: dict[str, sp.csr_matrix]
    user_numeric_means: dict[str, np.ndarray]
    item_numeric: dict[str, np.ndarray]
    user_last_ts: np.ndarray
    item_first_ts: np.ndarray
    user_categories: dict[str, np.ndarray]        # category code of each user (-1: unknown)
    category_item_lift: dict[str, np.ndarray]     # categories x items: share among the category / overall share
    last_items: np.ndarray                        # n_users x sequence_length, most recent first, -1 padded
    similarity: sp.csr_matrix                     # item-item co-occurrence cosine (k nearest neighbours)
    item_unit_factors: np.ndarray | None          # MF item factors scaled to unit norm
    _dense_labels: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    _item_block: np.ndarray | None = field(default=None, init=False, repr=False, compare=False)

    # Label vocabularies (e.g. genres) are small: users x labels and items x labels as dense float64 arrays cost
    # little memory and make the affinity a row-wise dot product (10x cheaper than the sparse product per row).
    DENSE_LABELS_MAX_BYTES = 256 * 2**20

    def dense_labels(self, name: str) -> tuple[np.ndarray, np.ndarray] | None:
        """(user profiles, item labels) of multi-label attribute ``name`` as dense arrays, when small enough."""
        if name not in self._dense_labels:
            profiles, labels = self.user_profiles[name], self.item_labels[name]
            size = 8 * (profiles.shape[0] + labels.shape[0]) * profiles.shape[1]
            self._dense_labels[name] = ((profiles.toarray(), labels.toarray())
                                        if size <= self.DENSE_LABELS_MAX_BYTES else None)
        return self._dense_labels[name]

    def item_block(self) -> np.ndarray:
        """The item statistics as one float32 ``n_items x len(item)`` table, in ``item``'s order (built on first
        use; item statistics do not change after they are computed, live events move user statistics only): a
        request gathers its candidates' rows of it at once instead of one array per statistic."""
        if self._item_block is None or self._item_block.shape[1] != len(self.item):
            n_items = len(self.item_first_ts)
            self._item_block = (np.column_stack([np.asarray(v, dtype=np.float32) for v in self.item.values()])
                                if self.item else np.empty((n_items, 0), dtype=np.float32))
        return self._item_block


def _last_items(history: pd.DataFrame, n_users: int, length: int) -> np.ndarray:
    """Each user's ``length`` most recent items (ties by item id), most recent first; -1 where fewer."""
    u = history[Columns.USER].to_numpy()
    order = user_time_order(u, history[Columns.ITEM].to_numpy(), history[Columns.TIMESTAMP].to_numpy(),
                            newest_first=True)
    u_sorted = u[order]
    starts = np.searchsorted(u_sorted, np.arange(n_users))
    position = np.arange(len(order)) - starts[u_sorted]
    keep = position < length
    out = np.full((n_users, length), -1, dtype=np.int32)
    out[u_sorted[keep], position[keep]] = history[Columns.ITEM].to_numpy()[order][keep]
    return out


def _category_lift(codes: np.ndarray, u: np.ndarray, i: np.ndarray, n_items: int) -> np.ndarray:
    """categories x items: the item's share of the category's interactions over its share of all interactions."""
    known = codes[u] >= 0
    n_cat = int(codes.max(initial=-1)) + 1
    counts = sp.csr_matrix((np.ones(int(known.sum())), (codes[u][known].astype(np.int64), i[known])),
                           shape=(max(n_cat, 1), n_items)).toarray()
    overall = np.bincount(i, minlength=n_items) / max(len(i), 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1.0)
        return np.where(overall > 0, share / overall, np.nan).astype(np.float32)


def history_statistics(history: pd.DataFrame, n_users: int, n_items: int, config: FeaturesConfig,
                       users: Attributes, items: Attributes,
                       item_factors: np.ndarray | None = None) -> HistoryStatistics:
    u = history[Columns.USER].to_numpy()
    i = history[Columns.ITEM].to_numpy()
    ts = history[Columns.TIMESTAMP].to_numpy(dtype=np.float64)
    now = ts.max() if len(ts) else 0.0
    age_days = (now - ts) / DAY
    decay = np.exp(-np.log(2.0) * age_days / config.recency_half_life_days)
    recent = (age_days <= config.recent_window_days).astype(np.float64)

    def per(index: np.ndarray, n: int, weights: np.ndarray | None = None) -> np.ndarray:
        return np.bincount(index, weights=weights, minlength=n).astype(np.float64)

    item_count = per(i, n_items)
    user_count = per(u, n_users)
    first_seen = np.full(n_items, np.inf)
    np.minimum.at(first_seen, i, ts)
    last_seen = np.full(n_items, -np.inf)
    np.maximum.at(last_seen, i, ts)
    user_first = np.full(n_users, np.inf)
    np.minimum.at(user_first, u, ts)
    user_last = np.full(n_users, -np.inf)
    np.maximum.at(user_last, u, ts)

    with np.errstate(divide="ignore", invalid="ignore"):
        log_pop = np.log1p(item_count)
        item_stats = {
            "item_pop": item_count,
            "item_pop_recent": per(i, n_items, recent),
            "item_pop_decayed": per(i, n_items, decay),
            "item_log_pop": log_pop,
            "item_age_days": np.where(np.isfinite(first_seen), (now - first_seen) / DAY, np.nan),
            "item_days_since_last": np.where(np.isfinite(last_seen), (now - last_seen) / DAY, np.nan),
        }
        item_stats["item_trend"] = item_stats["item_pop_recent"] / np.maximum(item_count, 1.0)
        # trending signals: counts over short windows before the history's end and their velocity (the last
        # window against the one before it, log of the smoothed ratio: > 0 rising, < 0 fading)
        for days in config.trend_windows_days:
            last = per(i, n_items, (age_days <= days).astype(np.float64))
            before = per(i, n_items, ((age_days > days) & (age_days <= 2 * days)).astype(np.float64))
            item_stats[f"item_pop_{days:g}d"] = last
            item_stats[f"item_velocity_{days:g}d"] = np.log1p(last) - np.log1p(before)
        user_stats = {
            "user_activity": user_count,
            "user_active_days": np.where(user_count > 0, (user_last - user_first) / DAY, np.nan),
            "user_days_since_last": np.where(user_count > 0, (now - user_last) / DAY, np.nan),
            "user_mean_log_pop": per(u, n_users, log_pop[i]) / np.where(user_count > 0, user_count, np.nan),
        }
        if Columns.RATING in history.columns:
            r = history[Columns.RATING].to_numpy(dtype=np.float64)
            item_stats["item_mean_rating"] = per(i, n_items, r) / np.where(item_count > 0, item_count, np.nan)
            user_stats["user_mean_rating"] = per(u, n_users, r) / np.where(user_count > 0, user_count, np.nan)
    for name, values in items.numeric.items():
        item_stats[f"item_{name}"] = values.astype(np.float64)
    for name, values in items.categorical.items():
        item_stats[f"item_{name}"] = values.astype(np.float64)
    for name, values in users.numeric.items():
        user_stats[f"user_{name}"] = values.astype(np.float64)
    for name, values in users.categorical.items():
        user_stats[f"user_{name}"] = values.astype(np.float64)

    seen = interaction_matrix(history, n_users, n_items, "binary")
    user_profiles = {name: _rows_normalised((seen @ labels).tocsr()) for name, labels in items.multi_label.items()}
    item_labels = {name: _rows_normalised(labels) for name, labels in items.multi_label.items()}
    user_numeric_means = {}
    for name, values in items.numeric.items():
        known = np.isfinite(values)
        sums = seen @ np.where(known, values, 0.0)
        counts = seen @ known.astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            user_numeric_means[name] = np.where(counts > 0, sums / counts, np.nan)
    from recops.candidates.sources import ItemKNN

    recent = cooccurrence_rows(history, n_users, n_items, config.similarity_max_history, seen)
    similarity = ItemKNN(config.similarity_neighbours, config.similarity_shrinkage).fit(recent).similarity_.tocsr()
    unit = None
    if item_factors is not None:
        norms = np.linalg.norm(item_factors, axis=1, keepdims=True)
        unit = (item_factors / np.where(norms > 0, norms, 1.0)).astype(np.float32)
    categories = {name: codes.astype(np.int64) for name, codes in users.categorical.items()}
    return HistoryStatistics(
        user_stats, item_stats, user_profiles, item_labels, user_numeric_means,
        {name: v.astype(np.float64) for name, v in items.numeric.items()},
        user_last_ts=user_last, item_first_ts=first_seen,
        user_categories=categories,
        category_item_lift={name: _category_lift(codes, u, i, n_items) for name, codes in categories.items()},
        last_items=_last_items(history, n_users, config.sequence_length),
        similarity=similarity, item_unit_factors=unit)


class _Rows:
    """One chunk of candidate rows as the user x item groups read it: users ``u``, items ``i``; ``uu`` the users to
    take user values from (one user's rows, an online request: that user once, broadcast; the same numbers as the
    per-row gathers); ``last`` / ``valid`` each row's user's most recent items."""

    def __init__(self, stats: HistoryStatistics, u: np.ndarray, i: np.ndarray) -> None:
        self.stats, self.u, self.i = stats, u, i
        self.one = len(u) > 1 and u[0] == u[-1] and bool((u == u[0]).all())
        self.uu = u[:1] if self.one else u
        length = stats.last_items.shape[1]
        self.last = np.broadcast_to(stats.last_items[u[0]], (len(u), length)) if self.one else stats.last_items[u]
        self.valid = self.last >= 0


def _affinity(rows: _Rows) -> list[np.ndarray]:
    stats, u, i = rows.stats, rows.u, rows.i
    cols = []
    for name, profiles in stats.user_profiles.items():
        dense = stats.dense_labels(name)
        if dense is None:
            cols.append(np.asarray(profiles[u].multiply(stats.item_labels[name][i]).sum(axis=1)).ravel())
        else:
            cols.append(np.einsum("pl,pl->p", dense[0][u], dense[1][i]))
    return cols


def _item_age(rows: _Rows) -> list[np.ndarray]:
    with np.errstate(invalid="ignore"):
        age = (rows.stats.user_last_ts[rows.uu] - rows.stats.item_first_ts[rows.i]) / DAY
    return [np.where(np.isfinite(age), age, np.nan)]


def _category_lifts(rows: _Rows) -> list[np.ndarray]:
    cols = []
    for name, lift in rows.stats.category_item_lift.items():
        code = rows.stats.user_categories[name][rows.uu]
        cols.append(np.where(code >= 0, lift[np.maximum(code, 0), rows.i], np.nan))
    return cols


def _sequence_cooccurrence(rows: _Rows) -> list[np.ndarray]:
    similarity, last, i = rows.stats.similarity, rows.last, rows.i
    if rows.one and isinstance(similarity, np.ndarray):
        cooc = np.ascontiguousarray(similarity[np.maximum(last[0], 0)][:, i].T, dtype=np.float32)
    else:
        length = last.shape[1]
        cooc = np.asarray(similarity[np.maximum(last, 0).ravel(), np.repeat(i, length)],
                          dtype=np.float32).reshape(-1, length)
    return list(_nan_mean_max(cooc, rows.valid))


def _sequence_factors(rows: _Rows) -> list[np.ndarray]:
    f, last = rows.stats.item_unit_factors, rows.last
    recent = f[np.maximum(last[0], 0)][None] if rows.one else f[np.maximum(last, 0)]
    cos = np.einsum("pf,pkf->pk", f[rows.i], np.broadcast_to(recent, (len(rows.u), *recent.shape[1:])))
    return list(_nan_mean_max(cos, rows.valid))


# The user x item groups, in column order after the source columns and the item statistics: each group's names
# and its columns are defined together here (names from the statistics alone, so a server checks a ranker's
# inputs before any request), and gather_feature_matrix checks every group gives as many columns as names.
_GROUPS: list[tuple[Callable[[HistoryStatistics], list[str]], Callable[[_Rows], list[np.ndarray]]]] = [
    (lambda s: list(s.user), lambda r: [values[r.uu] for values in r.stats.user.values()]),
    (lambda s: [f"affinity_{name}" for name in s.user_profiles], _affinity),
    (lambda s: ["pop_vs_user_taste"],
     lambda r: [r.stats.item["item_log_pop"][r.i] - r.stats.user["user_mean_log_pop"][r.uu]]),
    (lambda s: [f"diff_{name}_vs_user_mean" for name in s.user_numeric_means],
     lambda r: [r.stats.item_numeric[name][r.i] - means[r.uu] for name, means in r.stats.user_numeric_means.items()]),
    (lambda s: ["item_age_at_user_days"], _item_age),
    (lambda s: [f"lift_among_{name}" for name in s.category_item_lift], _category_lifts),
    (lambda s: ["seq_cooc_mean", "seq_cooc_max"], _sequence_cooccurrence),
    (lambda s: [] if s.item_unit_factors is None else ["seq_mf_mean", "seq_mf_max"],
     lambda r: [] if r.stats.item_unit_factors is None else _sequence_factors(r)),
]


def feature_names(stats: HistoryStatistics, source_columns: list[str]) -> list[str]:
    """The ranker's inputs in column order: the candidate sources' columns, the item statistics, then the
    user x item groups of ``_GROUPS``."""
    return [*source_columns, *stats.item, *(name for names, _ in _GROUPS for name in names(stats))]


def _nan_mean_max(values: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if values.shape[1] and valid.all():  # every row has all its entries (most requests): the same sums, unmasked
        with np.errstate(invalid="ignore", divide="ignore"):
            return values.sum(axis=1) / np.int64(values.shape[1]), values.max(axis=1)
    count = valid.sum(axis=1)
    total = np.where(valid, values, 0.0).sum(axis=1)
    best = np.where(valid, values, -np.inf).max(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / count, np.nan), np.where(count > 0, best, np.nan)


def gather_features(candidates: pd.DataFrame, stats: HistoryStatistics, chunk_rows: int) -> pd.DataFrame:
    """Feature matrix (float32 columns, in ``feature_names`` order) for candidate rows."""
    sources = [c for c in candidates.columns if c not in (Columns.USER, Columns.ITEM)]
    source_values = candidates[sources].to_numpy(dtype=np.float32) if sources else None
    out = gather_feature_matrix(candidates[Columns.USER].to_numpy(), candidates[Columns.ITEM].to_numpy(),
                                source_values, stats, chunk_rows)
    return pd.DataFrame(out, columns=feature_names(stats, sources))


def gather_feature_matrix(users_all: np.ndarray, items_all: np.ndarray, source_values: np.ndarray | None,
                          stats: HistoryStatistics, chunk_rows: int) -> np.ndarray:
    """The float32 matrix of :func:`gather_features` from arrays: candidate users, items and the source columns
    (``n x len(sources)``, in the candidate table's order). The serving engine calls this directly."""
    n_sources = 0 if source_values is None else source_values.shape[1]
    n_features = len(feature_names(stats, [""] * n_sources))
    out = np.empty((len(users_all), n_features), dtype=np.float32)
    item_block = stats.item_block()
    for start in range(0, len(users_all), chunk_rows):
        stop = min(start + chunk_rows, len(users_all))
        u, i = users_all[start:stop], items_all[start:stop]
        block = out[start:stop]  # every column written in place, in feature_names order (float64 -> float32)
        if n_sources:
            block[:, :n_sources] = source_values[start:stop]
        j = n_sources + item_block.shape[1]
        block[:, n_sources:j] = item_block[i]  # the item statistics: one gather from their float32 table
        rows = _Rows(stats, u, i)
        for names, columns in _GROUPS:
            values = columns(rows)
            if len(values) != len(names(stats)):
                raise AssertionError(f"feature group {names(stats)} computed {len(values)} columns")
            for column in values:
                block[:, j] = column
                j += 1
    return out


def build_features(candidates: pd.DataFrame, history: pd.DataFrame, n_users: int, n_items: int,
                   config: FeaturesConfig, users: Attributes, items: Attributes,
                   target: pd.DataFrame | None = None, item_factors: np.ndarray | None = None) -> pd.DataFrame:
    """(user_idx, item_idx, label, features...) for every candidate row; label is 1 when the pair is in ``target``.

    ``item_factors``: MF item factors fitted on the same ``history`` (for the sequence similarity features)."""
    started = time.perf_counter()
    stats = history_statistics(history, n_users, n_items, config, users, items, item_factors)
    statistics_seconds = time.perf_counter() - started
    features = gather_features(candidates, stats, config.chunk_rows)
    log.info("features: history statistics %.1f s, %d rows gathered in %.1f s", statistics_seconds,
             len(candidates), time.perf_counter() - started - statistics_seconds)
    return with_labels(features, candidates, target_keys(target, n_items), n_items)


def target_keys(target: pd.DataFrame | None, n_items: int) -> np.ndarray | None:
    """Sorted ``user * n_items + item`` of the target pairs, or None without a target."""
    if target is None or not len(target):
        return None
    return np.unique(target[Columns.USER].to_numpy(np.int64) * n_items + target[Columns.ITEM].to_numpy())


def with_labels(features: pd.DataFrame, candidates: pd.DataFrame, keys: np.ndarray | None,
                n_items: int) -> pd.DataFrame:
    """``features`` of ``candidates`` with user_idx, item_idx and label (1: the pair is among ``keys``) in front."""
    if keys is not None and len(keys):
        pairs = candidates[Columns.USER].to_numpy(np.int64) * n_items + candidates[Columns.ITEM].to_numpy()
        label = np.isin(pairs, keys).astype(np.int8)
    else:
        label = np.zeros(len(candidates), dtype=np.int8)
    features.insert(0, Columns.LABEL, label)
    features.insert(0, Columns.ITEM, candidates[Columns.ITEM].to_numpy(np.int32))
    features.insert(0, Columns.USER, candidates[Columns.USER].to_numpy(np.int32))
    return features
