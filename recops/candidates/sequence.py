"""The ``sequence`` candidate source: a self-attentive sequential model (SASRec-style) over each user's last items.

Fitted on a fold's history with PyTorch (``recops.candidates.sequence_model``, the optional extra
``recops[sequence]``); everything else is arrays: the users' encodings (the transformer's output at the last
position of their sequence), the item embeddings, each user's last ``sequence_length`` items, and the encoder
exported to ONNX. A block of users scores ``encodings[users] @ item_embeddings.T`` (as MF does); a live event
appends the item to the user's sequence and re-encodes that user with the ONNX encoder in onnxruntime, so the next
request reflects it and the request path never imports PyTorch.
"""

from __future__ import annotations

import importlib.util
import logging
from typing import Any

import numpy as np
import scipy.sparse as sp

from recops.candidates.sources import CandidateSource, History
from recops.candidates.storage import RowStore, dense, times_t
from recops.columns import Columns
from recops.config import CandidatesConfig, StorageConfig
from recops.data.order import user_time_order
from recops.errors import RecopsError
from recops.onnx_runtime import inference_session
from recops.threads import blas_limits

log = logging.getLogger(__name__)

INSTALL = ("the sequence source trains with PyTorch, which is an optional extra: install it with "
           "`pip install -e '.[sequence]'` (or `make install-sequence`), or remove `sequence` from "
           "candidates.sources in params.yaml")
# the encoder's ONNX output may differ from PyTorch's in float32 rounding; more than this is a broken export
PARITY_TOLERANCE = 1e-4


def require_torch() -> None:
    """Raise the install hint when PyTorch is missing (checked before any work starts)."""
    if importlib.util.find_spec("torch") is None:
        raise RecopsError(INSTALL)


def chronological(frame, n_users: int) -> tuple[np.ndarray, np.ndarray]:
    """(indptr, items): each user's items in time order (ties by item index), CSR-style over ``n_users``."""
    users = frame[Columns.USER].to_numpy()
    items = frame[Columns.ITEM].to_numpy()
    order = user_time_order(users, items, frame[Columns.TIMESTAMP].to_numpy(), newest_first=False)
    indptr = np.zeros(n_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(users, minlength=n_users), out=indptr[1:])
    return indptr, items[order].astype(np.int64)


def last_codes(indptr: np.ndarray, items: np.ndarray, length: int) -> np.ndarray:
    """Each user's last ``length`` items as the encoder reads them (``n_users x length`` int64: item + 1, oldest
    first, left-padded with 0)."""
    n_users = len(indptr) - 1
    positions = indptr[1:, None] - length + np.arange(length)[None, :]
    valid = positions >= indptr[:-1, None]
    if not len(items):
        return np.zeros((n_users, length), dtype=np.int64)
    return np.where(valid, items[np.where(valid, positions, 0)] + 1, 0).astype(np.int64)


