"""MF candidate generation on synthetic data whose right answer is known."""

import numpy as np
import pandas as pd

from recops.candidates import generate_candidates, interaction_matrix, item_popularity, popular_unseen
from recops.columns import Columns
from recops.config import CandidatesConfig


def block_log(n_users=40, n_items=40, holdout_every=5):
    """Two taste groups: even users like even items, odd users odd items. One liked item per user held out."""
    rows, held = [], []
    for u in range(n_users):
        liked = [i for i in range(n_items) if i % 2 == u % 2]
        out = liked[(u // 2) % len(liked)]
        for i in liked:
            (held if i == out else rows).append((u, i, i))
    cols = [Columns.USER, Columns.ITEM, Columns.TIMESTAMP]
    return pd.DataFrame(rows, columns=cols), pd.DataFrame(held, columns=cols)


def test_als_candidates_come_from_the_users_taste_group_and_exclude_seen_items():
    history, held = block_log()
    users = np.arange(40)
    config = CandidatesConfig(factors=4, iterations=20, n_candidates=5)
    cands, _ = generate_candidates(history, users, 40, 40, config, seed=0, threads=1)
    assert (cands.groupby(Columns.USER).size() == 5).all()
    first = cands[cands[Columns.SOURCE_RANK] == 1]
    assert ((first[Columns.ITEM] % 2) == (first[Columns.USER] % 2)).mean() > 0.95
    seen = set(zip(history[Columns.USER], history[Columns.ITEM]))
    assert not seen & set(zip(cands[Columns.USER], cands[Columns.ITEM]))
    # the single unseen liked item of each user is its first candidate
    first = cands[cands[Columns.SOURCE_RANK] == 1].set_index(Columns.USER)[Columns.ITEM]
    assert (first.loc[held[Columns.USER]].to_numpy() == held[Columns.ITEM].to_numpy()).mean() > 0.9


def test_bpr_is_selectable_and_ranks_are_consecutive():
    history, _ = block_log()
    config = CandidatesConfig(algorithm="bpr", factors=8, iterations=50, learning_rate=0.05, n_candidates=4)
    cands, gen = generate_candidates(history, np.arange(40), 40, 40, config, seed=1, threads=1)
    assert gen.item_factors_.shape[0] == 40
    assert cands.groupby(Columns.USER)[Columns.SOURCE_RANK].apply(list).map(lambda r: r == [1, 2, 3, 4]).all()


def test_users_without_history_get_popular_unseen_items():
    history, _ = block_log()
    history = history[history[Columns.USER] != 3]
    config = CandidatesConfig(factors=4, iterations=3, n_candidates=3)
    cands, _ = generate_candidates(history, np.array([3]), 40, 40, config, seed=0, threads=1)
    pop = item_popularity(history, 40)
    expected = np.argsort(-pop, kind="stable")[:3]
    assert cands[Columns.ITEM].tolist() == expected.tolist()
    assert cands[Columns.SOURCE_SCORE].isna().all()


def test_popular_unseen_skips_each_users_seen_items():
    pop = np.array([10.0, 9, 8, 7, 6])
    frame = pd.DataFrame({Columns.USER: [0, 0], Columns.ITEM: [0, 2], Columns.TIMESTAMP: [1, 2]})
    seen = interaction_matrix(frame, 2, 5)
    items, _ = popular_unseen(pop, np.array([0, 1]), seen, 3)
    assert items.tolist() == [[1, 3, 4], [0, 1, 2]]
