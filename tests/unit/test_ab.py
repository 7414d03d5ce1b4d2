"""A/B evaluation statistics on synthetic data whose right answer is known."""

from __future__ import annotations

import json
import math
import stat

import numpy as np
import pytest
import scipy.sparse as sp

from recops.config import ABConfig, GuardrailsConfig
from recops.errors import RecopsError
from recops.evaluation import ab
from recops.evaluation.ab_report import write_html_report
from recops.evaluation.metrics import RANKING_METRICS, ranking_metrics

N_ITEMS = 50
GOOD_METRICS = {"coverage@10": 0.40, "novelty@10": 6.0}


def truth_of(items_per_user: list[np.ndarray], n_items: int = N_ITEMS) -> sp.csr_matrix:
    rows = np.repeat(np.arange(len(items_per_user)), [len(i) for i in items_per_user])
    cols = np.concatenate(items_per_user)
    return sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(items_per_user), n_items))


def one_relevant_item(n_users: int, seed: int = 0) -> tuple[np.ndarray, sp.csr_matrix]:
    """Each user's single held-out item, and the truth matrix holding it."""
    relevant = np.random.default_rng(seed).integers(0, N_ITEMS, n_users)
    return relevant, truth_of([np.array([i]) for i in relevant])


def list_with_item_at(relevant: np.ndarray, position: np.ndarray, k: int = 10) -> np.ndarray:
    """Top-k lists of distinct items with each user's relevant item at ``position`` (0-based; -1: absent)."""
    filler = (relevant[:, None] + 1 + np.arange(k)) % N_ITEMS  # never the relevant item
    lists = filler.copy()
    placed = position >= 0
    lists[placed, position[placed]] = relevant[placed]
    return lists


def run_paired(lists_a: np.ndarray, lists_b: np.ndarray, truth: sp.csr_matrix, config: ABConfig,
               seed: int = 0) -> tuple[ab.PairedTest, np.ndarray, np.ndarray]:
    users = np.arange(truth.shape[0])
    a = ab.per_user_metric(users, lists_a, truth, config.primary_metric)
    b = ab.per_user_metric(users, lists_b, truth, config.primary_metric)
    test = ab.paired_test(a, b, alpha=config.alpha, power=config.power, n_boot=config.bootstrap_samples,
                          seed=seed, min_lift=config.min_lift)
    return test, a, b


def passing_guards(config: ABConfig) -> list[ab.Guardrail]:
    return ab.guardrails(GOOD_METRICS, GOOD_METRICS, 1.0, config.guardrails)


# ------------------------------------------------------------------------------------------- per-user metric
@pytest.mark.parametrize("name", RANKING_METRICS)
@pytest.mark.parametrize("k", [3, 12])  # 12 is longer than the lists: missing slots count as misses
def test_mean_of_per_user_values_equals_ranking_metrics(name, k):
    rng = np.random.default_rng(7)
    n_users = 300
    truth = truth_of([rng.choice(N_ITEMS, size=rng.integers(1, 8), replace=False) for _ in range(n_users)])
    lists = np.argsort(rng.random((n_users, N_ITEMS)), axis=1)[:, :8]
    lists[rng.random(lists.shape) < 0.1] = -1
    users = np.arange(n_users)
    values = ab.per_user_metric(users, lists, truth, f"{name}@{k}")
    assert values.shape == (n_users,) and np.isfinite(values).all()
    assert values.mean() == pytest.approx(ranking_metrics(users, lists, truth, [k])[f"{name}@{k}"], rel=1e-12)


def test_per_user_metric_refuses_users_without_relevant_items():
    truth = truth_of([np.array([1]), np.array([], dtype=int)])
    users = np.array([0, 1])
    with pytest.raises(ValueError, match="relevant_users_mask"):
        ab.per_user_metric(users, np.array([[1, 2], [1, 2]]), truth, "ndcg@2")
    assert ab.relevant_users_mask(users, truth).tolist() == [True, False]


def test_unknown_metric_name_says_which_names_exist():
    with pytest.raises(RecopsError, match="ndcg@10"):
        ab.parse_metric("auc@10")


