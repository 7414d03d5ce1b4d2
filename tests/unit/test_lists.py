"""Per-user top-k lists: the vectorised path and the one-user path give what a plain sort gives."""

from __future__ import annotations

import numpy as np
import pytest

from recops.ranking import top_k_lists


def expected(users, items, scores, k):
    out = {}
    for u in sorted(set(users.tolist())):
        rows = sorted((-float(s), int(i)) for uu, i, s in zip(users, items, scores) if uu == u)[:k]
        out[u] = ([i for _, i in rows] + [-1] * k)[:k], ([-s for s, _ in rows] + [-np.inf] * k)[:k]
    return out


@pytest.mark.parametrize("n_users", [1, 4])
@pytest.mark.parametrize("k", [1, 5, 40])
def test_top_k_lists_match_a_plain_sort_with_ties_broken_by_item(n_users, k):
    rng = np.random.default_rng(k * 10 + n_users)
    n = 30 * n_users
    users = rng.integers(0, n_users, n).astype(np.int32) if n_users > 1 else np.full(n, 7, np.int32)
    items = rng.permutation(1000)[:n].astype(np.int32)
    scores = rng.integers(0, 6, n).astype(np.float32) / 2  # many ties, also at the cut
    listed, got_items, got_scores = top_k_lists(users, items, scores, k)
    want = expected(users, items, scores, k)
    assert listed.tolist() == sorted(want)
    for row, u in enumerate(listed.tolist()):
        assert got_items[row].tolist() == want[u][0]
        assert got_scores[row].tolist() == pytest.approx(want[u][1])


def test_one_user_with_fewer_rows_than_k_is_padded():
    listed, items, scores = top_k_lists(np.zeros(3, np.int32), np.array([5, 2, 9]), np.array([1.0, 1.0, 3.0],
                                        np.float32), 5)
    assert listed.tolist() == [0]
    assert items[0].tolist() == [9, 2, 5, -1, -1]
    assert scores[0, 3] == -np.inf
