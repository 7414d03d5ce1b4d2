"""What each efficiency option of serving costs and saves, on the trained project's bundle (``models/serving``).

    .venv/bin/python -m benchmarks.efficiency [--params params.yaml] [--requests 1500] [--rounds 6] [--only storage]

Run after `make run`. Everything in one process, one thread for onnxruntime, lleaves, LightGBM and BLAS; prints
Markdown for BENCHMARKS.md ("Efficiency options"):

1. **ranker runtimes**: per-request ranker time on each request's own candidate feature matrix — the forest
   compiled by lleaves, onnxruntime, native LightGBM — interleaved request by request; and the whole request
   (``Recommender.recommend``) with ``serving.ranker_runtime`` lleaves vs onnx, two engines on the same bundle,
   measured in alternating blocks of the same users (ABAB...), p50 / p99 per arm and the mean-time ratio with a
   95% interval over block pairs;
2. **pruned ranker**: the ranker cut to its first N trees (LightGBM ``num_iteration``): test NDCG@10 of the
   split protocol (the evaluate stage's candidates and truth) and the compiled forest's time per request, per N;
3. **compressed retrieval** (``export.storage``, ``OPTIONS``): the version's sources and feature statistics fitted on
   the test fold's history (as the bundle stage fits them on everything), stored and read back by the bundle's
   own code with each option's storage — MF factors float16 or int8 with a scale per row, item-item matrices
   (EASE weights, item-kNN and similarity-feature cosines) float16, EASE cut to its largest weights per row — and
   served by the engine, which reads the compressed arrays as they are (``recops.candidates.storage``): bytes of
   the retrieval arrays, merged-candidate recall@200 and NDCG@10 of the final lists for every test user, and
   the time per request against float32;
4. **every option live** (``--live-rounds``): a real bundle built per option and one ``recops serve`` per option,
   plus (``--before``) the server of the last commit before issue 18 (a git worktree: onnxruntime, float32
   arrays, uvicorn's h11 parser and Starlette's middleware) on the float32 bundle; all loaded in turn by ``wrk``
   at 1 connection (a C client: a Python client on the same 2 cores adds its own milliseconds): bundle size,
   server RSS, requests/s, p50 / p99, and p99 against the server before issue 18.

``--only runtime|pruned|storage|live`` (repeatable) runs some parts; ``--option TEXT`` (repeatable) keeps the
options whose name contains one of the texts (the first option, the reference, always stays).
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
from recops.workspace import Workspace
from recops.data.matrices import interaction_matrix
from recops.ranking import ranked_lists


def pct(ms: np.ndarray) -> str:
    return f"{np.percentile(ms, 50):.3f} | {np.percentile(ms, 99):.3f} | {ms.mean():.3f}"


def ratio_interval(a_blocks: np.ndarray, b_blocks: np.ndarray) -> str:
    """Mean of b/a over paired blocks with a t 95% interval on the log ratios."""
    from scipy import stats

    logs = np.log(np.asarray(b_blocks) / np.asarray(a_blocks))
    half = stats.t.ppf(0.975, len(logs) - 1) * logs.std(ddof=1) / np.sqrt(len(logs)) if len(logs) > 1 else np.nan
    return f"{np.exp(logs.mean()):.2f}x [{np.exp(logs.mean() - half):.2f}, {np.exp(logs.mean() + half):.2f}]"


def runtime_rows(settings, bundle, users: np.ndarray, rounds: int) -> list[str]:
    from benchmarks.serving import request_matrices, request_times
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
            ms = request_times(engines[runtime], part)
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

    from recops.columns import Columns
    from recops.evaluation.metrics import ranking_metrics
    from recops.serving.ranker_runtime import CompiledScorer, _lleaves_model

    names = list(bundle.manifest["feature_names"])
    booster = lgb.Booster(model_file=str(bundle.booster_path))
    total = booster.num_trees()
    table = pd.read_parquet(settings.path("features_dir") / "test.parquet", columns=[Columns.USER, Columns.ITEM,
                                                                                     *names])
    features = table[names].to_numpy(np.float32)
    index = Workspace(settings).index()
    _, target = Workspace(settings).fold("test")
    truth = interaction_matrix(target, index.n_users, index.n_items, "binary")
    rows = [f"pruned ranker: the first N of its {total} trees; test NDCG@10 on the split protocol, the compiled "
            f"forest's time per request ({len(requests)} requests):\n",
            "| trees | test NDCG@10 | vs all trees | compiled p50 ms | compiled p99 ms | compile s |",
            "|---:|---:|---:|---:|---:|---:|"]
    full = None
    for n in sorted({25, 50, 100, 200, total} & set(range(1, total + 1)), reverse=True):
        scores = booster.predict(features, num_iteration=n, num_threads=1)
        users, ranked, _ = ranked_lists(table, scores, 10)
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


F32 = {"mf_factors": "float32", "item_item": "float32"}
OPTIONS = {  # name: (serving.ranker_runtime, export.storage); the first is the configuration before issue 18
    "onnx, float32 (before issue 18)": ("onnx", F32),
    "lleaves, float32 (default)": ("lleaves", F32),
    "lleaves, MF int8": ("lleaves", {**F32, "mf_factors": "int8"}),
    "lleaves, MF float16, item-item float16": ("lleaves", {"mf_factors": "float16", "item_item": "float16"}),
    "lleaves, MF int8, item-item int8": ("lleaves", {"mf_factors": "int8", "item_item": "int8"}),
    "lleaves, MF int8, item-item int8, EASE top 200": ("lleaves", {"mf_factors": "int8", "item_item": "int8",
                                                                  "ease_top_k": 200}),
}

CHOSEN: list[str] = []  # --option


def chosen_options() -> dict[str, tuple[str, dict]]:
    first = next(iter(OPTIONS))
    return {name: value for name, value in OPTIONS.items()
            if name == first or not CHOSEN or any(text in name for text in CHOSEN)}


def _tree_bytes(tree) -> int:
    """Bytes a loaded bundle tree takes as stored (RowStore: compressed; CSR: data + indices + indptr)."""
    import scipy.sparse as sp

    from recops.candidates.storage import RowStore

    if tree is None:
        return 0
    if isinstance(tree, dict):
        return sum(_tree_bytes(v) for v in tree.values())
    if isinstance(tree, RowStore):
        return tree.nbytes
    if sp.issparse(tree):
        return tree.data.nbytes + tree.indices.nbytes + tree.indptr.nbytes
    return np.asarray(tree).nbytes


def _folder_bytes(root: Path, under: str = "") -> int:
    return sum(p.stat().st_size for p in (root / under).rglob("*") if p.is_file())


def storage_rows(settings, bundle, rounds: int) -> list[str]:
    """Each option's engine on the test fold (module doc, 3): retrieval bytes, candidate recall@200, NDCG@10 and
    the time per request, with the arrays written and read back through the bundle's own code."""
    import dataclasses

    from benchmarks.serving import request_times
    from recops.bundling import _save_tree, stored_sources, stored_stats
    from recops.candidates import fit_sources, interaction_matrix
    from recops.candidates.merge import merged_candidate_blocks
    from recops.columns import Columns
    from recops.config import StorageConfig
    from recops.evaluation.metrics import candidate_recall, ranking_metrics
    from recops.features.builder import history_statistics
    from recops.serving.bundle import _load_tree
    from recops.serving.engine import Recommender

    index = Workspace(settings).index()
    history, target = Workspace(settings).fold("test")
    users_attr, items_attr = Workspace(settings).attributes(index)
    n_users, n_items = index.n_users, index.n_items
    sources, _ = fit_sources(history, n_users, n_items, settings.candidates, settings.seed, 1)
    mf = sources.get("mf")
    stats = history_statistics(history, n_users, n_items, settings.features, users_attr, items_attr,
                               None if mf is None else mf.item_factors_)
    truth = interaction_matrix(target, n_users, n_items, "binary")
    test_users = np.unique(target[Columns.USER].to_numpy()).astype(np.int32)
    user_items = interaction_matrix(history, n_users, n_items, "binary")
    confidence = interaction_matrix(history, n_users, n_items, settings.candidates.confidence)
    engines, rows = {}, []
    with tempfile.TemporaryDirectory(prefix="recops-storage-") as folder:
        for name, (runtime, storage) in chosen_options().items():
            config = StorageConfig(**storage)
            root = Path(folder) / str(len(engines))
            layout = {"sources": {n: _save_tree(root, f"sources/{n}", a)
                                  for n, a in stored_sources(sources, config).items()},
                      "stats": {n: _save_tree(root, f"stats/{n}", v) for n, v in stored_stats(stats, config).items()}}
            loaded = {key: {n: _load_tree(root, spec) for n, spec in part.items()} for key, part in layout.items()}
            served = dataclasses.replace(bundle, user_items=user_items, confidence=confidence,
                                         sources=loaded["sources"], stats=loaded["stats"],
                                         manifest={**bundle.manifest, "storage": config.model_dump(mode="json")})
            serving = settings.serving.model_copy(update={"ranker_runtime": runtime})
            engine = Recommender(served, serving, "bench")
            cand_users, cand_items = [], []
            for columns in merged_candidate_blocks(engine.sources, engine.candidates_config, test_users,
                                                   engine.user_items, block_users=256):
                cand_users.append(columns[Columns.USER])
                cand_items.append(columns[Columns.ITEM])
            recall = candidate_recall(np.concatenate(cand_users), np.concatenate(cand_items), truth)
            lists = engine.recommend_users(test_users, 10)[0]
            ndcg = ranking_metrics(test_users, lists, truth, [10])["ndcg@10"]
            mf_bytes = _tree_bytes(loaded["sources"].get("mf", {}))
            item_item = sum(_tree_bytes(loaded["sources"].get(n, {})) for n in ("ease", "itemknn", "recent_itemknn"))
            item_item += _tree_bytes(loaded["stats"]["similarity"])
            engines[name] = (engine, recall, ndcg, mf_bytes, item_item + _tree_bytes(loaded["stats"].get(
                "item_unit_factors")), _folder_bytes(root))
        # the time per request, options in rotating order over blocks of the same users
        rng = np.random.default_rng(settings.seed)
        users = rng.choice(test_users, size=min(len(test_users), 100 * rounds), replace=len(test_users) < 100 * rounds)
        times = {name: [] for name in engines}
        for engine, *_ in engines.values():
            for user in users[:30]:
                engine.recommend(engine.user_ids[user], 10)
        block = max(1, len(users) // rounds)
        names = list(engines)
        for r in range(rounds):
            part = users[r * block:(r + 1) * block]
            for name in names[r % len(names):] + names[:r % len(names)]:
                times[name].append(request_times(engines[name][0], part))
    base = engines["lleaves, float32 (default)"]
    rows = [f"compressed retrieval on the test fold ({len(test_users)} users; sources and feature statistics fitted "
            "on its history, stored and read back as each option stores them, served by the engine): bytes of the "
            "MF arrays (user and item factors) and of the item-item arrays (EASE, item-kNN, similarity feature, "
            "unit MF factors), merged-candidate recall@200 and NDCG@10 of the final lists, and the time per "
            f"request (k=10; {rounds} blocks of {block} users, options in rotating order):\n",
            "| option | MF bytes | vs float32 | item-item bytes | vs float32 | recall@200 | vs float32 | NDCG@10 | "
            "vs float32 | p50 ms | p99 ms | mean ms |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, (_, recall, ndcg, mf_bytes, item_bytes, _) in engines.items():
        ms = np.concatenate(times[name])
        rows.append(f"| {name} | {mf_bytes / 2**20:.2f} MiB | {mf_bytes / base[3]:.0%} | "
                    f"{item_bytes / 2**20:.1f} MiB | "
                    f"{item_bytes / base[4]:.0%} | {recall:.4f} | {recall / base[1] - 1:+.2%} | {ndcg:.4f} | "
                    f"{ndcg / base[2] - 1:+.2%} | {pct(ms)} |")
    return rows


WRK_SCRIPT = """
local users = {%s}
local counter = 0
math.randomseed(%d)
request = function()
  counter = counter + 1
  return wrk.format("GET", "/recommendations/" .. users[math.random(#users)] .. "?k=10&request_id=w" .. counter)
end
"""


def wrk_round(base: str, script: Path, seconds: float) -> tuple[float, float, float, int]:
    """One closed-loop round of ``wrk`` at 1 connection: (requests/s, p50 ms, p99 ms, non-2xx + socket errors)."""
    import re
    import subprocess

    out = subprocess.run(["wrk", "-t1", "-c1", f"-d{seconds:g}s", "--latency", "-s", str(script), base],
                         capture_output=True, text=True, check=True).stdout

    def ms(label: str) -> float:
        value, unit = re.search(rf"^\s*{label}\s+([\d.]+)(us|ms|s)\s*$", out, re.M).groups()
        return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]

    errors = sum(int(n) for n in re.findall(r"(?:Non-2xx or 3xx responses|connect|read|write|timeout)\s*:?\s*(\d+)",
                                            out))
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)), ms("50%"), ms("99%"), errors


