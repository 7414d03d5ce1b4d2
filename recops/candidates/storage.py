"""How a serving bundle stores the retrieval arrays, and the products that read them without a float32 copy.

``export.storage`` picks, per kind of array (BENCHMARKS.md "Compressed retrieval" has the measured costs):

- ``mf_factors``: MF user and item factors (and the unit-norm item factors of the sequence features) as float32,
  float16, or int8 with one float32 scale per row (symmetric: ``scale = max |row| / 127``, so a row's largest entry
  is exact and every entry is off by at most ``scale / 2``). In memory the item factors stay compressed
  (:class:`RowStore`): a product reads them in chunks of rows converted to float32, so a server holds a quarter of
  the bytes (int8) at the price of a conversion per request; the user factors are rewritten by live events, so they
  are float32 once loaded.
- ``item_item``: the EASE weights and the item-kNN / similarity-feature cosines as float32, float16 or int8 (a
  scale per row, as above). Dense copies stay compressed in memory (a :class:`RowStore`: a user's scores gather
  their history's rows and sum them in float32); a sparse matrix keeps float16 or int8 values in the bundle and
  is float32 again in memory (scipy.sparse has neither). int8 rows convert to float32 as fast as float32 rows are
  read; float16 ones are 5x slower here (numpy converts float16 without SIMD on this machine).
- ``ease_top_k``: each EASE row cut to its ``k`` largest weights by magnitude and kept sparse (the closed form
  spreads weight over every item; most of it is tiny).

Rounding happens once, at the bundle stage, on the arrays fitted in float32; training and evaluation never see it.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import scipy.sparse as sp
from scipy.sparse import _sparsetools  # the kernel of a CSR matrix times dense vectors (see add_rows)

Storage = Literal["float32", "float16", "int8"]

# rows converted to float32 at a time by the products below: 4096 x 64 factors = 1 MiB, a few cache-sized pieces
CHUNK_ROWS = 4096
# history rows converted at a time by RowStore.sum_rows (64 x 1682 floats: 430 KB, in L2; 400 rows 2x faster
# than converting them all at once)
SUM_CHUNK = 64


def add_rows(matrix: np.ndarray, rows: np.ndarray, weights: np.ndarray, out: np.ndarray) -> None:
    """``out += sum_j weights[j] * matrix[rows[j]]``, the rows taken in the order given, in float32: scipy's own
    kernel for a sparse row times a dense matrix (``csr_matvecs``, what a block product ``rows @ matrix`` runs),
    called directly, so one user's scores are the block's to the last bit without building a sparse row.
    ``matrix`` is a C-contiguous float32 array and ``out`` a float32 vector of its width."""
    _sparsetools.csr_matvecs(1, matrix.shape[0], matrix.shape[1], np.array([0, len(rows)], dtype=np.int32),
                             np.asarray(rows, dtype=np.int32), np.ascontiguousarray(weights, dtype=np.float32),
                             matrix.ravel(), out)


class RowStore:
    """A float matrix kept as float16, or int8 with a float32 scale per row; reads give float32.

    ``store[index]`` (any numpy index of rows) returns those rows as float32; :meth:`times_t` is ``left @ M.T``
    and :meth:`toarray` the whole float32 matrix.
    """

    def __init__(self, values: np.ndarray, scale: np.ndarray | None = None) -> None:
        if values.ndim != 2:
            raise ValueError(f"RowStore holds a matrix, got shape {values.shape}")
        if scale is None and values.dtype != np.float16:
            raise ValueError(f"RowStore values without a scale must be float16, got {values.dtype}")
        if scale is not None and (values.dtype != np.int8 or scale.shape != (len(values),)):
            raise ValueError(f"int8 RowStore needs int8 values and one scale per row, got {values.dtype} "
                             f"{values.shape} and scale {None if scale is None else scale.shape}")
        self.values = values
        self.scale = None if scale is None else np.asarray(scale, dtype=np.float32)

    @classmethod
    def compress(cls, matrix: np.ndarray, storage: Storage) -> np.ndarray | RowStore:
        """``matrix`` as ``storage`` keeps it (float32: a float32 array, unchanged)."""
        matrix = np.asarray(matrix, dtype=np.float32)
        if storage == "float32":
            return matrix
        if storage == "float16":
            return cls(matrix.astype(np.float16))
        scale = (np.abs(matrix).max(axis=1) / np.float32(127.0)).astype(np.float32) if matrix.size else \
            np.zeros(len(matrix), np.float32)
        safe = np.where(scale > 0, scale, np.float32(1.0))
        values = np.clip(np.rint(matrix / safe[:, None]), -127, 127).astype(np.int8)
        return cls(values, scale)

    @property
    def storage(self) -> Storage:
        return "float16" if self.scale is None else "int8"

    @property
    def shape(self) -> tuple[int, int]:
        return self.values.shape

    def __len__(self) -> int:
        return len(self.values)

    @property
    def nbytes(self) -> int:
        return self.values.nbytes + (0 if self.scale is None else self.scale.nbytes)

    def __getitem__(self, index) -> np.ndarray:
        """Rows (any numpy index of rows) as float32; a pair ``(rows, columns)`` of index arrays gives entries."""
        if isinstance(index, tuple):
            rows, columns = index
            values = self.values[rows, columns].astype(np.float32)
            return values if self.scale is None else values * self.scale[rows]
        rows = self.values[index].astype(np.float32)
        if self.scale is not None:
            rows *= self.scale[index][..., None]
        return rows

    def sum_rows(self, rows: np.ndarray) -> np.ndarray:
        """The sum of some rows (sorted indices: one user's history) in float32, with the very additions of
        :meth:`left_times` on that user's binary row: each row times its scale, accumulated in index order within
        a ``CHUNK_ROWS`` chunk of M, the chunks' sums added in order — so an online request and a block of users
        get the same scores to the last bit. The accumulation is scipy's own sparse kernel (``csr_matvecs``, what
        the block product runs), fed ``SUM_CHUNK`` converted rows at a time: they stay in cache, and memory stays
        bounded whatever the history."""
        n = self.values.shape[1]
        out = np.zeros(n, dtype=np.float32)
        rows = np.asarray(rows)
        weights = self.scale[rows] if self.scale is not None else np.ones(len(rows), dtype=np.float32)
        starts = np.r_[0, np.flatnonzero(np.diff(rows // CHUNK_ROWS)) + 1, len(rows)] if len(rows) else [0]
        for first, last in zip(starts[:-1], starts[1:]):
            total = np.zeros(n, dtype=np.float32)
            for start in range(first, last, SUM_CHUNK):
                piece = slice(start, min(start + SUM_CHUNK, last))
                size = piece.stop - piece.start
                converted = np.ascontiguousarray(self.values[rows[piece]], dtype=np.float32)
                add_rows(converted, np.arange(size), weights[piece], total)  # j in order
            out += total
        return out

    def left_times(self, block: sp.csr_matrix) -> np.ndarray:
        """``block @ M`` (a sparse block of user rows), converting ``CHUNK_ROWS`` rows of M at a time."""
        block = sp.csr_matrix(block, dtype=np.float32)
        if self.scale is not None:  # block @ diag(scale) @ values
            block = block @ sp.diags(self.scale)
        block = block.tocsc()
        out = np.zeros((block.shape[0], self.values.shape[1]), dtype=np.float32)
        for start in range(0, len(self.values), CHUNK_ROWS):
            part = block[:, start:start + CHUNK_ROWS]
            if part.nnz:
                out += part @ self.values[start:start + CHUNK_ROWS].astype(np.float32)
        return out

    def toarray(self) -> np.ndarray:
        return self[:]

    def times_t(self, left: np.ndarray) -> np.ndarray:
        """``left @ M.T`` (float32), converting ``CHUNK_ROWS`` rows of M at a time."""
        left = np.asarray(left, dtype=np.float32)
        out = np.empty((len(left), len(self.values)), dtype=np.float32)
        for start in range(0, len(self.values), CHUNK_ROWS):
            stop = start + CHUNK_ROWS
            out[:, start:stop] = left @ self.values[start:stop].astype(np.float32).T
            if self.scale is not None:
                out[:, start:stop] *= self.scale[start:stop]
        return out


def times_t(left: np.ndarray, matrix: np.ndarray | RowStore) -> np.ndarray:
    """``left @ matrix.T`` for a float32 array or a :class:`RowStore`."""
    if isinstance(matrix, RowStore):
        return matrix.times_t(left)
    return left @ matrix.T


def dense(matrix: np.ndarray | RowStore) -> np.ndarray:
    """The float32 matrix (a RowStore converted; a float32 array as it is)."""
    return matrix.toarray() if isinstance(matrix, RowStore) else np.asarray(matrix, dtype=np.float32)


def sparse_times(rows: sp.csr_matrix, matrix: np.ndarray | sp.csr_matrix | RowStore) -> np.ndarray:
    """``rows @ matrix`` as a dense float32 block: ``matrix`` dense float32 (one BLAS product), sparse, or a
    :class:`RowStore` (converted in chunks of rows, never as a whole)."""
    if isinstance(matrix, RowStore):
        return matrix.left_times(rows)
    if sp.issparse(matrix):
        return np.asarray((rows @ matrix).toarray(), dtype=np.float32)
    return np.asarray(rows @ matrix, dtype=np.float32)


class CompressedCSR:
    """A CSR matrix whose values a bundle stores as float16, or as int8 with a float32 scale per row
    (``_save_tree``); loading gives a float32 CSR matrix of the rounded values again (scipy.sparse has neither)."""

    def __init__(self, matrix: sp.csr_matrix, storage: Storage) -> None:
        self.matrix = sp.csr_matrix(matrix, dtype=np.float32)
        self.storage = storage
        if storage == "float16":
            self.data, self.scale = self.matrix.data.astype(np.float16), None
        else:
            magnitude = abs(self.matrix).max(axis=1).toarray().ravel().astype(np.float32)
            self.scale = (magnitude / np.float32(127.0)).astype(np.float32)
            safe = np.where(self.scale > 0, self.scale, np.float32(1.0))
            per_entry = np.repeat(safe, np.diff(self.matrix.indptr))
            self.data = np.clip(np.rint(self.matrix.data / per_entry), -127, 127).astype(np.int8)

    @property
    def nbytes(self) -> int:
        scale = 0 if self.scale is None else self.scale.nbytes
        return self.data.nbytes + scale + self.matrix.indices.nbytes + self.matrix.indptr.nbytes

    @staticmethod
    def restore(data: np.ndarray, indices: np.ndarray, indptr: np.ndarray, shape: tuple[int, int],
                scale: np.ndarray | None) -> sp.csr_matrix:
        values = data.astype(np.float32)
        if scale is not None:
            values *= np.repeat(scale, np.diff(indptr))
        return sp.csr_matrix((values, indices, indptr), shape=shape)


def item_item(matrix: np.ndarray | sp.csr_matrix, storage: Storage):
    """An item-item matrix as ``export.storage.item_item`` stores it: as it is (float32), a dense
    :class:`RowStore`, or a :class:`CompressedCSR`."""
    if storage == "float32":
        return matrix
    if sp.issparse(matrix):
        return CompressedCSR(matrix, storage)
    return RowStore.compress(matrix, storage)


def dense_item_item(matrix: sp.csr_matrix, storage: Storage) -> np.ndarray | RowStore:
    """The dense in-memory copy of a (loaded, float32) item-item CSR matrix in the bundle's storage: rounding
    the stored values again gives the same integers (an int8 row's largest entry is 127 x its scale)."""
    return RowStore.compress(matrix.toarray(), storage)


def top_k_per_row(weights: np.ndarray, k: int) -> sp.csr_matrix:
    """Each row's ``k`` largest entries by magnitude, as a CSR matrix with sorted columns; the rest dropped. Rows
    are selected ``CHUNK_ROWS`` at a time (``argpartition``: linear in the row length), so the index arrays stay
    small whatever the catalogue."""
    weights = np.asarray(weights)
    n_rows, n_cols = weights.shape
    k = min(k, n_cols)
    columns = np.empty((n_rows, k), dtype=np.int32)
    for start in range(0, n_rows, CHUNK_ROWS):
        block = np.abs(weights[start:start + CHUNK_ROWS])
        part = np.argpartition(-block, k - 1, axis=1)[:, :k] if 0 < k < n_cols else \
            np.broadcast_to(np.arange(k), (len(block), k))
        columns[start:start + len(block)] = np.sort(part, axis=1)
    values = np.take_along_axis(weights, columns, axis=1).astype(np.float32)
    indptr = np.arange(0, n_rows * k + 1, max(k, 1), dtype=np.int64)[:n_rows + 1] if k else \
        np.zeros(n_rows + 1, np.int64)
    return sp.csr_matrix((values.ravel(), columns.ravel(), indptr), shape=weights.shape)
