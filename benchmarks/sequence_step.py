"""One training step of the ``sequence`` source's model: the attention as recops spells it out (scores, mask,
softmax, dropout, product) against PyTorch's fused ``scaled_dot_product_attention``, in one process.

    .venv/bin/python -m benchmarks.sequence_step [--rounds 10] [--steps 8]

Run after `make run` (the split stage's train.parquet is the history) with the extra installed. One thread. Both
arms train a copy of the same initial model on the same batches of 128 windows; rounds alternate the arms in
ABBA order, ``--steps`` steps per arm and round. For the full and the sampled softmax (256 negatives), with
params.yaml's dropout and with dropout 0, prints ms per step of each arm and the ratio (spelled out / fused) with
a 95% interval over rounds (t interval on the log ratios), and checks first that both arms give the same
encodings in eval mode.
"""

from __future__ import annotations

import argparse
import copy
import math
import time
from pathlib import Path

import numpy as np


def fused_attention(self, x, blocked):
    """The attention block's forward with PyTorch's fused attention (the alternative arm)."""
    import torch

    batch, length, dim = x.shape
    q, k, v = self.qkv(self.norm1(x)).view(batch, length, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
    attended = torch.nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=~blocked, dropout_p=self.drop.p if self.training else 0.0)
    attended = attended.transpose(1, 2).reshape(batch, length, dim)
    x = x + self.drop(self.out(attended))
    return x + self.drop(self.feed(self.norm2(x)))


def main() -> None:
    import pandas as pd
    import torch
    from scipy import stats

    from recops.candidates import sequence_model
    from recops.candidates.sequence import chronological
    from recops.columns import Columns
    from recops.config import load_settings

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(1)
    settings = load_settings(args.params)
    frame = pd.read_parquet(settings.path("split_dir") / "train.parquet")
    n_users, n_items = int(frame[Columns.USER].max()) + 1, int(frame[Columns.ITEM].max()) + 1
    indptr, items = chronological(frame, n_users)
    inputs, targets = (torch.from_numpy(a) for a in sequence_model.training_windows(
        indptr, items, settings.candidates.sequence_length, None))
    spelled_forward = sequence_model._Block.forward
    batch = settings.candidates.sequence_batch_size
    print(f"{len(inputs)} windows of {settings.candidates.sequence_length}, batch {batch}, one thread; "
          f"{args.rounds} ABBA rounds x {args.steps} steps per arm\n")
    print("| softmax | dropout | spelled out ms/step | fused ms/step | spelled out / fused (95% CI) |")
    print("|---|---:|---:|---:|---:|")
    for negatives in (None, 256):
        for dropout in (settings.candidates.sequence_dropout, 0.0):
            config = settings.candidates.model_copy(update={"sequence_dropout": dropout,
                                                            "sequence_negatives": negatives})
            torch.manual_seed(0)
            start = sequence_model.SequenceEncoder(n_items, config)
            arms = {}
            for name in ("fused", "spelled"):
                model = copy.deepcopy(start)
                arms[name] = (model, torch.optim.Adam(model.parameters(), lr=1e-3),
                              torch.Generator().manual_seed(0))
            probe = inputs[:256].numpy()
            check = sequence_model.encode(arms["spelled"][0].eval(), probe, 1)
            sequence_model._Block.forward = fused_attention
            gap = np.abs(sequence_model.encode(arms["fused"][0].eval(), probe, 1) - check).max()
            sequence_model._Block.forward = spelled_forward
            assert gap < 1e-4, f"the two arms disagree by {gap}"
            times = {"fused": [], "spelled": []}
            cursor = 0
            for round_ in range(args.rounds):
                order = ("fused", "spelled") if round_ % 2 == 0 else ("spelled", "fused")
                for name in order:
                    model, optimiser, generator = arms[name]
                    model.train()
                    sequence_model._Block.forward = fused_attention if name == "fused" else spelled_forward
                    started = time.perf_counter()
                    for step in range(args.steps):
                        first = ((cursor + step) * batch) % max(1, len(inputs) - batch)
                        rows = slice(first, first + batch)
                        loss = sequence_model._loss(model, inputs[rows], targets[rows], n_items, negatives,
                                                    generator)
                        optimiser.zero_grad(set_to_none=True)
                        loss.backward()
                        optimiser.step()
                    times[name].append((time.perf_counter() - started) / args.steps * 1000)
                    sequence_model._Block.forward = spelled_forward
                cursor += args.steps
            fused, spelled = np.array(times["fused"]), np.array(times["spelled"])
            logs = np.log(spelled / fused)
            half = stats.t.ppf(0.975, len(logs) - 1) * logs.std(ddof=1) / math.sqrt(len(logs))
            print(f"| {'full' if negatives is None else f'sampled, {negatives}'} | {dropout:g} | "
                  f"{np.median(spelled):.1f} | {np.median(fused):.1f} | {math.exp(logs.mean()):.2f}x "
                  f"({math.exp(logs.mean() - half):.2f}-{math.exp(logs.mean() + half):.2f}) |")


if __name__ == "__main__":
    main()
