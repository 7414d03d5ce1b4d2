"""The statistics of an A/B evaluation: is the challenger's top-k list better than the champion's, and safe?

Champion (arm/team 0, "a") and challenger (arm/team 1, "b") are compared on the same users and the same
held-out data, three ways, from the strongest evidence to the closest imitation of production:

1. **Paired offline test.** Both models' lists are scored for every user (`per_user_metric`); the per-user
   differences give a paired bootstrap confidence interval of the mean difference and of the relative lift, a
   paired t-test p-value (Wilcoxon signed-rank as a secondary check) and the minimum detectable effect at the
   configured power (`paired_test`).
2. **Simulated online test.** Users are split into arms by a salted hash of their id (`assign_arms`); each user
   "sees" only their arm's top-k and "clicks" when it holds any held-out item. CTRs are compared with a
   two-proportion z-test, and the arm sizes with a sample-ratio-mismatch check (`simulated_online_test`).
3. **Team-draft interleaving.** Both lists are merged into one per user, every item credited to the team that
   picked it; a user prefers the team whose items they clicked more (`team_draft_interleave`,
   `interleaving_test`).

**CUPED** (Deng et al., 2013) narrows the between-arm intervals of the simulated online test: each user's
pre-period value of a covariate ``x`` (measured before the test period, so the arm cannot have moved it)
predicts the part of the user's outcome that would have been the same in either arm, and subtracting it,
``y - theta (x - mean x)``, removes that share of the variance (`cuped`, `arm_test`; the CTR's interval in
`simulated_online_test`). The mean difference between arms stays unbiased because randomisation makes the arms'
covariate means equal in expectation. The paired offline test gets no CUPED: every user is in both "arms", so
the arms' covariate means are the same number and the adjustment cancels exactly from the mean difference; the
pairing already removes what CUPED would (each user's own champion value is a perfect same-period covariate).

`guardrails` checks that the challenger does not give up catalogue coverage, novelty or latency, and `decide`
turns everything into "ship" or "hold" with every reason for and against spelled out. `ab_summary` assembles the
JSON-ready record that `recops.evaluation.ab_report` renders.

All functions are pure and vectorised over users (loops run over list positions, bootstrap chunks, or
segments, never over users). They do no I/O and know nothing about files, MLflow or the orchestrator.

Lists follow `recops.evaluation.metrics`: ``n_users x K`` int arrays of item indices, best first, ``-1`` for an
empty slot, with a ``users`` array of the user index of each row; ground truth is a users x items CSR matrix.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal, TypedDict

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy import stats

from recops.config import ABConfig, GuardrailsConfig
from recops.errors import RecopsError
from recops.evaluation.metrics import RANKING_METRICS, hits_matrix, per_user_ranking_metrics

# arm (and interleaving team) indices; the registry aliases are recops.registry.promotion.CHAMPION, CHALLENGER
CHAMPION_ARM, CHALLENGER_ARM = 0, 1

# Bootstrap resamples are drawn in chunks of at most this many user indices (chunk x n_users), which bounds
# the memory of the index array and of the two gathered value arrays to about 100 MiB whatever n_boot and n.
_BOOTSTRAP_CELLS = 1 << 22


# --------------------------------------------------------------------------------------------- per-user metric
def parse_metric(metric: str) -> tuple[str, int]:
    """``"ndcg@10"`` -> ``("ndcg", 10)``; the name must be one of RANKING_METRICS and k a positive integer."""
    name, sep, k_text = metric.partition("@")
    if not sep or name not in RANKING_METRICS or not k_text.isdigit() or int(k_text) < 1:
        raise RecopsError(
            f"unknown ranking metric {metric!r}: use <name>@<k> with name one of {', '.join(RANKING_METRICS)} "
            f"and k a positive integer, e.g. 'ndcg@10' (ab.primary_metric in params.yaml)"
        )
    return name, int(k_text)


def relevant_users_mask(users: np.ndarray, truth: sp.csr_matrix) -> np.ndarray:
    """Boolean per row of ``users``: does the user have at least one held-out item (is the user scored)?"""
    return np.diff(truth.tocsr().indptr)[users] > 0


def per_user_metric(users: np.ndarray, recommended: np.ndarray, truth: sp.csr_matrix, metric: str) -> np.ndarray:
    """Float64 value of ``metric`` (e.g. ``"ndcg@10"``) for each row, with the definitions of metrics.py.

    Every user must have at least one relevant item: recall, ndcg and map are undefined otherwise, and
    `ranking_metrics` leaves such users out. Select the scored users with `relevant_users_mask` first (and use
    the same rows for both models, so that the values stay paired). The mean of the result then equals
    ``ranking_metrics(users, recommended, truth, [k])[metric]``. Lists shorter than k count the missing slots
    as misses, as in `ranking_metrics`.
    """
    name, k = parse_metric(metric)
    truth = truth.tocsr()
    n_relevant = np.diff(truth.indptr)[users]
    if (n_relevant == 0).any():
        raise ValueError(
            f"{int((n_relevant == 0).sum())} of {len(users)} users have no relevant item, so {metric} is "
            "undefined for them: keep only the rows where relevant_users_mask(users, truth) is true"
        )
    _, values = per_user_ranking_metrics(users, recommended, truth, [k])  # the one definition of each metric
    return values[f"{name}@{k}"]


# ----------------------------------------------------------------------------------------- paired offline test
@dataclass(frozen=True)
class PairedTest:
    """Paired comparison of per-user values: champion ``a``, challenger ``b``, on the same users.

    ``delta`` is mean(b) - mean(a); ``lift`` is mean(b) / mean(a) - 1 (NaN when mean(a) is 0). Both intervals
    are bootstrap percentile intervals at level ``1 - alpha`` over resampled users. ``mde`` is the smallest
    absolute delta this many users detect with probability ``power`` at level ``alpha``;
    ``n_users_for_min_lift`` is how many users would be needed to detect a relative lift of ``min_lift``
    (None when min_lift is 0 or mean(a) is 0).
    """

    n_users: int
    mean_a: float
    mean_b: float
    delta: float
    ci_low: float
    ci_high: float
    lift: float
    lift_ci_low: float
    lift_ci_high: float
    p_value: float
    wilcoxon_p_value: float
    sd_delta: float
    mde: float
    mde_relative: float
    n_users_for_min_lift: int | None
    alpha: float
    power: float
    min_lift: float
    n_boot: int

    def to_dict(self) -> dict[str, Any]:
        return _plain(asdict(self))


def paired_test(a: np.ndarray, b: np.ndarray, *, alpha: float = 0.05, power: float = 0.8, n_boot: int = 2000,
                seed: int = 0, min_lift: float = 0.0) -> PairedTest:
    """Paired bootstrap, t-test and Wilcoxon test of challenger ``b`` against champion ``a`` (one value per user)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"a and b must be 1-d arrays of the same users, got shapes {a.shape} and {b.shape}")
    n = len(a)
    if n < 2:
        raise ValueError(f"a paired test needs at least 2 users, got {n}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("per-user values must be finite: drop users whose metric is undefined first")
    diff = b - a
    mean_a, mean_b = float(a.mean()), float(b.mean())
    delta = float(diff.mean())
    sd = float(diff.std(ddof=1))

    boot_a, boot_b = _bootstrap_means(a, b, n_boot, seed)
    tails = [100 * alpha / 2, 100 * (1 - alpha / 2)]
    ci_low, ci_high = np.percentile(boot_b - boot_a, tails)
    with np.errstate(divide="ignore", invalid="ignore"):
        boot_lift = boot_b / boot_a - 1.0
    if mean_a > 0 and np.isfinite(boot_lift).all():
        lift = mean_b / mean_a - 1.0
        lift_ci_low, lift_ci_high = np.percentile(boot_lift, tails)
    else:  # a resample with mean(a) = 0 has no relative lift
        lift = mean_b / mean_a - 1.0 if mean_a > 0 else math.nan
        lift_ci_low = lift_ci_high = math.nan

    if sd == 0.0:  # every user moved by the same amount: no spread to test against
        p_value = 1.0 if delta == 0.0 else 0.0
    else:
        p_value = float(stats.ttest_rel(b, a).pvalue)
    if not diff.any():
        wilcoxon_p = 1.0
    else:
        with warnings.catch_warnings():  # few non-zero differences: scipy warns, the p-value stays usable
            warnings.simplefilter("ignore", RuntimeWarning)
            wilcoxon_p = float(stats.wilcoxon(diff).pvalue)

    z_total = float(stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power))
    mde = z_total * sd / math.sqrt(n)
    needed = None
    if min_lift > 0 and mean_a > 0:
        needed = int(math.ceil((z_total * sd / (min_lift * mean_a)) ** 2)) if sd > 0 else 2
    return PairedTest(
        n_users=n, mean_a=mean_a, mean_b=mean_b, delta=delta, ci_low=float(ci_low), ci_high=float(ci_high),
        lift=float(lift), lift_ci_low=float(lift_ci_low), lift_ci_high=float(lift_ci_high), p_value=p_value,
        wilcoxon_p_value=wilcoxon_p, sd_delta=sd, mde=mde, mde_relative=mde / mean_a if mean_a > 0 else math.nan,
        n_users_for_min_lift=needed, alpha=alpha, power=power, min_lift=min_lift, n_boot=n_boot,
    )