def start_before(project: Path, commit: str, folder: Path, bundle: Path) -> tuple[object, str, Path, Path]:
    """The server as it was before issue 18: ``recops serve`` of ``commit`` (a git worktree, first on the import
    path) over the same float32 bundle, on uvicorn's pure-Python h11 parser and asyncio's own event loop
    (httptools and uvloop, added since, are hidden from it); onnxruntime ranks since that code knows nothing else."""
    import socket
    import subprocess
    import sys

    import httpx

    tree = folder / "before"
    subprocess.run(["git", "-C", str(project), "worktree", "add", "--detach", "--force", str(tree), commit],
                   check=True, capture_output=True)
    import yaml

    raw = yaml.safe_load((project / "params.yaml").read_text(encoding="utf-8"))
    raw.get("export", {}).pop("storage", None)  # the settings issue 18 added: that code refuses unknown keys
    raw.get("serving", {}).pop("ranker_runtime", None)
    params = folder / "before.yaml"
    with tempfile.NamedTemporaryFile("w", dir=project, prefix=".before-", suffix=".yaml", delete=False) as fh:
        yaml.safe_dump(raw, fh, sort_keys=False)  # next to params.yaml: relative paths resolve the same
    params = Path(fh.name)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # the worktree ahead of the working directory ('' on sys.path: the project's own recops)
    code = (f"import sys; sys.path.insert(0, {str(tree)!r}); sys.modules['httptools'] = None; "
            "sys.modules['uvloop'] = None; "
            "sys.argv[0] = 'recops'; from recops_cli.app import app; app()")
    server = subprocess.Popen([sys.executable, "-c", code, "serve", "--params", str(params),
                               "--bundle", str(bundle), "--port", str(port), "--workers", "1", "-q"],
                              cwd=project, stdout=subprocess.DEVNULL,
                              stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            ready = httpx.get(f"{base}/ready", timeout=2)
            if ready.status_code == 200:
                if "ranker_runtime" in ready.json():
                    raise RuntimeError(f"the server of {commit} runs today's recops (it names a ranker runtime)")
                return server, base, tree, params
        except httpx.HTTPError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"recops serve of {commit} did not become ready")
        time.sleep(0.3)