# ------------------------------------------------------------------------------------ paired test and decision
def test_challenger_better_on_a_known_share_of_users_has_interval_above_zero_and_ships():
    config = ABConfig(bootstrap_samples=500)
    relevant, truth = one_relevant_item(2000)
    improved = np.random.default_rng(1).random(len(relevant)) < 0.3
    champion = list_with_item_at(relevant, np.full(len(relevant), 4))          # hit at rank 5 for everyone
    challenger = list_with_item_at(relevant, np.where(improved, 0, 4))        # rank 1 for the improved share
    paired, _, _ = run_paired(champion, challenger, truth, config)

    gain = 1.0 - 1.0 / math.log2(6)  # ndcg of a single hit at rank 1 minus at rank 5
    assert paired.delta == pytest.approx(improved.mean() * gain)
    assert paired.lift == pytest.approx(improved.mean() * gain * math.log2(6))
    assert 0 < paired.ci_low < paired.delta < paired.ci_high
    assert paired.p_value < 1e-10
    verdict = ab.decide(paired, None, None, passing_guards(config), config)
    assert verdict["decision"] == "ship", verdict["reasons"]
    assert not any(r.startswith("against") for r in verdict["reasons"])


def test_with_timeline_evidence_a_split_win_ships_only_if_the_timeline_agrees():
    config = ABConfig(bootstrap_samples=300)
    relevant, truth = one_relevant_item(1000)
    better = list_with_item_at(relevant, np.zeros(len(relevant), dtype=int))
    worse = list_with_item_at(relevant, np.full(len(relevant), 4))
    split_win, _, _ = run_paired(worse, better, truth, config)
    timeline_loss, _, _ = run_paired(better, worse, truth, config)
    timeline_tie, _, _ = run_paired(worse, worse, truth, config)
    guards = passing_guards(config)
    assert ab.decide(split_win, None, None, guards, config, timeline=split_win)["decision"] == "ship"
    for timeline, says in ((timeline_loss, "worse on the timeline"), (timeline_tie, "includes 0")):
        verdict = ab.decide(split_win, None, None, guards, config, timeline=timeline)
        assert verdict["decision"] == "hold"
        assert any(r.startswith("against: on the rolling timeline") and says in r for r in verdict["reasons"])


def test_identical_models_have_zero_delta_and_are_held():
    config = ABConfig(bootstrap_samples=200)
    relevant, truth = one_relevant_item(500)
    lists = list_with_item_at(relevant, np.random.default_rng(2).integers(-1, 10, len(relevant)))
    paired, _, _ = run_paired(lists, lists, truth, config)
    assert (paired.delta, paired.ci_low, paired.ci_high, paired.lift) == (0.0, 0.0, 0.0, 0.0)
    assert paired.p_value == 1.0 and paired.wilcoxon_p_value == 1.0
    verdict = ab.decide(paired, None, None, passing_guards(config), config)
    assert verdict["decision"] == "hold"
    assert any(r.startswith("against") and "includes 0" in r for r in verdict["reasons"])


def test_a_small_uncertain_gain_is_held_because_its_interval_includes_zero():
    config = ABConfig(bootstrap_samples=500)
    rng = np.random.default_rng(15)
    a = rng.random(100)
    b = a + rng.normal(0.0, 0.2, 100)
    b += 0.005 - (b - a).mean()  # a real but tiny mean gain, far below what 100 users can detect
    paired = ab.paired_test(a, b, alpha=config.alpha, n_boot=config.bootstrap_samples, min_lift=config.min_lift)
    assert paired.ci_low < 0 < paired.ci_high and paired.mde > 0.005
    verdict = ab.decide(paired, None, None, passing_guards(config), config)
    assert verdict["decision"] == "hold"
    assert any(r.startswith("against") and "includes 0" in r for r in verdict["reasons"])
    assert any(r.startswith("note: with 100 users the minimum detectable effect") for r in verdict["reasons"])


def test_worse_challenger_is_held_and_the_reason_says_it_is_worse():
    config = ABConfig(bootstrap_samples=200)
    relevant, truth = one_relevant_item(1000)
    worse = np.random.default_rng(3).random(len(relevant)) < 0.4
    champion = list_with_item_at(relevant, np.zeros(len(relevant), dtype=int))
    challenger = list_with_item_at(relevant, np.where(worse, -1, 0))
    paired, _, _ = run_paired(champion, challenger, truth, config)
    assert paired.ci_high < 0
    verdict = ab.decide(paired, None, None, passing_guards(config), config)
    assert verdict["decision"] == "hold"
    assert any(r.startswith("against") and "worse" in r for r in verdict["reasons"])
    assert any(r.startswith("against: relative lift") for r in verdict["reasons"])


