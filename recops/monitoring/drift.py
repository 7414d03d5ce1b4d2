"""Drift between a *reference* window (what the champion was trained and validated on) and a *current* one (what
it sees now), and the gate that turns drift into an action: block a promotion, trigger retraining, or warn.

Three kinds of check, all returning one :class:`DriftCheck` each:

- **Feature columns** (:func:`column_drift`, :func:`table_drift`): Evidently's default method selection, redone
  with scipy because Evidently 0.7 pulls a second web framework (litestar), nltk, statsmodels and plotly into a
  stack that serves with FastAPI. On small samples a test: two-sample Kolmogorov-Smirnov for a numerical column
  with more than 5 distinct values, chi-squared for a categorical one (or a numerical one with at most 5
  values), the two-proportion Z-test when there are only 2 values; drift when ``p < 0.05`` (KS: ``p <= 0.05``,
  as Evidently). The chi-squared test is the two-sample one (homogeneity of a 2 x k table), where Evidently's
  treats the reference shares as exact and calls drift on a third of unshifted samples. On large samples a
  distance, because every test rejects a negligible shift at 100 000 rows: the Wasserstein distance divided by
  the reference's standard deviation (at least 0.001) for numerical columns, the Jensen-Shannon distance
  (natural log) of the value shares otherwise; drift when it is ``>= 0.1``. "Large"
  means *both* windows hold more than 1000 non-missing values (Evidently looks at the reference only: a small
  current window against a large reference then gets a distance whose sampling noise alone reaches 0.1). Missing
  and infinite values are dropped before the test; the change of their share is a second reason to flag the
  column (``>= 0.1`` absolute by default), since a broken feature join shows up as NaNs, not as a new shape.
- **Recommender checks** (:func:`recommender_drift`) on interaction tables (``Columns.USER_ID``,
  ``Columns.ITEM_ID``): popularity concentration (Gini of the item interaction counts, share of interactions on
  the top 1 % of items) compared at a common sample size, since a long window always looks less concentrated
  than a short one of the same process; new-item and cold-user shares of the current interactions against
  what the reference itself predicts for a fresh sample (the Good-Turing missing mass, singletons / rows), so a
  long-tailed catalogue is not flagged for the unseen tail every sample has. Each calls drift when its change
  reaches an absolute threshold *and* 3 standard errors, so a small window does not fire by chance.
- **Score distributions** (:func:`score_drift`): one model's scores now vs then, or a challenger's vs the
  champion's, through the same column machinery.

:class:`DriftReport` gathers the checks, names what drifted, serialises to plain JSON types and renders a
self-contained HTML page; :func:`gate_decision` applies a :class:`DriftGateConfig`. This module does no I/O and
knows nothing of MLflow, DVC or Prefect.
"""

from __future__ import annotations

import html
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy import stats
from scipy.spatial import distance

from recops.columns import Columns
from recops.errors import RecopsError

ColumnKind = Literal["numerical", "categorical"]
GateAction = Literal["block", "retrain", "warn"]

FEATURE, RECOMMENDER, SCORE = "feature", "recommender", "score"
POPULARITY_GINI = "popularity_gini"
TOP_ITEMS_SHARE = "top_items_share"
NEW_ITEM_SHARE = "new_item_share"
COLD_USER_SHARE = "cold_user_share"
RECOMMENDER_CHECKS = (POPULARITY_GINI, TOP_ITEMS_SHARE, NEW_ITEM_SHARE, COLD_USER_SHARE)

DECISIONS: dict[str, str] = {"block": "block promotion", "retrain": "trigger retraining", "warn": "warn only"}
PASS = "pass"


class DriftInputError(RecopsError, ValueError):
    """A drift check got input it cannot compare (empty, all missing, wrong kind); the message names the column."""