def _bootstrap_means(a: np.ndarray, b: np.ndarray, n_boot: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Means of ``a`` and ``b`` over the same ``n_boot`` resamples of the users (pairs stay together)."""
    rng = np.random.default_rng(seed)
    n = len(a)
    chunk = max(1, _BOOTSTRAP_CELLS // n)
    boot_a = np.empty(n_boot)
    boot_b = np.empty(n_boot)
    for start in range(0, n_boot, chunk):
        stop = min(start + chunk, n_boot)
        idx = rng.integers(0, n, size=(stop - start, n))
        boot_a[start:stop] = a[idx].mean(axis=1)
        boot_b[start:stop] = b[idx].mean(axis=1)
    return boot_a, boot_b


# ------------------------------------------------------------------------------------ CUPED variance reduction
@dataclass(frozen=True)
class Cuped:
    """One CUPED adjustment: ``adjusted = y - theta (x - mean x)`` with ``theta = cov(x, y) / var(x)``.

    ``correlation`` is that of x and y (NaN when either is constant); ``variance_ratio`` is
    var(adjusted) / var(y), about ``1 - correlation**2`` (1 when y is constant: nothing to reduce);
    ``n_imputed`` users had no covariate (NaN) and got the mean of the others.
    """

    adjusted: np.ndarray
    theta: float
    correlation: float
    variance_ratio: float
    n_imputed: int


def cuped(y: np.ndarray, x: np.ndarray) -> Cuped:
    """CUPED-adjust outcomes ``y`` with the pre-period covariate ``x`` (one value per user, NaN = none).

    Estimate theta on the pooled users of every arm: pooling ignores the arms, so theta does not depend on the
    assignment, and the adjusted difference of arm means stays unbiased (the arms' covariate means differ only
    by chance). Users without a covariate (no pre-period activity) get the mean covariate of the others: their
    adjustment is then 0 and they keep their raw outcome, the usual treatment that leaves them in the test
    without biasing it. A constant or missing covariate explains nothing: theta is 0 and ``y`` comes back as is.
    """
    y = np.asarray(y, dtype=np.float64)
    x = np.asarray(x, dtype=np.float64)
    if y.shape != x.shape or y.ndim != 1:
        raise ValueError(f"y and x must be 1-d arrays of the same users, got shapes {y.shape} and {x.shape}")
    if not np.isfinite(y).all():
        raise ValueError("outcomes must be finite: drop users whose metric is undefined first")
    known = np.isfinite(x)
    n_imputed = int((~known).sum())
    if known.sum() < 2:
        return Cuped(adjusted=y.copy(), theta=0.0, correlation=math.nan, variance_ratio=1.0, n_imputed=n_imputed)
    filled = np.where(known, x, x[known].mean())
    x_centred = filled - filled.mean()
    y_centred = y - y.mean()
    var_x, var_y = float(x_centred @ x_centred), float(y_centred @ y_centred)
    # relative to the covariate's scale: a "constant" column with rounding noise must not give a huge theta
    if var_x <= 1e-24 * max(1.0, float(filled @ filled)):
        return Cuped(adjusted=y.copy(), theta=0.0, correlation=math.nan, variance_ratio=1.0, n_imputed=n_imputed)
    cov_xy = float(x_centred @ y_centred)
    theta = cov_xy / var_x
    adjusted = y - theta * x_centred
    if var_y == 0.0:
        return Cuped(adjusted=adjusted, theta=theta, correlation=math.nan, variance_ratio=1.0, n_imputed=n_imputed)
    residual = adjusted - adjusted.mean()
    return Cuped(adjusted=adjusted, theta=theta, correlation=cov_xy / math.sqrt(var_x * var_y),
                 variance_ratio=float(residual @ residual) / var_y, n_imputed=n_imputed)


class ArmTest(TypedDict):
    """Difference of an outcome's mean between the arms (challenger - champion), with and without CUPED.

    Intervals are normal (Welch) intervals at ``1 - alpha``; the ``*_cuped`` fields, the covariate's ``theta``,
    ``correlation`` and ``variance_ratio`` are NaN without a covariate. ``ci_width_ratio`` is the CUPED
    interval's width over the unadjusted one's (below 1: CUPED narrowed it).
    """

    metric: str
    n_champion: int
    n_challenger: int
    mean_champion: float
    mean_challenger: float
    delta: float
    ci_low: float
    ci_high: float
    p_value: float
    covariate: str | None
    n_imputed: int
    theta: float
    correlation: float
    variance_ratio: float
    delta_cuped: float
    ci_low_cuped: float
    ci_high_cuped: float
    p_value_cuped: float
    ci_width_ratio: float


def arm_test(y: np.ndarray, arms: np.ndarray, covariate: np.ndarray | None = None, *, metric: str,
             alpha: float = 0.05, covariate_name: str | None = None) -> ArmTest:
    """Compare one outcome per user between the arms of `assign_arms`; with ``covariate``, also CUPED-adjusted.

    ``y`` holds each user's outcome under the model of their own arm (e.g. the primary metric of the champion's
    list for arm-0 users, the challenger's for arm-1 users). ``covariate`` is the users' pre-period value (NaN
    where unknown), see `cuped`.
    """
    y = np.asarray(y, dtype=np.float64)
    arms = np.asarray(arms)
    if arms.shape != y.shape or y.ndim != 1:
        raise ValueError(f"y and arms need one entry per user, got shapes {y.shape} and {arms.shape}")
    in_b = arms == CHALLENGER_ARM
    z_crit = float(stats.norm.ppf(1 - alpha / 2))
    delta, low, high, p_value = _welch(y, in_b, z_crit)
    nan = math.nan
    theta = correlation = variance_ratio = delta_c = low_c = high_c = p_c = width_ratio = nan
    n_imputed = 0
    if covariate is not None:
        adjustment = cuped(y, covariate)
        theta, correlation, n_imputed = adjustment.theta, adjustment.correlation, adjustment.n_imputed
        variance_ratio = adjustment.variance_ratio
        delta_c, low_c, high_c, p_c = _welch(adjustment.adjusted, in_b, z_crit)
        width_ratio = (high_c - low_c) / (high - low) if high > low else nan
    n_a, n_b = int((~in_b).sum()), int(in_b.sum())
    return ArmTest(
        metric=metric, n_champion=n_a, n_challenger=n_b,
        mean_champion=float(y[~in_b].mean()) if n_a else nan, mean_challenger=float(y[in_b].mean()) if n_b else nan,
        delta=delta, ci_low=low, ci_high=high, p_value=p_value,
        covariate=(covariate_name or "covariate") if covariate is not None else None, n_imputed=n_imputed, theta=theta,
        correlation=correlation, variance_ratio=variance_ratio, delta_cuped=delta_c, ci_low_cuped=low_c,
        ci_high_cuped=high_c, p_value_cuped=p_c, ci_width_ratio=width_ratio,
    )


def _welch(y: np.ndarray, in_b: np.ndarray, z_crit: float) -> tuple[float, float, float, float]:
    """(delta, ci_low, ci_high, p_value) of mean(y | arm 1) - mean(y | arm 0), unpooled normal approximation."""
    y_a, y_b = y[~in_b], y[in_b]
    if len(y_a) < 2 or len(y_b) < 2:
        return math.nan, math.nan, math.nan, math.nan
    delta = float(y_b.mean() - y_a.mean())
    se = math.sqrt(y_a.var(ddof=1) / len(y_a) + y_b.var(ddof=1) / len(y_b))
    if se == 0.0:  # both arms constant: the difference is exact
        return delta, delta, delta, 1.0 if delta == 0.0 else 0.0
    return delta, delta - z_crit * se, delta + z_crit * se, float(2 * stats.norm.sf(abs(delta) / se))


# ------------------------------------------------------------------------------------------- arm assignment
def assign_arms(user_ids: Sequence[Any] | np.ndarray, salt: str, split: float) -> np.ndarray:
    """Arm of each user: int8, 0 = champion, 1 = challenger (a share ``split`` of users).

    The arm is a salted hash of the id's string form (so ``7`` and ``"7"`` land together): pandas' SipHash
    with a 16-character key derived from the salt, mapped to [0, 1). It depends on nothing but the id, the salt
    and the split, so it is the same in every run and process, and a user keeps their arm when other users
    come or go. A new salt re-randomises everyone.
    """
    if not 0.0 < split < 1.0:
        raise ValueError(f"split must lie strictly between 0 and 1, got {split}")
    ids = np.asarray(user_ids)
    if ids.ndim != 1:
        raise ValueError(f"user_ids must be 1-d, got shape {ids.shape}")
    if len(ids) == 0:
        return np.zeros(0, dtype=np.int8)
    key = hashlib.blake2b(salt.encode("utf-8"), digest_size=8).hexdigest()  # 16 ASCII characters
    hashed = pd.util.hash_array(ids.astype(str).astype(object), hash_key=key, categorize=False)
    uniform = (hashed >> np.uint64(11)).astype(np.float64) * 2.0**-53  # top 53 bits -> [0, 1)
    return (uniform < split).astype(np.int8)


# -------------------------------------------------------------------------------------- simulated online test
class ArmOutcome(TypedDict):
    n: int
    clicks: int
    ctr: float


class OnlineTest(TypedDict):
    """CTR of each arm when each user sees their arm's top-k and clicks if it holds a held-out item."""

    k: int
    champion: ArmOutcome
    challenger: ArmOutcome
    ctr_diff: float            # ctr(challenger) - ctr(champion)
    ctr_diff_ci_low: float     # unpooled Wald interval at 1 - alpha
    ctr_diff_ci_high: float
    ctr_lift: float            # ctr(challenger) / ctr(champion) - 1
    ctr_lift_ci_low: float     # log risk-ratio (Katz) interval at 1 - alpha
    ctr_lift_ci_high: float
    z: float                   # pooled two-proportion z statistic
    p_value: float
    expected_split: float
    observed_split: float
    srm_p_value: float         # chi-square of the arm counts against the expected split
    srm: bool                  # sample-ratio mismatch: srm_p_value below the alarm threshold
    # CUPED with the pre-period covariate (NaN without one): the CTR difference and its interval, and that
    # interval's width over the unadjusted one's (both unpooled normal intervals, so like is compared with like)
    ctr_diff_cuped: float
    ctr_diff_ci_low_cuped: float
    ctr_diff_ci_high_cuped: float
    ctr_ci_width_ratio: float


def simulated_online_test(arms: np.ndarray, lists_a: np.ndarray, lists_b: np.ndarray, users: np.ndarray,
                          truth: sp.csr_matrix, *, k: int, alpha: float = 0.05, expected_split: float = 0.5,
                          srm_p_value: float = 0.001, covariate: np.ndarray | None = None) -> OnlineTest:
    """Replay an online A/B test offline; CTR = share of an arm's users with a held-out item in the top k.

    Every row counts as a visitor, including users without held-out items (they never click): pass the
    population that would have been exposed. Arms come from `assign_arms`. ``covariate`` (one pre-period value
    per row, NaN where unknown) adds the CUPED-adjusted CTR difference (`cuped`).
    """
    arms = np.asarray(arms)
    if not len(arms) == len(users) == len(lists_a) == len(lists_b):
        raise ValueError(f"arms, users and both list sets need one row per user, got {len(arms)}, {len(users)}, "
                         f"{len(lists_a)} and {len(lists_b)}")
    shown = np.where((arms == CHALLENGER_ARM)[:, None], lists_b[:, :k], lists_a[:, :k])
    clicked = hits_matrix(users, shown, truth).any(axis=1)
    in_b = arms == CHALLENGER_ARM
    n_a, n_b = int((~in_b).sum()), int(in_b.sum())
    c_a, c_b = int(clicked[~in_b].sum()), int(clicked[in_b].sum())
    ctr_a = c_a / n_a if n_a else math.nan
    ctr_b = c_b / n_b if n_b else math.nan
    z_crit = float(stats.norm.ppf(1 - alpha / 2))

    diff = ctr_b - ctr_a
    pooled = (c_a + c_b) / (n_a + n_b) if n_a + n_b else math.nan
    se_pooled = math.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b)) if n_a and n_b else math.nan
    if se_pooled > 0:
        z = diff / se_pooled
        p_value = float(2 * stats.norm.sf(abs(z)))
    elif n_a and n_b:  # both arms all-click or all-miss: identical CTRs
        z, p_value = 0.0, 1.0
    else:
        z = p_value = math.nan
    se_wald = math.sqrt(ctr_a * (1 - ctr_a) / n_a + ctr_b * (1 - ctr_b) / n_b) if n_a and n_b else math.nan

    if c_a > 0 and c_b > 0:
        log_rr = math.log(ctr_b / ctr_a)
        se_log = math.sqrt((1 - ctr_b) / c_b + (1 - ctr_a) / c_a)
        lift, lift_low, lift_high = (math.exp(log_rr + s * z_crit * se_log) - 1 for s in (0, -1, 1))
    else:
        lift = ctr_b / ctr_a - 1 if ctr_a > 0 else math.nan
        lift_low = lift_high = math.nan

    adjusted = arm_test(clicked.astype(np.float64), arms, covariate, metric=f"ctr@{k}", alpha=alpha) \
        if covariate is not None else None
    total = n_a + n_b
    srm_p = float(stats.chisquare([n_a, n_b], [total * (1 - expected_split), total * expected_split]).pvalue) \
        if total else math.nan
    return OnlineTest(
        k=k, champion=ArmOutcome(n=n_a, clicks=c_a, ctr=ctr_a), challenger=ArmOutcome(n=n_b, clicks=c_b, ctr=ctr_b),
        ctr_diff=diff, ctr_diff_ci_low=diff - z_crit * se_wald, ctr_diff_ci_high=diff + z_crit * se_wald,
        ctr_lift=lift, ctr_lift_ci_low=lift_low, ctr_lift_ci_high=lift_high, z=float(z), p_value=p_value,
        expected_split=expected_split, observed_split=n_b / total if total else math.nan,
        srm_p_value=srm_p, srm=bool(srm_p < srm_p_value),
        ctr_diff_cuped=adjusted["delta_cuped"] if adjusted else math.nan,
        ctr_diff_ci_low_cuped=adjusted["ci_low_cuped"] if adjusted else math.nan,
        ctr_diff_ci_high_cuped=adjusted["ci_high_cuped"] if adjusted else math.nan,
        ctr_ci_width_ratio=adjusted["ci_width_ratio"] if adjusted else math.nan,
    )


