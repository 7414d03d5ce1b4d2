"""What the multi-source candidate merge (``recops.candidates.merge.merged_candidate_blocks``) costs, per online
request and per block of users, against a reference implementation of the same function, in one process.

    git show <commit>:recops/candidates/merge.py > /tmp/merge_reference.py
    .venv/bin/python -m benchmarks.merge --reference /tmp/merge_reference.py [--params params.yaml]
        [--requests 400] [--rounds 8]

Run after `make run`. The sources of the params' configuration are fitted on the test fold's history (what the
bundle's sources see, less the test period); both implementations run on those very sources and must give the
same columns for every user (checked first: a faster merge that changes the candidates is no result). Then, with
one BLAS thread:

1. **one request** (a one-user block, the serving path): the same random users through each implementation,
   alternating in blocks of 50 requests (ABBA over ``--rounds`` pairs): p50 / p99 per arm and the mean-time ratio
   current / reference with a 95% t interval over block pairs;
2. **blocks** (the candidates stage's path): every test user in blocks of 512, ``--rounds`` times per arm in ABBA
   order: seconds per pass and the ratio with its interval.

Prints Markdown for BENCHMARKS.md ("Candidate merge").
"""

from __future__ import annotations

import argparse
import importlib.util
import platform
import time
from pathlib import Path

import numpy as np

from benchmarks.serving import abba, ratio_ci
from recops.workspace import Workspace


def load_reference(path: Path):
    spec = importlib.util.spec_from_file_location("merge_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.merged_candidate_blocks


def columns_of(merge, sources, config, users, user_items, block_users: int) -> dict[str, np.ndarray]:
    parts: dict[str, list[np.ndarray]] = {}
    for columns in merge(sources, config, users, user_items, block_users=block_users):
        for name, values in columns.items():
            parts.setdefault(name, []).append(values)
    return {name: np.concatenate(values) for name, values in parts.items()}


def check_same(current, reference, sources, config, users, user_items) -> None:
    """Both implementations give the same columns, one user at a time and in blocks."""
    for block_users, chosen in ((1, users[:300]), (512, users)):
        a = columns_of(current, sources, config, chosen, user_items, block_users)
        b = columns_of(reference, sources, config, chosen, user_items, block_users)
        if a.keys() != b.keys():
            raise SystemExit(f"the implementations give different columns: {sorted(a)} vs {sorted(b)}")
        for name in a:
            np.testing.assert_array_equal(a[name], b[name], err_msg=f"{name}, blocks of {block_users}")


def per_request(merge, sources, config, users, user_items) -> np.ndarray:
    out = np.empty(len(users))
    for j, user in enumerate(users):
        started = time.perf_counter()
        next(merge(sources, config, np.array([user], dtype=np.int32), user_items))
        out[j] = (time.perf_counter() - started) * 1000
    return out


def main() -> None:
    from threadpoolctl import threadpool_limits

    from recops.candidates import fit_sources, interaction_matrix
    from recops.candidates.merge import merged_candidate_blocks
    from recops.columns import Columns
    from recops.config import load_settings

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--reference", type=Path, required=True, help="a merge.py to compare with")
    parser.add_argument("--requests", type=int, default=400, help="one-user requests per round and arm")
    parser.add_argument("--rounds", type=int, default=8, help="ABBA pairs")
    args = parser.parse_args()
    settings = load_settings(args.params)
    reference = load_reference(args.reference)
    ws = Workspace(settings)
    index = ws.index()
    history, target = ws.fold("test")
    config = settings.candidates
    with threadpool_limits(limits=1):
        sources, _ = fit_sources(history, index.n_users, index.n_items, config, settings.seed, 1)
        user_items = interaction_matrix(history, index.n_users, index.n_items, "binary")
        users = np.unique(target[Columns.USER].to_numpy()).astype(np.int32)
        check_same(merged_candidate_blocks, reference, sources, config, users, user_items)
        rng = np.random.default_rng(settings.seed)
        arms = {"current": merged_candidate_blocks, "reference": reference}
        for merge in arms.values():  # warm-up
            per_request(merge, sources, config, users[:50], user_items)
        times = {name: [] for name in arms}
        block_seconds = {name: [] for name in arms}
        for pair, first in abba(args.rounds):
            chosen = rng.choice(users, size=args.requests)
            for name in (("current", "reference") if first else ("reference", "current")):
                times[name].append(per_request(arms[name], sources, config, chosen, user_items))
        for pair, first in abba(args.rounds):
            for name in (("current", "reference") if first else ("reference", "current")):
                started = time.perf_counter()
                for _ in arms[name](sources, config, users, user_items, block_users=512):
                    pass
                block_seconds[name].append(time.perf_counter() - started)
    print(f"Candidate merge on {platform.processor() or platform.machine()}, sources {list(config.sources)}, "
          f"n_candidates {config.n_candidates}, {index.n_items} items, {len(users)} test users; "
          f"reference {args.reference.name}; both give the same columns for every user.\n")
    print("| path | current p50 / p99 ms | reference p50 / p99 ms | time ratio current / reference (95% CI) |")
    print("|---|---:|---:|---:|")
    cur, ref = (np.concatenate(times[n]) for n in ("current", "reference"))
    mean, low, high = ratio_ci(np.array([t.mean() for t in times["reference"]]),
                               np.array([t.mean() for t in times["current"]]))
    print(f"| one request | {np.percentile(cur, 50):.3f} / {np.percentile(cur, 99):.3f} | "
          f"{np.percentile(ref, 50):.3f} / {np.percentile(ref, 99):.3f} | {mean:.3f} ({low:.3f}–{high:.3f}) |")
    mean, low, high = ratio_ci(np.array(block_seconds["reference"]), np.array(block_seconds["current"]))
    print(f"| every test user, blocks of 512 (s per pass) | {np.median(block_seconds['current']):.3f} | "
          f"{np.median(block_seconds['reference']):.3f} | {mean:.3f} ({low:.3f}–{high:.3f}) |")


if __name__ == "__main__":
    main()
