"""The quality benchmark's pure helpers: the lift it reports and the table it prints."""

import math

import numpy as np
import pytest
import scipy.sparse as sp

from benchmarks.quality import Fold, fold_metrics, lift_over_best_peer, markdown_table, parameter_grid, summarise


def test_lift_is_relative_to_the_peer_with_the_highest_mean():
    means = {"popularity": {"ndcg@10": 0.10}, "ease": {"ndcg@10": 0.20}, "recops": {"ndcg@10": 0.23}}
    lift = lift_over_best_peer(means, "ndcg@10")
    assert lift["best_peer"] == "ease"
    assert lift["lift_pct"] == pytest.approx(15.0)
    assert lift["meets_target"] is True


def test_lift_below_the_target_is_reported_as_not_met():
    means = {"ease": {"recall@20": 0.20}, "recops": {"recall@20": 0.21}}
    lift = lift_over_best_peer(means, "recall@20")
    assert lift["lift_pct"] == pytest.approx(5.0)
    assert lift["meets_target"] is False


def test_lift_without_a_recops_result_is_nan_and_not_met():
    lift = lift_over_best_peer({"ease": {"ndcg@10": 0.2}}, "ndcg@10")
    assert math.isnan(lift["lift_pct"]) and lift["meets_target"] is False


def test_summary_std_is_the_sample_std_and_zero_for_one_run():
    runs = [{"m": 1.0}, {"m": 3.0}]
    assert summarise(runs)["m"] == {"mean": 2.0, "std": pytest.approx(math.sqrt(2.0))}
    assert summarise(runs[:1])["m"] == {"mean": 1.0, "std": 0.0}


def test_table_bolds_the_best_mean_and_shows_std_only_for_several_seeds():
    models = {
        "ease": {"metrics": {"ndcg@10": {"mean": 0.2, "std": 0.0}}, "n_seeds": 1, "fit_seconds": {"mean": 0.5}},
        "recops": {"metrics": {"ndcg@10": {"mean": 0.25, "std": 0.01}}, "n_seeds": 3, "fit_seconds": {"mean": 9.0}},
    }
    rows = markdown_table(models, metrics=("ndcg@10",)).splitlines()
    assert rows[2] == "| ease | 0.2000 | 0.50 | 1 |"
    assert rows[3] == "| recops | **0.2500 ± 0.0100** | 9.00 | 3 |"


def test_grid_enumerates_every_combination_first_axis_slowest():
    assert parameter_grid(a=[1, 2], b=["x", "y"]) == [
        {"a": 1, "b": "x"}, {"a": 1, "b": "y"}, {"a": 2, "b": "x"}, {"a": 2, "b": "y"}]


def test_warm_user_metrics_leave_out_users_without_history():
    # User 0 has history and its hit at rank 1; user 1 has none and misses.
    history = sp.csr_matrix(np.array([[1, 0, 0], [0, 0, 0]], dtype=np.float32))
    truth = sp.csr_matrix(np.array([[0, 1, 0], [0, 0, 1]], dtype=np.float32))
    fold = Fold(history, truth, np.array([0, 1]), np.array([1.0, 0.0, 0.0]), 1)
    everyone, warm = fold_metrics(fold, np.array([[1, 2], [0, 1]]))
    assert everyone["hitrate@10"] == 0.5
    assert warm is not None and warm["hitrate@10"] == 1.0
