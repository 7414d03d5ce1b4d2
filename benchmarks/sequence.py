"""What the ``sequence`` source (recops.candidates.sequence) brings, on both protocols: alone against every other
single source, and inside the two-stage list (with it vs without it), on the project's prepared data.

    .venv/bin/python -m benchmarks.sequence [--params params.yaml] [--windows 2] [--epochs N] [--seed 42]
                                            [--negatives N] [--timeline-only] [--cheaper]

Run after `make run` (the prepared interactions and the split) with the extra installed (`make install-sequence`).
Everything on one thread. The sources have params.yaml's settings (no tuning here), ``--epochs`` and
``--negatives`` override ``candidates.sequence_epochs`` / ``sequence_negatives``; ``--timeline-only`` skips the
per-user split (a project where only the ingest stage has run, such as a ``recops synth`` log).

1. **per-user split** (the split stage's folds, the ranker's labels as the pipeline cuts them): each single
   source alone on the test fold (history train + valid) — NDCG@10, recall@20, fit seconds — and the two-stage
   list (``recops.pipeline.two_stage_lists``) with params.yaml's sources and with ``sequence`` added: NDCG@10 of
   each, the lift with a paired bootstrap 95% interval over test users, the candidate recall of every source;
2. **timeline** (the backtest's windows, ``backtest`` settings; the last ``--windows`` of them): the same per
   window on the warm test users, pooled over windows for the lift;
3. **cheaper serving paths** of the source alone (on the per-user split, and on the windows with ``--cheaper``):
   its item embeddings stored as float16 / int8, a smaller model, and the cost of one live re-encode.

Prints Markdown for BENCHMARKS.md ("The sequence source").
"""

from __future__ import annotations

import argparse
import logging
import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger("benchmarks.sequence")
SINGLE = ("popularity", "recent_popularity", "mf", "ease", "itemknn", "sequence")


def single_sources(settings, history: pd.DataFrame, target: pd.DataFrame, n_users: int, n_items: int,
                   users: np.ndarray) -> dict[str, dict[str, float]]:
    """Each single source alone: its top-20 unseen items for ``users``."""
    from recops.candidates.registry import SOURCES
    from recops.candidates.sources import History, recommend
    from recops.evaluation.peers import Fold, list_metrics

    shared = History(history, n_users, n_items)
    fold = Fold.from_frames(history, target, n_users, n_items, users=users)
    out = {}
    for name in SINGLE:
        started = time.perf_counter()
        source = SOURCES[name].configured(settings.candidates, seed=settings.seed, threads=1).fit_history(shared)
        seconds = time.perf_counter() - started
        lists, _ = recommend(source, users, fold.history, 20)
        metrics = list_metrics(fold, users, lists)
        out[name] = {"ndcg@10": metrics["ndcg@10"], "recall@20": metrics["recall@20"], "seconds": seconds,
                     "source": source}
        log.info("%s alone: ndcg@10 %.4f in %.1f s", name, metrics["ndcg@10"], seconds)
    return out


def cheaper_paths(settings, history: pd.DataFrame, target: pd.DataFrame, n_users: int, n_items: int,
                  users: np.ndarray, fitted) -> dict[str, dict[str, float]]:
    """The sequence source alone as a bundle may serve it: params.yaml's model with its item embeddings stored as
    float32 / float16 / int8 (``export.storage.mf_factors``), and a smaller model (embedding 32, one layer, one
    head) trained the same way (``fitted``: params.yaml's, already trained on this history); NDCG@10 and
    recall@20 of each, and one live re-encode's p50 / p99 (ms, one row through the ONNX encoder, 1,000 users)."""
    from recops.candidates.sequence import SequenceSource
    from recops.candidates.sources import History, recommend
    from recops.candidates.storage import RowStore
    from recops.evaluation.peers import Fold, list_metrics
    from recops.onnx_runtime import inference_session

    from benchmarks.sequence_scale import reencode_ms

    shared = History(history, n_users, n_items)
    fold = Fold.from_frames(history, target, n_users, n_items, users=users)
    small = settings.candidates.model_copy(update={"sequence_embedding": 32, "sequence_layers": 1,
                                                   "sequence_heads": 1})
    out = {}
    for label, config in (("params.yaml", settings.candidates), ("small", small)):
        source = fitted if config is settings.candidates else \
            SequenceSource.configured(config, seed=settings.seed, threads=1).fit_history(shared)
        session = inference_session(source.encoder(), 1)
        p50, p99 = reencode_ms(session, source.codes_[np.random.default_rng(settings.seed).integers(0, n_users, 1000)])
        full = source.item_embeddings_
        for storage in ("float32", "float16", "int8") if label == "params.yaml" else ("float32",):
            source.item_embeddings_ = RowStore.compress(full, storage)
            lists, _ = recommend(source, users, fold.history, 20)
            metrics = list_metrics(fold, users, lists)
            name = f"{label}, {storage}"
            out[name] = {"ndcg@10": metrics["ndcg@10"], "recall@20": metrics["recall@20"], "p50": p50, "p99": p99,
                         "embedding": config.sequence_embedding, "layers": config.sequence_layers}
            log.info("sequence %s: ndcg@10 %.4f, re-encode p50 %.2f ms", name, metrics["ndcg@10"], p50)
        source.item_embeddings_ = full
    return out


