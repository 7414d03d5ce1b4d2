"""Off-policy evaluation (OPE): what a *target* policy's online value would be, from the logs of a *logging* policy.

The serving layer logs, for every request, the top-k slate it showed, the clicks, and the *logging propensity*
of each shown item: the probability that the logging policy puts that item at that position (see
``recops.serving.exploration``). Given, for the same logged items, the *target propensity* (the probability that
the policy to evaluate would put the item there), this module estimates the target's value, *expected clicks
per request* (the sum over positions of the click probabilities), without serving it.

Data (:class:`SlateLog`): ``n`` requests x ``k`` positions of ``rewards``, ``logging_propensity`` (in ``(0, 1]``),
``target_propensity`` (in ``[0, 1]``) and, for the model-based estimators, ``reward_hat_logged`` (a reward
model's prediction for the logged item) and ``reward_hat_target`` (the model's expected reward of the target's
own choice, ``sum_a pi(a | x, j) qhat(x, a, j)``). ``w = target_propensity / logging_propensity`` is the
importance weight of every (request, position).

Estimators (each returns an :class:`OPEEstimate`):

- ``ips``: ``mean_i sum_j w_ij r_ij``. With ``k = 1`` this is textbook inverse propensity scoring; with slates
  it is the *independent-position* IPS (IIPS, Li et al. 2018). Unbiased when (a) the click at a position
  depends only on the request, the item and the position (not on the other items of the slate: the position-
  based click model) and (b) the logging policy gives every (item, position) the target may choose a positive
  probability (*support*), with (c) propensities that are the *marginal* probabilities of that item at that
  position. ``iips`` is the same function.
- ``snips``: IIPS self-normalised per position, ``sum_j (sum_i w_ij r_ij) / (sum_i w_ij)``: a little bias for a
  large cut in variance and immunity to a wrong overall scale of the propensities. ``sn_iips`` is the same.
- ``doubly_robust``: ``mean_i sum_j [rhat_target_ij + w_ij (r_ij - rhat_logged_ij)]``: unbiased if either the
  weights or the reward model are right, and lower variance than IPS when the model is good.
- ``direct_method``: ``mean_i sum_j rhat_target_ij``: the reward model alone (biased as the model is).
- ``pseudo_inverse`` (Swaminathan et al. 2017): uses only the slate's total reward,
  ``mean_i (sum_j w_ij - (k - 1)) * sum_j r_ij``. It needs (a) a slate reward that is a sum of per-position
  terms and (b) a logging policy that draws the positions *independently* (a product distribution), the case
  in which the paper's ``Gamma^+`` solution reduces to this closed form. Neither ``recops.serving.exploration``
  (items are distinct, the explored run shifts with the number of exploring slots) nor
  :func:`epsilon_uniform_slates` is a product distribution, so on their logs use IIPS / SNIPS / DR, which also
  use the per-position clicks; PI is for logs that only keep a slate-level reward.

Uncertainty: a bootstrap over requests (a request's positions stay together), seeded; the resamples are drawn
as a count matrix ``B x n`` in chunks and every estimator is a ratio of means, so one matrix product per chunk
gives all of them (``evaluate`` shares the same resamples across estimators, so their intervals are paired).
The interval is the percentile interval; the standard error is the bootstrap standard deviation.

Support diagnostics (the same for every estimator on a given log and target): the effective sample size
``ESS_j = (sum_i w_ij)^2 / sum_i w_ij^2`` per position (its minimum is ``ess``), the share of requests whose
weights are zero at every position, the largest weight, and the mean weight per position. The last one is a
check that needs no ground truth: with correct propensities ``E[w_ij] = P(target's item at j is in the logging
support)``, which is 1 with full support; a mean significantly below 1 means the target puts mass where the
logging policy never goes (the estimate silently misses it), above 1 that propensities are too small.
``poor_support`` is raised when the ESS is below ``min_ess`` or a mean weight is more than 4 standard errors
away from 1; ``support_warnings`` says which position and why.

:func:`epsilon_greedy_propensities` gives the exact marginal logging propensities of the lists that
``recops.serving.exploration`` rewrites with ``epsilon_greedy``. The last section is a small known-truth
simulation (users, items, a position-biased click model with exactly computable policy values, and an
``epsilon``-uniform logging policy) used by the tests and ``benchmarks/ope.py`` to check coverage.

Everything here is pure numpy on arrays: no I/O, no logging configuration, nothing at import time.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
from scipy import stats

__all__ = [
    "ESTIMATORS",
    "ClickSimulator",
    "OPEEstimate",
    "SlateLog",
    "direct_method",
    "doubly_robust",
    "eligible_pool_sizes",
    "epsilon_greedy_propensities",
    "epsilon_uniform_slates",
    "evaluate",
    "iips",
    "ips",
    "make_click_simulator",
    "position_bias",
    "pseudo_inverse",
    "slate_marginals",
    "sn_iips",
    "snips",
]

logger = logging.getLogger(__name__)

EstimatorName = Literal["ips", "snips", "dr", "dm", "pi"]
ESTIMATORS: tuple[EstimatorName, ...] = ("ips", "snips", "dr", "dm", "pi")

# Bootstrap resample counts are built in chunks of at most this many (resample, request) cells, which bounds the
# count matrix to about 32 MiB whatever the number of requests and resamples.
_BOOTSTRAP_CELLS = 1 << 22
# Float slack on propensities: values computed as 1 - eps + eps can land a hair above 1.
_PROPENSITY_SLACK = 1e-9
# A mean weight this many standard errors from 1 is flagged: far beyond sampling noise for any realistic log.
_WEIGHT_MEAN_Z = 4.0


# ------------------------------------------------------------------------------------------------------- data
def _as_slates(name: str, values: Any) -> np.ndarray:
    """``values`` as a float64 ``(n, k)`` array (a 1-d array is one position per request)."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2:
        raise ValueError(f"{name} must be 1-d (one position per request) or 2-d (requests x positions), "
                         f"got shape {array.shape}")
    bad = ~np.isfinite(array)
    if bad.any():
        request, position = np.argwhere(bad)[0]
        raise ValueError(f"{name} has {int(bad.sum())} NaN or infinite values (first at request {request}, "
                         f"position {position}); drop those requests or fill them before evaluating")
    return array