@dataclass(frozen=True)
class DriftThresholds:
    """When a check calls drift. The column defaults are Evidently's ``DataDriftPreset`` ones (0.05, 0.1, 0.1,
    1000 rows, 5 values); the recommender ones are recops' own."""

    large_sample: int = 1000  # above this many values in both windows: distances instead of tests
    max_categorical_unique: int = 5  # a numerical column with at most this many values is tested as categorical
    p_value: float = 0.05  # KS, chi-squared and Z-test
    wasserstein: float = 0.1  # normed Wasserstein distance
    jensen_shannon: float = 0.1  # Jensen-Shannon distance
    missing_share_change: float = 0.1  # absolute change of the share of missing values of a column
    gini_change: float = 0.05  # absolute change of the Gini of item interaction counts
    top_items_fraction: float = 0.01  # "top items" are this fraction of the items with interactions
    top_items_share_change: float = 0.05  # absolute change of the share of interactions on the top items
    new_item_share_excess: float = 0.10  # new-item share above the reference's Good-Turing missing mass
    cold_user_share_excess: float = 0.10  # cold-user share above the reference's Good-Turing missing mass
    noise_z: float = 3.0  # a recommender check also needs its change to be this many standard errors
    subsample_draws: int = 50  # subsamples and bootstrap draws of the concentration at a common size


@dataclass(frozen=True)
class DriftCheck:
    """One comparison of reference and current.

    ``statistic`` is what ``threshold`` applies to: for a test the p-value is in ``p_value`` and ``threshold`` is
    the significance level; for a distance or a change, ``statistic`` is that distance or change.
    ``reference_value`` / ``current_value`` are what a person reads (means of a numerical column, the Gini of
    each window, the expected and the observed new-item share); ``None`` where there is no such summary.
    """

    name: str
    group: str
    method: str
    statistic: float
    threshold: float
    p_value: float | None
    drifted: bool
    n_ref: int
    n_cur: int
    reason: str
    reference_value: float | None = None
    current_value: float | None = None
    missing_share_ref: float = 0.0
    missing_share_cur: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types; non-finite numbers become ``None`` (strict JSON has no NaN or Infinity)."""
        return {key: _plain(value) for key, value in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DriftCheck:
        values = dict(data)
        if values.get("statistic") is None:
            values["statistic"] = math.nan
        return cls(**values)


# ------------------------------------------------------------------------------------------------ column checks
def _clean(values: Any, kind: ColumnKind, name: str, side: str) -> tuple[np.ndarray, float]:
    """Non-missing values and the share of missing ones; errors that name the column and the window."""
    series = values if isinstance(values, pd.Series) else pd.Series(np.asarray(values).ravel())
    if len(series) == 0:
        raise DriftInputError(f"column {name!r} is empty in the {side} window: pass at least one row per window")
    if kind == "numerical":
        if not (pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)):
            raise DriftInputError(f"column {name!r} is declared numerical but holds {series.dtype} values in the "
                                  f"{side} window: declare it categorical or cast it to numbers")
        array = series.to_numpy(dtype=np.float64, na_value=np.nan)
        present = np.isfinite(array)  # Evidently drops +-inf with NaN: a distance to infinity means nothing
    elif kind == "categorical":
        present = ~series.isna().to_numpy()
        array = series.to_numpy(dtype=object)
    else:
        raise DriftInputError(f"column {name!r}: kind must be 'numerical' or 'categorical', not {kind!r}")
    kept = array[present]
    if kept.size == 0:
        raise DriftInputError(f"column {name!r} has no non-missing value in the {side} window "
                              f"(all {len(array)} rows are missing): fix the feature or leave it out")
    return kept, float(1.0 - present.mean())


def _shared_codes(ref: np.ndarray, cur: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Counts per distinct value in each window, on one code book; and the values."""
    codes, uniques = pd.factorize(np.concatenate([ref, cur]), sort=False)
    k = len(uniques)
    return (np.bincount(codes[: ref.size], minlength=k), np.bincount(codes[ref.size:], minlength=k),
            np.asarray(uniques, dtype=object))


def _ks(ref: np.ndarray, cur: np.ndarray, alpha: float) -> tuple[float, float, bool, str]:
    result = stats.ks_2samp(ref, cur)
    p = float(result.pvalue)
    return float(result.statistic), p, p <= alpha, f"KS D={result.statistic:.3g}, p={p:.3g}"


def _chi2(ref: np.ndarray, cur: np.ndarray, alpha: float) -> tuple[float, float, bool, str]:
    # A test of homogeneity (2 x k table), not Evidently's goodness of fit of the current counts to the reference
    # shares: that one takes the reference sample for the truth and, on two equal-size samples of one
    # distribution, fires about 30 % of the time at alpha 0.05 (measured 32 of 100 on a 4-value column).
    ref_counts, cur_counts, values = _shared_codes(ref, cur)
    result = stats.chi2_contingency(np.vstack([ref_counts, cur_counts]), correction=False)
    p = float(result.pvalue)
    detail = f"chi-squared={result.statistic:.3g}"
    new = (ref_counts == 0) & (cur_counts > 0)
    if new.any():
        detail += f" (values new in current: {', '.join(map(str, values[new][:5]))}{' ...' if new.sum() > 5 else ''})"
    return float(result.statistic), p, p < alpha, f"{detail}, p={p:.3g}"


