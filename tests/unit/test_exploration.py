"""Explore/exploit policies of serving (``recops.serving.exploration``): pure numpy, no pipeline, a few seconds."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from scipy import integrate, stats

from recops.config import ExplorationConfig
from recops.serving import exploration
from recops.serving.exploration import ExplorationPolicy, request_keys

N_ITEMS = 400
K = 10
MASK = (1 << 64) - 1


def _mix64(x: int) -> int:
    """splitmix64 in plain Python integers, as documented in ``mix64``."""
    z = (x + 0x9E3779B97F4A7C15) & MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def _policy(policy: str = "epsilon_greedy", slots: int = 1, epsilon: float = 0.1, quantile: float = 0.5,
            seed: int = 0, exposure: np.ndarray | None = None, **counts: np.ndarray) -> ExplorationPolicy:
    config = ExplorationConfig(policy=policy, slots=slots, epsilon=epsilon, underexposed_quantile=quantile, seed=seed)
    if exposure is None:
        exposure = np.arange(N_ITEMS, dtype=float)  # items 0..199 are under the median: the pool
    return ExplorationPolicy(config, exposure, **counts)


def _lists(n: int, k: int = K, n_items: int = N_ITEMS, seed: int = 0) -> np.ndarray:
    """``n`` full lists of ``k`` distinct items each."""
    rng = np.random.default_rng(seed)
    steps = rng.integers(1, n_items // k, (n, k))  # k steps summing to less than n_items: k distinct items mod n_items
    return (rng.integers(0, n_items, (n, 1)) + np.cumsum(steps, axis=1)) % n_items


def _excluded(n: int, per_row: int, n_items: int = N_ITEMS, seed: int = 1) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    rows = np.repeat(np.arange(n), per_row)
    cols = rng.integers(0, n_items, n * per_row)
    return sp.csr_matrix((np.ones(n * per_row), (rows, cols)), shape=(n, n_items))


def _check_invariants(policy: ExplorationPolicy, lists: np.ndarray, new: np.ndarray, mask: np.ndarray,
                      excluded: sp.csr_matrix | None) -> None:
    """Only explored positions change; explored items are pool items not in the row's list, nor in ``excluded``,
    nor repeated."""
    assert new.shape == lists.shape and mask.shape == lists.shape and mask.dtype == bool
    np.testing.assert_array_equal(new[~mask], lists[~mask])
    pool = set(policy.pool.tolist())
    for row in np.flatnonzero(mask.any(axis=1)):
        items = new[row, mask[row]].tolist()
        assert set(items) <= pool
        assert not set(items) & set(lists[row].tolist())
        if excluded is not None:
            assert not set(items) & set(excluded[row].indices.tolist())
        assert len(set(items)) == len(items)


# ---- request keys


def test_request_keys_follow_the_documented_integer_formula() -> None:
    users = np.array([0, 1, 7, 123_456, 2**40])
    for seed in (0, 42, -3):
        expected = [_mix64(_mix64(seed & MASK) ^ int(u)) for u in users]
        assert request_keys(users, None, seed).tolist() == expected
    assert request_keys(users, None, 0).dtype == np.uint64


def test_request_keys_follow_the_documented_blake2b_formula() -> None:
    users = np.array([3, 3, 9])
    ids = ["req-a", "req-b", "req-a"]
    keys = request_keys(users, ids, 17)
    for key, user, rid in zip(keys.tolist(), users.tolist(), ids):
        digest = hashlib.blake2b(f"17:{user}:{rid}".encode("utf-8"), digest_size=8).digest()
        assert key == int.from_bytes(digest, "little")
    assert len(set(keys.tolist())) == 3  # same user, other request -> other key


def test_request_keys_are_stable_across_processes() -> None:
    users = np.arange(5)
    code = ("import numpy as np; from recops.serving.exploration import request_keys; users = np.arange(5); "
            "print(request_keys(users, None, 7).tolist(), request_keys(users, list('abcde'), 7).tolist())")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}  # a fixed hash seed, unlike this process's random one
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True,
                          cwd=Path(__file__).resolve().parents[2])
    here = f"{request_keys(users, None, 7).tolist()} {request_keys(users, list('abcde'), 7).tolist()}"
    assert done.stdout.strip() == here


def test_request_keys_reject_bad_input() -> None:
    with pytest.raises(ValueError, match="request_ids"):
        request_keys(np.arange(3), ["a", "b"], 0)
    with pytest.raises(ValueError, match="1-d integer"):
        request_keys(np.zeros((2, 2), dtype=int), None, 0)
    with pytest.raises(ValueError, match="1-d integer"):
        request_keys(np.array([0.5]), None, 0)


# ---- pool


def test_pool_is_the_items_below_the_exposure_quantile() -> None:
    np.testing.assert_array_equal(_policy().pool, np.arange(N_ITEMS // 2))
    np.testing.assert_array_equal(_policy(quantile=0.25).pool, np.arange(100))


def test_pool_falls_back_to_at_or_below_when_nothing_is_strictly_below() -> None:
    exposure = np.array([0.0, 0.0, 0.0, 5.0, 10.0])  # median 0: nothing strictly below
    np.testing.assert_array_equal(_policy(exposure=exposure).pool, [0, 1, 2])
    np.testing.assert_array_equal(_policy(exposure=np.full(4, 3.0), quantile=1.0).pool, [0, 1, 2, 3])


def test_empty_catalogue_has_an_empty_pool_and_changes_nothing() -> None:
    policy = _policy(exposure=np.empty(0), epsilon=1.0)
    assert policy.pool.size == 0 and not policy.active
    lists = np.full((3, 4), -1)
    new, mask = policy.apply(lists, request_keys(np.arange(3), None, 0))
    np.testing.assert_array_equal(new, lists)
    assert not mask.any()


# ---- policy none, epsilon extremes


@pytest.mark.parametrize("config", [
    {"policy": "none", "epsilon": 1.0, "slots": 3},
    {"policy": "epsilon_greedy", "epsilon": 1.0, "slots": 0},
    {"policy": "thompson", "slots": 0},
])
def test_no_policy_or_no_slot_leaves_lists_unchanged(config: dict) -> None:
    lists = _lists(200)
    new, mask = _policy(**config).apply(lists, request_keys(np.arange(200), None, 0))
    np.testing.assert_array_equal(new, lists)
    assert not mask.any() and new is not lists


def test_epsilon_zero_leaves_lists_unchanged() -> None:
    lists = _lists(2000)
    new, mask = _policy(epsilon=0.0, slots=3).apply(lists, request_keys(np.arange(2000), None, 0))
    np.testing.assert_array_equal(new, lists)
    assert not mask.any()


@pytest.mark.parametrize("slots", [1, 3])
def test_epsilon_one_replaces_exactly_the_last_slots_of_every_row(slots: int) -> None:
    n = 3000
    lists, excluded = _lists(n), _excluded(n, 30)
    original = lists.copy()
    policy = _policy(epsilon=1.0, slots=slots)
    new, mask = policy.apply(lists, request_keys(np.arange(n), None, 0), excluded)
    np.testing.assert_array_equal(lists, original)  # the input is not modified
    expected = np.zeros((n, K), dtype=bool)
    expected[:, K - slots:] = True
    np.testing.assert_array_equal(mask, expected)
    assert np.isin(new[:, K - slots:], policy.pool).all()
    _check_invariants(policy, lists, new, mask, excluded)


# ---- invariants, determinism


@pytest.mark.parametrize("policy", ["epsilon_greedy", "thompson"])
def test_explored_items_are_eligible_pool_items(policy: str) -> None:
    n = 2000
    lists, excluded = _lists(n, seed=3), _excluded(n, 60, seed=4)
    explorer = _policy(policy, slots=2, epsilon=0.5)
    new, mask = explorer.apply(lists, request_keys(np.arange(n), None, 0), excluded)
    assert mask.any()
    _check_invariants(explorer, lists, new, mask, excluded)


@pytest.mark.parametrize("policy", ["epsilon_greedy", "thompson"])
def test_same_keys_same_lists_other_seed_other_lists(policy: str) -> None:
    n = 5000
    lists = _lists(n)
    counts = {"successes": np.arange(N_ITEMS) % 7.0, "failures": np.arange(N_ITEMS) % 5.0}
    first = _policy(policy, slots=2, epsilon=0.3, **counts).apply(lists, request_keys(np.arange(n), None, 0))
    again = _policy(policy, slots=2, epsilon=0.3, **counts).apply(lists, request_keys(np.arange(n), None, 0))
    other = _policy(policy, slots=2, epsilon=0.3, **counts).apply(lists, request_keys(np.arange(n), None, 1))
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert (first[0] != other[0]).mean() > 0.05


@pytest.mark.parametrize("policy", ["epsilon_greedy", "thompson"])
def test_a_request_gets_the_same_list_in_any_batch_and_block(policy: str, monkeypatch: pytest.MonkeyPatch) -> None:
    n = 600
    lists, excluded = _lists(n), _excluded(n, 20)
    keys = request_keys(np.arange(n), None, 5)
    counts = {"successes": np.arange(N_ITEMS) % 3.0}
    explorer = _policy(policy, slots=2, epsilon=0.5, **counts)
    whole, whole_mask = explorer.apply(lists, keys, excluded)
    subset = np.random.default_rng(0).permutation(n)[:150]
    monkeypatch.setattr(exploration, "_BLOCK_ELEMENTS", 1000)  # thompson: many small blocks
    part, part_mask = explorer.apply(lists[subset], keys[subset], excluded[subset])
    np.testing.assert_array_equal(part, whole[subset])
    np.testing.assert_array_equal(part_mask, whole_mask[subset])


# ---- epsilon_greedy statistics


def test_share_of_explored_slots_matches_epsilon() -> None:
    n, slots, epsilon = 20_000, 2, 0.2
    new, mask = _policy(epsilon=epsilon, slots=slots).apply(_lists(n), request_keys(np.arange(n), None, 0))
    share = mask.sum() / (n * slots)
    bound = 5 * np.sqrt(epsilon * (1 - epsilon) / (n * slots))  # 5 standard errors: 0.01
    assert abs(share - epsilon) < bound
    both = (mask.sum(axis=1) == 2).mean()  # slots explore independently
    assert abs(both - epsilon**2) < 5 * np.sqrt(epsilon**2 * (1 - epsilon**2) / n)


def test_explored_item_is_uniform_over_the_eligible_pool() -> None:
    n = 20_000
    pool_size = 40
    exposure = np.r_[np.zeros(pool_size), np.ones(60)]  # items 0..39 form the pool
    row = np.array([[3, 50, 7, 60, 39, 0, 70, 80, 90, -1]])  # pool items 0, 3, 7, 39 are in the list
    lists = np.repeat(row, n, axis=0)
    blocked = [5, 6, 38, 3]  # 3 is also in the list
    excluded = sp.csr_matrix((np.ones(4 * n), (np.repeat(np.arange(n), 4), np.tile(blocked, n))), shape=(n, 100))
    policy = _policy(epsilon=1.0, exposure=exposure)
    new, mask = policy.apply(lists, request_keys(np.arange(n), None, 0), excluded)
    assert mask[:, -1].all() and mask.sum() == n  # the free last slot is used, no real item replaced
    eligible = sorted(set(range(pool_size)) - {0, 3, 7, 39, 5, 6, 38})
    counts = np.bincount(new[:, -1], minlength=100)
    assert set(np.flatnonzero(counts).tolist()) == set(eligible)
    assert stats.chisquare(counts[eligible]).pvalue > 1e-4


# ---- short lists, no eligible item


def test_short_rows_use_their_free_positions_first() -> None:
    lists = np.array([
        [1, 2, 3, -1, -1, -1],  # room for both slots: positions 3 and 4, nothing replaced
        [1, 2, 3, 4, 5, -1],  # one free position: the run ends at 5, item 5 is replaced
        [-1, -1, -1, -1, -1, -1],  # empty: positions 0 and 1
        [1, 2, 3, 4, 5, 6],  # full: the last two
    ])
    lists[lists >= 0] += 200  # outside the pool
    policy = _policy(epsilon=1.0, slots=2)
    new, mask = policy.apply(lists, request_keys(np.arange(4), None, 0))
    expected = np.zeros_like(mask)
    expected[0, 3:5] = expected[1, 4:6] = expected[2, 0:2] = expected[3, 4:6] = True
    np.testing.assert_array_equal(mask, expected)
    assert (new[0, 5] == -1) and (new[2, 2:] == -1).all()
    _check_invariants(policy, lists, new, mask, None)


def test_padding_in_the_middle_is_rejected() -> None:
    with pytest.raises(ValueError, match="padded"):
        _policy().apply(np.array([[1, -1, 2]]), request_keys(np.arange(1), None, 0))


def test_bad_shapes_and_items_are_rejected() -> None:
    policy = _policy()
    with pytest.raises(ValueError, match="catalogue"):
        policy.apply(np.array([[1, N_ITEMS]]), request_keys(np.arange(1), None, 0))
    with pytest.raises(ValueError, match="keys"):
        policy.apply(_lists(3), request_keys(np.arange(2), None, 0))
    with pytest.raises(ValueError, match="excluded"):
        policy.apply(_lists(3), request_keys(np.arange(3), None, 0), sp.csr_matrix((2, N_ITEMS)))


@pytest.mark.parametrize("policy", ["epsilon_greedy", "thompson"])
def test_rows_without_an_eligible_item_are_left_as_they_were(policy: str) -> None:
    exposure = np.r_[np.zeros(4), np.ones(16)]  # pool: 0, 1, 2, 3
    lists = np.array([[0, 1, 10, 11], [0, 10, 11, 12], [10, 11, 12, 13]])
    excluded = sp.csr_matrix(np.array([[0, 0, 1, 1] + [0] * 16, [0, 1, 1, 1] + [0] * 16, [0] * 20]))
    explorer = _policy(policy, slots=2, epsilon=1.0, exposure=exposure)
    new, mask = explorer.apply(lists, request_keys(np.arange(3), None, 0), excluded)
    np.testing.assert_array_equal(new[:2], lists[:2])  # whole pool already listed or excluded
    assert not mask[:2].any()
    assert mask[2, 2:].all() and set(new[2, 2:].tolist()) <= {0, 1, 2, 3}


def test_a_slot_beyond_the_eligible_items_does_not_explore() -> None:
    exposure = np.r_[np.zeros(4), np.ones(16)]
    lists = np.array([[0, 1, 2, 10, 11, 12]])  # one eligible pool item (3) for two slots
    new, mask = _policy(slots=2, epsilon=1.0, exposure=exposure).apply(lists, request_keys(np.arange(1), None, 0))
    np.testing.assert_array_equal(mask, [[False] * 5 + [True]])
    np.testing.assert_array_equal(new, [[0, 1, 2, 10, 11, 3]])


# ---- thompson


def test_thompson_always_explores_the_last_slots() -> None:
    n = 1000
    lists = _lists(n)
    policy = _policy("thompson", slots=2, epsilon=0.0)  # epsilon is not used by thompson
    new, mask = policy.apply(lists, request_keys(np.arange(n), None, 0))
    assert mask[:, -2:].all() and not mask[:, :-2].any()


def test_thompson_prefers_items_with_more_successes_after_update() -> None:
    n = 2000
    lists = _lists(n)  # pool items may be listed; the rest are eligible
    policy = _policy("thompson", slots=1)
    keys = request_keys(np.arange(n), None, 0)
    before, _ = policy.apply(lists, keys)
    assert np.bincount(before[:, -1], minlength=N_ITEMS).max() < 0.05 * n  # uniform prior: spread over 200 items
    shown = np.repeat(policy.pool, 20)
    clicked = np.zeros(shown.size, dtype=bool)
    clicked[shown == 17] = True  # item 17: 20 clicks out of 20; every other pool item 0 out of 20
    policy.update(shown, clicked)
    assert policy.successes[17] == 20 and policy.failures[17] == 0 and policy.failures[18] == 20
    after, _ = policy.apply(lists, keys)
    eligible = ~(lists == 17).any(axis=1)
    assert (after[eligible, -1] == 17).mean() > 0.99


@pytest.mark.parametrize(("a", "b"), [((4, 2), (2, 4)), ((31, 11), (26, 13)), ((1, 1), (2.5, 1)), ((3, 9), (1, 1))])
def test_thompson_draws_follow_the_beta_posterior(a: tuple[float, float], b: tuple[float, float]) -> None:
    """Two pool items: the share of requests choosing the first is P(Beta(a) > Beta(b)), computed by quadrature."""
    n = 20_000
    exposure = np.array([0.0, 0.0, 1.0, 1.0, 1.0])
    successes = np.array([a[0] - 1, b[0] - 1, 0, 0, 0])
    failures = np.array([a[1] - 1, b[1] - 1, 0, 0, 0])
    policy = _policy("thompson", slots=1, exposure=exposure, successes=successes, failures=failures)
    lists = np.tile([2, 3, 4, -1], (n, 1))
    new, mask = policy.apply(lists, request_keys(np.arange(n), None, 11))
    assert mask[:, 3].all()
    share = (new[:, 3] == 0).mean()
    first, second = stats.beta(*a), stats.beta(*b)
    expected = integrate.quad(lambda x: first.pdf(x) * second.cdf(x), 0, 1)[0]
    assert abs(share - expected) < 5 * np.sqrt(expected * (1 - expected) / n)


@pytest.mark.parametrize("alpha", [1.0, 1.7, 40.0])
def test_gamma_sampler_is_exact(alpha: float) -> None:
    """The hashed Marsaglia-Tsang sampler behind the Beta draws against the Gamma CDF (Kolmogorov-Smirnov)."""
    draws = exploration._gamma(request_keys(np.arange(100_000), None, 3), np.array([7]), np.array([alpha]), 0)
    assert stats.kstest(draws[:, 0], stats.gamma(alpha).cdf).pvalue > 1e-4


def test_update_checks_its_input_and_skips_padding() -> None:
    policy = _policy("thompson")
    policy.update(np.array([[1, -1], [1, 2]]), np.array([[True, True], [False, True]]))
    assert policy.successes[[1, 2]].tolist() == [1, 1] and policy.failures[[1, 2]].tolist() == [1, 0]
    with pytest.raises(ValueError, match="same shape"):
        policy.update(np.array([1, 2]), np.array([True]))
    with pytest.raises(ValueError, match="catalogue"):
        policy.update(np.array([N_ITEMS]), np.array([True]))
    with pytest.raises(ValueError, match="non-negative"):
        _policy(successes=-np.ones(N_ITEMS))


# ---- vectorisation


def test_epsilon_greedy_is_vectorised_over_requests() -> None:
    n, n_items = 100_000, 5000
    rng = np.random.default_rng(0)
    lists = rng.integers(0, n_items, (n, K))
    exposure = rng.poisson(5.0, n_items).astype(float)
    policy = _policy(epsilon=0.3, slots=2, exposure=exposure)
    excluded = _excluded(n, 5, n_items)
    keys = policy.keys(np.arange(n))
    started = time.perf_counter()
    new, mask = policy.apply(lists, keys, excluded)
    assert time.perf_counter() - started < 2.0
    assert 0.25 < mask.sum() / (2 * n) < 0.35


# ---- propensities (what the impression log keeps for off-policy evaluation)


@pytest.mark.parametrize("slots", [1, 2])
def test_logged_propensities_are_the_frequencies_with_which_each_item_shows_at_its_position(slots: int) -> None:
    """The same list served to many requests: how often each (position, item) pair shows must be the propensity
    logged with it, for the ranker's items in the tail and for the explored ones."""
    n, epsilon, k = 40_000, 0.3, 6
    exposure = np.r_[np.zeros(10), np.ones(50)]  # items 0..9 form the pool
    row = np.array([[20, 21, 22, 23, 24, 2]])  # pool item 2 in the list: 9 eligible
    lists = np.repeat(row, n, axis=0)
    policy = _policy(epsilon=epsilon, slots=slots, exposure=exposure)
    new, mask, propensity = policy.apply_logged(lists, request_keys(np.arange(n), None, 0))
    assert np.isfinite(propensity).all() and ((propensity > 0) & (propensity <= 1)).all()
    assert (propensity[:, : k - slots] == 1).all()
    for p in range(k - slots, k):
        shown = new[:, p] == row[0, p]  # the ranker's item kept its place
        expected = stats.binom.cdf(k - 1 - p, slots, epsilon)
        assert np.allclose(propensity[shown, p], expected)
        assert abs(shown.mean() - expected) < 5 * np.sqrt(expected * (1 - expected) / n)
    for p in range(k - slots, k):  # an explored item: every eligible one equally likely at a covered position
        logged = np.unique(propensity[mask[:, p], p])
        assert len(logged) == 1, logged
        for item in set(range(10)) - {2}:
            share = (new[:, p] == item).mean()
            assert abs(share - logged[0]) < 5 * np.sqrt(logged[0] * (1 - logged[0]) / n), (p, item)
    if slots == 1:
        assert np.allclose(propensity[mask[:, -1], -1], epsilon / 9)


def test_propensities_are_one_without_exploration_and_unknown_for_thompsons_picks() -> None:
    lists = _lists(50)
    lists[0, 5:] = -1
    _, _, none = _policy(policy="none").apply_logged(lists, request_keys(np.arange(50), None, 0))
    assert (none[lists >= 0] == 1).all() and np.isnan(none[lists < 0]).all()
    new, mask, thompson = _policy(policy="thompson").apply_logged(lists, request_keys(np.arange(50), None, 0))
    assert np.isnan(thompson[mask]).all() and (thompson[~mask & (new >= 0)] == 1).all()