@dataclass(frozen=True)
class SlateLog:
    """Logged slates, validated: ``n`` requests x ``k`` positions of float64 arrays (1-d inputs become ``k = 1``).

    Attributes:
        rewards: Observed reward of each shown item (clicks: 0/1).
        logging_propensity: Probability that the logging policy showed that item at that position, in
            ``(0, 1]`` (a position that never explores has 1).
        target_propensity: Probability that the target policy would show that item at that position, in
            ``[0, 1]`` (a deterministic target: 1 where it agrees with the log, else 0).
        reward_hat_logged: Optional reward model prediction for the logged item at each position.
        reward_hat_target: Optional expected model reward of the target's choice at each position,
            ``sum_a pi(a | x, j) qhat(x, a, j)``.

    Padded positions (nothing shown) should carry reward 0, both propensities 1 and 0 predictions: they then add
    nothing to any estimate and leave the support diagnostics alone (a target propensity of 0 there would read as
    missing support).

    Raises:
        ValueError: Shapes differ, a value is NaN or infinite, or a propensity is outside its range.
    """

    rewards: np.ndarray
    logging_propensity: np.ndarray
    target_propensity: np.ndarray
    reward_hat_logged: np.ndarray | None = None
    reward_hat_target: np.ndarray | None = None

    def __post_init__(self) -> None:
        arrays = {"rewards": self.rewards, "logging_propensity": self.logging_propensity,
                  "target_propensity": self.target_propensity, "reward_hat_logged": self.reward_hat_logged,
                  "reward_hat_target": self.reward_hat_target}
        shape: tuple[int, ...] | None = None
        for name, values in arrays.items():
            if values is None:
                if not name.startswith("reward_hat"):
                    raise ValueError(f"{name} is required: one value per (request, position)")
                continue
            array = _as_slates(name, values)
            if shape is None:
                shape = array.shape
            elif array.shape != shape:
                raise ValueError(f"{name} has shape {array.shape} but rewards has {shape}: every array needs "
                                 f"one value per (request, position)")
            array.setflags(write=False)
            object.__setattr__(self, name, array)
        assert shape is not None  # rewards is required above
        if shape[0] == 0 or shape[1] == 0:
            raise ValueError(f"the log is empty (shape {shape}): it needs at least one request and one position")
        mu, pi = self.logging_propensity, self.target_propensity
        if np.any(mu <= 0) or np.any(mu > 1 + _PROPENSITY_SLACK):
            raise ValueError(f"logging_propensity must lie in (0, 1], got values in [{mu.min():.6g}, "
                             f"{mu.max():.6g}]: a shown item always had a positive chance (use 1 for a position "
                             f"that never explores)")
        if np.any(pi < 0) or np.any(pi > 1 + _PROPENSITY_SLACK):
            raise ValueError(f"target_propensity must lie in [0, 1], got values in [{pi.min():.6g}, "
                             f"{pi.max():.6g}]")
        if (self.reward_hat_logged is None) != (self.reward_hat_target is None):
            raise ValueError("give both reward_hat_logged and reward_hat_target (the reward model's prediction "
                             "for the logged item and its expectation under the target), or neither")

    @property
    def n_requests(self) -> int:
        return int(self.rewards.shape[0])

    @property
    def n_positions(self) -> int:
        return int(self.rewards.shape[1])

    @property
    def weights(self) -> np.ndarray:
        """Importance weights ``target_propensity / logging_propensity``, ``(n, k)``."""
        return self.target_propensity / self.logging_propensity