def test_lift_below_min_lift_holds_even_when_significant():
    config = ABConfig(bootstrap_samples=200, min_lift=0.5)
    relevant, truth = one_relevant_item(2000)
    improved = np.random.default_rng(4).random(len(relevant)) < 0.2
    champion = list_with_item_at(relevant, np.full(len(relevant), 1))
    challenger = list_with_item_at(relevant, np.where(improved, 0, 1))  # about +7% ndcg
    paired, _, _ = run_paired(champion, challenger, truth, config)
    assert paired.ci_low > 0 and paired.lift < 0.5
    verdict = ab.decide(paired, None, None, passing_guards(config), config)
    assert verdict["decision"] == "hold"
    assert any(r.startswith("against: relative lift") and "50.00%" in r for r in verdict["reasons"])


def test_bootstrap_interval_covers_the_true_mean_delta_at_its_nominal_rate():
    rng = np.random.default_rng(5)
    true_delta, covered, runs = 0.05, 0, 200
    for run in range(runs):
        a = rng.random(150)
        b = a + true_delta + rng.exponential(0.2, 150) - 0.2  # skewed per-user differences, mean true_delta
        test = ab.paired_test(a, b, alpha=0.05, n_boot=400, seed=run)
        covered += test.ci_low <= true_delta <= test.ci_high
    assert 0.89 <= covered / runs <= 0.99


def test_minimum_detectable_effect_follows_the_normal_approximation():
    rng = np.random.default_rng(6)
    a = rng.random(400)
    b = a + rng.normal(0.0, 0.3, 400)
    test = ab.paired_test(a, b, alpha=0.05, power=0.8, n_boot=100, min_lift=0.1)
    sd = np.std(b - a, ddof=1)
    assert test.mde == pytest.approx((1.959964 + 0.841621) * sd / 20.0, rel=1e-5)
    assert test.mde_relative == pytest.approx(test.mde / a.mean())
    assert test.n_users_for_min_lift == math.ceil(((1.959964 + 0.841621) * sd / (0.1 * a.mean())) ** 2)


def test_bootstrap_chunking_does_not_change_the_interval(monkeypatch):
    rng = np.random.default_rng(8)
    a, b = rng.random(1000), rng.random(1000)
    whole = ab.paired_test(a, b, n_boot=300, seed=1)
    monkeypatch.setattr(ab, "_BOOTSTRAP_CELLS", 7000)  # 7 resamples per chunk
    chunked = ab.paired_test(a, b, n_boot=300, seed=1)
    assert (chunked.ci_low, chunked.ci_high, chunked.lift_ci_low) == (whole.ci_low, whole.ci_high, whole.lift_ci_low)


def test_decide_refuses_a_paired_test_run_with_other_settings():
    paired = ab.paired_test(np.array([0.1, 0.2, 0.3]), np.array([0.2, 0.2, 0.4]), n_boot=100, alpha=0.1)
    with pytest.raises(ValueError, match="alpha"):
        ab.decide(paired, None, None, [], ABConfig(alpha=0.05))


# -------------------------------------------------------------------------------------------- arm assignment
def test_arm_assignment_is_pinned_for_known_ids():
    # A user must keep their arm across runs, processes and releases: these values may never change.
    arms = ab.assign_arms([f"user-{i}" for i in range(16)], "recops-ab", 0.5)
    assert arms.dtype == np.int8
    assert "".join(map(str, arms)) == "0100100011110110"
    assert "".join(map(str, ab.assign_arms(np.arange(16), "recops-ab", 0.5))) == "0100100110010101"


def test_int_and_str_forms_of_an_id_share_an_arm():
    ids = np.arange(1000)
    assert np.array_equal(ab.assign_arms(ids, "s", 0.5), ab.assign_arms(ids.astype(str), "s", 0.5))


def test_a_new_salt_reassigns_about_half_of_the_users():
    ids = np.arange(20_000)
    same = np.mean(ab.assign_arms(ids, "salt-1", 0.5) == ab.assign_arms(ids, "salt-2", 0.5))
    assert 0.48 < same < 0.52