def live_rows(params: Path, settings, users: list[str], rounds: int, seconds: float, before: str | None) -> list[str]:
    """Every option as a real server (module doc, 4): ``build_bundle`` with its storage into a temporary folder,
    ``recops serve --bundle`` (1 worker) with its ranker runtime, and (``before``) the server of the commit before
    issue 18 on the float32 bundle; all started at once and loaded in turn by ``wrk`` (rounds of ``seconds`` at 1
    connection, live requests, options in rotating order): bundle size, server RSS, requests/s, p50 / p99."""
    import subprocess

    import yaml

    from benchmarks.serving import rss_mb, start_server, stop_server
    from recops.bundling import build_bundle
    from recops.config import StorageConfig

    raw = yaml.safe_load(params.read_text(encoding="utf-8"))
    servers, sizes, files, tree = {}, {}, [], None
    before_name = f"before issue 18 ({before}: onnxruntime, float32, h11)"
    with tempfile.TemporaryDirectory(prefix="recops-options-") as folder:
        script = Path(folder) / "requests.lua"
        script.write_text(WRK_SCRIPT % (", ".join(f'"{u}"' for u in users), settings.seed))
        try:
            for n, (name, (runtime, storage)) in enumerate(chosen_options().items()):
                out = Path(folder) / f"bundle-{n}"
                build_bundle(settings.model_copy(update={"export": settings.export.model_copy(
                    update={"storage": StorageConfig(**storage)})}), out)
                sizes[name] = (_folder_bytes(out), _folder_bytes(out, "arrays"))
                raw.setdefault("serving", {})["ranker_runtime"] = runtime
                raw["serving"]["event_log_dir"] = str(Path(folder) / "events")
                with tempfile.NamedTemporaryFile("w", dir=params.parent, prefix=".options-", suffix=".yaml",
                                                 delete=False) as fh:
                    yaml.safe_dump(raw, fh, sort_keys=False)
                files.append(Path(fh.name))
                servers[name] = start_server(files[-1], str(out))
                if before and n == 0:
                    server, base, tree, old_params = start_before(params.parent, before, Path(folder), out)
                    files.append(old_params)
                    servers[before_name], sizes[before_name] = (server, base), sizes[name]
            for server, base in servers.values():
                wrk_round(base, script, 2)  # warm-up
            names = list(servers)
            results = {name: [] for name in names}
            for r in range(rounds):
                for name in names[r % len(names):] + names[:r % len(names)]:
                    results[name].append(wrk_round(servers[name][1], script, seconds))
            rss = {name: rss_mb(server.pid) for name, (server, _) in servers.items()}
        finally:
            for server, _ in servers.values():
                stop_server(server)
            for path in files:
                path.unlink(missing_ok=True)
            if tree is not None:
                subprocess.run(["git", "-C", str(params.parent), "worktree", "remove", "--force", str(tree)],
                               capture_output=True)
    reference = before_name if before else "onnx, float32 (before issue 18)"
    table = {name: np.array(rows) for name, rows in results.items()}
    lines = [f"over HTTP: one `recops serve --bundle` (1 worker) per option, `wrk` at 1 connection, live requests "
             f"(k=10, a request_id each: never cached), {rounds} rounds of {seconds:g} s per option in rotating "
             "order; medians over rounds, p99 / reference with the range of the per-round ratios:\n",
             "| option | bundle MiB | arrays MiB | server RSS MiB | req/s | p50 ms | p99 ms | p99 / reference "
             "| errors |", "|---|---:|---:|---:|---:|---:|---:|---|---:|"]
    for name, rows in table.items():
        ratios = rows[:, 2] / table[reference][:, 2]
        lines.append(f"| {name} | {sizes[name][0] / 2**20:.1f} | {sizes[name][1] / 2**20:.1f} | {rss[name]:.0f} | "
                     f"{np.median(rows[:, 0]):.0f} | {np.median(rows[:, 1]):.2f} | {np.median(rows[:, 2]):.2f} | "
                     f"{np.median(rows[:, 2]) / np.median(table[reference][:, 2]):.0%} "
                     f"({ratios.min():.0%}-{ratios.max():.0%}) | {int(rows[:, 3].sum())} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--requests", type=int, default=1500)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--live-rounds", type=int, default=8, help="HTTP rounds per option (0: no live table)")
    parser.add_argument("--live-seconds", type=float, default=6.0)
    parser.add_argument("--before", default="3be7cd3",
                        help="commit whose server is the live reference (default: the last one before issue 18; "
                             "'' for none)")
    parser.add_argument("--only", choices=["runtime", "pruned", "storage", "live"], action="append",
                        help="run only these parts (repeatable); all by default")
    parser.add_argument("--option", action="append", default=[],
                        help="keep the options whose name contains this text (repeatable; the reference stays)")
    args = parser.parse_args()
    CHOSEN.extend(args.option)
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
    parts = set(args.only or ("runtime", "pruned", "storage", "live"))
    with threadpool_limits(1):
        if "runtime" in parts:
            print("\n".join(runtime_rows(settings, bundle, users, args.rounds)) + "\n", flush=True)
        if "pruned" in parts:
            engine = Recommender(bundle, settings.serving, "local")
            print("\n".join(pruned_rows(settings, bundle, request_matrices(engine, users[:300]))) + "\n", flush=True)
        if "storage" in parts:
            print("\n".join(storage_rows(settings, bundle, args.rounds * 2)) + "\n", flush=True)
    if "live" in parts and args.live_rounds:
        ids = [str(bundle.user_ids[u]) for u in users]
        print("\n".join(live_rows(params, settings, ids, args.live_rounds, args.live_seconds, args.before or None))
              + "\n", flush=True)


if __name__ == "__main__":
    main()
