"""Candidate sources and their merge, on synthetic data whose right answer is known."""

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from recops.candidates import (EASE, ItemKNN, MostPopular, fit_sources, interaction_matrix, merged_candidates,
                               recommend)
from recops.candidates.sources import exclude_seen, top_n
from recops.columns import Columns
from recops.config import CandidatesConfig
from recops.errors import RecopsError


def generate_candidates(history, users, n_users, n_items, config, seed, threads):
    """The candidates stage's two steps (``pipeline.fold_candidates``): sources fitted on ``history``, then merged."""
    sources, _ = fit_sources(history, n_users, n_items, config, seed, threads)
    frame = merged_candidates(sources, config, np.unique(users).astype(np.int32),
                              interaction_matrix(history, n_users, n_items, "binary"))
    return frame.reset_index(drop=True), sources


def block_log(n_users=40, n_items=40):
    """Two taste groups: even users like even items, odd users odd items. One liked item per user held out."""
    rows, held = [], []
    for u in range(n_users):
        liked = [i for i in range(n_items) if i % 2 == u % 2]
        out = liked[(u // 2) % len(liked)]
        for i in liked:
            (held if i == out else rows).append((u, i, i))
    cols = [Columns.USER, Columns.ITEM, Columns.TIMESTAMP]
    return pd.DataFrame(rows, columns=cols), pd.DataFrame(held, columns=cols)


@pytest.mark.parametrize("source", ["mf", "ease", "itemknn"])
def test_each_source_finds_the_held_out_item_of_the_users_taste_group(source):
    history, held = block_log()
    config = CandidatesConfig(sources=[source], factors=4, iterations=20, n_candidates=5, knn_neighbours=40)
    cands, _ = generate_candidates(history, np.arange(40), 40, 40, config, seed=0, threads=1)
    assert (cands.groupby(Columns.USER).size() == 5).all()
    seen = set(zip(history[Columns.USER], history[Columns.ITEM]))
    assert not seen & set(zip(cands[Columns.USER], cands[Columns.ITEM]))
    first = cands[cands[f"{source}_rank"] == 1].set_index(Columns.USER)[Columns.ITEM]
    assert ((first.index % 2) == (first.to_numpy() % 2)).mean() > 0.95
    # the single unseen liked item of each user is its first candidate
    assert (first.loc[held[Columns.USER]].to_numpy() == held[Columns.ITEM].to_numpy()).mean() > 0.9


def test_bpr_is_selectable_and_ranks_are_consecutive():
    history, _ = block_log()
    config = CandidatesConfig(sources=["mf"], algorithm="bpr", factors=8, iterations=50, learning_rate=0.05,
                              n_candidates=4)
    cands, sources = generate_candidates(history, np.arange(40), 40, 40, config, seed=1, threads=1)
    assert sources["mf"].item_factors_.shape[0] == 40
    assert cands.groupby(Columns.USER)["mf_rank"].apply(list).map(lambda r: r == [1, 2, 3, 4]).all()


def test_users_without_history_get_popular_unseen_items_and_no_other_source_scores():
    history, _ = block_log()
    history = history[history[Columns.USER] != 3]
    config = CandidatesConfig(sources=["mf", "ease"], factors=4, iterations=3, n_candidates=3)
    cands, _ = generate_candidates(history, np.array([3]), 40, 40, config, seed=0, threads=1)
    pop = np.bincount(history[Columns.ITEM], minlength=40)
    expected = np.argsort(-pop, kind="stable")[:3]
    assert sorted(cands[Columns.ITEM].tolist()) == sorted(expected.tolist())
    assert cands["mf_score"].isna().all() and cands["ease_score"].isna().all()
    assert (cands["mf_rank"] == 4).all() and (cands["n_sources"] == 0).all()


def random_log(n_users=40, n_items=40, density=0.3, seed=0):
    rng = np.random.default_rng(seed)
    u, i = np.nonzero(rng.random((n_users, n_items)) < density * rng.random(n_items)[None, :] * 2)
    return pd.DataFrame({Columns.USER: u, Columns.ITEM: i, Columns.TIMESTAMP: np.arange(len(u))})


def test_merge_interleaves_sources_and_reports_each_sources_rank():
    history = random_log()  # no ties between scores, so ranks are unambiguous
    config = CandidatesConfig(sources=["ease", "popularity"], n_candidates=6)
    cands, sources = generate_candidates(history, np.arange(40), 40, 40, config, seed=0, threads=1)
    user_items = interaction_matrix(history, 40, 40)
    ease_items, _ = recommend(sources["ease"], np.arange(40), user_items, 6)
    pop_items, _ = recommend(sources["popularity"], np.arange(40), user_items, 6)
    for u in (0, 1, 7):
        mine = cands[cands[Columns.USER] == u]
        # round robin: the best 3 of each source are in the merged 6 (overlaps leave room for more)
        assert set(ease_items[u, :3]) <= set(mine[Columns.ITEM])
        assert set(pop_items[u, :3]) <= set(mine[Columns.ITEM])
        for item, rank in zip(mine[Columns.ITEM], mine["ease_rank"]):
            where = np.flatnonzero(ease_items[u] == item)
            assert rank == (where[0] + 1 if len(where) else 7)
        assert ((mine["ease_rank"] <= 6).astype(int) + (mine["popularity_rank"] <= 6)).tolist() == \
            mine["n_sources"].astype(int).tolist()


def test_ease_matches_the_closed_form():
    rng = np.random.default_rng(0)
    x = (rng.random((30, 8)) < 0.3).astype(np.float32)
    model = EASE(l2=2.0).fit(sp.csr_matrix(x))
    p = np.linalg.inv(x.T @ x + 2.0 * np.eye(8))
    b = np.eye(8) - p / np.diag(p)
    np.fill_diagonal(b, 0.0)
    assert model.weights_ == pytest.approx(b.astype(np.float32), abs=1e-5)
    assert model.score(np.array([0, 1]), sp.csr_matrix(x)) == pytest.approx((x[:2] @ b).astype(np.float32), abs=1e-5)


def test_ease_refuses_catalogues_above_its_limit():
    with pytest.raises(RecopsError, match="ease_max_items"):
        EASE(max_items=5).fit(sp.csr_matrix(np.ones((3, 6), dtype=np.float32)))


def test_itemknn_is_shrunk_cosine_pruned_to_k_neighbours():
    x = np.array([[1, 1, 0, 0], [1, 1, 1, 0], [0, 1, 1, 1], [1, 0, 0, 1]], dtype=np.float32)
    model = ItemKNN(neighbours=2, shrinkage=1.0).fit(sp.csr_matrix(x))
    norms = np.sqrt(x.sum(axis=0))
    full = (x.T @ x) / (np.outer(norms, norms) + 1.0)
    np.fill_diagonal(full, 0.0)
    sim = model.similarity_.toarray()
    co = x.T @ x
    for j in range(4):
        # item j's neighbours: the items sharing a user with it, the 2 most similar, ties to the lower index
        sharing = [i for i in range(4) if i != j and co[i, j] > 0]
        expected = sorted(sorted(sharing, key=lambda i: (-full[i, j], i))[:2])
        kept = np.flatnonzero(sim[:, j])
        assert kept.tolist() == expected, (j, kept, expected)
        assert sim[kept, j] == pytest.approx(full[kept, j])


def test_decayed_popularity_prefers_recent_items():
    user_items = sp.csr_matrix(np.ones((2, 2), dtype=np.float32))
    ages = np.array([100.0, 0.0, 100.0, 0.0])  # item 0 interacted long ago, item 1 today
    items = np.array([0, 1, 0, 1])
    assert MostPopular(half_life_days=10).fit(user_items, ages, items).popularity_[1] > \
        MostPopular(half_life_days=10).fit(user_items, ages, items).popularity_[0] * 100
    assert MostPopular().fit(user_items).popularity_.tolist() == [2.0, 2.0]


def test_top_n_and_seen_exclusion():
    scores = np.array([[0.1, 0.9, 0.5, 0.7], [1.0, 0.0, 0.3, 0.2]], dtype=np.float32)
    seen = sp.csr_matrix(np.array([[0, 1, 0, 0], [0, 0, 0, 0]], dtype=np.float32))
    items, values = top_n(exclude_seen(scores, np.array([0, 1]), seen), 2)
    assert items.tolist() == [[3, 2], [0, 2]]
    assert values[0].tolist() == pytest.approx([0.7, 0.5])
    # fewer finite scores than n: the rest come back as -1
    items, _ = top_n(np.array([[-np.inf, 1.0, -np.inf]], dtype=np.float32), 2)
    assert items.tolist() == [[1, -1]]


def test_sources_must_be_known_and_unique():
    with pytest.raises(ValueError):
        CandidatesConfig(sources=["mf", "mf"])
    with pytest.raises(ValueError):
        CandidatesConfig(sources=["nonsense"])


def test_top_k_of_rows_keeps_lexsorts_choice_including_ties():
    """The one-key sort picks, per item (row of a co-occurrence block), the k largest similarities with ties to the
    lower neighbour index, the item itself left out — the same entries as a lexsort by (item, -sim, neighbour)."""
    from recops.candidates.sources import _top_k_of_rows

    rng = np.random.default_rng(3)
    n, k, start, n_rows = 50, 4, 10, 20
    counts = sp.random(n_rows, n, density=0.6, random_state=4, format="csr", dtype=np.float32)
    counts.data[:] = rng.integers(1, 4, counts.nnz)  # few distinct counts: many exact ties
    norms = np.ones(n, np.float32)
    norms[::7] = 2.0
    got_rows, got_cols, got_values = _top_k_of_rows(counts, start, norms, 1.0, k)
    got = sp.csr_matrix((got_values, (got_rows, got_cols)), shape=(n, n)).toarray()
    coo = counts.tocoo()
    item, neighbour = coo.row + start, coo.col
    sims = (coo.data / (norms[neighbour] * norms[item] + np.float32(1.0 + 1e-12))).astype(np.float32)
    off = neighbour != item
    item, neighbour, sims = item[off], neighbour[off], sims[off]
    order = np.lexsort((neighbour, -sims, item))
    item, neighbour, sims = item[order], neighbour[order], sims[order]
    position = np.arange(len(item)) - np.searchsorted(item, np.arange(n))[item]
    keep = position < k
    expected = sp.csr_matrix((sims[keep], (neighbour[keep], item[keep])), shape=(n, n)).toarray()
    np.testing.assert_array_equal(got, expected)
    assert (got > 0).sum(axis=0)[start:start + n_rows].max() == k and not got.diagonal().any()


def test_sampled_users_are_seeded_sorted_and_bounded():
    from recops.steps import sample_users

    users = np.arange(0, 1000, 3, dtype=np.int32)
    assert sample_users(users, None, 1) is users and sample_users(users, 5000, 1) is users
    sample = sample_users(users, 50, 7)
    assert len(sample) == 50 and np.all(np.diff(sample) > 0) and np.isin(sample, users).all()
    np.testing.assert_array_equal(sample, sample_users(users, 50, 7))
    assert not np.array_equal(sample, sample_users(users, 50, 8))


def test_most_recent_keeps_each_users_latest_interactions_and_the_cap_bounds_the_cooccurrences():
    from recops.data.matrices import most_recent

    log = pd.DataFrame({Columns.USER: [0, 0, 0, 0, 1, 1], Columns.ITEM: [5, 6, 7, 8, 5, 6],
                        Columns.TIMESTAMP: [1, 4, 3, 4, 9, 2]})
    kept = most_recent(log, 2)
    assert kept.index.tolist() == [1, 3, 4, 5]  # user 0: the two at t=4; user 1: both; original row order
    assert most_recent(log, None) is log and most_recent(log, 4) is log
    history, _ = block_log()
    full = ItemKNN(10, 1.0).fit(interaction_matrix(history, 40, 40, "binary")).similarity_
    recent = most_recent(history, 3)
    capped = ItemKNN(10, 1.0).fit(interaction_matrix(recent, 40, 40, "binary")).similarity_
    # every capped pair is two items among one user's 3 most recent; the full matrix has pairs the cap drops
    together = {(a, b) for items in recent.groupby(Columns.USER)[Columns.ITEM].agg(list) for a in items
                for b in items if a != b}
    pairs = set(zip(*capped.nonzero()))
    assert pairs and pairs <= together
    assert set(zip(*full.nonzero())) - pairs


def test_itemknn_built_block_by_block_equals_the_whole_matrix(monkeypatch):
    """The co-occurrences are computed a block of items at a time (bounded memory); any block size gives the same
    neighbours and similarities."""
    x = sp.random(300, 120, density=0.08, random_state=1, format="csr", dtype=np.float32)
    x.data[:] = 1.0
    whole = ItemKNN(7, 2.0).fit(x).similarity_.toarray()
    for entries in (120 * 7, 120):  # 7 items per block; one item per block
        monkeypatch.setattr(ItemKNN, "BLOCK_ENTRIES", entries)
        np.testing.assert_array_equal(ItemKNN(7, 2.0).fit(x).similarity_.toarray(), whole)
    full = (x.T @ x).toarray()
    np.fill_diagonal(full, 0)
    assert (whole > 0).sum(axis=0).max() == 7 and (whole[full == 0] == 0).all()


def test_mf_warm_start_continues_from_the_earlier_fit_and_needs_few_iterations():
    """With warm_start_iterations, a fit on a history that extends an earlier one starts from that fit's factors:
    two ALS iterations from there reach nearly the loss of a long fit from random factors, far below two from
    random; without the setting the factors passed in are ignored."""
    from implicit.cpu._als import calculate_loss

    from recops.candidates.mf import MFCandidateGenerator

    rng = np.random.default_rng(0)
    taste = rng.normal(size=(400, 6)) @ rng.normal(size=(6, 150))
    full = sp.csr_matrix((taste > 1.5).astype(np.float32))
    prefix = full.copy()
    prefix.data[rng.random(prefix.nnz) < 0.15] = 0.0  # the earlier history: 85% of the interactions
    prefix.eliminate_zeros()
    config = CandidatesConfig(factors=8, iterations=20, regularization=0.1, alpha=1.0, warm_start_iterations=2)
    earlier = MFCandidateGenerator(config, seed=1).fit(prefix)
    init = (earlier.user_factors_, earlier.item_factors_)

    def loss(model):
        return calculate_loss(full, model.user_factors_, model.item_factors_, config.regularization)

    warm = MFCandidateGenerator(config, seed=1).fit(full, init)
    long_cold = MFCandidateGenerator(config, seed=1).fit(full)
    short_cold = MFCandidateGenerator(config.model_copy(update={"iterations": 2}), seed=1).fit(full)
    assert (warm.iterations_, long_cold.iterations_) == (2, 20)
    # two warm iterations close most of the gap between two and twenty iterations from random factors
    assert loss(warm) < loss(long_cold) + 0.2 * (loss(short_cold) - loss(long_cold))
    np.testing.assert_array_equal(init[0], earlier.user_factors_)  # the earlier fit is left as it was
    ignored = MFCandidateGenerator(config.model_copy(update={"warm_start_iterations": None}), seed=1).fit(full, init)
    np.testing.assert_array_equal(ignored.item_factors_, long_cold.item_factors_)
    with pytest.raises(ValueError, match="factor columns"):
        MFCandidateGenerator(config, seed=1).fit(full, (init[0][:, :4], init[1][:, :4]))


def test_user_time_order_is_the_lexsort_order_and_falls_back_when_the_key_overflows():
    from recops.data.order import user_time_order

    rng = np.random.default_rng(2)
    users, items = rng.integers(0, 30, 2000), rng.integers(0, 50, 2000)
    timestamps = rng.integers(0, 40, 2000) * 1000  # many ties of (user, time) and of (user, time, item)
    newest = np.lexsort((-items, -timestamps.astype(np.float64), users))
    oldest = np.lexsort((items, timestamps, users))
    for stamps in (timestamps, timestamps / 7.0, timestamps.astype("datetime64[s]")):  # int, float, datetime
        np.testing.assert_array_equal(user_time_order(users, items, stamps, newest_first=True), newest)
        np.testing.assert_array_equal(user_time_order(users, items, stamps, newest_first=False), oldest)
    huge = users.astype(np.int64) * 2**40  # users x times x items above 2**63: the lexsort itself
    for stamps in (timestamps, timestamps.astype("datetime64[s]")):
        np.testing.assert_array_equal(user_time_order(huge, items, stamps, newest_first=True),
                                      np.lexsort((-items, -timestamps.astype(np.float64), huge)))
    assert len(user_time_order(users[:0], items[:0], timestamps[:0], newest_first=False)) == 0


def trending_log(days=60, n_users=30):
    """Item 0 is the all-time favourite, consumed in the first half; item 1 appears in the last 10 days and is what
    everybody consumes now; items 2.. are background."""
    rows = []
    for u in range(n_users):
        rows.append((u, 0, 86_400 * (u % 25)))
        rows.append((u, 2 + u % 5, 86_400 * (30 + u % 20)))
        if u % 3 == 0:
            rows.append((u, 1, 86_400 * (days - 1 - u % 10)))
    return pd.DataFrame(rows, columns=[Columns.USER, Columns.ITEM, Columns.TIMESTAMP])


@pytest.mark.parametrize("source", ["recent_popularity", "decayed_popularity"])
def test_time_aware_popularity_ranks_what_is_trending_now_first(source):
    from recops.candidates import fit_sources

    history = trending_log()
    config = CandidatesConfig(sources=[source], recent_popularity_days=14, decayed_popularity_half_life_days=5)
    fitted, _ = fit_sources(history, 30, 8, config, seed=0, threads=1)
    assert int(np.argmax(fitted[source].popularity_)) == 1
    assert int(np.argmax(fitted["popularity"].popularity_)) == 0  # all-time counts still favour the old item
    with pytest.raises(ValueError, match="ages"):
        fitted[source].__class__().fit(interaction_matrix(history, 30, 8, "binary"))


def test_recent_itemknn_counts_only_the_recent_window():
    from recops.candidates import fit_sources

    history = trending_log()
    config = CandidatesConfig(sources=["recent_itemknn", "itemknn"], recent_cooccurrence_days=20,
                              knn_neighbours=5, knn_shrinkage=0.0)
    fitted, _ = fit_sources(history, 30, 8, config, seed=0, threads=1)
    recent = fitted["recent_itemknn"].similarity_.toarray()
    assert recent[0].sum() == 0  # item 0 was last consumed 35+ days before the end
    assert fitted["itemknn"].similarity_.toarray()[0].sum() > 0


def test_round_robin_takes_each_sources_best_in_turn_and_keeps_an_items_first_slot():
    from recops.candidates.merge import round_robin

    first = np.array([[1, 2, 3], [5, -1, -1]], dtype=np.int32)
    second = np.array([[2, 4, -1], [6, 5, 7]], dtype=np.int32)
    rows, items = round_robin([first, second], 3, n_items=8)
    # row 0: 1 (first's best), 2 (second's best), 2 again (dropped), 4, 3 -> cut at 3
    # row 1: 5, 6, then second's 5 again (dropped), 7
    np.testing.assert_array_equal(rows, [0, 0, 0, 1, 1, 1])
    np.testing.assert_array_equal(items, [1, 2, 4, 5, 6, 7])
    rows, items = round_robin([first[:1], second[:1]], 2, n_items=8)  # one row: an online request
    np.testing.assert_array_equal(items, [1, 2])
    rows, items = round_robin([np.full((1, 3), -1, np.int32)], 3, n_items=8)  # nothing listed
    assert len(rows) == len(items) == 0
