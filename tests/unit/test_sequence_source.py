"""The ``sequence`` source (a SASRec-style transformer, recops.candidates.sequence): it learns what comes next where
matrix factorization cannot, its ONNX encoder gives PyTorch's encodings, live events re-encode a user without
PyTorch, a fold's source never depends on what follows the fold's cut, and bad settings or a missing extra say
what is wrong."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pydantic
import pytest

from recops.candidates.registry import SOURCES
from recops.candidates.sequence import chronological, last_codes
from recops.candidates.sources import History
from recops.columns import Columns
from recops.config import CandidatesConfig
from recops.errors import RecopsError

pytest.importorskip("torch", reason="the sequence source's extra (make install-sequence) is not installed")

SMALL = CandidatesConfig(sources=["sequence", "mf"], sequence_length=6, sequence_embedding=32, sequence_heads=2,
                         sequence_layers=2, sequence_dropout=0.0, sequence_epochs=40, sequence_batch_size=64,
                         sequence_learning_rate=0.005, factors=16, iterations=20)


def chain_log(n_users: int = 480, n_chains: int = 16, chain_length: int = 10, n_items: int = 60, seed: int = 0
              ) -> tuple[pd.DataFrame, np.ndarray, int]:
    """(history, each user's next item, n_items): users walk fixed chains of items; the chains share items, so
    the previous item alone is ambiguous, and the next item is a function of the previous two. Each user's
    history is 3-6 consecutive steps of one chain from a random start; the next step is held out."""
    rng = np.random.default_rng(seed)
    chains, pairs = [], {}
    while len(chains) < n_chains:
        chain = rng.choice(n_items, size=chain_length, replace=False)
        steps = {(a, b): c for a, b, c in zip(chain, chain[1:], chain[2:])}
        if all(pairs.get(pair, c) == c for pair, c in steps.items()):  # the next item: a function of the last two
            chains.append(chain)
            pairs.update(steps)
    rows, following = [], []
    for user in range(n_users):
        chain = chains[user % n_chains]
        steps = int(rng.integers(3, 7))
        start = int(rng.integers(0, chain_length - steps))
        rows += [(user, int(item), float(1_000 * user + t)) for t, item in enumerate(chain[start:start + steps])]
        following.append(chain[start + steps])
    frame = pd.DataFrame(rows, columns=[Columns.USER, Columns.ITEM, Columns.TIMESTAMP])
    return frame, np.array(following), n_items


def hit_rate(source, history: History, following: np.ndarray) -> float:
    users = np.arange(history.n_users, dtype=np.int32)
    scores = source.score(users, history.user_items)
    scores[history.user_items.toarray() > 0] = -np.inf
    return float((scores.argmax(axis=1) == following).mean())


@pytest.fixture(scope="module")
def chains():
    frame, following, n_items = chain_log()
    history = History(frame, int(frame[Columns.USER].max()) + 1, n_items)
    sequence = SOURCES["sequence"].configured(SMALL, seed=3, threads=1).fit_history(history)
    return history, following, sequence


def test_the_sequence_source_finds_the_next_item_where_mf_cannot(chains):
    history, following, sequence = chains
    mf = SOURCES["mf"].configured(SMALL, seed=3, threads=1).fit_history(history)
    ours, theirs = hit_rate(sequence, history, following), hit_rate(mf, history, following)
    # measured over seeds 1-3: 0.82-0.84 against MF's 0.34 (a few next steps are never seen in training)
    assert ours >= 0.75, ours
    assert theirs <= 0.45 and ours >= 2 * theirs, (ours, theirs)  # MF sees a user's chain, not where on it


def test_training_windows_cover_every_next_item_once():
    from recops.candidates.sequence_model import training_windows

    indptr = np.array([0, 5, 6, 6])  # user 0: items 10..14, user 1: one item, user 2: none
    items = np.array([10, 11, 12, 13, 14, 20])
    inputs, targets = training_windows(indptr, items, length=3, max_windows=None)
    # codes are item + 1; windows of 4 items cut from the end: (11, 12, 13, 14) then (10, 11) left-padded
    np.testing.assert_array_equal(inputs, [[12, 13, 14], [0, 0, 11]])
    np.testing.assert_array_equal(targets, [[13, 14, 15], [0, 11, 12]])
    # the loss reads positions with an item before them: every item but a user's first is a target once
    assert sorted(targets[(targets > 0) & (inputs > 0)] - 1) == [11, 12, 13, 14]
    inputs, targets = training_windows(indptr, items, length=3, max_windows=1)
    np.testing.assert_array_equal(targets, [[13, 14, 15]])
    np.testing.assert_array_equal(last_codes(indptr, items, 3), [[13, 14, 15], [0, 0, 21], [0, 0, 0]])


def test_the_onnx_encoder_gives_pytorchs_encodings_and_a_live_event_reencodes_the_user(chains):
    from recops.candidates import sequence_model

    history, _, sequence = chains
    loaded = SOURCES["sequence"].from_arrays(sequence.to_arrays(), SMALL, threads=1)
    users = np.arange(history.n_users, dtype=np.int32)
    np.testing.assert_array_equal(loaded.score(users, history.user_items), sequence.score(users, history.user_items))
    user, item = 5, 42
    expected_codes = np.r_[sequence.codes_[user][1:], item + 1]
    vector = loaded.append(user, item)
    np.testing.assert_array_equal(loaded.codes_[user], expected_codes)
    torch_vector = sequence_model.encode(sequence.model_, expected_codes[None], threads=1)[0]
    np.testing.assert_allclose(vector, torch_vector, atol=1e-5)
    assert not np.allclose(vector, sequence.user_vectors_[user])  # the event changed what the user gets
    np.testing.assert_allclose(loaded.score_user(user, np.array([item])),
                               torch_vector @ sequence.item_embeddings_.T, rtol=1e-5, atol=1e-5)


def test_a_folds_source_depends_on_nothing_after_its_cut():
    """Fitted on the interactions before a cut, the source is the same to the last bit whatever happens after
    it (what the fold's targets are): training reads the fold's history and nothing else, deterministically."""
    frame, _, n_items = chain_log(n_users=96, seed=1)
    cut = np.quantile(frame[Columns.TIMESTAMP], 0.7)
    before = frame[frame[Columns.TIMESTAMP] < cut]
    after = frame[frame[Columns.TIMESTAMP] >= cut]
    shuffled = after.assign(**{Columns.ITEM: np.random.default_rng(0).permutation(after[Columns.ITEM].to_numpy())})
    n_users = int(frame[Columns.USER].max()) + 1
    config = SMALL.model_copy(update={"sequence_epochs": 3})
    fits = []
    for later in (after, shuffled):
        log = pd.concat([before, later], ignore_index=True)
        history = History(log[log[Columns.TIMESTAMP] < cut].reset_index(drop=True), n_users, n_items)
        fits.append(SOURCES["sequence"].configured(config, seed=11).fit_history(history))
    np.testing.assert_array_equal(fits[0].user_vectors_, fits[1].user_vectors_)
    np.testing.assert_array_equal(fits[0].item_embeddings_, fits[1].item_embeddings_)


def test_chronological_sequences_follow_time_not_row_order():
    frame = pd.DataFrame({Columns.USER: [0, 0, 0, 1], Columns.ITEM: [7, 3, 5, 2],
                          Columns.TIMESTAMP: [30.0, 10.0, 20.0, 5.0]})
    indptr, items = chronological(frame, 3)
    np.testing.assert_array_equal(indptr, [0, 3, 4, 4])
    np.testing.assert_array_equal(items, [3, 5, 7, 2])


@pytest.mark.parametrize("settings, words", [
    ({"sequence_length": 0}, ["sequence_length", "greater than or equal to 1"]),
    ({"sequence_embedding": 30, "sequence_heads": 4}, ["sequence_embedding (30)", "divisible",
                                                       "sequence_heads (4)"]),
])
def test_bad_sequence_settings_say_what_is_wrong(settings, words):
    with pytest.raises(pydantic.ValidationError) as caught:
        CandidatesConfig(**settings)
    for word in words:
        assert word in str(caught.value)


def test_a_run_with_the_source_but_without_the_extra_says_what_to_install(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a))
    with pytest.raises(RecopsError, match=r"pip install -e '\.\[sequence\]'"):
        SOURCES["sequence"].configured(SMALL)


def test_scoring_and_live_events_never_import_pytorch(chains, tmp_path):
    """What a server does with a stored sequence source (load, score, apply an event) runs without PyTorch."""
    _, _, sequence = chains
    np.savez(tmp_path / "arrays.npz", **sequence.to_arrays())
    script = textwrap.dedent(f"""
        import sys
        import numpy as np
        import scipy.sparse as sp
        from recops.candidates.registry import SOURCES
        from recops.config import CandidatesConfig
        arrays = dict(np.load({str(tmp_path / "arrays.npz")!r}))
        config = CandidatesConfig.model_validate_json({SMALL.model_dump_json()!r})
        source = SOURCES["sequence"].from_arrays(arrays, config, threads=1)
        n_users, n_items = len(arrays["user_vectors"]), len(arrays["item_embeddings"])
        source.score(np.arange(n_users), sp.csr_matrix((n_users, n_items)))
        source.append(0, 1)
        source.score_user(0, np.array([1]))
        assert "torch" not in sys.modules, sorted(m for m in sys.modules if m.startswith("torch"))
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_a_sampled_softmax_learns_the_chains_too(chains):
    """``sequence_negatives``: the large-catalogue loss (shared uniform negatives) finds the same next items."""
    history, following, full = chains
    sampled = SOURCES["sequence"].configured(SMALL.model_copy(update={"sequence_negatives": 16}), seed=3,
                                             threads=1).fit_history(history)
    assert hit_rate(sampled, history, following) >= 0.75  # measured 0.82-0.84 (seeds 3-4, 16 or 30 negatives)
