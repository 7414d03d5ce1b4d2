"""Ranking and beyond-accuracy metrics against cases computed by hand."""

import math

import numpy as np
import pytest
import scipy.sparse as sp

from recops.evaluation.metrics import (
    candidate_recall, catalog_coverage, intra_list_diversity, novelty, ranking_metrics,
)


def truth_matrix(rows, n_users=3, n_items=6):
    r, c = zip(*[(u, i) for u, items in rows.items() for i in items])
    return sp.csr_matrix((np.ones(len(r)), (r, c)), shape=(n_users, n_items))


def test_single_user_metrics_match_hand_computation():
    # user 0 relevant {1, 3}; list [1, 2, 3, 4]: hits at positions 1 and 3
    truth = truth_matrix({0: [1, 3]})
    m = ranking_metrics(np.array([0]), np.array([[1, 2, 3, 4]]), truth, ks=[2, 4])
    dcg = 1 / math.log2(2) + 1 / math.log2(4)
    idcg = 1 / math.log2(2) + 1 / math.log2(3)
    assert m["ndcg@4"] == pytest.approx(dcg / idcg)
    assert m["ndcg@2"] == pytest.approx(1.0 / idcg)
    assert m["recall@2"] == pytest.approx(0.5)
    assert m["recall@4"] == pytest.approx(1.0)
    assert m["precision@4"] == pytest.approx(0.5)
    assert m["map@4"] == pytest.approx((1 / 1 + 2 / 3) / 2)
    assert m["mrr@4"] == pytest.approx(1.0)
    assert m["hitrate@2"] == pytest.approx(1.0)


def test_users_without_relevant_items_are_not_scored_and_misses_count_zero():
    truth = truth_matrix({0: [5], 2: [0]})
    users = np.array([0, 1, 2])
    lists = np.array([[1, 2], [0, 1], [3, 0]])  # user 0 misses, user 1 has no truth, user 2 hits at 2
    m = ranking_metrics(users, lists, truth, ks=[2])
    assert m["users"] == 2
    assert m["mrr@2"] == pytest.approx((0 + 0.5) / 2)
    assert m["hitrate@2"] == pytest.approx(0.5)
    assert m["ndcg@2"] == pytest.approx((0 + 1 / math.log2(3)) / 2)


def test_padding_slots_never_count_as_hits():
    # -1 padding would map onto the previous user's last item if not masked
    truth = truth_matrix({0: [5], 1: [0]}, n_users=2)
    m = ranking_metrics(np.array([1]), np.array([[-1, 0]]), truth, ks=[1, 2])
    assert m["hitrate@1"] == 0.0
    assert m["hitrate@2"] == 1.0


def test_map_normalises_by_min_of_relevant_and_k():
    truth = truth_matrix({0: [0, 1, 2, 3, 4]})
    m = ranking_metrics(np.array([0]), np.array([[0, 1]]), truth, ks=[2])
    assert m["map@2"] == pytest.approx(1.0)
    assert m["recall@2"] == pytest.approx(2 / 5)


def test_coverage_novelty_and_diversity():
    lists = np.array([[0, 1], [0, 2]])
    assert catalog_coverage(lists, 2, n_items=6) == pytest.approx(3 / 6)
    counts = np.array([3.0, 1.0, 0.0])
    expected = np.mean([
        np.mean([-math.log2(4 / 4), -math.log2(2 / 4)]),
        np.mean([-math.log2(4 / 4), -math.log2(1 / 4)]),
    ])
    assert novelty(lists, 2, counts, n_users=3) == pytest.approx(expected)
    vectors = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    # list 0: orthogonal (distance 1); list 1: identical direction (distance 0)
    assert intra_list_diversity(lists, 2, vectors) == pytest.approx(0.5)


def test_candidate_recall_counts_each_users_share():
    truth = truth_matrix({0: [1, 2], 1: [3]}, n_users=2)
    users = np.array([0, 0, 1])
    items = np.array([1, 4, 5])
    assert candidate_recall(users, items, truth) == pytest.approx((0.5 + 0.0) / 2)


def test_hits_matrix_equals_a_direct_membership_test():
    """Listed users in any order (repeated, without truth, or missing from the list set), -1 slots, duplicated
    truth entries: a hit is exactly "the item is in that user's truth row"."""
    from recops.evaluation.metrics import hits_matrix

    rng = np.random.default_rng(5)
    n_users, n_items = 60, 40
    rows, cols = rng.integers(0, n_users, 400), rng.integers(0, n_items, 400)
    truth = sp.csr_matrix((np.ones(400), (rows, cols)), shape=(n_users, n_items))  # duplicates summed
    truth.has_canonical_format = False
    users = rng.permutation(np.r_[rng.choice(n_users, 30, replace=False), [3, 3]])
    recommended = rng.integers(-1, n_items, (len(users), 12))
    dense = truth.toarray() > 0
    expected = np.array([[item >= 0 and dense[user, item] for item in row] for user, row in zip(users, recommended)])
    np.testing.assert_array_equal(hits_matrix(users, recommended, truth), expected)
    assert expected.any()
    empty = sp.csr_matrix((n_users, n_items))
    assert not hits_matrix(users, recommended, empty).any()