class SequenceSource(CandidateSource):
    """Scores ``encoding(user's last items) . item embedding``; users without history score 0 (the merge makes
    them abstain)."""

    name = "sequence"
    exact_one_row = False  # a BLAS product, as MF's

    def __init__(self, config: CandidatesConfig, seed: int = 0, threads: int = 1) -> None:
        self.config, self.seed, self.threads = config, seed, threads
        self.encoder_: bytes | None = None
        self._session = None

    @classmethod
    def configured(cls, config: CandidatesConfig, seed: int = 0, threads: int = 1) -> SequenceSource:
        require_torch()  # a source to be fitted: say what to install before any work
        return cls(config, seed=seed, threads=threads)

    def fit_history(self, history: History) -> SequenceSource:
        from recops.candidates import sequence_model

        indptr, items = chronological(history.frame, history.n_users)
        trained = sequence_model.train(indptr, items, history.n_items, self.config, self.seed, self.threads)
        self.model_ = trained.model
        self.codes_ = last_codes(indptr, items, self.config.sequence_length)
        self.has_history_ = np.diff(indptr) > 0
        self.item_embeddings_ = sequence_model.item_embeddings(trained.model)
        self.user_vectors_ = np.zeros((history.n_users, self.config.sequence_embedding), dtype=np.float32)
        self.user_vectors_[self.has_history_] = sequence_model.encode(trained.model, self.codes_[self.has_history_],
                                                                      self.threads)
        self.fit_report_ = {"seconds": trained.seconds, "windows": trained.windows, "epochs": trained.epochs,
                            "loss": trained.final_loss}
        log.info("sequence: %d windows, %d epochs in %.1f s, final loss %.3f", trained.windows, trained.epochs,
                 trained.seconds, trained.final_loss)
        return self

    def score(self, users: np.ndarray, user_items: sp.csr_matrix) -> np.ndarray:
        with blas_limits(self.threads):
            out = times_t(self.user_vectors_[users], self.item_embeddings_)
        out[~self.has_history_[users]] = 0.0
        return out.astype(np.float32, copy=False)

    def score_user(self, user: int, history: np.ndarray) -> np.ndarray:
        with blas_limits(self.threads):
            out = times_t(self.user_vectors_[user:user + 1], self.item_embeddings_)
        if not self.has_history_[user]:
            out[:] = 0.0
        return out[0].astype(np.float32, copy=False)

    # --- the bundle form ---------------------------------------------------------------------------------------

    def encoder(self) -> bytes:
        """The ONNX encoder, exported from the trained model on first use and checked against it: every user's
        encoding by onnxruntime within ``PARITY_TOLERANCE`` of PyTorch's (else a RecopsError with the gap)."""
        if self.encoder_ is None:
            from recops.candidates import sequence_model

            exported = sequence_model.export_onnx(self.model_, self.config.sequence_length)
            known = np.flatnonzero(self.has_history_)
            gap = float(np.abs(_run(inference_session(exported, self.threads), self.codes_[known])
                               - self.user_vectors_[known]).max(initial=0.0)) if len(known) else 0.0
            if gap > PARITY_TOLERANCE:
                raise RecopsError(f"sequence source: the ONNX encoder differs from PyTorch's by {gap:.2e} on some "
                                  f"user's encoding (tolerance {PARITY_TOLERANCE:g}): the export is broken")
            log.info("sequence: ONNX encoder (%d KB), max |ONNX - PyTorch| %.1e over %d users", len(exported) // 1024,
                     gap, len(known))
            self.encoder_ = exported
        return self.encoder_

    def to_arrays(self) -> dict[str, Any]:
        return {"user_vectors": self.user_vectors_, "item_embeddings": self.item_embeddings_,
                "has_history": self.has_history_, "codes": self.codes_,
                "encoder": np.frombuffer(self.encoder(), dtype=np.uint8)}

    def stored_arrays(self, storage: StorageConfig) -> dict[str, Any]:
        arrays = dict(self.to_arrays())
        arrays["item_embeddings"] = RowStore.compress(arrays["item_embeddings"], storage.mf_factors)
        return arrays

    @classmethod
    def from_arrays(cls, arrays: dict, config: CandidatesConfig, threads: int = 1) -> SequenceSource:
        """A fitted source from stored arrays: the encodings and sequences writable (live events change them),
        the item embeddings as stored (float32 or a compressed :class:`RowStore`)."""
        source = cls(config, threads=threads)
        source.user_vectors_ = np.array(dense(arrays["user_vectors"]), dtype=np.float32)
        items = arrays["item_embeddings"]
        source.item_embeddings_ = items if isinstance(items, RowStore) else np.ascontiguousarray(items, np.float32)
        source.has_history_ = np.array(arrays["has_history"], dtype=bool)
        source.codes_ = np.array(arrays["codes"], dtype=np.int64)
        source.encoder_ = np.asarray(arrays["encoder"], dtype=np.uint8).tobytes()
        return source

    # --- live events -------------------------------------------------------------------------------------------

    def live_event(self, user: int, item: int, latest: bool, history) -> None:
        if latest:  # an event older than the user's last one does not move the end of their sequence
            self.append(user, item)

    def append(self, user: int, item: int) -> np.ndarray:
        """A live event: ``item`` becomes the user's most recent one; the user is re-encoded by the ONNX encoder
        (onnxruntime) at once. Returns the new encoding."""
        codes = self.codes_[user]
        codes[:-1] = codes[1:].copy()
        codes[-1] = item + 1
        if self._session is None:
            self._session = inference_session(self.encoder(), self.threads)
        vector = _run(self._session, codes[None])[0]
        self.user_vectors_[user] = vector
        self.has_history_[user] = True
        return vector


def _run(session, codes: np.ndarray, batch: int = 1024) -> np.ndarray:
    parts = [session.run(["encoding"], {"codes": np.ascontiguousarray(codes[start:start + batch], dtype=np.int64)})[0]
             for start in range(0, len(codes), batch)]
    return np.concatenate(parts).astype(np.float32) if parts else np.zeros((0, 0), dtype=np.float32)