def _z(ref: np.ndarray, cur: np.ndarray, alpha: float) -> tuple[float, float, bool, str]:
    ref_counts, cur_counts, _ = _shared_codes(ref, cur)
    if ref_counts.size < 2:  # one value in both windows: nothing can differ
        return 0.0, 1.0, False, "Z-test: one value in both windows"
    p_ref, p_cur = ref_counts[1] / ref.size, cur_counts[1] / cur.size
    pooled = (ref_counts[1] + cur_counts[1]) / (ref.size + cur.size)
    z = (p_ref - p_cur) / math.sqrt(pooled * (1.0 - pooled) * (1.0 / ref.size + 1.0 / cur.size))
    p = float(2.0 * stats.norm.sf(abs(z)))
    return float(z), p, p < alpha, f"Z={z:.3g}, p={p:.3g}"


def _wasserstein(ref: np.ndarray, cur: np.ndarray, limit: float) -> tuple[float, bool, str]:
    norm = max(float(np.std(ref)), 0.001)  # Evidently's floor keeps a constant reference from dividing by 0
    value = float(stats.wasserstein_distance(ref, cur)) / norm
    return value, value >= limit, f"normed Wasserstein={value:.3g}"


def _jensen_shannon(ref: np.ndarray, cur: np.ndarray, limit: float) -> tuple[float, bool, str]:
    ref_counts, cur_counts, _ = _shared_codes(ref, cur)
    value = float(distance.jensenshannon(ref_counts / ref.size, cur_counts / cur.size))
    value = 0.0 if not math.isfinite(value) else value  # identical one-value windows give 0/0 in scipy
    return value, value >= limit, f"Jensen-Shannon={value:.3g}"


def column_drift(reference: Any, current: Any, kind: ColumnKind = "numerical", *, name: str = "value",
                 thresholds: DriftThresholds | None = None, group: str = FEATURE) -> DriftCheck:
    """Compare one column of the reference and current windows (arrays or Series; NaN and +-inf are missing).

    Method by Evidently's rule (see the module docstring); raises :class:`DriftInputError` (a ``ValueError``)
    naming the column when a window is empty or all missing, or when a ``numerical`` column is not numeric.
    """
    limits = thresholds or DriftThresholds()
    ref, ref_missing = _clean(reference, kind, name, "reference")
    cur, cur_missing = _clean(current, kind, name, "current")
    n_unique = len(pd.unique(np.concatenate([ref, cur])))
    large = min(ref.size, cur.size) > limits.large_sample
    as_numbers = kind == "numerical" and n_unique > limits.max_categorical_unique
    p_value: float | None
    if as_numbers and large:
        method, threshold, p_value = "wasserstein_norm", limits.wasserstein, None
        statistic, value_drift, detail = _wasserstein(ref, cur, threshold)
        verdict = f"{detail} {'>=' if value_drift else '<'} {threshold:g}"
    elif large:
        method, threshold, p_value = "jensen_shannon", limits.jensen_shannon, None
        statistic, value_drift, detail = _jensen_shannon(ref, cur, threshold)
        verdict = f"{detail} {'>=' if value_drift else '<'} {threshold:g}"
    else:
        method, threshold = ("ks", limits.p_value) if as_numbers else (
            ("chi2", limits.p_value) if n_unique > 2 else ("z", limits.p_value))
        test = {"ks": _ks, "chi2": _chi2, "z": _z}[method]
        statistic, p_value, value_drift, detail = test(ref, cur, threshold)
        verdict = f"{detail} {'<' if value_drift else '>='} {threshold:g}"
    missing_change = cur_missing - ref_missing
    missing_drift = abs(missing_change) >= limits.missing_share_change
    reasons = [verdict] if value_drift else []
    if missing_drift:
        reasons.append(f"missing share {ref_missing:.1%} -> {cur_missing:.1%} "
                       f"(change >= {limits.missing_share_change:g})")
    reference_value = current_value = None
    if kind == "numerical":
        reference_value, current_value = float(ref.mean()), float(cur.mean())
        detail_mean = f"; mean {reference_value:.4g} -> {current_value:.4g}"
    else:
        detail_mean = ""
    drifted = bool(value_drift or missing_drift)
    reason = ("drift: " + "; ".join(reasons) if drifted else f"no drift: {verdict}") + detail_mean
    return DriftCheck(name=name, group=group, method=method, statistic=float(statistic), threshold=float(threshold),
                      p_value=p_value, drifted=drifted, n_ref=int(ref.size), n_cur=int(cur.size), reason=reason,
                      reference_value=reference_value, current_value=current_value,
                      missing_share_ref=ref_missing, missing_share_cur=cur_missing)


