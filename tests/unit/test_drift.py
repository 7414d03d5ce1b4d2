"""Drift detection (``recops.monitoring.drift``): each method against scipy on tiny samples whose answer is known,
the missing / constant / empty edge cases, a planted shift that must be named and gated, an unshifted snapshot
that must pass in at least 95 % of seeded resamples, and the JSON and HTML outputs."""

from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from scipy.spatial import distance

from recops.columns import Columns
from recops.errors import RecopsError
from recops.monitoring.drift import (
    COLD_USER_SHARE, NEW_ITEM_SHARE, POPULARITY_GINI, TOP_ITEMS_SHARE, DriftCheck, DriftGateConfig,
    DriftInputError, DriftReport, DriftThresholds, column_drift, concentration, drift_report, gate_decision,
    recommender_drift, score_drift, table_drift,
)

# Tiny samples take the distance path only when told to: every window here is larger than 3 values.
DISTANCES = DriftThresholds(large_sample=3)

# --------------------------------------------------------------------------------------------- synthetic world
N_ITEMS, N_USERS = 400, 300
FEATURES = ["mf_score", "item_popularity", "user_activity", "item_age_days"]
SOURCES = ["mf", "ease", "knn", "pop"]


def _zipf(n: int, exponent: float, offset: float) -> np.ndarray:
    weights = 1.0 / (np.arange(n) + offset) ** exponent
    return weights / weights.sum()


ITEM_SHARES, USER_SHARES = _zipf(N_ITEMS, 1.0, 5.0), _zipf(N_USERS, 0.6, 20.0)


def interactions(rng: np.random.Generator, n: int) -> pd.DataFrame:
    """``n`` interactions of a fixed long-tailed population of users and items."""
    return pd.DataFrame({Columns.USER_ID: rng.choice(N_USERS, n, p=USER_SHARES),
                         Columns.ITEM_ID: rng.choice(N_ITEMS, n, p=ITEM_SHARES),
                         Columns.TIMESTAMP: rng.integers(1_700_000_000, 1_700_900_000, n)})


def features(rng: np.random.Generator, n: int) -> pd.DataFrame:
    """Ranker-like candidate features: four numerical ones of different shapes and the candidate source."""
    return pd.DataFrame({"mf_score": rng.normal(0.5, 0.2, n), "item_popularity": rng.lognormal(2.0, 1.0, n),
                         "user_activity": rng.gamma(2.0, 10.0, n), "item_age_days": rng.exponential(30.0, n),
                         "source": rng.choice(SOURCES, n, p=[0.4, 0.3, 0.2, 0.1])})


def with_new_block(rng: np.random.Generator, table: pd.DataFrame, share: float, n_new: int) -> pd.DataFrame:
    """``table`` with ``share`` of its interactions moved to a block of ``n_new`` items never seen before."""
    out = table.copy()
    moved = rng.random(len(out)) < share
    out.loc[moved, Columns.ITEM_ID] = N_ITEMS + rng.integers(0, n_new, int(moved.sum()))
    return out


# ------------------------------------------------------------------------------------- methods against scipy
def test_ks_is_chosen_for_a_small_numerical_column_and_matches_scipy():
    ref, cur = np.arange(10.0), np.arange(10.0) + 20.0
    check = column_drift(ref, cur, name="x")
    expected = stats.ks_2samp(ref, cur)
    assert (check.method, check.statistic) == ("ks", 1.0)  # disjoint samples: D is 1
    assert check.p_value == pytest.approx(expected.pvalue)
    assert check.drifted and check.reference_value == pytest.approx(4.5) and check.current_value == 24.5


def test_ks_does_not_call_drift_on_identical_samples():
    check = column_drift(np.arange(20.0), np.arange(20.0), name="x")
    assert check.method == "ks" and check.p_value == pytest.approx(1.0) and not check.drifted


def test_chi_squared_is_the_two_sample_test_of_homogeneity_and_names_new_values():
    ref = np.array(["a"] * 30 + ["b"] * 30 + ["c"] * 30)
    cur = np.array(["a"] * 10 + ["b"] * 10 + ["c"] * 10 + ["d"] * 60)
    check = column_drift(ref, cur, "categorical", name="genre")
    table = np.array([[30, 30, 30, 0], [10, 10, 10, 60]])
    expected = stats.chi2_contingency(table, correction=False)
    assert check.method == "chi2"
    assert check.statistic == pytest.approx(expected.statistic) and check.p_value == pytest.approx(expected.pvalue)
    assert check.drifted and "values new in current: d" in check.reason


