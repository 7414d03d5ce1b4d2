"""The candidate-source contract (``recops.candidates.sources.CandidateSource``), checked on every source in
``SOURCES``: built from the configuration, fitted on a :class:`History`, scored in blocks and one user at a time
to the same bits, stored and loaded back, and right on a log whose answer is known.

The log: two taste groups (users 0-19 consume items 0-4, users 20-39 items 5-9), each user has every item of their
group but one (``user % 5``), consumed in the group's cyclic order starting after the missing one (so the missing
item is also what comes next in the group's sequence), and ten late users consume item 3 only, so item 3 is the
most popular item overall, in the recent window and with decay. A personalised source must rank each group user's
missing item of their own group first among the items they have not seen; a popularity source must rank item 3
first.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from typing import get_args

from recops.candidates.registry import SOURCES
from recops.candidates.sources import CandidateSource, History
from recops.candidates.storage import CompressedCSR
from recops.columns import Columns
from recops.config import CandidatesConfig, SourceName, StorageConfig
from recops.data.matrices import interaction_matrix

DAY = 86_400.0
N_ITEMS, GROUP_USERS, LATE_USERS, POPULAR = 10, 20, 10, 3
CONFIG = CandidatesConfig(sources=list(SOURCES), factors=2, iterations=30, regularization=0.1, alpha=10.0,
                          ease_l2=1.0, knn_neighbours=9, knn_shrinkage=0.0, recent_cooccurrence_days=30.0,
                          recent_popularity_days=30.0, decayed_popularity_half_life_days=5.0,
                          sequence_length=5, sequence_embedding=16, sequence_heads=2, sequence_layers=1,
                          sequence_dropout=0.0, sequence_epochs=150, sequence_batch_size=16,
                          sequence_learning_rate=0.01)


def known_log() -> tuple[pd.DataFrame, np.ndarray]:
    """(interactions, each group user's missing item)."""
    rows, missing = [], []
    for user in range(2 * GROUP_USERS):
        group = user // GROUP_USERS
        gap = group * 5 + user % 5
        missing.append(gap)
        # in the group's cyclic order from the item after the gap: the gap is also each user's next item
        for offset in range(4):
            item = group * 5 + (user % 5 + 1 + offset) % 5
            rows.append((user, item, 10 * DAY + user * 3_600 + offset * 60))
    for late in range(LATE_USERS):
        rows.append((2 * GROUP_USERS + late, POPULAR, 19 * DAY + late * 60))
    return pd.DataFrame(rows, columns=[Columns.USER, Columns.ITEM, Columns.TIMESTAMP]), np.array(missing)


@pytest.fixture(scope="module")
def fitted() -> tuple[dict[str, CandidateSource], History, np.ndarray]:
    frame, missing = known_log()
    history = History(frame, 2 * GROUP_USERS + LATE_USERS, N_ITEMS)
    sources = {name: SOURCES[name].configured(CONFIG, seed=7, threads=1) for name in SOURCES}
    return {name: source.fit_history(history) for name, source in sources.items()}, history, missing


def test_the_registry_names_every_configurable_source_once():
    assert set(SOURCES) == set(get_args(SourceName))
    for name, cls in SOURCES.items():
        assert issubclass(cls, CandidateSource) and cls.name == name


@pytest.mark.parametrize("name", list(SOURCES))
def test_a_source_fits_on_a_history_and_scores_blocks(fitted, name):
    sources, history, _ = fitted
    source = sources[name]
    assert isinstance(source, SOURCES[name])
    users = np.arange(history.n_users, dtype=np.int32)
    block = source.score(users, history.user_items)
    assert block.shape == (history.n_users, N_ITEMS) and block.dtype == np.float32
    assert np.isfinite(block).all()


@pytest.mark.parametrize("name", list(SOURCES))
def test_one_user_scores_what_the_block_scores(fitted, name):
    """The online path (``score_user``) gives the block's row: the same additions in the same order for the
    item-item sources, the same product up to BLAS's float32 rounding for MF (a one-row product may take another
    kernel)."""
    sources, history, _ = fitted
    source = sources[name]
    users = np.arange(history.n_users, dtype=np.int32)
    block = source.score(users, history.user_items)
    matrix = history.user_items
    for user in users:
        items = np.unique(matrix.indices[matrix.indptr[user]:matrix.indptr[user + 1]]).astype(np.int64)
        one = source.score_user(int(user), items)
        assert one.dtype == np.float32 and one.shape == (history.n_items,)
        if not SOURCES[name].exact_one_row:
            np.testing.assert_allclose(one, block[user], rtol=1e-6, atol=1e-6, err_msg=f"user {user}")
        else:
            np.testing.assert_array_equal(one, block[user], err_msg=f"user {user}")
        one[:] = -np.inf  # the merge masks seen items in place: the row must be the caller's own
        again = source.score_user(int(user), items)
        assert np.isfinite(again).any(), f"user {user}: score_user handed out an array the source keeps"


def as_loaded(arrays: dict) -> dict:
    """Stored arrays as a bundle loads them back (a compressed CSR matrix is a float32 CSR matrix again)."""
    return {key: CompressedCSR.restore(value.data, value.matrix.indices, value.matrix.indptr, value.matrix.shape,
                                       value.scale) if isinstance(value, CompressedCSR) else value
            for key, value in arrays.items()}


@pytest.mark.parametrize("name", list(SOURCES))
def test_a_source_survives_its_arrays_and_its_stored_form(fitted, name):
    sources, history, _ = fitted
    source = sources[name]
    users = np.arange(history.n_users, dtype=np.int32)
    expected = source.score(users, history.user_items)
    loaded = SOURCES[name].from_arrays(source.to_arrays(), CONFIG, threads=1)
    np.testing.assert_array_equal(loaded.score(users, history.user_items), expected)
    for storage in (StorageConfig(), StorageConfig(item_item="float16", mf_factors="float16")):
        stored = SOURCES[name].from_arrays(as_loaded(source.stored_arrays(storage)), CONFIG, threads=1)
        np.testing.assert_allclose(stored.score(users, history.user_items), expected, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("name", list(SOURCES))
def test_a_source_finds_the_known_answer(fitted, name):
    sources, history, missing = fitted
    source = sources[name]
    users = np.arange(2 * GROUP_USERS, dtype=np.int32)
    scores = source.score(users, history.user_items)
    seen = history.user_items[users].toarray() > 0
    scores[seen] = -np.inf
    best = scores.argmax(axis=1)
    if SOURCES[name].needs_history:  # personalised: each user's missing item of their own group
        np.testing.assert_array_equal(best, missing)
    else:  # popularity: the item most consumed (overall, lately and with decay) wherever it is unseen
        unseen_popular = ~seen[:, POPULAR]
        assert unseen_popular.sum() == 24 and (best[unseen_popular] == POPULAR).all()


def test_the_known_answer_check_fails_a_source_that_ignores_the_user(fitted):
    """The personalised check is not vacuous: popularity (the same list for everyone) fails it."""
    sources, history, missing = fitted
    users = np.arange(2 * GROUP_USERS, dtype=np.int32)
    scores = sources["popularity"].score(users, history.user_items)
    scores[history.user_items[users].toarray() > 0] = -np.inf
    assert (scores.argmax(axis=1) != missing).sum() >= GROUP_USERS  # every user of the group without item 3


def test_a_recent_window_is_what_the_windowed_sources_learn_from():
    frame, _ = known_log()
    history = History(frame, 2 * GROUP_USERS + LATE_USERS, N_ITEMS)
    window = history.recent(1.0)  # the late users' day only
    assert set(window.frame[Columns.ITEM]) == {POPULAR}
    recent = SOURCES["recent_itemknn"].configured(CONFIG.model_copy(update={"recent_cooccurrence_days": 1.0}))
    assert recent.fit_history(history).similarity_.nnz == 0  # one item per user in the window: no co-occurrence
    trending = SOURCES["recent_popularity"].configured(CONFIG.model_copy(update={"recent_popularity_days": 1.0}))
    counts = trending.fit_history(history).popularity_
    assert counts[POPULAR] == LATE_USERS and counts.sum() == LATE_USERS
    binary = interaction_matrix(frame, history.n_users, N_ITEMS, "binary")
    assert sp.issparse(history.user_items) and (history.user_items != binary).nnz == 0
