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
   split protocol (the evaluate stage's candidates and truth) and the compiled forest's time per request, per N;
3. **compressed retrieval, what it would cost in quality**: the version's sources and feature statistics fitted on
   the test fold's history (as the bundle stage fits them on everything), then served through the engine to
   every test user with the arrays rounded as each storage would round them — MF item factors in float16 or int8
   with a scale per row, the item-item matrices (EASE weights, item-kNN similarities, the similarity feature) in
   float16, EASE cut to its largest weights per row — and compared with float32 on merged-candidate recall@200
   and the final lists' NDCG@10, with the bytes each storage would take. Scoring still runs on float32 copies:
   this measures the loss, not the latency or memory of a kernel that reads the compressed arrays.
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


def _int8_rows(x: np.ndarray) -> tuple[np.ndarray, int]:
    """Per-row symmetric int8 (scale = max |row| / 127), returned dequantized; and its storage bytes."""
    scale = np.abs(x).max(axis=1, keepdims=True) / 127.0
    scale[scale == 0] = 1.0
    q = np.clip(np.round(x / scale), -127, 127).astype(np.int8)
    return (q.astype(np.float32) * scale).astype(np.float32), q.nbytes + 4 * len(scale)


def _float16(x):
    """float16 rounding of a dense array or a sparse matrix's values; and its storage bytes."""
    import scipy.sparse as sp

    if sp.issparse(x):
        x = x.tocsr(copy=True)
        x.data = x.data.astype(np.float16).astype(np.float32)
        return x, 2 * x.nnz + 4 * x.nnz + 4 * (x.shape[0] + 1)
    return np.asarray(x).astype(np.float16).astype(np.float32), 2 * np.asarray(x).size


def _bytes(x) -> int:
    import scipy.sparse as sp

    if sp.issparse(x):
        x = x.tocsr()
        return x.data.nbytes + x.indices.nbytes + x.indptr.nbytes
    return np.asarray(x).nbytes


def _top_per_row(w: np.ndarray, n: int):
    """Keep each row's n largest |weights| (sparse); and its storage bytes (float32 values, int32 indices)."""
    import scipy.sparse as sp

    keep = np.argpartition(-np.abs(w), n - 1, axis=1)[:, :n]
    rows = np.repeat(np.arange(w.shape[0]), n)
    pruned = sp.csr_matrix((w[rows, keep.ravel()], (rows, keep.ravel())), shape=w.shape, dtype=np.float32)
    return pruned.toarray(), _bytes(pruned)


def compression_rows(settings, bundle) -> list[str]:
    import copy
    import dataclasses

    from recops import steps
    from recops.candidates import fit_sources, interaction_matrix
    from recops.candidates.merge import merged_candidate_blocks
    from recops.columns import Columns
    from recops.evaluation.metrics import candidate_recall, ranking_metrics
    from recops.features.builder import history_statistics
    from recops.serving.engine import Recommender

    index = steps._index(settings)
    history, target = steps._fold_tables(settings, "test")
    users_attr, items_attr = steps._attributes(settings, index)
    n_users, n_items = index.n_users, index.n_items
    sources, _ = fit_sources(history, n_users, n_items, settings.candidates, settings.seed, 1)
    mf = sources.get("mf")
    stats = history_statistics(history, n_users, n_items, settings.features, users_attr, items_attr,
                               None if mf is None else mf.item_factors_)
    base = {"sources": {name: dict(source.arrays()) for name, source in sources.items()},
            "stats": {f.name: getattr(stats, f.name) for f in dataclasses.fields(stats) if f.init}}
    truth = steps._truth(target, n_users, n_items)
    test_users = np.unique(target[Columns.USER].to_numpy()).astype(np.int32)
    serving = settings.serving.model_copy(update={"reasons": False, "category_cap": None})
    serving = serving.model_copy(update={"exploration": serving.exploration.model_copy(update={"policy": "none"})})

    def measure(arrays) -> tuple[float, float, float]:
        served = dataclasses.replace(bundle, user_items=interaction_matrix(history, n_users, n_items, "binary"),
                                     confidence=interaction_matrix(history, n_users, n_items,
                                                                   settings.candidates.confidence),
                                     sources=arrays["sources"], stats=arrays["stats"])
        engine = Recommender(served, serving, "bench")
        cand_users, cand_items = [], []
        for columns in merged_candidate_blocks(engine.sources, engine.candidates_config, test_users,
                                               engine.user_items, block_users=256):
            cand_users.append(columns[Columns.USER])
            cand_items.append(columns[Columns.ITEM])
        recall = candidate_recall(np.concatenate(cand_users), np.concatenate(cand_items), truth)
        started = time.perf_counter()
        lists = engine.recommend_users(test_users, 10)[0]
        seconds = time.perf_counter() - started
        return recall, ranking_metrics(test_users, lists, truth, [10])["ndcg@10"], seconds

    def variant(change) -> tuple[dict, int, int]:
        arrays = copy.deepcopy(base)
        before, after = change(arrays)
        return arrays, before, after

    def factors(kind):
        def change(arrays):
            item = arrays["sources"]["mf"]["item_factors"]
            rounded, size = _int8_rows(item) if kind == "int8" else _float16(item)
            arrays["sources"]["mf"]["item_factors"] = rounded
            unit = arrays["stats"].get("item_unit_factors")
            if unit is not None:
                arrays["stats"]["item_unit_factors"] = (_int8_rows(unit) if kind == "int8" else _float16(unit))[0]
            return _bytes(item), size
        return change

    def item_item_float16(arrays):
        before = after = 0
        targets = [("sources", name, key) for name, key in (("ease", "weights"), ("itemknn", "similarity"),
                                                              ("recent_itemknn", "similarity"))
                   if name in arrays["sources"] and key in arrays["sources"][name]]
        for _, name, key in targets:
            matrix = arrays["sources"][name][key]
            arrays["sources"][name][key], size = _float16(matrix)
            before, after = before + _bytes(matrix), after + size
        matrix = arrays["stats"]["similarity"]
        arrays["stats"]["similarity"], size = _float16(matrix)
        return before + _bytes(matrix), after + size

    def ease_top(n):
        def change(arrays):
            weights = arrays["sources"]["ease"]["weights"]
            arrays["sources"]["ease"]["weights"], size = _top_per_row(np.asarray(weights), n)
            return _bytes(weights), size
        return change

    variants = {"float32 (as built)": lambda arrays: (0, 0)}
    if "mf" in base["sources"]:
        variants |= {"MF item factors float16": factors("float16"), "MF item factors int8, a scale per row":
                     factors("int8")}
    variants["item-item matrices float16"] = item_item_float16
    if "ease" in base["sources"]:
        variants |= {f"EASE top {n} weights per row": ease_top(n) for n in (200, 50)}
    rows = [f"compressed retrieval on the test fold ({len(test_users)} users; sources and statistics fitted on its "
            "history, served through the engine; float32 kernels on the rounded values):\n",
            "| storage | its arrays: bytes | vs float32 | candidate recall@200 | change | NDCG@10 | change |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    reference = None
    for name, change in variants.items():
        arrays, before, after = variant(change)
        recall, ndcg, _ = measure(arrays)
        reference = reference or (recall, ndcg)
        size = f"{after / 2**20:.2f} MB" if before else ""
        ratio = f"{after / before:.0%}" if before else ""
        rows.append(f"| {name} | {size} | {ratio} | {recall:.4f} | {recall / reference[0] - 1:+.2%} | {ndcg:.4f} | "
                    f"{ndcg / reference[1] - 1:+.2%} |")
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
        print("\n".join(compression_rows(settings, bundle)) + "\n")


if __name__ == "__main__":
    main()