def test_numerical_column_with_few_values_is_tested_as_categorical():
    rng = np.random.default_rng(0)
    check = column_drift(rng.integers(0, 4, 200).astype(float), rng.integers(0, 4, 200).astype(float), name="k")
    assert check.method == "chi2"


def test_z_test_of_a_binary_column_equals_the_uncorrected_two_by_two_chi_squared():
    ref = np.array([1] * 40 + [0] * 60)
    cur = np.array([1] * 60 + [0] * 40)
    check = column_drift(ref, cur, "categorical", name="clicked")
    expected = stats.chi2_contingency(np.array([[40, 60], [60, 40]]), correction=False)
    assert check.method == "z"
    assert check.statistic ** 2 == pytest.approx(expected.statistic)  # z squared is the 2 x 2 chi-squared
    assert check.p_value == pytest.approx(expected.pvalue) and check.drifted


def test_normed_wasserstein_divides_scipys_distance_by_the_reference_std():
    ref = np.arange(10.0)
    check = column_drift(ref, ref + 1.0, name="x", thresholds=DISTANCES)
    assert check.method == "wasserstein_norm" and check.p_value is None
    assert check.statistic == pytest.approx(stats.wasserstein_distance(ref, ref + 1.0) / np.std(ref))
    assert check.statistic == pytest.approx(1.0 / np.std(ref)) and check.drifted


def test_jensen_shannon_of_disjoint_categories_is_its_maximum_sqrt_ln2():
    check = column_drift(["a"] * 10, ["b"] * 10, "categorical", name="c", thresholds=DISTANCES)
    assert check.method == "jensen_shannon"
    assert check.statistic == pytest.approx(math.sqrt(math.log(2))) and check.drifted


def test_jensen_shannon_matches_scipy_on_value_shares():
    ref = ["a"] * 50 + ["b"] * 30 + ["c"] * 20
    cur = ["a"] * 40 + ["b"] * 40 + ["c"] * 20
    check = column_drift(ref, cur, "categorical", name="c", thresholds=DISTANCES)
    assert check.statistic == pytest.approx(distance.jensenshannon([0.5, 0.3, 0.2], [0.4, 0.4, 0.2]))
    assert not check.drifted  # 0.076 < 0.1


def test_distances_need_both_windows_large_so_a_small_current_window_is_tested():
    """Evidently picks a distance from the reference size alone; with 200 current rows the normed Wasserstein
    of two samples of one distribution reaches 0.1 about 30 % of the time, so recops tests instead."""
    rng = np.random.default_rng(1)
    assert column_drift(rng.normal(size=5000), rng.normal(size=200), name="x").method == "ks"
    assert column_drift(rng.normal(size=1001), rng.normal(size=1001), name="x").method == "wasserstein_norm"
    assert column_drift(rng.normal(size=1000), rng.normal(size=5000), name="x").method == "ks"


# ------------------------------------------------------------------------------------ missing, constant, empty
def test_missing_and_infinite_values_are_dropped_before_the_test_and_their_shares_reported():
    ref = np.array([0.0, 1, 2, 3, 4, 5, 6, 7, np.nan, np.inf])
    cur = np.array([0.5, 1.5, 2.5, 3.5, 4.5, 5.5, 6.5, 7.5, -np.inf, np.nan])
    check = column_drift(ref, cur, name="x")
    assert check.p_value == pytest.approx(stats.ks_2samp(ref[:8], cur[:8]).pvalue)
    assert (check.n_ref, check.n_cur) == (8, 8)
    assert (check.missing_share_ref, check.missing_share_cur) == pytest.approx((0.2, 0.2))
    assert not check.drifted


def test_a_jump_of_the_missing_share_is_drift_even_when_the_values_agree():
    rng = np.random.default_rng(0)
    cur = rng.normal(size=500)
    cur[:150] = np.nan
    check = column_drift(rng.normal(size=500), cur, name="seq_cooc_mean")
    assert check.drifted and check.p_value > 0.05
    assert "missing share 0.0% -> 30.0%" in check.reason


