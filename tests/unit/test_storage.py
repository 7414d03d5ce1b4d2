"""Compressed retrieval arrays (recops.candidates.storage): the rounding each storage promises, products that read
the compressed arrays equal to the products of their float32 values, and the sources scoring from them."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from recops.candidates import storage
from recops.candidates.sources import EASE, ItemKNN, MatrixFactorization
from recops.candidates.storage import CompressedCSR, RowStore, item_item, sparse_times, top_k_per_row
from recops.bundling import _save_tree
from recops.config import CandidatesConfig
from recops.serving.bundle import _load_tree


@pytest.fixture
def factors() -> np.ndarray:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(300, 64)).astype(np.float32) * rng.uniform(0.01, 3, size=(300, 1)).astype(np.float32)
    x[7] = 0.0  # a row of zeros keeps a usable scale
    return x


def test_int8_rows_are_within_half_a_step_of_their_scale_and_take_a_quarter_of_the_bytes(factors):
    store = RowStore.compress(factors, "int8")
    scale = np.abs(factors).max(axis=1) / 127
    error = np.abs(store.toarray() - factors).max(axis=1)
    assert np.all(error <= scale / 2 + 1e-6 * np.abs(factors).max(axis=1))
    assert np.all(store.toarray()[7] == 0)
    # each row's largest entry is exact
    rows = np.arange(len(factors))
    biggest = np.abs(factors).argmax(axis=1)
    np.testing.assert_allclose(store.toarray()[rows, biggest], factors[rows, biggest], rtol=1e-6)
    assert store.nbytes <= 0.3 * factors.nbytes


def test_float16_rows_round_like_numpy(factors):
    store = RowStore.compress(factors, "float16")
    np.testing.assert_array_equal(store.toarray(), factors.astype(np.float16).astype(np.float32))
    assert store.nbytes == factors.nbytes // 2
    assert RowStore.compress(factors, "float32") is not None and isinstance(RowStore.compress(factors, "float32"),
                                                                          np.ndarray)


@pytest.mark.parametrize("kind", ["int8", "float16"])
def test_the_product_over_chunks_equals_the_product_of_the_rounded_matrix(factors, kind, monkeypatch):
    monkeypatch.setattr(storage, "CHUNK_ROWS", 64)  # several chunks and a short last one (300 = 4 x 64 + 44)
    store = RowStore.compress(factors, kind)
    left = np.random.default_rng(4).normal(size=(5, 64)).astype(np.float32)
    np.testing.assert_allclose(store.times_t(left), left @ store.toarray().T, rtol=1e-5, atol=1e-5)
    index = np.array([[3, 7], [299, 0]])
    np.testing.assert_array_equal(store[index], store.toarray()[index])


@pytest.mark.parametrize("kind", ["int8", "float16"])
def test_item_item_rows_summed_and_multiplied_in_chunks(monkeypatch, kind):
    monkeypatch.setattr(storage, "CHUNK_ROWS", 16)
    rng = np.random.default_rng(5)
    dense = rng.normal(size=(50, 40)).astype(np.float32)
    store = item_item(dense, kind)
    assert isinstance(store, RowStore) and store.storage == kind
    rounded = store.toarray()
    rows = sp.random(6, 50, density=0.2, random_state=1, format="csr", dtype=np.float32)
    np.testing.assert_allclose(sparse_times(rows, store), rows @ rounded, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(sparse_times(rows, sp.csr_matrix(dense)), rows @ dense, rtol=1e-5, atol=1e-5)
    monkeypatch.setattr(storage, "SUM_CHUNK", 3)
    for history in (np.array([1, 4, 9]), np.array([1, 4, 9, 33, 34, 40, 49])):  # one chunk, several
        np.testing.assert_allclose(store.sum_rows(history), rounded[history].sum(axis=0), rtol=1e-5, atol=1e-5)
    # one user's sum and the block product add the same numbers in the same order: equal to the last bit
    history = np.array([0, 2, 3, 15, 16, 17, 30, 31, 33, 47, 49])  # across chunks of 16 rows, pieces of 3
    one = sp.csr_matrix((np.ones(len(history), np.float32), history, [0, len(history)]), shape=(1, 50))
    np.testing.assert_array_equal(store.sum_rows(history), store.left_times(one)[0])
    np.testing.assert_array_equal(store.sum_rows(history), sparse_times(sp.vstack([rows, one]).tocsr(), store)[-1])
    r, c = np.array([1, 4, 4]), np.array([0, 39, 2])
    np.testing.assert_array_equal(store[r, c], rounded[r, c])


@pytest.mark.parametrize("kind", ["int8", "float16"])
def test_a_compressed_sparse_matrix_is_restored_as_its_rounded_float32_values(kind):
    matrix = sp.random(30, 30, density=0.2, random_state=3, format="csr", dtype=np.float32)
    stored = CompressedCSR(matrix, kind)
    restored = CompressedCSR.restore(stored.data, stored.matrix.indices, stored.matrix.indptr, matrix.shape,
                                     stored.scale)
    assert restored.dtype == np.float32 and stored.data.dtype == (np.int8 if kind == "int8" else np.float16)
    step = (abs(matrix).max(axis=1).toarray() / 127) if kind == "int8" else np.abs(matrix.toarray()) / 1024
    assert np.all(np.abs(restored.toarray() - matrix.toarray()) <= step / 2 + 1e-7)
    # the dense copy a server makes rounds to the same integers again
    dense = storage.dense_item_item(restored, kind)
    np.testing.assert_allclose(dense.toarray(), restored.toarray(), rtol=1e-6)


def test_top_k_per_row_keeps_the_largest_magnitudes():
    rng = np.random.default_rng(6)
    weights = rng.normal(size=(30, 25)).astype(np.float32)
    pruned = top_k_per_row(weights, 4)
    assert np.all(np.diff(pruned.indptr) == 4)
    for row in range(30):
        expected = np.sort(np.argsort(-np.abs(weights[row]))[:4])
        np.testing.assert_array_equal(pruned.indices[pruned.indptr[row]:pruned.indptr[row + 1]], expected)
        np.testing.assert_array_equal(pruned[row].toarray()[0, expected], weights[row, expected])
    assert top_k_per_row(weights, 100).nnz == weights.size


def test_bundle_files_keep_the_compressed_bytes(tmp_path, factors):
    similarity = sp.random(40, 40, density=0.1, random_state=2, format="csr", dtype=np.float32)
    tree = {"int8": RowStore.compress(factors, "int8"), "half": RowStore.compress(factors, "float16"),
            "csr": CompressedCSR(similarity, "float16")}
    layout = _save_tree(tmp_path, "t", tree)
    assert np.load(tmp_path / "arrays" / "t" / "int8" / "values.npy").dtype == np.int8
    assert np.load(tmp_path / "arrays" / "t" / "csr" / "data.npy").dtype == np.float16
    loaded = _load_tree(tmp_path, layout)
    np.testing.assert_array_equal(loaded["int8"].toarray(), tree["int8"].toarray())
    np.testing.assert_array_equal(loaded["half"].toarray(), tree["half"].toarray())
    assert loaded["csr"].dtype == np.float32
    np.testing.assert_array_equal(loaded["csr"].toarray(),
                                  similarity.toarray().astype(np.float16).astype(np.float32))


def _history(n_users: int = 80, n_items: int = 60) -> sp.csr_matrix:
    rng = np.random.default_rng(7)
    matrix = sp.random(n_users, n_items, density=0.15, random_state=rng, format="csr", dtype=np.float32)
    matrix.data[:] = 1.0
    return matrix


def test_sources_score_from_compressed_arrays_as_from_their_float32_values():
    history = _history()
    config = CandidatesConfig(factors=16, iterations=5)
    users = np.arange(10)

    mf = MatrixFactorization(config, seed=1).fit(history)
    arrays = dict(mf.to_arrays(), item_factors=RowStore.compress(mf.item_factors_, "int8"),
                  user_factors=RowStore.compress(mf.user_factors_, "int8"))
    compressed = MatrixFactorization.from_arrays(arrays, config)
    rounded = MatrixFactorization.from_arrays(dict(mf.to_arrays(), item_factors=arrays["item_factors"].toarray(),
                                                   user_factors=arrays["user_factors"].toarray()), config)
    np.testing.assert_allclose(compressed.score(users, history), rounded.score(users, history), atol=1e-5)
    np.testing.assert_allclose(compressed.score_user(3, history[3].indices), rounded.score(users, history)[3],
                               atol=1e-5)
    items = history[3].indices
    np.testing.assert_allclose(compressed.fold_in(3, items, np.ones(len(items))),
                               rounded.fold_in(3, items, np.ones(len(items))), atol=1e-4)

    ease = EASE(l2=10.0).fit(history)
    for weights in (item_item(ease.weights_, "float16"), item_item(ease.weights_, "int8"),
                    top_k_per_row(ease.weights_, 12)):
        source = EASE.from_arrays({"weights": weights}, config)
        block = source.score(users, history)
        reference = history[users].toarray() @ weights.toarray()
        np.testing.assert_allclose(block, reference, atol=1e-5)
        np.testing.assert_allclose(source.score_user(4, history[4].indices), block[4], atol=1e-5)

    knn = ItemKNN(neighbours=30).fit(history)
    for kind in ("float16", "int8"):
        compressed = ItemKNN.from_arrays({"similarity": knn.similarity_}, config)
        compressed.dense_storage = kind
        rounded = RowStore.compress(knn.similarity_.toarray(), kind).toarray()
        reference = history[users].toarray() @ rounded
        np.testing.assert_allclose(compressed.score(users, history), reference, atol=1e-5)
        np.testing.assert_allclose(compressed.score_user(2, history[2].indices), reference[2], atol=1e-5)
