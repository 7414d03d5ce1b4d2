"""The first model's quality gates: absolute conditions on its metrics that stand in for the A/B test it cannot
have (there is no champion to compare it with). :func:`recops.registry.promotion.promote` applies them."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from recops.errors import RecopsError
from recops.registry.mlflow_registry import mlflow_metric_key


class FirstModelGates(BaseModel):
    """Absolute quality gates for the first model, which has no champion to be A/B-tested against.

    Metric keys are ``<fold>.<model>.<metric>`` as in ``reports/metrics.json``. With the defaults the gate is
    "``test.ranker.ndcg@10`` beats ``test.popularity.ndcg@10`` by at least 5% (relative)". ``fold: timeline``
    judges on the rolling-timeline backtest instead (pooled over its windows; the register stage runs it, or reuses
    the report of the same configuration and data, and logs ``timeline.<model>.<metric>`` on the version's run),
    with every backtest peer available as a baseline (``recent_popularity``, ``decayed_popularity``, ``ease``, ...);
    ``min_ci_low_over`` then also asks the lower bound of the paired bootstrap interval of the lift over a peer
    (percent) to reach a value, e.g. ``{recent_popularity: 0}``: better than trending-now with confidence.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    metric: str = "ndcg@10"
    fold: str = "test"
    model: str = "ranker"
    min_value: float | None = None  # absolute floor of <fold>.<model>.<metric>
    # baseline model -> relative margin the model must beat it by (0.05: at least 5% above, and strictly above)
    min_lift_over: dict[str, float] = Field(default_factory=lambda: {"popularity": 0.05})
    # fold timeline only: peer -> the least lower bound (percent) of the paired bootstrap interval of the lift
    min_ci_low_over: dict[str, float] = Field(default_factory=dict)

    def key(self, model: str) -> str:
        return f"{self.fold}.{model}.{self.metric}"


DEFAULT_FIRST_MODEL_GATES: dict[str, Any] = FirstModelGates().model_dump()


def first_model_gates(metrics: Mapping[str, float], gates: Mapping[str, Any] | None = None) -> list[str]:
    """Check a model's metrics against the first-model quality gates; return the failed gates (empty: passed).

    Args:
        metrics: metric key -> value, keyed by recops keys (``test.ranker.ndcg@10``) or by the keys they were
            logged to MLflow under (``test.ranker.ndcg_at_10``).
        gates: the fields of :class:`FirstModelGates` (``metric``, ``fold``, ``model``, ``min_value``,
            ``min_lift_over``); missing fields take their defaults, None means all defaults.

    Returns:
        One message per failed gate, naming the metric, its value and what was required. A missing or non-finite
        metric is a failed gate, not an error.

    Raises:
        RecopsError: ``gates`` has an unknown key or a value of the wrong type.
    """
    config = parse_gates(gates)
    failures: list[str] = []
    key = config.key(config.model)
    value = metric_value(metrics, key)
    if value is None:
        return [f"{key} is missing from the model's metrics or not a finite number"]
    if config.min_value is not None and not value >= config.min_value:
        failures.append(f"{key} = {value:.4f} is below the required minimum {config.min_value:.4f}")
    for baseline, floor in config.min_ci_low_over.items():
        low_key = f"{config.fold}.lift_low_pct.{baseline}.{config.metric}"
        low = metric_value(metrics, low_key)
        if low is None:
            failures.append(f"{low_key} is missing from the model's metrics (min_ci_low_over needs fold: timeline)")
        elif not low >= floor:
            failures.append(f"the lower bound of the lift of {key} over {baseline} is {low:+.1f}% ({low_key}), "
                            f"below the required {floor:+.1f}%")
    for baseline, margin in config.min_lift_over.items():
        baseline_key = config.key(baseline)
        reference = metric_value(metrics, baseline_key)
        if reference is None:
            failures.append(f"{baseline_key} is missing from the model's metrics or not a finite number")
            continue
        required = reference * (1 + margin)
        if not (value > reference and value >= required):
            lift = f"{value / reference - 1:+.1%}" if reference > 0 else "n/a"
            failures.append(
                f"{key} = {value:.4f} does not beat {baseline_key} = {reference:.4f} by {margin:.1%} "
                f"(needs >= {required:.4f}; lift {lift})"
            )
    return failures


def parse_gates(gates: Mapping[str, Any] | None) -> FirstModelGates:
    """``gates`` as a validated :class:`FirstModelGates`; a bad key or value raises RecopsError naming it."""
    try:
        return FirstModelGates.model_validate(dict(gates or {}))
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(gates)'}: {e['msg']}" for e in exc.errors())
        raise RecopsError(f"invalid first-model quality gates: {problems}") from None


def metric_value(metrics: Mapping[str, Any], key: str) -> float | None:
    for candidate in (key, mlflow_metric_key(key)):
        if candidate in metrics:
            try:
                value = float(metrics[candidate])
            except (TypeError, ValueError):
                return None
            return value if math.isfinite(value) else None
    return None