def test_the_same_constant_in_both_windows_is_not_drift_on_either_path():
    for limits in (DriftThresholds(), DISTANCES):
        check = column_drift(np.full(50, 3.0), np.full(40, 3.0), name="const", thresholds=limits)
        assert not check.drifted and check.statistic == 0.0, check


def test_a_constant_that_changes_value_is_drift():
    small = column_drift(np.full(50, 3.0), np.full(40, 4.0), name="const")
    large = column_drift(np.full(50, 3.0), np.full(40, 4.0), name="const", thresholds=DISTANCES)
    assert (small.method, small.drifted) == ("z", True)
    assert (large.method, large.drifted) == ("jensen_shannon", True)


@pytest.mark.parametrize("reference, current, side", [
    ([], [1.0, 2.0], "reference"),
    ([1.0, 2.0], [np.nan, np.nan], "current"),
])
def test_an_empty_or_all_missing_window_is_a_value_error_naming_the_column(reference, current, side):
    with pytest.raises(ValueError, match=rf"'item_age_days'.*{side}"):
        column_drift(np.asarray(reference, dtype=float), np.asarray(current, dtype=float), name="item_age_days")


def test_input_errors_are_the_projects_user_error_type():
    with pytest.raises(RecopsError, match="declared numerical"):
        column_drift(["a", "b"], ["a", "b"], "numerical", name="source")


def test_table_drift_names_a_column_missing_from_a_window():
    with pytest.raises(DriftInputError, match=r"\['user_activity'\].*current"):
        table_drift(pd.DataFrame({"user_activity": [1.0]}), pd.DataFrame({"other": [1.0]}))


def test_table_drift_treats_text_columns_as_categorical_and_listed_numbers_too():
    rng = np.random.default_rng(0)
    ref, cur = features(rng, 300), features(rng, 300)
    ref["bucket"], cur["bucket"] = rng.integers(0, 30, 300), rng.integers(0, 30, 300)
    checks = {c.name: c for c in table_drift(ref, cur, categorical=["bucket"])}
    assert checks["source"].method == "chi2" and checks["bucket"].method == "chi2"
    assert checks["mf_score"].method == "ks" and checks["mf_score"].group == "feature"


# ---------------------------------------------------------------------------------------- recommender checks
def test_gini_and_top_share_of_known_count_vectors():
    gini, top = concentration(np.array([[5, 5, 5, 5, 0], [10, 0, 0, 0, 0], [1, 2, 3, 4, 0]]))
    # Equal counts: 0. One item: 0 (a catalogue of one is not unequal). 1..4: mean |xi - xj| / (2 mean) = 0.25.
    assert gini == pytest.approx([0.0, 0.0, 0.25])
    assert top == pytest.approx([0.25, 1.0, 0.4])  # top 1 % of 4 items is one item


def test_the_top_7_percent_of_100_items_is_7_items_despite_floating_point():
    counts = np.r_[np.full(7, 10), np.full(1, 9), np.ones(92)]
    assert concentration(counts, top_fraction=0.07)[1][0] == pytest.approx(70 / counts.sum())


def test_new_item_share_is_compared_with_the_good_turing_missing_mass_of_the_reference():
    ref = pd.DataFrame({Columns.USER_ID: [1] * 10, Columns.ITEM_ID: [1, 1, 1, 1, 2, 2, 2, 3, 4, 5]})
    cur = pd.DataFrame({Columns.USER_ID: [1] * 10, Columns.ITEM_ID: [1, 1, 2, 2, 3, 6, 7, 8, 9, 9]})
    check = {c.name: c for c in recommender_drift(ref, cur, thresholds=DriftThresholds(noise_z=0.0))}[NEW_ITEM_SHARE]
    assert check.reference_value == pytest.approx(0.3)  # items 3, 4, 5 seen once in 10 rows
    assert check.current_value == pytest.approx(0.5)  # 6, 7, 8, 9, 9
    assert check.statistic == pytest.approx(0.2) and check.drifted