def table_drift(reference: pd.DataFrame, current: pd.DataFrame, columns: Sequence[str] | None = None, *,
                categorical: Iterable[str] = (), thresholds: DriftThresholds | None = None,
                group: str = FEATURE) -> list[DriftCheck]:
    """:func:`column_drift` for each of ``columns`` (default: every column of ``reference``).

    A column is categorical when listed in ``categorical`` or when its dtype is not numeric (text, category,
    bool); numerical otherwise.
    """
    names = list(reference.columns if columns is None else columns)
    if not names:
        raise DriftInputError("no columns to compare: pass the feature columns to check for drift")
    for side, table in (("reference", reference), ("current", current)):
        absent = [c for c in names if c not in table.columns]
        if absent:
            raise DriftInputError(f"column(s) {absent} are missing from the {side} table: compare columns both have")
    declared = set(categorical)
    checks = []
    for name in names:
        is_number = pd.api.types.is_numeric_dtype(reference[name]) and not pd.api.types.is_bool_dtype(reference[name])
        kind: ColumnKind = "categorical" if name in declared or not is_number else "numerical"
        checks.append(column_drift(reference[name], current[name], kind, name=str(name), thresholds=thresholds,
                                   group=group))
    return checks


def score_drift(reference_scores: Any, current_scores: Any, *, name: str = "score", standardise: bool = False,
                thresholds: DriftThresholds | None = None) -> DriftCheck:
    """Compare two score distributions: one model's scores now vs at reference time, or a challenger's vs the
    champion's on the same requests.

    LambdaRank scores have no fixed scale, and a ranking is unchanged by any increasing map of its scores, so
    two *different* models' raw scores differ without meaning anything; ``standardise=True`` z-scores each side
    first and keeps only differences of shape. For one model over time, keep the raw scale (the default): a
    shift of scale there means its inputs moved. Paired scores (same candidates) are treated as independent
    samples, which makes the p-value a description rather than an exact test.
    """
    ref = np.asarray(reference_scores, dtype=np.float64).ravel()
    cur = np.asarray(current_scores, dtype=np.float64).ravel()
    if standardise:
        ref, cur = _standardised(ref), _standardised(cur)
    return column_drift(ref, cur, "numerical", name=name, thresholds=thresholds, group=SCORE)


def _standardised(values: np.ndarray) -> np.ndarray:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return values
    spread = float(finite.std())
    return (values - finite.mean()) / (spread if spread > 0 else 1.0)