@dataclass(frozen=True)
class OPEEstimate:
    """One estimator's estimate of the target's value (expected reward summed over positions, per request).

    Attributes:
        estimator: ``ips``, ``snips``, ``dr``, ``dm`` or ``pi``.
        estimate: The point estimate on the whole log.
        ci_low, ci_high: Bootstrap percentile interval at level ``confidence``.
        std_error: Standard deviation of the bootstrap estimates.
        confidence: The interval's level.
        n_requests: Requests in the log.
        ess: Smallest per-position effective sample size ``(sum w)^2 / sum w^2``.
        ess_per_position: ESS of every position.
        weight_mean_per_position: Mean importance weight per position (1 with full support, see module doc).
        zero_weight_share: Share of requests whose weights are zero at every position (they teach nothing).
        max_weight: Largest importance weight.
        poor_support: True when ``ess < min_ess`` or a mean weight is significantly away from 1.
        support_warnings: One sentence per problem found, naming the position.
    """

    estimator: str
    estimate: float
    ci_low: float
    ci_high: float
    std_error: float
    confidence: float
    n_requests: int
    ess: float
    ess_per_position: tuple[float, ...]
    weight_mean_per_position: tuple[float, ...]
    zero_weight_share: float
    max_weight: float
    poor_support: bool
    support_warnings: tuple[str, ...] = field(default=())

    def covers(self, value: float) -> bool:
        """Whether ``value`` lies in the confidence interval (ends included)."""
        return self.ci_low <= value <= self.ci_high

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record (tuples become lists)."""
        record = asdict(self)
        return {key: list(value) if isinstance(value, tuple) else value for key, value in record.items()}


# ------------------------------------------------------------------------------------------------ estimators
@dataclass(frozen=True)
class _RatioOfMeans:
    """``sum_j mean_i(numerator_ij) / mean_i(denominator_ij)`` (denominator ``None``: 1): every estimator here."""

    numerator: np.ndarray
    denominator: np.ndarray | None = None

    def value(self, numerator_means: np.ndarray, denominator_means: np.ndarray | None) -> np.ndarray:
        """Estimates from column means (last axis: positions); a position whose weights sum to 0 adds 0."""
        if denominator_means is None:
            return numerator_means.sum(axis=-1)
        safe = np.where(denominator_means > 0, denominator_means, 1.0)
        return np.where(denominator_means > 0, numerator_means / safe, 0.0).sum(axis=-1)


def _statistic(log: SlateLog, name: EstimatorName) -> _RatioOfMeans:
    if name not in ESTIMATORS:
        raise ValueError(f"unknown estimator {name!r}: use one of {', '.join(ESTIMATORS)}")
    w = log.weights
    if name == "ips":
        return _RatioOfMeans(w * log.rewards)
    if name == "snips":
        return _RatioOfMeans(w * log.rewards, w)
    if name == "pi":
        slate_weight = w.sum(axis=1) - (log.n_positions - 1)
        return _RatioOfMeans((slate_weight * log.rewards.sum(axis=1))[:, None])
    if log.reward_hat_logged is None or log.reward_hat_target is None:
        raise ValueError(f"the {name!r} estimator needs a reward model: build the SlateLog with "
                         f"reward_hat_logged and reward_hat_target")
    if name == "dm":
        return _RatioOfMeans(log.reward_hat_target)
    return _RatioOfMeans(log.reward_hat_target + w * (log.rewards - log.reward_hat_logged))


def _bootstrap_counts(n: int, n_bootstrap: int, seed: int) -> Iterator[np.ndarray]:
    """Chunks of a ``(n_bootstrap, n)`` matrix: how often each request is drawn in each resample."""
    rng = np.random.default_rng(seed)
    chunk = max(1, _BOOTSTRAP_CELLS // n)
    for start in range(0, n_bootstrap, chunk):
        b = min(chunk, n_bootstrap - start)
        draws = rng.integers(0, n, size=(b, n)) + (np.arange(b, dtype=np.int64) * n)[:, None]
        yield np.bincount(draws.ravel(), minlength=b * n).reshape(b, n).astype(np.float64)


def _support(log: SlateLog, min_ess: float) -> dict[str, Any]:
    """The support diagnostics shared by every estimator (see the module docstring)."""
    w = log.weights
    n = log.n_requests
    total, squares = w.sum(axis=0), np.square(w).sum(axis=0)
    ess = np.where(squares > 0, np.square(total) / np.where(squares > 0, squares, 1.0), 0.0)
    mean = total / n
    std_error = w.std(axis=0, ddof=1) / np.sqrt(n) if n > 1 else np.zeros(log.n_positions)
    warnings_: list[str] = []
    for j in np.flatnonzero(ess < min_ess):
        warnings_.append(f"position {j}: effective sample size {ess[j]:.1f} < {min_ess:g}: the target rarely "
                         f"agrees with the logged items there, so the estimate rests on few requests")
    for j in np.flatnonzero(np.abs(mean - 1.0) > _WEIGHT_MEAN_Z * std_error + 1e-9):
        if mean[j] < 1.0:
            why = "the target puts mass on items the logging policy never shows there (no support)"
        else:
            why = "logging propensities look too small (wrong propensities?)"
        warnings_.append(f"position {j}: mean importance weight {mean[j]:.3f} is not 1 "
                         f"(+-{std_error[j]:.3f}): {why}")
    return {
        "ess": float(ess.min()),
        "ess_per_position": tuple(float(e) for e in ess),
        "weight_mean_per_position": tuple(float(m) for m in mean),
        "zero_weight_share": float(np.mean(~np.any(w > 0, axis=1))),
        "max_weight": float(w.max()),
        "poor_support": bool(warnings_),
        "support_warnings": tuple(warnings_),
    }


def evaluate(log: SlateLog, estimators: Iterable[EstimatorName] = ("ips", "snips", "dr"), *,
             n_bootstrap: int = 1000, confidence: float = 0.95, seed: int = 0,
             min_ess: float = 100.0) -> dict[str, OPEEstimate]:
    """Several estimates of the target's value from one log, on the same bootstrap resamples.

    Args:
        log: The logged slates with target propensities (and a reward model for ``dr`` / ``dm``).
        estimators: Names among ``ESTIMATORS``.
        n_bootstrap: Bootstrap resamples of the requests (at least 2; 1000 gives stable 95 % intervals).
        confidence: Level of the percentile interval, in (0, 1).
        seed: Seed of the resampling: the same seed gives the same intervals.
        min_ess: ``poor_support`` is raised below this effective sample size at any position.

    Cost: ``O(n_bootstrap x n_requests)``: the resample counts plus one ``(chunk x n) @ (n x k)`` product per
    estimator and chunk; measured 3 s for 100 resamples of 10^6 requests x 10 positions, two estimators, one core.

    Returns:
        ``{name: OPEEstimate}`` in the order asked.

    Raises:
        ValueError: An unknown estimator, a bad setting, or ``dr`` / ``dm`` without a reward model.
    """
    names = list(dict.fromkeys(estimators))
    if not names:
        raise ValueError(f"no estimator asked: use some of {', '.join(ESTIMATORS)}")
    if n_bootstrap < 2:
        raise ValueError(f"n_bootstrap must be at least 2, got {n_bootstrap}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence}")
    statistics = {name: _statistic(log, name) for name in names}
    n = log.n_requests
    boot = {name: np.empty(n_bootstrap) for name in names}
    start = 0
    for counts in _bootstrap_counts(n, n_bootstrap, seed):
        stop = start + len(counts)
        for name, statistic in statistics.items():
            numerator = counts @ statistic.numerator / n
            denominator = None if statistic.denominator is None else counts @ statistic.denominator / n
            boot[name][start:stop] = statistic.value(numerator, denominator)
        start = stop
    support = _support(log, min_ess)
    if support["poor_support"]:
        logger.info("off-policy evaluation on poor support: %s", "; ".join(support["support_warnings"]))
    tail = (1.0 - confidence) / 2.0
    results: dict[str, OPEEstimate] = {}
    for name, statistic in statistics.items():
        denominator = None if statistic.denominator is None else statistic.denominator.mean(axis=0)
        estimate = float(statistic.value(statistic.numerator.mean(axis=0), denominator))
        low, high = np.quantile(boot[name], [tail, 1.0 - tail])
        results[name] = OPEEstimate(estimator=name, estimate=estimate, ci_low=float(low), ci_high=float(high),
                                    std_error=float(boot[name].std(ddof=1)), confidence=confidence,
                                    n_requests=n, **support)
    return results


def ips(log: SlateLog, **settings: Any) -> OPEEstimate:
    """Inverse propensity scoring per (request, position): ``mean_i sum_j w_ij r_ij`` (IIPS for slates).
    ``settings``: those of :func:`evaluate`."""
    return evaluate(log, ("ips",), **settings)["ips"]


def snips(log: SlateLog, **settings: Any) -> OPEEstimate:
    """Self-normalised IPS, per position: ``sum_j (sum_i w_ij r_ij) / (sum_i w_ij)``.
    ``settings``: those of :func:`evaluate`."""
    return evaluate(log, ("snips",), **settings)["snips"]


def doubly_robust(log: SlateLog, **settings: Any) -> OPEEstimate:
    """Doubly robust: ``mean_i sum_j [rhat_target_ij + w_ij (r_ij - rhat_logged_ij)]``.
    ``settings``: those of :func:`evaluate`."""
    return evaluate(log, ("dr",), **settings)["dr"]


def direct_method(log: SlateLog, **settings: Any) -> OPEEstimate:
    """The reward model alone: ``mean_i sum_j rhat_target_ij``. ``settings``: those of :func:`evaluate`."""
    return evaluate(log, ("dm",), **settings)["dm"]


def pseudo_inverse(log: SlateLog, **settings: Any) -> OPEEstimate:
    """Pseudo-inverse estimator for a product-form logging policy and an additive slate reward:
    ``mean_i (sum_j w_ij - (k - 1)) sum_j r_ij``. ``settings``: those of :func:`evaluate`."""
    return evaluate(log, ("pi",), **settings)["pi"]


# The slate names of the same estimators (per-position propensities make IPS the independent-position IPS).
iips = ips
sn_iips = snips


# ------------------------------------------------------------------------- logging propensities of exploration
def epsilon_greedy_propensities(explored: np.ndarray, list_lengths: np.ndarray, eligible_counts: np.ndarray,
                                epsilon: float, slots: int) -> np.ndarray:
    """Exact marginal propensities of the items shown by ``recops.serving.exploration``'s ``epsilon_greedy``.

    The logging policy: a ranked list of ``L`` real items (best first, ``k`` positions) is kept, except that each
    of ``slots`` exploration slots explores independently with probability ``epsilon``; ``E`` exploring slots
    (``E ~ Binomial(slots, epsilon)``, capped at the row's eligible pool size ``P``) draw ``E`` distinct items
    uniformly from the row's eligible pool (pool items not in the list nor excluded), placed in draw order as one
    run ending at ``min(L + E, k)`` (in free positions first, else over the lowest-ranked items).

    - A ranker item at position ``p < L`` stays exactly when ``E <= k - 1 - p``: propensity
      ``P(min(E, P) <= k - 1 - p)``, 1 before the exploration positions (``1 - epsilon`` with ``slots = 1`` at
      the last position).
    - An explored item at position ``p``: the run covers ``p`` exactly when ``E >= T`` with ``T = p - L + 1``
      for ``p >= L`` and ``T = k - p`` for ``p < L``; the ordered draws are a uniform ordered sample of the
      pool, so each eligible item is equally likely at every run position: ``P(min(E, P) >= T) / P``. With
      ``slots = 1`` this is ``epsilon / P``. (An eligible item is never in the list, so it cannot also be the
      ranker's item there; no ``1 - epsilon`` term is added.) These are the marginal probabilities that IPS
      needs; the per-draw chance ``epsilon / eligible`` that ``ExplorationPolicy.apply_logged`` records agrees
      with them only for ``slots = 1``.

    Args:
        explored: ``(n, k)`` bool, True where the position shows an explored item (``explored_mask``).
        list_lengths: ``(n,)`` number of real items in each row *before* exploration (``L``).
        eligible_counts: ``(n,)`` the row's eligible pool size before any slot draws (``P``; see
            :func:`eligible_pool_sizes`).
        epsilon: Probability that a slot explores, in [0, 1].
        slots: Number of exploration slots (at most ``k`` are used).

    Returns:
        ``(n, k)`` float64 propensities of the shown items; ``NaN`` where nothing is shown.

    Raises:
        ValueError: Shapes differ, a setting is out of range, or a row explores more positions than it can.
    """
    explored = np.asarray(explored)
    if explored.ndim != 2 or explored.dtype != bool:
        raise ValueError(f"explored must be a 2-d bool array, got shape {explored.shape} and dtype {explored.dtype}")
    n, k = explored.shape
    lengths = np.asarray(list_lengths)
    eligible = np.asarray(eligible_counts)
    for name, values in (("list_lengths", lengths), ("eligible_counts", eligible)):
        if values.shape != (n,) or not (n == 0 or np.issubdtype(values.dtype, np.integer)):
            raise ValueError(f"{name} must be {n} integers (one per row), got shape {values.shape} "
                             f"and dtype {values.dtype}")
    if np.any(lengths < 0) or np.any(lengths > k) or np.any(eligible < 0):
        raise ValueError(f"list_lengths must lie in [0, {k}] and eligible_counts must be non-negative")
    if not 0.0 <= epsilon <= 1.0:
        raise ValueError(f"epsilon must lie in [0, 1], got {epsilon}")
    if slots < 0:
        raise ValueError(f"slots must be non-negative, got {slots}")
    slots = min(slots, k)
    position = np.arange(k)[None, :]
    lengths = lengths.astype(np.int64)[:, None]
    pool = eligible.astype(np.int64)[:, None]
    shown = explored | (position < lengths)
    run_length = np.minimum(slots, pool)  # most items a row can explore
    if np.any(explored.sum(axis=1) > run_length[:, 0]):
        raise ValueError("a row has more explored positions than min(slots, eligible_counts): check the arguments")

    def at_most(m: np.ndarray) -> np.ndarray:
        """P(min(E, P) <= m), E ~ Binomial(slots, epsilon)."""
        return np.where(run_length <= m, 1.0, stats.binom.cdf(m, slots, epsilon))

    threshold = np.where(position >= lengths, position - lengths + 1, k - position)
    kept = at_most(k - 1 - position)
    explored_chance = (1.0 - at_most(threshold - 1)) / np.maximum(pool, 1)
    propensity = np.where(explored, explored_chance, kept)
    if np.any(explored & (propensity <= 0)):
        raise ValueError("an explored position lies where this policy never explores (before the last "
                         "min(slots, eligible_counts) positions of the run): check list_lengths and slots")
    return np.where(shown, propensity, np.nan)


def eligible_pool_sizes(lists: np.ndarray, pool: np.ndarray, n_items: int, excluded_rows: np.ndarray | None = None,
                        excluded_items: np.ndarray | None = None) -> np.ndarray:
    """Per row, how many pool items are eligible for exploration: in ``pool``, not in the row's list, not excluded.

    Args:
        lists: ``(n, k)`` item indices before exploration, ``-1`` padding.
        pool: Item indices of the exploration pool (``ExplorationPolicy.pool``).
        n_items: Catalogue size.
        excluded_rows, excluded_items: Optional pairs ``(row, item)`` the row must never be shown (e.g. the
            ``excluded`` CSR matrix's non-zeros as ``rows, cols``).

    Returns:
        ``(n,)`` int64 counts.
    """
    lists = np.asarray(lists, dtype=np.int64)
    n = lists.shape[0]
    in_pool = np.zeros(n_items, dtype=bool)
    in_pool[np.asarray(pool, dtype=np.int64)] = True
    rows = np.repeat(np.arange(n, dtype=np.int64), lists.shape[1])
    items = lists.ravel()
    if excluded_rows is not None and excluded_items is not None:
        rows = np.concatenate([rows, np.asarray(excluded_rows, dtype=np.int64)])
        items = np.concatenate([items, np.asarray(excluded_items, dtype=np.int64)])
    keep = (items >= 0) & (items < n_items)
    keep[keep] = in_pool[items[keep]]
    codes = np.unique(rows[keep] * n_items + items[keep])
    return int(in_pool.sum()) - np.bincount(codes // n_items, minlength=n).astype(np.int64)


# ----------------------------------------------------------------------------------- known-truth simulation
def position_bias(k: int) -> np.ndarray:
    """Examination probability of positions ``0..k-1``: ``1 / log2(position + 2)`` (1 at the top)."""
    return 1.0 / np.log2(np.arange(k) + 2.0)


@dataclass(frozen=True)
class ClickSimulator:
    """A position-based click model whose every policy value is known exactly.

    ``P(click | user u, item a at position j) = attraction[u, a] * examination[j]``, independently across
    positions; requests come from users drawn uniformly. A policy's value (expected clicks per request) is
    ``mean_u sum_{a, j} P(policy shows a at j | u) attraction[u, a] examination[j]`` — an exact expectation.
    """

    attraction: np.ndarray  # (n_users, n_items), in [0, 1]
    examination: np.ndarray  # (k,), in [0, 1]

    @property
    def n_users(self) -> int:
        return int(self.attraction.shape[0])

    @property
    def n_items(self) -> int:
        return int(self.attraction.shape[1])

    @property
    def k(self) -> int:
        return int(self.examination.shape[0])

    def click_probability(self, users: np.ndarray, slates: np.ndarray) -> np.ndarray:
        """``(n, k)`` click probabilities of the shown ``slates`` for the requests' ``users``."""
        return self.attraction[np.asarray(users)[:, None], slates] * self.examination[None, :]

    def clicks(self, users: np.ndarray, slates: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """``(n, k)`` sampled clicks (0.0 / 1.0)."""
        probability = self.click_probability(users, slates)
        return (rng.random(probability.shape) < probability).astype(np.float64)

    def value(self, marginals: np.ndarray) -> float:
        """Exact value of a policy given by ``marginals[u, a, j] = P(shows a at j | u)``."""
        return float(np.einsum("uaj,ua,j->", marginals, self.attraction, self.examination) / self.n_users)

    def slates_value(self, slates: np.ndarray) -> float:
        """Exact value of the deterministic policy showing ``slates[u]`` to user ``u``."""
        return float(self.click_probability(np.arange(self.n_users), slates).sum(axis=1).mean())

    def uniform_value(self) -> float:
        """Exact value of uniformly random slates of distinct items (each item at each position: ``1/n_items``)."""
        return float(self.attraction.mean(axis=1).mean() * self.examination.sum())


def make_click_simulator(n_users: int, n_items: int, k: int, *, dim: int = 8, seed: int = 0) -> ClickSimulator:
    """Users and items with Gaussian latent vectors; attraction ``sigmoid(u.v / sqrt(dim) * 2 - 1.5)``, so the
    typical item is rarely clicked and each user has a few strong favourites; examination :func:`position_bias`."""
    rng = np.random.default_rng(seed)
    users = rng.standard_normal((n_users, dim))
    items = rng.standard_normal((n_items, dim))
    logits = users @ items.T / np.sqrt(dim) * 2.0 - 1.5
    return ClickSimulator(attraction=1.0 / (1.0 + np.exp(-logits)), examination=position_bias(k))


def slate_marginals(slates: np.ndarray, n_items: int) -> np.ndarray:
    """``(n, n_items, k)`` one-hot marginals of deterministic ``(n, k)`` slates (for :meth:`ClickSimulator.value`)."""
    n, k = slates.shape
    marginals = np.zeros((n, n_items, k))
    marginals[np.arange(n)[:, None], slates, np.arange(k)[None, :]] = 1.0
    return marginals


def epsilon_uniform_slates(base_slates: np.ndarray, n_items: int, epsilon: float,
                           rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A logging policy with support everywhere: per request, with probability ``epsilon`` a uniformly random slate
    of distinct items, otherwise ``base_slates`` (e.g. the champion's).

    The marginal propensity of item ``a`` at position ``j`` is ``(1 - epsilon) [a = base_j] + epsilon / n_items``
    (a uniform slate puts every item at every position with probability ``1 / n_items``), exact and positive for
    every (item, position), so any target policy has support. The positions are *not* drawn independently.

    Returns:
        ``(slates, logging_propensity)``, both ``(n, k)``.
    """
    n, k = base_slates.shape
    if k > n_items:
        raise ValueError(f"slates of {k} distinct items need at least {k} items, got n_items={n_items}")
    if not 0.0 < epsilon <= 1.0:
        raise ValueError(f"epsilon must lie in (0, 1] for full support, got {epsilon}")
    uniform = np.argsort(rng.random((n, n_items)), axis=1)[:, :k]
    explore = rng.random(n) < epsilon
    slates = np.where(explore[:, None], uniform, base_slates)
    propensity = (1.0 - epsilon) * (slates == base_slates) + epsilon / n_items
    return slates, propensity