def test_a_long_reference_is_compared_with_a_short_current_window_at_the_same_size():
    """The Gini of 8000 interactions is far above that of 400 of the same process (more items reach their long
    tail); measured at a common size the two agree."""
    rng = np.random.default_rng(3)
    ref, cur = interactions(rng, 8000), interactions(rng, 400)
    raw = [concentration(t[Columns.ITEM_ID].value_counts().to_numpy())[0][0] for t in (ref, cur)]
    checks = {c.name: c for c in recommender_drift(ref, cur, seed=3)}
    assert abs(raw[0] - raw[1]) > 0.1
    assert abs(checks[POPULARITY_GINI].reference_value - checks[POPULARITY_GINI].current_value) < 0.05
    assert not checks[POPULARITY_GINI].drifted


def test_missing_id_columns_are_named():
    with pytest.raises(DriftInputError, match="'item_id'"):
        recommender_drift(pd.DataFrame({Columns.USER_ID: [1]}), pd.DataFrame({Columns.USER_ID: [1]}))


def test_empty_interactions_are_refused():
    empty = pd.DataFrame({Columns.USER_ID: [], Columns.ITEM_ID: []})
    with pytest.raises(DriftInputError, match="current interactions are empty"):
        recommender_drift(interactions(np.random.default_rng(0), 50), empty)


# ------------------------------------------------------------------------------------------------------ scores
def test_raw_scores_of_a_rescaled_model_drift_but_standardised_ones_do_not():
    rng = np.random.default_rng(0)
    champion = rng.normal(size=400)
    challenger = 10.0 * rng.normal(size=400) + 3.0  # same ranking behaviour, another scale
    assert score_drift(champion, challenger).drifted
    check = score_drift(champion, challenger, name="score:challenger", standardise=True)
    assert not check.drifted and check.group == "score" and check.name == "score:challenger"


# ----------------------------------------------------------------------------------- the two targets
def planted_snapshot(seed: int, n_ref: int, n_cur: int) -> DriftReport:
    """Reference vs a current window where 30 % of the interactions go to 3 new items and ``mf_score`` doubled."""
    rng = np.random.default_rng(seed)
    ref_log = interactions(rng, n_ref)
    cur_log = with_new_block(rng, interactions(rng, n_cur), share=0.3, n_new=3)
    ref_features, cur_features = features(rng, n_ref), features(rng, n_cur)
    cur_features["mf_score"] *= 2.0
    return drift_report(reference_interactions=ref_log, current_interactions=cur_log,
                        reference_features=ref_features, current_features=cur_features, seed=seed)


@pytest.mark.parametrize("n_ref, n_cur", [(800, 800), (5000, 3000)], ids=["tests", "distances"])
def test_a_planted_shift_is_flagged_with_the_right_checks_named(n_ref, n_cur):
    report = planted_snapshot(seed=0, n_ref=n_ref, n_cur=n_cur)
    assert report.drifted_features == ["mf_score"], report.to_dict()
    # 3 new items each take ~10 %: more concentrated than any existing item, so both concentration checks move.
    assert set(report.drifted_names) == {"mf_score", NEW_ITEM_SHARE, POPULARITY_GINI, TOP_ITEMS_SHARE}
    assert not report.check(COLD_USER_SHARE).drifted  # the users did not change
    assert report.check(NEW_ITEM_SHARE).statistic > 0.2  # 30 % new, less what a fresh sample leaves unseen


@pytest.mark.parametrize("action, decision", [("block", "block promotion"), ("retrain", "trigger retraining"),
                                              ("warn", "warn only")])
def test_the_gate_acts_as_configured_on_the_planted_shift(action, decision):
    result = gate_decision(planted_snapshot(seed=0, n_ref=800, n_cur=800), DriftGateConfig(action=action))
    assert (result.decision, result.drift) == (decision, True)
    assert any(r.startswith(f"{NEW_ITEM_SHARE} drifted") for r in result.reasons)


def test_one_drifted_feature_alone_passes_the_default_gate_but_is_reported():
    rng = np.random.default_rng(0)
    ref, cur = features(rng, 800), features(rng, 800)
    cur["mf_score"] *= 2.0
    report = DriftReport(checks=tuple(table_drift(ref, cur)))
    result = gate_decision(report, DriftGateConfig(action="block"))
    assert (result.decision, result.drift) == ("pass", False)
    assert "mf_score" in result.reasons[-1] and "1 of 5 checks drifted" in result.reasons[-1]