def test_arm_share_matches_the_split_on_100k_ids_without_sample_ratio_mismatch():
    ids = np.array([f"u{i}" for i in range(100_000)])
    arms = ab.assign_arms(ids, "recops-ab", 0.3)
    assert abs(arms.mean() - 0.3) < 4 * math.sqrt(0.3 * 0.7 / len(ids))
    empty = np.full((len(ids), 1), -1)
    online = ab.simulated_online_test(arms, empty, empty, np.zeros(len(ids), dtype=int),
                                      sp.csr_matrix((1, N_ITEMS)), k=1, expected_split=0.3)
    assert not online["srm"]


def test_skewed_arm_counts_trigger_sample_ratio_mismatch():
    arms = np.r_[np.zeros(5300), np.ones(4700)].astype(np.int8)  # 47% challengers where 50% were expected
    relevant, truth = one_relevant_item(len(arms))
    lists = list_with_item_at(relevant, np.zeros(len(arms), dtype=int))
    online = ab.simulated_online_test(arms, lists, lists, np.arange(len(arms)), truth, k=10,
                                      expected_split=0.5, srm_p_value=0.001)
    assert online["srm"] and online["srm_p_value"] < 1e-6
    config = ABConfig(bootstrap_samples=100)
    paired, _, _ = run_paired(lists, lists, truth, config)
    assert any(r.startswith("against: arm sizes 5300 / 4700") for r in
               ab.decide(paired, online, None, passing_guards(config), config)["reasons"])


# ------------------------------------------------------------------------------------- simulated online test
def test_online_test_counts_a_click_when_the_shown_top_k_holds_a_held_out_item():
    relevant, truth = one_relevant_item(4)
    lists_a = list_with_item_at(relevant, np.array([0, -1, 5, -1]))
    lists_b = list_with_item_at(relevant, np.array([-1, 1, 0, 0]))
    arms = np.array([0, 0, 1, 1], dtype=np.int8)  # users 0, 1 see A (one hit), users 2, 3 see B (two hits)
    online = ab.simulated_online_test(arms, lists_a, lists_b, np.arange(4), truth, k=3)
    assert online["champion"] == {"n": 2, "clicks": 1, "ctr": 0.5}
    assert online["challenger"] == {"n": 2, "clicks": 2, "ctr": 1.0}
    assert online["ctr_diff"] == pytest.approx(0.5)
    z = 0.5 / math.sqrt(0.75 * 0.25 * (1 / 2 + 1 / 2))  # pooled CTR 3/4
    assert online["z"] == pytest.approx(z)
    half_width = 1.959964 * math.sqrt(0.25 / 2)  # unpooled: only the champion arm has variance
    assert online["ctr_diff_ci_low"] == pytest.approx(0.5 - half_width, rel=1e-5)


def test_better_challenger_has_higher_online_ctr_with_significant_z_test():
    relevant, truth = one_relevant_item(4000)
    rng = np.random.default_rng(9)
    lists_a = list_with_item_at(relevant, np.where(rng.random(4000) < 0.2, 0, -1))
    lists_b = list_with_item_at(relevant, np.where(rng.random(4000) < 0.4, 0, -1))
    arms = ab.assign_arms(np.arange(4000), "recops-ab", 0.5)
    online = ab.simulated_online_test(arms, lists_a, lists_b, np.arange(4000), truth, k=10)
    assert online["ctr_diff_ci_low"] > 0 and online["p_value"] < 1e-10
    assert online["ctr_lift_ci_low"] < online["ctr_lift"] < online["ctr_lift_ci_high"]


