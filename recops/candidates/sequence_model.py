"""The training side of the ``sequence`` source: a SASRec-style transformer in PyTorch, its training on one fold's
history, and its export to ONNX.

Imported only when a sequence source is fitted (the optional extra ``recops[sequence]``, PyTorch's CPU build);
scoring, the serving bundle and the server never import it: they hold the users' encodings and the item
embeddings as arrays, and re-encode a user after a live event with the exported encoder in onnxruntime
(``recops.candidates.sequence``).

The model: item embeddings (index 0 is padding, item ``i`` is ``i + 1``) scaled by sqrt(d) plus learned position
embeddings, ``sequence_layers`` pre-norm blocks of causal multi-head self-attention and a feed-forward layer, a
final layer norm. The encoding of a sequence at position t sees items up to t only; a user's encoding is the
last position's. Training predicts each next item (every interaction of the fold's history is a target once,
in windows of ``sequence_length + 1`` items cut from the end of each user's sequence) with a softmax over the
whole catalogue, or over shared uniform negatives (``sequence_negatives``) for large catalogues; the logits are
dot products with the same item embeddings the candidates are scored with.
"""

from __future__ import annotations

import io
import logging
import math
import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from recops.config import CandidatesConfig

log = logging.getLogger(__name__)


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.feed = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(2 * dim, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, blocked: torch.Tensor) -> torch.Tensor:
        batch, length, dim = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(batch, length, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        weights = (q @ k.transpose(-1, -2)) / math.sqrt(dim // self.heads)
        weights = torch.softmax(weights.masked_fill(blocked, float("-inf")), dim=-1)
        attended = (self.drop(weights) @ v).transpose(1, 2).reshape(batch, length, dim)
        x = x + self.drop(self.out(attended))
        return x + self.drop(self.feed(self.norm2(x)))


class SequenceEncoder(nn.Module):
    """(batch, sequence_length) item codes (0 padding, left-padded) -> hidden states or the user's encoding."""

    def __init__(self, n_items: int, config: CandidatesConfig) -> None:
        super().__init__()
        dim, length = config.sequence_embedding, config.sequence_length
        self.scale = math.sqrt(dim)
        self.items = nn.Embedding(n_items + 1, dim, padding_idx=0)
        self.positions = nn.Embedding(length, dim)
        self.blocks = nn.ModuleList(_Block(dim, config.sequence_heads, config.sequence_dropout)
                                    for _ in range(config.sequence_layers))
        self.norm = nn.LayerNorm(dim)
        self.drop = nn.Dropout(config.sequence_dropout)
        nn.init.normal_(self.items.weight, std=dim ** -0.5)
        with torch.no_grad():
            self.items.weight[0].zero_()
        self.register_buffer("causal", torch.triu(torch.ones(length, length, dtype=torch.bool), 1), persistent=False)
        self.register_buffer("diagonal", torch.eye(length, dtype=torch.bool), persistent=False)

    def hidden(self, codes: torch.Tensor) -> torch.Tensor:
        present = codes > 0
        x = self.items(codes) * self.scale + self.positions.weight[None]
        x = self.drop(x) * present[..., None]
        # a position attends to itself and the earlier items that are there (never to padding, never ahead)
        blocked = self.causal[None, None] | (~present[:, None, None, :] & ~self.diagonal[None, None])
        for block in self.blocks:
            x = block(x, blocked)
        return self.norm(x)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        return self.hidden(codes)[:, -1]


def training_windows(indptr: np.ndarray, items: np.ndarray, length: int, max_windows: int | None
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, targets), each ``windows x length`` int64 item codes (item + 1; 0 padding on the left), from the
    users' chronological sequences (``items[indptr[u]:indptr[u + 1]]``): windows of ``length + 1`` items cut from
    the end of each sequence, so every item but a user's first is a target once (``max_windows``: the most recent
    windows of each user only)."""
    sizes = np.diff(indptr)
    per_user = np.maximum(0, -(-(sizes - 1) // length))  # ceil((size - 1) / length) windows
    if max_windows is not None:
        per_user = np.minimum(per_user, max_windows)
    users = np.repeat(np.arange(len(sizes)), per_user)
    # the j-th window of a user (j = 0: the most recent) ends at its sequence's end - j * length
    j = np.arange(len(users)) - np.repeat(np.cumsum(per_user) - per_user, per_user)
    end = indptr[users + 1] - j * length  # exclusive
    positions = end[:, None] - (length + 1) + np.arange(length + 1)[None, :]
    valid = positions >= indptr[users][:, None]
    codes = np.where(valid, items[np.where(valid, positions, 0)].astype(np.int64) + 1, 0)
    return codes[:, :-1], codes[:, 1:]


@dataclass
class Trained:
    model: SequenceEncoder
    seconds: float
    epochs: int
    windows: int
    final_loss: float


def train(indptr: np.ndarray, items: np.ndarray, n_items: int, config: CandidatesConfig, seed: int,
          threads: int) -> Trained:
    """The encoder trained on the users' chronological sequences (see the module doc), deterministic for a seed
    and a thread count."""
    started = time.perf_counter()
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        inputs, targets = (torch.from_numpy(a) for a in training_windows(
            indptr, items, config.sequence_length, config.sequence_max_windows))
        model = SequenceEncoder(n_items, config)
        optimiser = torch.optim.Adam(model.parameters(), lr=config.sequence_learning_rate)
        model.train()
        loss_value = float("nan")
        for epoch in range(config.sequence_epochs):
            order = torch.randperm(len(inputs), generator=generator)
            total, count = 0.0, 0
            for start in range(0, len(order), config.sequence_batch_size):
                batch = order[start:start + config.sequence_batch_size]
                loss = _loss(model, inputs[batch], targets[batch], n_items, config.sequence_negatives, generator)
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                total, count = total + float(loss.detach()) * len(batch), count + len(batch)
            loss_value = total / max(count, 1)
            log.debug("sequence: epoch %d loss %.4f", epoch + 1, loss_value)
        model.eval()
        return Trained(model, time.perf_counter() - started, config.sequence_epochs, len(inputs), loss_value)
    finally:
        torch.set_num_threads(previous)


def _loss(model: SequenceEncoder, inputs: torch.Tensor, targets: torch.Tensor, n_items: int,
          negatives: int | None, generator: torch.Generator) -> torch.Tensor:
    hidden = model.hidden(inputs)
    present = (targets > 0) & (inputs > 0)  # a next item with an item before it
    hidden, wanted = hidden[present], targets[present]  # (positions, d), their next items' codes
    table = model.items.weight
    if negatives is None:  # full softmax over the catalogue (codes 1..n_items)
        return nn.functional.cross_entropy(hidden @ table[1:].T, wanted - 1)
    sampled = torch.randint(1, n_items + 1, (negatives,), generator=generator)
    positive = (hidden * table[wanted]).sum(-1, keepdim=True)
    negative = hidden @ table[sampled].T
    negative = negative.masked_fill(sampled[None, :] == wanted[:, None], float("-inf"))  # a target drawn as negative
    return nn.functional.cross_entropy(torch.cat([positive, negative], dim=1),
                                       torch.zeros(len(wanted), dtype=torch.long))


def encode(model: SequenceEncoder, codes: np.ndarray, threads: int, batch: int = 1024) -> np.ndarray:
    """Each sequence's encoding (``len(codes) x d`` float32), in eval mode."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            parts = [model(torch.from_numpy(np.ascontiguousarray(codes[start:start + batch], dtype=np.int64)))
                     .numpy() for start in range(0, len(codes), batch)]
    finally:
        torch.set_num_threads(previous)
    dim = model.items.weight.shape[1]
    return np.concatenate(parts).astype(np.float32) if parts else np.zeros((0, dim), dtype=np.float32)


def item_embeddings(model: SequenceEncoder) -> np.ndarray:
    """The catalogue's embeddings (``n_items x d`` float32, item index order: padding dropped)."""
    return model.items.weight.detach()[1:].numpy().astype(np.float32).copy()


def export_onnx(model: SequenceEncoder, length: int) -> bytes:
    """The encoder as an ONNX model: input ``codes`` (batch x length int64), output ``encoding`` (batch x d)."""
    example = torch.zeros((2, length), dtype=torch.int64)
    example[:, -1] = 1
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's notes on deprecated paths it does not take
        torch.onnx.export(model, (example,), buffer, input_names=["codes"], output_names=["encoding"],
                          dynamic_axes={"codes": {0: "batch"}, "encoding": {0: "batch"}}, dynamo=False,
                          opset_version=17)
    return buffer.getvalue()