def test_a_feature_made_decisive_or_a_lower_share_makes_the_gate_act():
    rng = np.random.default_rng(0)
    ref, cur = features(rng, 800), features(rng, 800)
    cur["mf_score"] *= 2.0
    report = DriftReport(checks=tuple(table_drift(ref, cur)))
    decisive = DriftGateConfig(action="retrain", decisive_checks=("mf_score",))
    assert gate_decision(report, decisive).decision == "trigger retraining"
    assert gate_decision(report, DriftGateConfig(action="warn", max_drifted_share=0.2)).decision == "warn only"


def test_the_gate_config_rejects_an_unknown_action():
    with pytest.raises(DriftInputError, match="block"):
        DriftGateConfig(action="rollback")  # type: ignore[arg-type]


@pytest.mark.parametrize("n_ref, n_cur", [(600, 400), (4000, 2000)], ids=["tests", "distances"])
def test_an_unshifted_snapshot_passes_in_at_least_95_percent_of_seeded_resamples(n_ref, n_cur):
    runs, passed, false_positives = 100, 0, Counter()
    for seed in range(runs):
        rng = np.random.default_rng(1000 + seed)
        report = drift_report(reference_interactions=interactions(rng, n_ref),
                              current_interactions=interactions(rng, n_cur),
                              reference_features=features(rng, n_ref), current_features=features(rng, n_cur),
                              reference_scores=rng.normal(size=n_ref), current_scores=rng.normal(size=n_cur),
                              seed=seed)
        false_positives.update(report.drifted_names)
        passed += gate_decision(report).decision == "pass"
    rates = {name: count / runs for name, count in sorted(false_positives.items())}
    assert passed / runs >= 0.95, f"pass rate {passed / runs:.2f}; false-positive rate per check: {rates}"
    # No single check may fire far above its nominal 5 % (a test that ignores the reference's own noise would).
    assert max(rates.values(), default=0.0) <= 0.12, f"false-positive rate per check: {rates}"


# -------------------------------------------------------------------------------------------- JSON and HTML
def _plain_types(value) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain_types(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_plain_types(v) for v in value)
    return value is None or type(value) in (str, int, float, bool)


def test_the_report_round_trips_through_strict_json_with_plain_types():
    report = planted_snapshot(seed=1, n_ref=300, n_cur=300)
    data = report.to_dict()
    assert _plain_types(data)
    text = json.dumps(data, allow_nan=False)
    assert DriftReport.from_dict(json.loads(text)) == report
    assert json.loads(text)["drifted"] == report.drifted_names


def test_a_non_finite_statistic_is_written_as_null():
    check = DriftCheck(name="x", group="feature", method="chi2", statistic=math.inf, threshold=0.05, p_value=0.0,
                       drifted=True, n_ref=np.int64(3), n_cur=3, reason="r")
    data = check.to_dict()
    assert data["statistic"] is None and type(data["n_ref"]) is int
    assert math.isnan(DriftCheck.from_dict(json.loads(json.dumps(data, allow_nan=False))).statistic)


def test_the_html_page_is_self_contained_escapes_values_and_highlights_drifted_rows():
    hostile = "<script>alert('x')</script>"
    rng = np.random.default_rng(0)
    ref, cur = features(rng, 200), features(rng, 200)
    ref[hostile], cur[hostile] = ref["mf_score"], cur["mf_score"] * 3.0
    report = DriftReport(checks=tuple(table_drift(ref, cur, ["item_age_days", hostile])))
    page = report.to_html(title="drift & <more>", decision=gate_decision(report))
    assert "<script" not in page and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "drift &amp; &lt;more&gt;" in page
    assert "http" not in page and "<link" not in page and "<style>" in page
    assert page.count("<tr class='drifted'>") == 1 and page.count("<tr class='ok'>") == 1


def test_metrics_are_flat_finite_numbers_per_check():
    report = planted_snapshot(seed=0, n_ref=300, n_cur=300)
    metrics = report.metrics()
    assert metrics["drift.mf_score.drifted"] == 1.0 and metrics["drift.item_age_days.drifted"] == 0.0
    assert all(isinstance(v, float) and math.isfinite(v) for v in metrics.values())