# ------------------------------------------------------------------------------------------ recommender checks
def concentration(item_counts: np.ndarray, top_fraction: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
    """Gini coefficient and top-items share of each row of ``item_counts`` (rows: samples, columns: items).

    Only items with at least one interaction count (the catalogue a window shows); the top items are the
    ``ceil(top_fraction * n_items)`` most interacted ones (at least one). A 1-d array is one row.
    """
    counts = np.atleast_2d(np.asarray(item_counts, dtype=np.float64))
    width = counts.shape[1]
    present = (counts > 0).sum(axis=1)
    totals = counts.sum(axis=1)
    if (present == 0).any():
        raise DriftInputError("a window has no interaction: pass at least one (user, item) row per window")
    ascending = np.sort(counts, axis=1)
    # Rank among the present items (1 = least interacted); zeros sit first and add nothing to the sum.
    ranks = np.arange(1, width + 1)[None, :] - (width - present)[:, None]
    gini = 2.0 * (ranks * ascending).sum(axis=1) / (present * totals) - (present + 1.0) / present
    # The epsilon keeps 0.07 * 100 (7.000000000000001 in floating point) at 7 items, not 8.
    n_top = np.maximum(1, np.ceil(top_fraction * present - 1e-9).astype(np.int64))
    top_sums = np.cumsum(ascending[:, ::-1], axis=1)[np.arange(len(counts)), n_top - 1]
    return gini, top_sums / totals


def _draws(counts: np.ndarray, size: int, draws: int, replace: bool, top_fraction: float,
           rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Gini and top share of ``draws`` samples of ``size`` interactions from ``counts``: with replacement (a
    bootstrap, for the standard error) or without (subsamples of a longer window, for its value at ``size``)."""
    rows = max(1, 2_000_000 // max(1, counts.size))  # a few MB of counts at a time, whatever the catalogue
    ginis, tops = [], []
    for start in range(0, draws, rows):
        n = min(rows, draws - start)
        sample = (rng.multinomial(size, counts / counts.sum(), size=n) if replace
                  else rng.multivariate_hypergeometric(counts, size, size=n))
        gini, top = concentration(sample, top_fraction)
        ginis.append(gini)
        tops.append(top)
    return np.concatenate(ginis), np.concatenate(tops)


def _concentration_at(counts: np.ndarray, size: int, draws: int, top_fraction: float,
                      rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(Gini, top share) of a window at ``size`` interactions and (their standard errors) at that size.

    A window of exactly ``size`` is measured as it is; a longer one by the mean of subsamples without
    replacement. The standard errors come from a bootstrap of the window's own shares at ``size``."""
    draws = max(2, draws)
    if counts.sum() <= size:
        value = np.concatenate(concentration(counts, top_fraction))
    else:
        value = np.array([d.mean() for d in _draws(counts, size, draws, False, top_fraction, rng)])
    spread = np.array([d.std(ddof=1) for d in _draws(counts, size, draws, True, top_fraction, rng)])
    return value, spread


def _ids(table: pd.DataFrame, column: str, side: str) -> pd.Series:
    if column not in table.columns:
        raise DriftInputError(f"the {side} interactions have no {column!r} column: pass a table with "
                              f"{Columns.USER_ID!r} and {Columns.ITEM_ID!r}")
    return table[column]


def _interactions(table: pd.DataFrame, side: str) -> pd.DataFrame:
    users, items = _ids(table, Columns.USER_ID, side), _ids(table, Columns.ITEM_ID, side)
    kept = users.notna() & items.notna()
    if not kept.any():
        raise DriftInputError(f"the {side} interactions are empty (or every id is missing): "
                              f"drift needs at least one interaction per window")
    return pd.DataFrame({Columns.USER_ID: users[kept].to_numpy(), Columns.ITEM_ID: items[kept].to_numpy()})


def _missing_mass(counts: pd.Series) -> float:
    """Good-Turing estimate of the share of a fresh sample that falls on values never seen: singletons / rows."""
    return float((counts.to_numpy() == 1).sum() / counts.sum())


def _verdict(drifted: bool, change: float, limit: float, noise: float, z: float) -> str:
    if drifted:
        return f"|change| {abs(change):.3f} >= {limit:g} and >= {z:g} standard errors ({z * noise:.3f})"
    if abs(change) < limit:
        return f"|change| {abs(change):.3f} < {limit:g}"
    return f"|change| {abs(change):.3f} within {z:g} standard errors ({z * noise:.3f}): sampling noise"


def _unseen_share_check(name: str, column: str, ref: pd.DataFrame, cur: pd.DataFrame, limit: float, z: float,
                        what: str) -> DriftCheck:
    ref_counts = ref[column].value_counts(sort=False)
    unseen = ~cur[column].isin(ref_counts.index).to_numpy()
    observed = float(unseen.mean())
    expected = _missing_mass(ref_counts)
    excess = observed - expected
    # Binomial errors of both shares; interactions of one user or item are not independent, so this is a floor
    # on the noise and the absolute threshold carries the rest.
    noise = math.sqrt(observed * (1 - observed) / len(cur) + expected * (1 - expected) / len(ref))
    drifted = excess >= limit and excess >= z * noise
    distinct = cur[column].drop_duplicates()
    distinct_share = float((~distinct.isin(ref_counts.index)).mean())
    verdict = (f"{observed:.1%} of current interactions are on {what} unseen in the reference "
               f"({distinct_share:.1%} of distinct {what}) where a fresh sample of the reference would give "
               f"~{expected:.1%}; excess {excess:+.3f}, {_verdict(drifted, max(excess, 0.0), limit, noise, z)}")
    return DriftCheck(name=name, group=RECOMMENDER, method="unseen_share_excess", statistic=excess,
                      threshold=limit, p_value=None, drifted=bool(drifted), n_ref=len(ref), n_cur=len(cur),
                      reason=("drift: " if drifted else "no drift: ") + verdict, reference_value=expected,
                      current_value=observed)


def recommender_drift(reference: pd.DataFrame, current: pd.DataFrame, *, thresholds: DriftThresholds | None = None,
                      seed: int = 0) -> list[DriftCheck]:
    """Popularity concentration, new-item share and cold-user share of two interaction tables.

    Rows with a missing user or item id are left out. The Gini and top-items share are computed at the common
    size ``min(n_ref, n_cur)``: the larger window is subsampled without replacement (``subsample_draws`` seeded
    draws, mean taken), which removes the bias of comparing a long window with a short one. Each check calls
    drift when its change is both at least its threshold (an effect worth acting on) and at least
    ``noise_z`` standard errors (not what a sample this small shows by chance): bootstrap errors for the
    concentration, binomial ones for the shares. Concentration is two-sided; new items and cold users count only
    upward, against the Good-Turing missing mass of the reference.
    """
    limits = thresholds or DriftThresholds()
    ref, cur = _interactions(reference, "reference"), _interactions(current, "current")
    ref_items = ref[Columns.ITEM_ID].value_counts(sort=False).to_numpy(dtype=np.int64)
    cur_items = cur[Columns.ITEM_ID].value_counts(sort=False).to_numpy(dtype=np.int64)
    size = min(len(ref), len(cur))
    rng = np.random.default_rng(seed)
    ref_value, ref_error = _concentration_at(ref_items, size, limits.subsample_draws, limits.top_items_fraction, rng)
    cur_value, cur_error = _concentration_at(cur_items, size, limits.subsample_draws, limits.top_items_fraction, rng)
    noise = np.sqrt(ref_error ** 2 + cur_error ** 2)
    z = limits.noise_z
    checks = []
    for i, (name, limit, label) in enumerate((
            (POPULARITY_GINI, limits.gini_change, "Gini of item interaction counts"),
            (TOP_ITEMS_SHARE, limits.top_items_share_change,
             f"share of interactions on the top {limits.top_items_fraction:.0%} of items"))):
        before, after = float(ref_value[i]), float(cur_value[i])
        change = after - before
        drifted = abs(change) >= limit and abs(change) >= z * float(noise[i])
        verdict = (f"{label} {before:.3f} -> {after:.3f} at {size} interactions; "
                   f"{_verdict(drifted, change, limit, float(noise[i]), z)}")
        checks.append(DriftCheck(name=name, group=RECOMMENDER, method="absolute_change", statistic=abs(change),
                                 threshold=limit, p_value=None, drifted=bool(drifted), n_ref=len(ref),
                                 n_cur=len(cur), reason=("drift: " if drifted else "no drift: ") + verdict,
                                 reference_value=before, current_value=after))
    checks.append(_unseen_share_check(NEW_ITEM_SHARE, Columns.ITEM_ID, ref, cur, limits.new_item_share_excess, z,
                                      "items"))
    checks.append(_unseen_share_check(COLD_USER_SHARE, Columns.USER_ID, ref, cur, limits.cold_user_share_excess, z,
                                      "users"))
    return checks


# ------------------------------------------------------------------------------------------------------ report
@dataclass(frozen=True)
class DriftReport:
    """Every check of one reference / current comparison."""

    checks: tuple[DriftCheck, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "checks", tuple(self.checks))
        duplicated = sorted(n for n, count in Counter(c.name for c in self.checks).items() if count > 1)
        if duplicated:
            raise DriftInputError(f"check names must be unique in a report; repeated: {duplicated} "
                                  f"(name score checks, e.g. 'score:challenger')")

    @property
    def drifted(self) -> tuple[DriftCheck, ...]:
        return tuple(c for c in self.checks if c.drifted)

    @property
    def drifted_names(self) -> list[str]:
        return [c.name for c in self.drifted]

    @property
    def drifted_features(self) -> list[str]:
        return [c.name for c in self.drifted if c.group == FEATURE]

    @property
    def drifted_share(self) -> float:
        return len(self.drifted) / len(self.checks) if self.checks else 0.0

    def check(self, name: str) -> DriftCheck:
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(f"no check named {name!r}; the report has {[c.name for c in self.checks]}")

    def to_dict(self) -> dict[str, Any]:
        return {"n_checks": len(self.checks), "n_drifted": len(self.drifted),
                "drifted_share": self.drifted_share, "drifted": self.drifted_names,
                "checks": [c.to_dict() for c in self.checks]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DriftReport:
        return cls(checks=tuple(DriftCheck.from_dict(c) for c in data["checks"]))

    def metrics(self, prefix: str = "drift") -> dict[str, float]:
        """Flat ``prefix.<check>.<field>`` numbers for tracking (finite ones only)."""
        out = {f"{prefix}.drifted_share": self.drifted_share, f"{prefix}.n_drifted": float(len(self.drifted))}
        for c in self.checks:
            for key in ("statistic", "p_value", "reference_value", "current_value"):
                value = getattr(c, key)
                if value is not None and math.isfinite(value):
                    out[f"{prefix}.{c.name}.{key}"] = float(value)
            out[f"{prefix}.{c.name}.drifted"] = float(c.drifted)
        return out

    def to_html(self, title: str = "Drift report", decision: GateDecision | None = None) -> str:
        """A self-contained page: inline CSS, no script, no request; drifted rows highlighted; all escaped."""
        return _render_html(self, title, decision)


def drift_report(*, reference_interactions: pd.DataFrame | None = None,
                 current_interactions: pd.DataFrame | None = None,
                 reference_features: pd.DataFrame | None = None, current_features: pd.DataFrame | None = None,
                 feature_columns: Sequence[str] | None = None, categorical: Iterable[str] = (),
                 reference_scores: Any = None, current_scores: Any = None, score_name: str = "score",
                 standardise_scores: bool = False, thresholds: DriftThresholds | None = None,
                 seed: int = 0) -> DriftReport:
    """The report of whichever pairs are given (interactions, features, scores); at least one pair."""
    checks: list[DriftCheck] = []
    pairs = {"interactions": (reference_interactions, current_interactions),
             "features": (reference_features, current_features), "scores": (reference_scores, current_scores)}
    for what, (ref, cur) in pairs.items():
        if (ref is None) != (cur is None):
            raise DriftInputError(f"pass both reference_{what} and current_{what}, or neither")
    if reference_interactions is not None:
        checks += recommender_drift(reference_interactions, current_interactions, thresholds=thresholds, seed=seed)
    if reference_features is not None:
        checks += table_drift(reference_features, current_features, feature_columns, categorical=categorical,
                              thresholds=thresholds)
    if reference_scores is not None:
        checks.append(score_drift(reference_scores, current_scores, name=score_name, standardise=standardise_scores,
                                  thresholds=thresholds))
    if not checks:
        raise DriftInputError("nothing to compare: pass reference and current interactions, features or scores")
    return DriftReport(checks=tuple(checks))


# -------------------------------------------------------------------------------------------------------- gate
@dataclass(frozen=True)
class DriftGateConfig:
    """What drift does to a promotion or a schedule.

    The gate fires when the share of drifted checks reaches ``max_drifted_share`` (Evidently's ``drift_share``:
    per-column tests at 5 % fire by chance, so one column alone is not dataset drift) or when any of
    ``decisive_checks`` drifted (the recommender checks by default: each needs an effect above an absolute
    threshold *and* 3 standard errors, so it seldom fires by chance, and each means the interactions the model
    learned from are stale). ``action``: ``block`` a promotion, ``retrain``, or ``warn`` only.
    """

    action: GateAction = "block"
    max_drifted_share: float = 0.5
    decisive_checks: tuple[str, ...] = RECOMMENDER_CHECKS

    def __post_init__(self) -> None:
        if self.action not in DECISIONS:
            raise DriftInputError(f"drift gate action must be one of {sorted(DECISIONS)}, not {self.action!r}")
        if not 0.0 < self.max_drifted_share <= 1.0:
            raise DriftInputError(f"max_drifted_share must be in (0, 1], not {self.max_drifted_share}")
        object.__setattr__(self, "decisive_checks", tuple(self.decisive_checks))


@dataclass(frozen=True)
class GateDecision:
    """``decision`` is ``"block promotion"``, ``"trigger retraining"``, ``"warn only"`` or ``"pass"``."""

    decision: str
    drift: bool
    reasons: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        return {"decision": self.decision, "drift": self.drift, "reasons": list(self.reasons)}


def gate_decision(report: DriftReport, gate: DriftGateConfig | None = None) -> GateDecision:
    """What to do about ``report`` under ``gate``, with the reasons a person reads."""
    gate = gate or DriftGateConfig()
    reasons = []
    decisive = [c for c in report.drifted if c.name in gate.decisive_checks]
    for c in decisive:
        reasons.append(f"{c.name} drifted (decisive check): {c.reason}")
    share = report.drifted_share
    by_share = bool(report.checks) and share >= gate.max_drifted_share
    summary = (f"{len(report.drifted)} of {len(report.checks)} checks drifted (share {share:.2f} "
               f"{'>=' if by_share else '<'} {gate.max_drifted_share:g})"
               + (f": {', '.join(report.drifted_names)}" if report.drifted else ""))
    reasons.append(summary)
    drift = bool(decisive) or by_share
    return GateDecision(decision=DECISIONS[gate.action] if drift else PASS, drift=drift, reasons=tuple(reasons))


# -------------------------------------------------------------------------------------------------------- html
_STYLE = """body{font:14px system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:right;vertical-align:top}th{background:#f3f3f3}
td.text,th.text{text-align:left}tr.drifted td{background:#fde2e2}tr.drifted td.flag{color:#a00;font-weight:bold}
.decision{font-size:1.2em;margin:1em 0}.note{color:#555;max-width:60em}"""

_HTML_COLUMNS = (("check", "name", True), ("group", "group", True), ("method", "method", True),
                 ("statistic", "statistic", False), ("threshold", "threshold", False),
                 ("p-value", "p_value", False), ("drifted", "drifted", False), ("n ref", "n_ref", False),
                 ("n cur", "n_cur", False), ("reference", "reference_value", False),
                 ("current", "current_value", False), ("missing ref", "missing_share_ref", False),
                 ("missing cur", "missing_share_cur", False), ("reason", "reason", True))


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return html.escape(f"{value:.4g}")
    return html.escape(str(value))


def _render_html(report: DriftReport, title: str, decision: GateDecision | None) -> str:
    head = "".join(f"<th class='{'text' if text else 'num'}'>{html.escape(label)}</th>"
                   for label, _, text in _HTML_COLUMNS)
    rows = []
    for c in report.checks:
        cells = []
        for _, key, text in _HTML_COLUMNS:
            css = "text" if text else ("flag" if key == "drifted" else "num")
            cells.append(f"<td class='{css}'>{_cell(getattr(c, key))}</td>")
        rows.append(f"<tr class='{'drifted' if c.drifted else 'ok'}'>{''.join(cells)}</tr>")
    parts = [f"<h1>{html.escape(title)}</h1>"]
    if decision is not None:
        parts.append(f"<p class='decision'>Decision: <b>{html.escape(decision.decision)}</b></p><ul>"
                     + "".join(f"<li>{html.escape(r)}</li>" for r in decision.reasons) + "</ul>")
    drifted = ", ".join(report.drifted_names) or "none"
    parts.append(f"<p>{len(report.drifted)} of {len(report.checks)} checks drifted "
                 f"(share {report.drifted_share:.2f}): {html.escape(drifted)}</p>")
    parts.append("<p class='note'>Tests (KS, chi-squared, Z) drift when p is below the threshold; distances "
                 "(normed Wasserstein, Jensen-Shannon) and changes when the statistic reaches it.</p>")
    parts.append(f"<table><tr>{head}</tr>{''.join(rows)}</table>")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body>{''.join(parts)}</body></html>\n")


def _plain(value: Any) -> Any:
    """Python scalars for JSON: numpy types unwrapped, non-finite floats as ``None``."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    return value


__all__ = [
    "COLD_USER_SHARE", "NEW_ITEM_SHARE", "POPULARITY_GINI", "RECOMMENDER_CHECKS", "TOP_ITEMS_SHARE",
    "DriftCheck", "DriftGateConfig", "DriftInputError", "DriftReport", "DriftThresholds", "GateDecision",
    "column_drift", "concentration", "drift_report", "gate_decision", "recommender_drift", "score_drift",
    "table_drift",
]