# ----------------------------------------------------------------------------------------------- interleaving
def team_draft_interleave(lists_a: np.ndarray, lists_b: np.ndarray, k: int,
                          seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Team-draft interleaving (Radlinski et al., 2008) of two list sets, row by row.

    Returns ``(items, team)``, both ``n_users x k``: the merged list and who picked each slot (0 = champion,
    1 = challenger). The team that has picked fewer items picks next; when both have picked equally often, a
    coin flip decides. The picking team takes its highest-ranked item not yet in the merged list. If that team
    has nothing left the other team picks; if neither has, the slot is ``-1`` with team ``-1`` (only for lists
    with fewer than k distinct items between them).

    Only the first k items of each list can ever be picked (a team reaching its (k+1)-th item would need its
    top k already in the merged list, which is then full), so longer lists are cut at k.
    """
    a = np.asarray(lists_a)[:, :k]
    b = np.asarray(lists_b)[:, :k]
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"lists_a and lists_b must have one row per user each, got {a.shape[0]} and {b.shape[0]}")
    n = a.shape[0]
    rng = np.random.default_rng(seed)
    rows = np.arange(n)
    items = np.full((n, k), -1, dtype=np.int64)
    team = np.full((n, k), -1, dtype=np.int8)
    pointer_a = np.zeros(n, dtype=np.int64)
    pointer_b = np.zeros(n, dtype=np.int64)
    picked_a = np.zeros(n, dtype=np.int64)
    picked_b = np.zeros(n, dtype=np.int64)
    for slot in range(k):
        cand_a = _next_free(a, pointer_a, items[:, :slot], rows)
        cand_b = _next_free(b, pointer_b, items[:, :slot], rows)
        has_a, has_b = cand_a >= 0, cand_b >= 0
        coin = rng.random(n) < 0.5
        a_turn = (picked_a < picked_b) | ((picked_a == picked_b) & coin)
        take_a = has_a & (a_turn | ~has_b)
        take_b = has_b & ~take_a
        items[:, slot] = np.where(take_a, cand_a, np.where(take_b, cand_b, -1))
        team[:, slot] = np.where(take_a, CHAMPION_ARM, np.where(take_b, CHALLENGER_ARM, -1))
        pointer_a += take_a
        pointer_b += take_b
        picked_a += take_a
        picked_b += take_b
    return items, team


def _next_free(lists: np.ndarray, pointer: np.ndarray, taken: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Advance each row's pointer past empty slots and items already taken; the item there, or -1 if none.

    Pointers only move forward, so over a whole interleaving this inner loop runs at most k + 1 times per call
    site in total, not per slot.
    """
    width = lists.shape[1]
    while True:
        inside = pointer < width
        cand = np.where(inside, lists[rows, np.minimum(pointer, width - 1)], -1)
        skip = inside & ((cand < 0) | (taken == cand[:, None]).any(axis=1))
        if not skip.any():
            return cand
        pointer += skip


class InterleavingTest(TypedDict):
    """Per user, the team whose items got more clicks wins; users with equal clicks (or none) tie."""

    n_users: int
    clicks_champion: int
    clicks_challenger: int
    wins_champion: int
    wins_challenger: int
    ties: int
    challenger_preference: float   # wins_challenger / (wins_champion + wins_challenger)
    preference_ci_low: float       # Clopper-Pearson 95% interval of the preference
    preference_ci_high: float
    p_value: float                 # two-sided binomial test of the wins against 0.5


def interleaving_test(interleaved: np.ndarray, team: np.ndarray, users: np.ndarray,
                      truth: sp.csr_matrix) -> InterleavingTest:
    """Credit each click (held-out item in the merged list) to the team that placed the item there."""
    hits = hits_matrix(users, interleaved, truth)
    credit_a = (hits & (team == CHAMPION_ARM)).sum(axis=1)
    credit_b = (hits & (team == CHALLENGER_ARM)).sum(axis=1)
    wins_a, wins_b = int((credit_a > credit_b).sum()), int((credit_b > credit_a).sum())
    decided = wins_a + wins_b
    if decided:
        result = stats.binomtest(wins_b, decided, 0.5, alternative="two-sided")
        ci = result.proportion_ci(confidence_level=0.95)
        share, low, high, p_value = wins_b / decided, float(ci.low), float(ci.high), float(result.pvalue)
    else:
        share = low = high = math.nan
        p_value = 1.0
    return InterleavingTest(
        n_users=len(users), clicks_champion=int(credit_a.sum()), clicks_challenger=int(credit_b.sum()),
        wins_champion=wins_a, wins_challenger=wins_b, ties=len(users) - decided, challenger_preference=share,
        preference_ci_low=low, preference_ci_high=high, p_value=p_value,
    )


# ------------------------------------------------------------------------------------------------- guardrails
class Guardrail(TypedDict):
    name: str
    champion: float | None
    challenger: float | None
    limit: float                   # lowest allowed challenger value (coverage, novelty) or highest (latency)
    status: Literal["pass", "fail", "not checked"]
    passed: bool                   # False only when status is "fail"
    reason: str


def guardrails(champion: Mapping[str, float], challenger: Mapping[str, float], p99_latency_ms: float | None,
               config: GuardrailsConfig, *, beyond_k: int = 10) -> list[Guardrail]:
    """Coverage and novelty may not drop by more than the allowed relative share; p99 latency has a ceiling.

    ``champion`` and ``challenger`` are metric dicts as `evaluate_lists` returns them (at least
    ``coverage@<beyond_k>`` and ``novelty@<beyond_k>``). Latency is the challenger's; without a measurement
    (None) the latency guardrail is reported as "not checked" and does not block.
    """
    out: list[Guardrail] = []
    for metric, max_drop in ((f"coverage@{beyond_k}", config.max_coverage_drop),
                             (f"novelty@{beyond_k}", config.max_novelty_drop)):
        missing = [side for side, values in (("champion", champion), ("challenger", challenger))
                   if metric not in values]
        if missing:
            raise ValueError(f"guardrail {metric} needs that metric for the {' and '.join(missing)}: pass the "
                             "dicts evaluate_lists returns")
        old, new = float(champion[metric]), float(challenger[metric])
        limit = old * (1.0 - max_drop)
        drop = (old - new) / old if old > 0 else 0.0
        passed = bool(new >= limit)
        moved = f"{'fell' if drop > 0 else 'rose'} {abs(drop):.1%} ({old:.4f} -> {new:.4f})"
        reason = (f"{metric} {moved}, {'within' if passed else 'more than'} the {max_drop:.0%} drop allowed")
        out.append(Guardrail(name=metric, champion=old, challenger=new, limit=limit,
                             status="pass" if passed else "fail", passed=passed, reason=reason))
    ceiling = config.max_p99_latency_ms
    if p99_latency_ms is None:
        out.append(Guardrail(name="p99_latency_ms", champion=None, challenger=None, limit=ceiling,
                             status="not checked", passed=True,
                             reason=f"p99 latency not measured, so its {ceiling:g} ms ceiling was not checked"))
    else:
        passed = bool(p99_latency_ms <= ceiling)
        out.append(Guardrail(
            name="p99_latency_ms", champion=None, challenger=float(p99_latency_ms), limit=ceiling,
            status="pass" if passed else "fail", passed=passed,
            reason=f"p99 latency {p99_latency_ms:.2f} ms is {'within' if passed else 'above'} the {ceiling:g} ms "
                   "ceiling"))
    return out


# --------------------------------------------------------------------------------------------------- decision
class Decision(TypedDict):
    decision: Literal["ship", "hold"]
    reasons: list[str]   # each starts with "for:", "against:" or "note:"


def decide(paired: PairedTest, online: OnlineTest | None, interleaving: InterleavingTest | None,
           guards: Sequence[Guardrail], config: ABConfig, timeline: PairedTest | None = None,
           online_metric: ArmTest | None = None) -> Decision:
    """Ship only if the primary metric's delta is significantly positive (interval above 0 and p < alpha),
    its relative lift reaches ``min_lift``, every checked guardrail passes and the arm split shows no SRM; with
    ``timeline`` (the same paired test on the rolling-timeline backtest of both configurations, ``ab.timeline``),
    also only if the challenger's delta there lies above 0.

    The online CTR comparison, the between-arm comparison of the primary metric (``online_metric``, with its
    CUPED interval) and the interleaving preference are reported as notes: they replay the same held-out data as
    the paired test, so they corroborate it but do not add independent evidence.
    """
    if paired.alpha != config.alpha or paired.min_lift != config.min_lift:
        raise ValueError(f"paired test run with alpha={paired.alpha}, min_lift={paired.min_lift} but the config has "
                         f"alpha={config.alpha}, min_lift={config.min_lift}: run paired_test with the config's values")
    metric = config.primary_metric
    level = f"{1 - paired.alpha:.0%}"
    reasons: list[str] = []
    blocked = False

    def add(ok: bool, text: str) -> None:
        nonlocal blocked
        blocked |= not ok
        reasons.append(f"{'for' if ok else 'against'}: {text}")

    interval = f"{level} CI {paired.ci_low:+.4f} to {paired.ci_high:+.4f}"
    change = f"{metric} moved by {paired.delta:+.4f} ({paired.mean_a:.4f} -> {paired.mean_b:.4f}, {interval})"
    if paired.ci_low > 0:
        add(True, f"{change}: the interval lies above 0")
    elif paired.ci_high < 0:
        add(False, f"{change}: the challenger is worse, the interval lies below 0")
    else:
        add(False, f"{change}: the interval includes 0")
    significant = paired.p_value < config.alpha
    # a significant difference speaks for the challenger only when it is an improvement
    add(significant and paired.delta > 0,
        f"paired t-test p = {_p(paired.p_value)} over {paired.n_users} users "
        f"({'below' if significant else 'not below'} alpha = {config.alpha:g}"
        f"{', a significant drop' if significant and paired.delta <= 0 else ''}; "
        f"Wilcoxon p = {_p(paired.wilcoxon_p_value)})")
    if math.isnan(paired.lift):
        add(False, f"relative lift undefined: the champion's mean {metric} is 0")
    else:
        add(paired.lift >= config.min_lift,
            f"relative lift {paired.lift:+.2%} ({level} CI {paired.lift_ci_low:+.2%} to {paired.lift_ci_high:+.2%})"
            f" {'reaches' if paired.lift >= config.min_lift else 'is below'} the required {config.min_lift:.2%}")
    if paired.ci_low <= 0 <= paired.ci_high:  # not significant: say how large an effect could have been seen
        reasons.append(f"note: with {paired.n_users} users the minimum detectable effect is {paired.mde:.4f} "
                       f"({paired.mde_relative:+.2%} relative) at {paired.power:.0%} power")

    if timeline is not None:
        text = (f"on the rolling timeline (both configurations refitted before each cut, {timeline.n_users} "
                f"(window, user) rows) {metric} moved by {timeline.delta:+.4f} ({timeline.mean_a:.4f} -> "
                f"{timeline.mean_b:.4f}, {level} CI {timeline.ci_low:+.4f} to {timeline.ci_high:+.4f})")
        if timeline.ci_low > 0:
            add(True, f"{text}: the interval lies above 0")
        elif timeline.ci_high < 0:
            add(False, f"{text}: the challenger is worse on the timeline")
        else:
            add(False, f"{text}: the interval includes 0")

    for guard in guards:
        if guard["status"] == "not checked":
            reasons.append(f"note: {guard['reason']}")
        else:
            add(guard["passed"], f"guardrail {guard['reason']}")

    if online is not None:
        add(not online["srm"],
            f"arm sizes {online['champion']['n']} / {online['challenger']['n']} "
            f"(challenger share {online['observed_split']:.3f}, expected {online['expected_split']:.3f}): "
            f"sample-ratio check p = {_p(online['srm_p_value'])}, "
            f"{'a mismatch: the assignment is broken' if online['srm'] else 'no mismatch'}")
        reasons.append(
            f"note: simulated online CTR@{online['k']} {online['champion']['ctr']:.4f} -> "
            f"{online['challenger']['ctr']:.4f} ({online['ctr_diff']:+.4f}, 95% CI {online['ctr_diff_ci_low']:+.4f}"
            f" to {online['ctr_diff_ci_high']:+.4f}, z-test p = {_p(online['p_value'])})")
    if online_metric is not None:
        reasons.append(f"note: {_arm_test_text(online_metric, level)}")
    if interleaving is not None:
        reasons.append(
            f"note: interleaving: challenger preferred by {interleaving['wins_challenger']} users, champion by "
            f"{interleaving['wins_champion']}, {interleaving['ties']} ties (challenger share "
            f"{interleaving['challenger_preference']:.3f}, binomial p = {_p(interleaving['p_value'])})")
    return Decision(decision="hold" if blocked else "ship", reasons=reasons)


# ---------------------------------------------------------------------------------------------------- summary
def segment_lifts(a: np.ndarray, b: np.ndarray, labels: np.ndarray, *, alpha: float = 0.05, n_boot: int = 1000,
                  seed: int = 0) -> dict[str, dict[str, Any]]:
    """Per segment label: n, mean_a, mean_b, delta and lift with bootstrap intervals (segments of 2+ users).

    Descriptive only: with several segments, one of them crossing zero by chance is expected.
    """
    labels = np.asarray(labels)
    if labels.shape != np.shape(a):
        raise ValueError(f"segment labels must have one entry per user ({np.shape(a)}), got {labels.shape}")
    out: dict[str, dict[str, Any]] = {}
    for label in np.unique(labels):  # a loop over segments: a handful, each one vectorised
        rows = labels == label
        n = int(rows.sum())
        if n < 2:
            out[str(label)] = _plain({"n": n, "mean_a": float(np.mean(a[rows])), "mean_b": float(np.mean(b[rows]))})
            continue
        test = paired_test(a[rows], b[rows], alpha=alpha, n_boot=n_boot, seed=seed)
        out[str(label)] = _plain({"n": n, "mean_a": test.mean_a, "mean_b": test.mean_b, "delta": test.delta,
                                  "ci_low": test.ci_low, "ci_high": test.ci_high, "lift": test.lift,
                                  "lift_ci_low": test.lift_ci_low, "lift_ci_high": test.lift_ci_high})
    return out


def ab_summary(a: np.ndarray, b: np.ndarray, paired: PairedTest, decision: Decision, config: ABConfig, *,
               online: OnlineTest | None = None, interleaving: InterleavingTest | None = None,
               guards: Sequence[Guardrail] = (), segments: Mapping[str, np.ndarray] | None = None,
               seed: int = 0, online_metric: ArmTest | None = None) -> dict[str, Any]:
    """The JSON-ready record of one A/B evaluation (plain types only; NaN and infinities become None).

    ``a`` and ``b`` are the per-user primary-metric values `paired` was computed from. ``segments`` maps a
    segmentation's name (e.g. ``"activity"``) to one label per user; each gets per-label lifts under
    ``segments[<name>]``. ``online_metric`` (`arm_test` of the primary metric) goes under ``online_metric``:
    its ``ci_low``/``ci_high`` without and ``ci_low_cuped``/``ci_high_cuped`` with CUPED, and
    ``ci_width_ratio``.
    """
    summary: dict[str, Any] = {
        "decision": decision["decision"],
        "reasons": list(decision["reasons"]),
        "primary_metric": config.primary_metric,
        **paired.to_dict(),
        "online": dict(online) if online is not None else None,
        "online_metric": dict(online_metric) if online_metric is not None else None,
        "interleaving": dict(interleaving) if interleaving is not None else None,
        "guardrails": [dict(g) for g in guards],
        "segments": {name: segment_lifts(a, b, labels, alpha=config.alpha,
                                         n_boot=min(config.bootstrap_samples, 1000), seed=seed)
                     for name, labels in (segments or {}).items()},
    }
    return _plain(summary)


def _arm_test_text(test: ArmTest, level: str) -> str:
    """The between-arm comparison in one sentence, with the CUPED interval and how much narrower it is."""
    text = (f"between arms (each user sees one model) {test['metric']} {test['mean_champion']:.4f} -> "
            f"{test['mean_challenger']:.4f} ({test['delta']:+.4f}, {level} CI {test['ci_low']:+.4f} to "
            f"{test['ci_high']:+.4f})")
    if test["covariate"] is None or not math.isfinite(test["ci_width_ratio"]):
        return text
    return (f"{text}; with CUPED on the {test['covariate']} (correlation {test['correlation']:.2f}) "
            f"{test['delta_cuped']:+.4f}, {level} CI {test['ci_low_cuped']:+.4f} to {test['ci_high_cuped']:+.4f}: "
            f"{test['ci_width_ratio']:.2f}x the width, variance x {test['variance_ratio']:.2f}")


def _p(value: float) -> str:
    """A p-value in words; one that underflowed to 0 is a bound, not an exact 0."""
    return "< 1e-300" if value == 0 else f"{value:.3g}"


def _plain(value: Any) -> Any:
    """Recursively turn numpy scalars and arrays into Python types; non-finite floats become None."""
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_plain(item) for item in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value
