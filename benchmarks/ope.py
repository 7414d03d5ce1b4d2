"""Coverage study of the off-policy estimators (``recops.evaluation.ope``) on a replay whose truth is known.

    .venv/bin/python -m benchmarks.ope [--replays 500] [--requests 3000] [--epsilon 0.5] [--items 12]

The setting of ``tests/unit/test_ope.py``'s replay, with more repetitions: a position-based click model
(``make_click_simulator``: latent users and items, examination ``1/log2(position + 2)``), a noisy champion ranker,
a better challenger ranker and uniformly random slates. Each replay logs ``--requests`` requests from the
``epsilon``-uniform logging policy around the champion (``epsilon_uniform_slates``: exact propensities, support
everywhere), and every estimator evaluates the three targets against their exact values. A biased, noisy reward
model feeds DR and DM. Prints a Markdown table: per policy and estimator, the share of replays whose 95 %
interval covers the truth (bootstrap percentile, and the normal interval ``estimate +- 1.96 se`` for comparison),
the bias and RMSE of the point estimates, the mean interval width and the mean ESS; then how often each
estimator ranks challenger > champion > random.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy import stats

from recops.evaluation import ope

POLICIES = ("champion", "challenger", "random")
ESTIMATORS = ("ips", "snips", "dr", "dm")


def run(replays: int, requests: int, epsilon: float, n_items: int, k: int, n_users: int, n_bootstrap: int,
        confidence: float) -> dict[str, object]:
    """Every replay's estimates; returns the truths and ``(replay, policy, estimator)`` arrays of results."""
    simulator = ope.make_click_simulator(n_users, n_items, k, seed=0)
    rng = np.random.default_rng(1)
    logits = np.log(simulator.attraction / (1 - simulator.attraction))
    champion = np.argsort(-(logits + rng.normal(0, 3.0, logits.shape)), axis=1)[:, :k]
    challenger = np.argsort(-(logits + rng.normal(0, 0.3, logits.shape)), axis=1)[:, :k]
    truth = np.array([simulator.slates_value(champion), simulator.slates_value(challenger),
                      simulator.uniform_value()])
    qhat = 1 / (1 + np.exp(-(logits + rng.normal(0.3, 0.7, logits.shape))))[:, :, None] * simulator.examination
    shape = (replays, len(POLICIES), len(ESTIMATORS))
    estimate, low, high, se, ess = (np.empty(shape) for _ in range(5))
    positions = np.arange(k)[None, :]
    for replay in range(replays):
        r = np.random.default_rng(100 + replay)
        users = r.integers(0, n_users, requests)
        slates, mu = ope.epsilon_uniform_slates(champion[users], n_items, epsilon, r)
        clicks = simulator.clicks(users, slates, r)
        reward_hat_logged = qhat[users[:, None], slates, positions]
        for p, policy in enumerate(POLICIES):
            if policy == "random":
                pi = np.full(slates.shape, 1.0 / n_items)
                reward_hat_target = qhat[users].mean(axis=1)
            else:
                target = (champion if policy == "champion" else challenger)[users]
                pi = (slates == target).astype(float)
                reward_hat_target = qhat[users[:, None], target, positions]
            log = ope.SlateLog(clicks, mu, pi, reward_hat_logged, reward_hat_target)
            results = ope.evaluate(log, ESTIMATORS, n_bootstrap=n_bootstrap, seed=replay, confidence=confidence)
            for e, name in enumerate(ESTIMATORS):
                res = results[name]
                estimate[replay, p, e], low[replay, p, e], high[replay, p, e] = res.estimate, res.ci_low, res.ci_high
                se[replay, p, e], ess[replay, p, e] = res.std_error, res.ess
    return {"truth": truth, "estimate": estimate, "low": low, "high": high, "se": se, "ess": ess}


def report(result: dict[str, np.ndarray], confidence: float) -> str:
    truth, estimate, se = result["truth"], result["estimate"], result["se"]
    z = stats.norm.ppf(0.5 + confidence / 2)
    truth_b = truth[None, :, None]
    percentile = (result["low"] <= truth_b) & (truth_b <= result["high"])
    normal = np.abs(estimate - truth_b) <= z * se
    replays = estimate.shape[0]
    lines = ["| policy (truth) | estimator | covered, percentile | covered, normal | bias | RMSE | mean CI width "
             "| mean ESS |", "|---|---|---|---|---|---|---|---|"]
    for p, policy in enumerate(POLICIES):
        for e, name in enumerate(ESTIMATORS):
            error = estimate[:, p, e] - truth[p]
            lines.append(
                f"| {policy} ({truth[p]:.3f}) | {name} | {percentile[:, p, e].sum()}/{replays} "
                f"| {normal[:, p, e].sum()}/{replays} | {error.mean():+.4f} | {np.sqrt(np.mean(error ** 2)):.4f} "
                f"| {np.mean(result['high'][:, p, e] - result['low'][:, p, e]):.3f} "
                f"| {result['ess'][:, p, e].mean():.0f} |")
    ranked = (estimate[:, 1] > estimate[:, 0]) & (estimate[:, 0] > estimate[:, 2])
    lines.append("")
    lines.append("ranked challenger > champion > random: " + ", ".join(
        f"{name} {ranked[:, e].sum()}/{replays}" for e, name in enumerate(ESTIMATORS)))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replays", type=int, default=500)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--epsilon", type=float, default=0.5)
    parser.add_argument("--items", type=int, default=12)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--users", type=int, default=300)
    parser.add_argument("--bootstrap", type=int, default=500)
    parser.add_argument("--confidence", type=float, default=0.95)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    result = run(args.replays, args.requests, args.epsilon, args.items, args.k, args.users, args.bootstrap,
                 args.confidence)
    print(report(result, args.confidence))
    print(f"\n{args.replays} replays x {args.requests} requests, epsilon {args.epsilon}, {args.items} items, "
          f"k {args.k}, {args.bootstrap} bootstrap resamples: {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