def two_stage(settings, train: pd.DataFrame, valid: pd.DataFrame, target: pd.DataFrame, users: np.ndarray,
              n_users: int, n_items: int, users_attr, items_attr) -> dict[str, dict]:
    """Per-user NDCG@10 of the two-stage list without and with the sequence source, and candidate recalls."""
    from recops.data.matrices import interaction_matrix
    from recops.evaluation.backtest import candidate_recalls
    from recops.evaluation.metrics import per_user_ranking_metrics
    from recops.pipeline import two_stage_lists

    truth = interaction_matrix(target, n_users, n_items, "binary")
    out = {}
    base = [s for s in settings.candidates.sources if s != "sequence"]
    for label, sources in (("without", base), ("with", [*base, "sequence"])):
        configured = settings.model_copy(update={"candidates": settings.candidates.model_copy(
            update={"sources": sources})})
        started = time.perf_counter()
        lists, candidates = two_stage_lists(configured, train, valid, users, n_users, n_items, users_attr,
                                            items_attr, 10, settings.seed)
        scored, values = per_user_ranking_metrics(users, lists, truth, [10])
        out[label] = {"ndcg": values["ndcg@10"], "scored": scored, "seconds": time.perf_counter() - started,
                      "recall": candidate_recalls(candidates, truth, configured.candidates)}
        log.info("two-stage %s sequence: ndcg@10 %.4f in %.0f s", label, values["ndcg@10"].mean(),
                 out[label]["seconds"])
    return out


def lift(with_rows: np.ndarray, without_rows: np.ndarray, seed: int) -> str:
    from recops.evaluation.backtest import lift_interval

    interval = lift_interval(with_rows, without_rows, 2000, 0.95, seed)
    return f"{interval['lift_pct']:+.1f} % ({interval['low_pct']:+.1f} % to {interval['high_pct']:+.1f} %)"


def row_line(label: str, alone: dict, both: dict, seed: int) -> str:
    """One protocol's row of the table: each source alone, the two-stage list without / with, the lift."""
    recall_key = next((k for k in both["with"]["recall"] if k.startswith("sequence")), None)
    return (f"| {label} | " + " | ".join(f"{alone[name]['ndcg@10']:.4f}" for name in SINGLE)
            + f" | {both['without']['ndcg'].mean():.4f} | {both['with']['ndcg'].mean():.4f} | "
            + lift(both["with"]["ndcg"], both["without"]["ndcg"], seed)
            + f" | {both['with']['recall'].get(recall_key, float('nan')):.3f} | "
            + f"{alone['sequence']['seconds']:.0f} |")