# ------------------------------------------------------------------------------------------------------- CUPED
def correlated_pair(n: int, rho: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(y, x): standard normal outcome and covariate with correlation ``rho``; x on another scale and offset."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n)
    y = rho * x + math.sqrt(1 - rho**2) * rng.standard_normal(n)
    return y, 3.0 * x + 10.0


def arm_experiment(n: int, effect: float, rho: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(y, arms, x) of a randomised test: outcome = user baseline + noise (+ effect in arm 1); corr(x, y) = rho."""
    base, x = correlated_pair(n, rho, seed)
    arms = (np.random.default_rng(seed + 10_000).random(n) < 0.5).astype(np.int8)
    return base + effect * arms, arms, x


@pytest.mark.parametrize("rho", [0.3, 0.6, 0.9, -0.6])
def test_cuped_variance_ratio_is_one_minus_rho_squared(rho):
    y, x = correlated_pair(50_000, rho, seed=1)
    result = ab.cuped(y, x)
    assert result.correlation == pytest.approx(rho, abs=0.01)
    assert result.variance_ratio == pytest.approx(1 - rho**2, abs=0.01)
    assert result.theta == pytest.approx(rho / 3.0, abs=0.01)  # x is 3 times the unit scale
    assert result.adjusted.var() / y.var() == pytest.approx(result.variance_ratio)


def test_cuped_keeps_the_mean_of_the_outcome():
    y, x = correlated_pair(1000, 0.7, seed=2)
    assert ab.cuped(y, x).adjusted.mean() == pytest.approx(y.mean(), abs=1e-12)


def test_cuped_difference_between_arms_is_unbiased_over_randomisations():
    effect, deltas, plain = 0.1, [], []
    for seed in range(300):  # a loop over simulated experiments, each vectorised over its users
        y, arms, x = arm_experiment(2000, effect, rho=0.8, seed=seed)
        test = ab.arm_test(y, arms, x, metric="m")
        deltas.append(test["delta_cuped"])
        plain.append(test["delta"])
    deltas_arr = np.array(deltas)
    # 300 draws: the mean lies within 4 standard errors of the effect, and the spread shrinks as 1 - rho^2 says
    assert abs(deltas_arr.mean() - effect) < 4 * deltas_arr.std() / math.sqrt(len(deltas_arr))
    assert deltas_arr.std() / np.std(plain) == pytest.approx(math.sqrt(1 - 0.8**2), abs=0.1)


def test_cuped_interval_covers_the_effect_at_its_nominal_rate():
    effect = 0.1
    tests = [ab.arm_test(*arm_experiment(1000, effect, 0.8, seed), metric="m") for seed in range(400)]
    rate = np.mean([t["ci_low_cuped"] <= effect <= t["ci_high_cuped"] for t in tests])
    assert 0.92 <= rate <= 0.98  # 95% nominal; the binomial sd over 400 experiments is 0.011


def test_cuped_with_an_independent_covariate_reduces_nothing():
    y, arms, _ = arm_experiment(20_000, 0.1, rho=0.5, seed=3)
    noise = np.random.default_rng(4).standard_normal(len(y))
    test = ab.arm_test(y, arms, noise, metric="m")
    assert abs(test["correlation"]) < 0.03
    assert test["variance_ratio"] == pytest.approx(1.0, abs=1e-3)
    assert test["ci_width_ratio"] == pytest.approx(1.0, abs=2e-3)
    assert test["delta_cuped"] == pytest.approx(test["delta"], abs=0.01)


def test_arm_test_with_an_informative_covariate_has_a_narrower_interval():
    y, arms, x = arm_experiment(5000, 0.1, rho=0.7, seed=5)
    test = ab.arm_test(y, arms, x, metric="ndcg@10", covariate_name="pre-period interactions")
    assert test["ci_width_ratio"] == pytest.approx(math.sqrt(1 - 0.7**2), abs=0.03)
    assert test["ci_high_cuped"] - test["ci_low_cuped"] < test["ci_high"] - test["ci_low"]
    assert test["ci_low_cuped"] < test["delta_cuped"] < test["ci_high_cuped"]
    assert test["covariate"] == "pre-period interactions" and test["n_imputed"] == 0


def test_arm_test_without_a_covariate_reports_only_the_unadjusted_interval():
    y, arms, _ = arm_experiment(1000, 0.1, rho=0.7, seed=6)
    test = ab.arm_test(y, arms, metric="m")
    assert test["covariate"] is None and math.isnan(test["ci_width_ratio"]) and math.isnan(test["ci_low_cuped"])
    se = math.sqrt(y[arms == 0].var(ddof=1) / (arms == 0).sum() + y[arms == 1].var(ddof=1) / (arms == 1).sum())
    assert test["ci_high"] - test["ci_low"] == pytest.approx(2 * 1.959964 * se, rel=1e-5)


@pytest.mark.parametrize("covariate", [np.full(100, 4.2), np.full(100, np.nan), np.r_[1.0, np.full(99, np.nan)]],
                         ids=["constant", "all missing", "one known value"])
def test_a_covariate_that_explains_nothing_leaves_the_outcomes_as_they_are(covariate):
    y = np.random.default_rng(7).random(100)
    result = ab.cuped(y, covariate)
    assert result.theta == 0.0 and result.variance_ratio == 1.0
    np.testing.assert_array_equal(result.adjusted, y)


def test_users_without_a_covariate_get_the_mean_and_keep_their_outcome():
    y, x = correlated_pair(2000, 0.8, seed=8)
    missing = np.random.default_rng(9).random(2000) < 0.2
    result = ab.cuped(y, np.where(missing, np.nan, x))
    assert result.n_imputed == int(missing.sum())
    np.testing.assert_allclose(result.adjusted[missing], y[missing], atol=1e-12)  # the mean: no adjustment
    assert ab.cuped(y, np.where(missing, x[~missing].mean(), x)).theta == pytest.approx(result.theta)
    assert result.variance_ratio < 0.6  # the 80% with a covariate still reduce the variance


def test_cuped_on_a_constant_outcome_reduces_nothing_and_stays_finite():
    result = ab.cuped(np.zeros(50), np.arange(50.0))
    assert result.variance_ratio == 1.0 and result.theta == 0.0
    np.testing.assert_array_equal(result.adjusted, np.zeros(50))


def test_cuped_refuses_mismatched_or_non_finite_outcomes():
    with pytest.raises(ValueError, match="same users"):
        ab.cuped(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="finite"):
        ab.cuped(np.array([0.0, np.nan]), np.zeros(2))


def test_cuped_cannot_narrow_a_paired_difference_whose_users_are_in_both_arms():
    # the adjustment subtracts theta * (x - mean x), which sums to 0 over the users: the paired mean difference,
    # computed on every user, is unchanged, so its sampling variance is too (why paired_test has no CUPED)
    y, x = correlated_pair(500, 0.8, seed=10)
    assert ab.cuped(y, x).adjusted.mean() == pytest.approx(y.mean(), abs=1e-12)


def test_simulated_online_test_adds_a_cuped_ctr_interval_only_with_a_covariate():
    relevant, truth = one_relevant_item(4000)
    rng = np.random.default_rng(11)
    skill = rng.random(4000)  # a user's pre-period activity: active users find their item more often
    lists_a = list_with_item_at(relevant, np.where(rng.random(4000) < 0.5 * skill, 0, -1))
    lists_b = list_with_item_at(relevant, np.where(rng.random(4000) < 0.6 * skill, 0, -1))
    arms = ab.assign_arms(np.arange(4000), "recops-ab", 0.5)
    users = np.arange(4000)
    plain = ab.simulated_online_test(arms, lists_a, lists_b, users, truth, k=10)
    adjusted = ab.simulated_online_test(arms, lists_a, lists_b, users, truth, k=10, covariate=skill)
    assert math.isnan(plain["ctr_ci_width_ratio"]) and math.isnan(plain["ctr_diff_ci_low_cuped"])
    assert adjusted["ctr_ci_width_ratio"] < 0.97
    assert adjusted["ctr_diff_ci_low_cuped"] < adjusted["ctr_diff_cuped"] < adjusted["ctr_diff_ci_high_cuped"]
    assert {k: v for k, v in adjusted.items() if "cuped" not in k and k != "ctr_ci_width_ratio"} == \
        {k: v for k, v in plain.items() if "cuped" not in k and k != "ctr_ci_width_ratio"}


# ------------------------------------------------------------------------------------------------ interleaving
def test_team_draft_takes_from_both_lists_without_duplicates_and_balanced_teams():
    rng = np.random.default_rng(10)
    n, k = 600, 10
    lists_a = np.argsort(rng.random((n, 25)), axis=1)[:, :15]  # small catalogue: the lists overlap a lot
    lists_b = np.argsort(rng.random((n, 25)), axis=1)[:, :15]
    items, team = ab.team_draft_interleave(lists_a, lists_b, k, seed=0)
    assert items.shape == team.shape == (n, k) and (items >= 0).all()
    ordered = np.sort(items, axis=1)
    assert (np.diff(ordered, axis=1) > 0).all()  # no duplicates in any row
    picked_a = np.cumsum(team == 0, axis=1)
    assert (np.abs(2 * picked_a - np.arange(1, k + 1)) <= 1).all()  # teams differ by at most 1 at every depth
    in_a = (items[:, :, None] == lists_a[:, None, :]).any(axis=2)
    in_b = (items[:, :, None] == lists_b[:, None, :]).any(axis=2)
    assert in_a[team == 0].all() and in_b[team == 1].all()
    first_two = items[:, :2]
    assert (first_two == lists_a[:, :1]).any(axis=1).all() and (first_two == lists_b[:, :1]).any(axis=1).all()


def test_team_draft_picks_each_teams_items_in_its_own_rank_order():
    rng = np.random.default_rng(11)
    lists_a = np.argsort(rng.random((300, 30)), axis=1)[:, :10]
    lists_b = np.argsort(rng.random((300, 30)), axis=1)[:, :10]
    items, team = ab.team_draft_interleave(lists_a, lists_b, 10, seed=1)
    rank_in_a = np.argmax(items[:, :, None] == lists_a[:, None, :], axis=2)
    for row in range(0, 300, 37):  # spot rows: the a-team's picks come in a's order
        ranks = rank_in_a[row][team[row] == 0]
        assert (np.diff(ranks) > 0).all()


def test_team_draft_lets_the_other_team_pick_when_one_list_runs_out_and_leaves_the_rest_empty():
    lists_a = np.array([[1, -1, -1, -1], [2, 3, 4, 5], [1, 2, -1, -1]])
    lists_b = np.array([[2, 3, 4, 5], [1, -1, -1, -1], [2, 1, -1, -1]])
    items, team = ab.team_draft_interleave(lists_a, lists_b, 4, seed=5)
    assert sorted(items[0]) == [1, 2, 3, 4] and sorted(team[0]) == [0, 1, 1, 1]
    assert sorted(items[1]) == [1, 2, 3, 4] and sorted(team[1]) == [0, 0, 0, 1]
    assert sorted(items[2]) == [-1, -1, 1, 2]  # only two distinct items between both lists
    assert ((items[2] == -1) == (team[2] == -1)).all()


def test_the_coin_gives_the_first_pick_to_each_team_about_half_the_time():
    lists_a = np.tile(np.arange(10), (4000, 1))
    lists_b = lists_a + 10
    _, team = ab.team_draft_interleave(lists_a, lists_b, 4, seed=2)
    assert 0.46 < np.mean(team[:, 0] == 1) < 0.54


def test_challenger_that_lists_the_truth_wins_interleaving_significantly():
    rng = np.random.default_rng(12)
    n = 400
    truth_items = np.argsort(rng.random((n, N_ITEMS)), axis=1)[:, :10]
    truth = truth_of(list(truth_items))
    champion = np.argsort(rng.random((n, N_ITEMS)), axis=1)[:, :10]
    items, team = ab.team_draft_interleave(champion, truth_items, 10, seed=3)
    result = ab.interleaving_test(items, team, np.arange(n), truth)
    assert result["wins_challenger"] > 10 * result["wins_champion"]
    assert result["challenger_preference"] > 0.9 and result["p_value"] < 1e-20
    assert result["wins_champion"] + result["wins_challenger"] + result["ties"] == n


def test_interleaving_of_identical_lists_has_no_significant_preference():
    relevant, truth = one_relevant_item(1000)
    lists = list_with_item_at(relevant, np.random.default_rng(13).integers(0, 10, 1000))
    items, team = ab.team_draft_interleave(lists, lists, 10, seed=4)
    assert (items == lists).all()  # the same ranking, whoever picks
    assert ab.interleaving_test(items, team, np.arange(1000), truth)["p_value"] > 0.001


# --------------------------------------------------------------------------------------------------- guardrails
def test_coverage_drop_beyond_the_allowed_share_fails_the_guardrail_and_holds():
    config = ABConfig(bootstrap_samples=500)
    guards = ab.guardrails({"coverage@10": 0.40, "novelty@10": 6.0}, {"coverage@10": 0.30, "novelty@10": 6.1},
                           1.0, GuardrailsConfig(max_coverage_drop=0.10))
    coverage = next(g for g in guards if g["name"] == "coverage@10")
    assert not coverage["passed"] and coverage["limit"] == pytest.approx(0.36)
    assert "25.0%" in coverage["reason"]
    assert all(g["passed"] for g in guards if g["name"] != "coverage@10")

    relevant, truth = one_relevant_item(2000)
    champion = list_with_item_at(relevant, np.full(2000, 4))
    paired, _, _ = run_paired(champion, list_with_item_at(relevant, np.zeros(2000, dtype=int)), truth, config)
    verdict = ab.decide(paired, None, None, guards, config)
    assert verdict["decision"] == "hold"
    assert any(r.startswith("against: guardrail coverage@10") for r in verdict["reasons"])


def test_latency_above_the_ceiling_fails_and_an_unmeasured_one_is_not_checked():
    limits = GuardrailsConfig(max_p99_latency_ms=5.0)
    slow = ab.guardrails(GOOD_METRICS, GOOD_METRICS, 7.5, limits)[-1]
    assert slow["status"] == "fail" and "7.50 ms" in slow["reason"]
    unmeasured = ab.guardrails(GOOD_METRICS, GOOD_METRICS, None, limits)[-1]
    assert unmeasured["status"] == "not checked" and unmeasured["passed"]


# --------------------------------------------------------------------------------------------- summary, report
@pytest.fixture(scope="module")
def summary_inputs():
    config = ABConfig(bootstrap_samples=200)
    relevant, truth = one_relevant_item(1000)
    rng = np.random.default_rng(14)
    lists_a = list_with_item_at(relevant, np.where(rng.random(1000) < 0.5, 3, -1))
    lists_b = list_with_item_at(relevant, np.where(rng.random(1000) < 0.6, 0, -1))
    paired, a, b = run_paired(lists_a, lists_b, truth, config)
    users = np.arange(1000)
    arms = ab.assign_arms(users, config.salt, config.split)
    pre_period = a + rng.normal(0, 0.3, 1000)  # a covariate correlated with the outcome
    online = ab.simulated_online_test(arms, lists_a, lists_b, users, truth, k=config.k,
                                      expected_split=config.split, covariate=pre_period)
    online_metric = ab.arm_test(np.where(arms == ab.CHALLENGER_ARM, b, a), arms, pre_period,
                                metric=config.primary_metric, covariate_name="pre-period interactions")
    interleaving = ab.interleaving_test(*ab.team_draft_interleave(lists_a, lists_b, config.k), users, truth)
    guards = ab.guardrails(GOOD_METRICS, GOOD_METRICS, None, config.guardrails)
    verdict = ab.decide(paired, online, interleaving, guards, config, online_metric=online_metric)
    segments = {"activity": np.where(users % 3 == 0, "heavy", "light")}
    summary = ab.ab_summary(a, b, paired, verdict, config, online=online, interleaving=interleaving,
                            guards=guards, segments=segments, online_metric=online_metric)
    return summary, b - a, segments


def test_summary_is_strict_json_with_the_documented_fields(summary_inputs):
    summary, _, _ = summary_inputs
    text = json.dumps(summary, allow_nan=False)  # plain types only, no NaN
    assert json.loads(text) == summary
    for field in ("decision", "reasons", "primary_metric", "delta", "ci_low", "ci_high", "p_value", "lift",
                  "lift_ci_low", "lift_ci_high", "mde", "n_users", "online", "interleaving", "guardrails"):
        assert field in summary
    assert summary["decision"] == "ship"
    for field in ("ci_low", "ci_high", "ci_low_cuped", "ci_high_cuped", "ci_width_ratio", "variance_ratio"):
        assert isinstance(summary["online_metric"][field], float)
    assert summary["online_metric"]["ci_width_ratio"] < 1
    assert any(r.startswith("note: between arms") and "with CUPED" in r for r in summary["reasons"])
    assert set(summary["segments"]["activity"]) == {"heavy", "light"}
    assert sum(s["n"] for s in summary["segments"]["activity"].values()) == summary["n_users"]


def test_html_report_is_self_contained_and_shows_the_decision(summary_inputs, tmp_path):
    summary, delta, segments = summary_inputs
    path = write_html_report(summary, delta, segments, tmp_path / "ab" / "report.html")
    text = path.read_text(encoding="utf-8")
    assert "SHIP" in text and summary["reasons"][0].split(":")[0] in text
    assert text.count("data:image/png;base64,") >= 4  # histogram, lift, segments, CUPED intervals
    assert "CI width with CUPED / without" in text and "CUPED CI width / unadjusted CI width" in text
    assert "http://" not in text and "https://" not in text and "<script" not in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in path.parent.iterdir()] == ["report.html"]  # no temporary file left behind
