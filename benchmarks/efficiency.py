"""What each efficiency option of serving costs and saves, on the trained project's bundle (``models/serving``).

    .venv/bin/python -m benchmarks.efficiency [--params params.yaml] [--requests 1500] [--rounds 6]

Run after `make run`. Everything in one process, one thread for onnxruntime, lleaves, LightGBM and BLAS; prints
Markdown for BENCHMARKS.md ("Efficiency options"):

1. **ranker runtimes**: per-request ranker time on each request's own candidate feature matrix — the forest
   compiled by lleaves, onnxruntime, native LightGBM — interleaved request by request; and the whole request
   (``Recommender.recommend``) with ``serving.ranker_runtime`` lleaves vs onnx, two engines on the same bundle,
   measured in alternating blocks of the same users (ABAB...), p50 / p99 per arm and the mean-time ratio with a
   95% interval over block pairs;
2. **pruned ranker**: the ranker cut to its first N trees (LightGBM ``num_iteration``): test NDCG@10 of the
   split protocol (the evaluate stage's candidates and truth) and the compiled forest's time per request, per N.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np


def pct(ms: np.ndarray) -> str:
    return f"{np.percentile(ms, 50):.3f} | {np.percentile(ms, 99):.3f} | {ms.mean():.3f}"


def ratio_interval(a_blocks: np.ndarray, b_blocks: np.ndarray) -> str:
    """Mean of b/a over paired blocks with a t 95% interval on the log ratios."""
    from scipy import stats

    logs = np.log(np.asarray(b_blocks) / np.asarray(a_blocks))
    half = stats.t.ppf(0.975, len(logs) - 1) * logs.std(ddof=1) / np.sqrt(len(logs)) if len(logs) > 1 else np.nan
    return f"{np.exp(logs.mean()):.2f}x [{np.exp(logs.mean() - half):.2f}, {np.exp(logs.mean() + half):.2f}]"


def runtime_rows(settings, bundle, users: np.ndarray, rounds: int) -> list[str]:
    from benchmarks.serving import request_matrices
    from recops.serving.engine import Recommender

    engines = {runtime: Recommender(bundle, settings.serving.model_copy(update={"ranker_runtime": runtime}), "local")
               for runtime in ("lleaves", "onnx")}
    gc.collect()
    gc.freeze()
    import lightgbm as lgb

    booster = lgb.Booster(model_file=str(bundle.booster_path))
    scorers = {"compiled forest (lleaves)": engines["lleaves"].scorer.predict,
               "onnxruntime": engines["onnx"].scorer.predict,
               "native LightGBM predict": lambda x: booster.predict(x, num_threads=1)}
    matrices = request_matrices(engines["lleaves"], users[:500])
    times = {name: np.empty(len(matrices)) for name in scorers}
    for x in matrices[:30]:
        for score in scorers.values():
            score(x)
    for j, x in enumerate(matrices):
        for name, score in scorers.items():
            started = time.perf_counter()
            score(x)
            times[name][j] = (time.perf_counter() - started) * 1000
    rows = [f"ranker alone, {int(np.mean([len(x) for x in matrices]))} candidates x "
            f"{matrices[0].shape[1]} features per request, {len(matrices)} requests, interleaved:\n",
            "| ranker runtime | p50 ms | p99 ms | mean ms | mean time / lleaves |", "|---|---:|---:|---:|---:|"]
    base = times["compiled forest (lleaves)"].mean()
    rows += [f"| {name} | {pct(ms)} | {ms.mean() / base:.1f}x |" for name, ms in times.items()]

    block = max(1, len(users) // rounds)
    per_arm = {runtime: [] for runtime in engines}
    block_means = {runtime: [] for runtime in engines}
    for engine in engines.values():
        for user in users[:50]:
            engine.recommend(engine.user_ids[user], 10)
    for r in range(rounds):
        part = users[r * block:(r + 1) * block]
        order = ("lleaves", "onnx") if r % 2 == 0 else ("onnx", "lleaves")
        for runtime in order:
            engine = engines[runtime]
            ms = np.empty(len(part))
            for j, user in enumerate(part):
                started = time.perf_counter()
                engine.recommend(engine.user_ids[user], 10)
                ms[j] = (time.perf_counter() - started) * 1000
            per_arm[runtime].append(ms)
            block_means[runtime].append(ms.mean())
    rows += ["", f"whole request in process (k=10), {rounds} alternating blocks of {block} users per arm:\n",
             "| serving.ranker_runtime | p50 ms | p99 ms | mean ms |", "|---|---:|---:|---:|"]
    rows += [f"| {runtime} | {pct(np.concatenate(ms))} |" for runtime, ms in per_arm.items()]
    rows += ["", f"mean request time onnx / lleaves: {ratio_interval(block_means['lleaves'], block_means['onnx'])} "
                 "(95% interval over block pairs)"]
    return rows


def pruned_rows(settings, bundle, requests: list[np.ndarray]) -> list[str]:
    import lightgbm as lgb
    import pandas as pd

    from recops import steps
    from recops.columns import Columns
    from recops.evaluation.metrics import ranking_metrics
    from recops.serving.ranker_runtime import CompiledScorer, _lleaves_model

    names = list(bundle.manifest["feature_names"])
    booster = lgb.Booster(model_file=str(bundle.booster_path))
    total = booster.num_trees()
    table = pd.read_parquet(settings.path("features_dir") / "test.parquet", columns=[Columns.USER, Columns.ITEM,
                                                                                     *names])
    features = table[names].to_numpy(np.float32)
    index = steps._index(settings)
    _, target = steps._fold_tables(settings, "test")
    truth = steps._truth(target, index.n_users, index.n_items)
    rows = [f"pruned ranker: the first N of its {total} trees; test NDCG@10 on the split protocol, the compiled "
            f"forest's time per request ({len(requests)} requests):\n",
            "| trees | test NDCG@10 | vs all trees | compiled p50 ms | compiled p99 ms | compile s |",
            "|---:|---:|---:|---:|---:|---:|"]
    full = None
    for n in sorted({25, 50, 100, 200, total} & set(range(1, total + 1)), reverse=True):
        scores = booster.predict(features, num_iteration=n, num_threads=1)
        users, ranked, _ = steps._ranked_lists(table, scores, 10)
        ndcg = ranking_metrics(users, ranked, truth, [10])["ndcg@10"]
        full = ndcg if full is None else full
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "ranker.txt"
            booster.save_model(str(path), num_iteration=n)
            started = time.perf_counter()
            scorer = CompiledScorer(_lleaves_model(path, None))
            compile_s = time.perf_counter() - started
        for x in requests[:20]:
            scorer.predict(x)
        ms = np.empty(len(requests))
        for j, x in enumerate(requests):
            started = time.perf_counter()
            scorer.predict(x)
            ms[j] = (time.perf_counter() - started) * 1000
        rows.append(f"| {n} | {ndcg:.4f} | {ndcg / full - 1:+.1%} | {np.percentile(ms, 50):.3f} | "
                    f"{np.percentile(ms, 99):.3f} | {compile_s:.1f} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--requests", type=int, default=1500)
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    params = Path(args.params).resolve()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from recops.entry import configure_logging, prepare_environment

    prepare_environment(params.parent)
    configure_logging(logging.WARNING)
    from threadpoolctl import threadpool_limits

    from benchmarks.serving import request_matrices
    from recops.config import load_settings
    from recops.serving.bundle import load_bundle
    from recops.serving.engine import Recommender

    settings = load_settings(params)
    bundle = load_bundle(settings.path("serving_bundle"), None)
    users = np.random.default_rng(settings.seed).integers(0, len(bundle.user_ids), args.requests)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, python "
          f"{platform.python_version()}; {len(bundle.user_ids)} users x {len(bundle.item_ids)} items\n")
    with threadpool_limits(1):
        print("\n".join(runtime_rows(settings, bundle, users, args.rounds)) + "\n")
        engine = Recommender(bundle, settings.serving, "local")
        print("\n".join(pruned_rows(settings, bundle, request_matrices(engine, users[:300]))) + "\n")


if __name__ == "__main__":
    main()