def main() -> None:
    from threadpoolctl import threadpool_limits

    from recops.columns import Columns
    from recops.config import load_settings
    from recops.evaluation.backtest import load, timeline_settings, warm_users, window_parts
    from recops.workspace import Workspace

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--windows", type=int, default=2, help="the last N backtest windows")
    parser.add_argument("--epochs", type=int, default=None, help="candidates.sequence_epochs for this run")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--timeline-only", action="store_true",
                        help="skip the per-user split (a project with the ingest stage's outputs only)")
    parser.add_argument("--negatives", type=int, default=None, help="candidates.sequence_negatives for this run")
    parser.add_argument("--cheaper", action="store_true",
                        help="also measure the cheaper serving paths on the timeline windows (the per-user split "
                             "always has them)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    settings = load_settings(args.params)
    update = {"threads": 1, **({"seed": args.seed} if args.seed is not None else {})}
    overrides = {key: value for key, value in (("sequence_epochs", args.epochs),
                                               ("sequence_negatives", args.negatives)) if value is not None}
    if overrides:
        update["candidates"] = settings.candidates.model_copy(update=overrides)
    settings = settings.model_copy(update=update)
    ws = Workspace(settings)
    rows = []
    cheaper = []
    with threadpool_limits(limits=1):
        # 1. the per-user split's test fold
        index = ws.index() if not args.timeline_only else None
        if index is not None:
            users_attr, items_attr = ws.attributes(index)
            split_dir = settings.path("split_dir")
            train, valid = (pd.read_parquet(split_dir / f"{name}.parquet") for name in ("train", "valid"))
            history, target = ws.fold("test")
            users = np.unique(target[Columns.USER].to_numpy()).astype(np.int32)
            alone = single_sources(settings, history, target, index.n_users, index.n_items, users)
            cheaper.append(("per-user split (test fold)", cheaper_paths(
                settings, history, target, index.n_users, index.n_items, users, alone["sequence"]["source"])))
            both = two_stage(settings, train, valid, target, users, index.n_users, index.n_items, users_attr,
                             items_attr)
            rows.append(("per-user split (test fold)", alone, both))
            log.info("row: %s", row_line(*rows[-1], settings.seed))  # each row as it is done: a long run's
            # finished windows survive its interruption
        # 2. the timeline: the last windows of the backtest
        data = load(settings)
        tsettings = timeline_settings(settings)
        pooled = {"with": [], "without": []}
        for w in range(max(0, len(data.windows) - args.windows), len(data.windows)):
            parts = window_parts(data.interactions, data.windows[w])
            history = pd.concat([parts["train"], parts["valid"]], ignore_index=True)
            users = warm_users(parts["test"], history)
            alone = single_sources(tsettings, history, parts["test"], data.n_users, data.n_items, users)
            if args.cheaper:
                cheaper.append((f"timeline window {w + 1} of {len(data.windows)}", cheaper_paths(
                    tsettings, history, parts["test"], data.n_users, data.n_items, users,
                    alone["sequence"]["source"])))
            both = two_stage(tsettings, parts["train"], parts["valid"], parts["test"], users, data.n_users,
                             data.n_items, data.users_attr, data.items_attr)
            for label in pooled:
                pooled[label].append(both[label]["ndcg"])
            rows.append((f"timeline window {w + 1} of {len(data.windows)}", alone, both))
            log.info("row: %s", row_line(*rows[-1], settings.seed))
    cfg = settings.candidates
    print(f"The sequence source on {platform.machine()}, one thread; sequence_length {cfg.sequence_length}, "
          f"embedding {cfg.sequence_embedding}, {cfg.sequence_heads} heads, {cfg.sequence_layers} layers, "
          f"{cfg.sequence_epochs} epochs, negatives {cfg.sequence_negatives or 'full softmax'}; base sources "
          f"{[s for s in cfg.sources if s != 'sequence']}.\n")
    print("| protocol | " + " | ".join(f"{name} alone" for name in SINGLE)
          + " | two-stage without | two-stage with | lift (95% CI) | sequence recall@"
          f"{cfg.n_candidates} | sequence fit s |")
    print("|---|" + "---:|" * (len(SINGLE) + 5))
    for label, alone, both in rows:
        print(row_line(label, alone, both, settings.seed))
    print("\nCandidate recall of each source (its own top n_candidates) and of the merged candidates, in the "
          "two-stage list with the sequence source:\n")
    names = list(rows[0][2]["with"]["recall"]) if rows else []
    print("| protocol | " + " | ".join(names) + " |")
    print("|---|" + "---:|" * len(names))
    for label, _, both in rows:
        print(f"| {label} | " + " | ".join(f"{both['with']['recall'][name]:.3f}" for name in names) + " |")
    print("\nThe cheaper serving paths of the source alone (NDCG@10 / recall@20; one live re-encode p50 / p99 ms):\n")
    print("| protocol | model, item embeddings | embedding | layers | NDCG@10 | recall@20 | re-encode p50 / p99 ms |")
    print("|---|---|---:|---:|---:|---:|---|")
    for label, paths in cheaper:
        for name, row in paths.items():
            print(f"| {label} | {name} | {row['embedding']} | {row['layers']} | {row['ndcg@10']:.4f} | "
                  f"{row['recall@20']:.4f} | {row['p50']:.2f} / {row['p99']:.2f} |")
    if pooled["with"]:
        ours, theirs = np.concatenate(pooled["with"]), np.concatenate(pooled["without"])
        print(f"\nTimeline, pooled over {len(pooled['with'])} windows ({len(ours)} user rows): two-stage NDCG@10 "
              f"{theirs.mean():.4f} without, {ours.mean():.4f} with the sequence source: "
              + lift(ours, theirs, settings.seed) + ".")


if __name__ == "__main__":
    main()
