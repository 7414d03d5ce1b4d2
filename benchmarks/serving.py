"""Serving performance of the trained project's bundle (``models/serving``), all in one process and one run.

    .venv/bin/python -m benchmarks.serving [--params params.yaml] [--requests 2000] [--http-seconds 60]
    .venv/bin/python -m benchmarks.serving --impressions-ab [--ab-pairs 10] [--ab-seconds 8]

Run after `make run`. Measures, and prints as Markdown for BENCHMARKS.md:

1. one request in process (``Recommender.recommend``: retrieval from every source, features, the ranker, rules,
   reasons): p50 / p99 / mean over ``--requests`` requests of random users, after a warm-up;
2. the ranker alone on the same inputs (each request's candidate feature matrix): the compiled forest (lleaves),
   onnxruntime and native LightGBM ``predict`` (1 thread each), as ratios measured in the same process;
3. an event to a fresh answer (``add_event`` then ``recommend``), in process; ``add_event`` alone, and each
   source's live update inside it (MF's fold-in, the sequence source's re-encode);
4. batch scoring of every user (top-100) through the same engine: users/second, and the MF scoring's share of
   the machine's single-thread float32 GEMM peak (a large ``sgemm`` timed in the same process);
5. exploration: the cost in NDCG@10 and the gain in coverage@10 / novelty@10 of each policy, applied to the
   held-out lists of the evaluate stage (reports/recommendations_test.parquet) and compared with the A/B paired
   test (recops.evaluation.ab);
6. over HTTP on loopback: `recops serve --bundle models/serving` (1 uvicorn worker), a closed-loop async httpx
   client at 1, 2 and 4 concurrent connections for ``--http-seconds`` each: requests/second, p50 / p99, errors,
   and the server's resident memory at the start and end of each level. The client runs on the same 2 cores.

``--impressions-ab`` measures only what the impression log (``serving.impressions``) costs, instead of 1-6:

7. in process: blocks of requests alternately without the log (``recommend``) and with it (``recommend`` and what
   the API's ``logged`` does: ``served_record`` + ``ImpressionLog.record``, plus a flush every
   ``flush_seconds`` of logged time, counted by its thread CPU time: in the server the fsync wait is another
   thread's, off the GIL), same users in both arms, in ABBA order: the time ratio with a 95% CI over block pairs;
8. over HTTP: two `recops serve --bundle models/serving` processes (1 worker each) from the same params but
   ``serving.impressions.enabled`` true / false, both writing under one temporary ``event_log_dir`` (so the
   project's data/events is untouched), loaded in turn (ABBA rounds of ``--ab-seconds``, a pause longer than
   ``flush_seconds`` between rounds so one server's last flush does not land in the other's round) at 4 and
   then 1 connections: requests/s and p50 / p99 per arm, and the requests/s ratio OFF / ON with a 95% CI over
   round pairs (t interval on the log ratios).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from recops.workspace import Workspace


def percentiles(ms: np.ndarray) -> str:
    return f"{np.percentile(ms, 50):.2f} | {np.percentile(ms, 99):.2f} | {ms.mean():.2f}"


def request_times(model, users: np.ndarray, k: int = 10) -> np.ndarray:
    """Milliseconds of one ``Recommender.recommend`` per user (dense indices), in order."""
    out = np.empty(len(users))
    for j, user in enumerate(users):
        started = time.perf_counter()
        model.recommend(model.user_ids[user], k)
        out[j] = (time.perf_counter() - started) * 1000
    return out


def in_process(model, users: np.ndarray, k: int) -> np.ndarray:
    for user in users[:50]:  # warm-up
        model.recommend(model.user_ids[user], k)
    return request_times(model, users, k)


def event_parts(model, users: np.ndarray, items: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Milliseconds of ``add_event`` per (user, item), and of each source's ``live_event`` inside it."""
    spent = {name: np.zeros(len(users)) for name in model.sources}
    current = [0]

    def timed(name, original):
        def live_event(*args, **kwargs):
            started = time.perf_counter()
            original(*args, **kwargs)
            spent[name][current[0]] += (time.perf_counter() - started) * 1000
        return live_event

    for name, source in model.sources.items():
        source.live_event = timed(name, source.live_event)
    whole = np.empty(len(users))
    try:
        for j, (user, item) in enumerate(zip(users, items)):
            current[0] = j
            started = time.perf_counter()
            model.add_event(model.user_ids[user], model.item_ids[item])
            whole[j] = (time.perf_counter() - started) * 1000
    finally:
        for source in model.sources.values():
            del source.live_event  # the class's method again
    return whole, spent


def request_matrices(model, users: np.ndarray) -> list[np.ndarray]:
    """Each request's own candidate feature matrix (what the ranker scores for that user)."""
    from recops.candidates.merge import merged_candidate_blocks
    from recops.features.builder import gather_feature_matrix

    matrices = []
    for user in users:
        columns = next(merged_candidate_blocks(model.sources, model.candidates_config, np.array([user], np.int32),
                                               model.user_items))
        values = np.column_stack([columns[c] for c in model.source_columns]).astype(np.float32)
        matrices.append(gather_feature_matrix(columns["user_idx"], columns["item_idx"], values, model.stats,
                                              model.features_config.chunk_rows))
    return matrices


def ranker_only(model, users: np.ndarray) -> tuple[dict[str, np.ndarray], int]:
    """Per-request ranker time on each request's own feature matrix: the compiled forest (lleaves),
    onnxruntime and native LightGBM, 1 thread each, interleaved request by request."""
    import lightgbm as lgb

    from recops.serving.bundle import load_bundle
    from recops.serving.ranker_runtime import OnnxScorer, compiled_scorer

    bundle = load_bundle(model._booster_path.parent, None)
    booster = lgb.Booster(model_file=str(model._booster_path))
    scorers = {"lleaves": compiled_scorer(bundle.root, bundle.manifest)[0].predict,
               "onnx": OnnxScorer(bundle.onnx_bytes).predict,
               "native": lambda x: booster.predict(x, num_threads=1)}
    matrices = request_matrices(model, users)
    times = {name: np.empty(len(users)) for name in scorers}
    for x in matrices[:20]:
        for score in scorers.values():
            score(x)
    for j, x in enumerate(matrices):
        for name, score in scorers.items():
            started = time.perf_counter()
            score(x)
            times[name][j] = (time.perf_counter() - started) * 1000
    return times, int(np.mean([len(x) for x in matrices]))


def gemm_peak_gflops(n: int = 2048, repeat: int = 3) -> float:
    from recops.threads import blas_limits

    a = np.random.default_rng(0).random((n, n), dtype=np.float32)
    b = np.random.default_rng(1).random((n, n), dtype=np.float32)
    best = np.inf
    with blas_limits(1):
        for _ in range(repeat):
            started = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - started)
    return 2 * n**3 / best / 1e9


def mf_scoring_gflops(model, block: int = 1024, repeat: int = 3) -> float:
    from recops.threads import blas_limits

    mf = model.sources["mf"]
    u, v = mf.user_factors_, mf.generator_.item_factors_
    best = np.inf
    with blas_limits(1):
        for _ in range(repeat):
            started = time.perf_counter()
            for start in range(0, len(u), block):
                u[start:start + block] @ v.T
            best = min(best, time.perf_counter() - started)
    return 2 * u.shape[0] * v.shape[0] * u.shape[1] / best / 1e9


def exploration_rows(settings, model) -> list[str]:
    """Each policy's effect on the evaluate stage's held-out test lists, with the A/B paired test."""
    import pandas as pd

    from recops.candidates import interaction_matrix
    from recops.columns import Columns
    from recops.config import ExplorationConfig
    from recops.evaluation.ab import paired_test, per_user_metric, relevant_users_mask
    from recops.evaluation.metrics import evaluate_lists
    from recops.serving.exploration import ExplorationPolicy, request_keys

    index = Workspace(settings).index()
    history, target = Workspace(settings).fold("test")
    recs = pd.read_parquet(settings.path("recommendations"))
    users = index.user_index(recs[Columns.USER_ID].drop_duplicates().to_numpy())
    recs = recs.assign(u=index.user_index(recs[Columns.USER_ID].to_numpy()),
                       i=index.item_index(recs[Columns.ITEM_ID].to_numpy()))
    recs = recs[recs[Columns.RANK] <= 10]
    order = np.argsort(users)
    users = users[order]
    lists = np.full((len(users), 10), -1, dtype=np.int64)
    lists[np.searchsorted(users, recs["u"].to_numpy()), recs[Columns.RANK].to_numpy() - 1] = recs["i"].to_numpy()
    truth = interaction_matrix(target, index.n_users, index.n_items, "binary")
    seen = interaction_matrix(history, index.n_users, index.n_items, "binary")
    scored = relevant_users_mask(users, truth)
    users, lists = users[scored], lists[scored]
    exposure = np.bincount(history[Columns.ITEM].to_numpy(), minlength=index.n_items).astype(np.float64)
    counts = np.diff(seen.tocsc().indptr).astype(np.float64)
    n_history = int((np.diff(seen.indptr) > 0).sum())

    def metrics(listed: np.ndarray) -> dict[str, float]:
        return evaluate_lists(users, listed, truth, [10], item_user_counts=counts, n_history_users=n_history,
                              item_vectors=None)

    base = metrics(lists)
    base_ndcg = per_user_metric(users, lists, truth, "ndcg@10")
    rows = [f"| none (the ranker's list) | {base['ndcg@10']:.4f} | | | {base['coverage@10']:.4f} | "
            f"{base['novelty@10']:.3f} |"]
    keys = request_keys(users, None, settings.seed)
    for policy, extra in (("epsilon_greedy", {"epsilon": 0.1}), ("epsilon_greedy", {"epsilon": 0.3}),
                          ("thompson", {})):
        config = ExplorationConfig(policy=policy, slots=1, **extra)
        explored, _ = ExplorationPolicy(config, exposure).apply(lists, keys, seen[users])
        m = metrics(explored)
        test = paired_test(base_ndcg, per_user_metric(users, explored, truth, "ndcg@10"), seed=settings.seed)
        label = policy + (f" eps={extra['epsilon']}" if extra else "") + ", 1 slot"
        rows.append(f"| {label} | {m['ndcg@10']:.4f} | {m['ndcg@10'] / base['ndcg@10'] - 1:+.1%} "
                    f"[{test.ci_low:+.4f}, {test.ci_high:+.4f}] | {test.p_value:.3g} | {m['coverage@10']:.4f} | "
                    f"{m['novelty@10']:.3f} |")
    return rows


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def load(base: str, users: list[str], concurrency: int, seconds: float) -> tuple[np.ndarray, int]:
    import httpx

    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    async def worker(offset: int, client: httpx.AsyncClient) -> None:
        nonlocal errors
        i = offset
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            try:
                response = await client.get(f"/recommendations/{users[i % len(users)]}",
                                            params={"k": 10, "request_id": f"b{offset}-{i}"})  # live, not cached
                if response.status_code != 200:
                    errors += 1
            except httpx.HTTPError:
                errors += 1
            latencies.append((time.perf_counter() - started) * 1000)
            i += concurrency

    async with httpx.AsyncClient(base_url=base, timeout=10) as client:
        await asyncio.gather(*(worker(n, client) for n in range(concurrency)))
    return np.asarray(latencies), errors


def start_server(params: Path, bundle: str = "models/serving") -> tuple[subprocess.Popen, str]:
    """`recops serve --bundle models/serving` (1 worker) on a free loopback port, once it answers /ready."""
    import httpx

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "recops_cli", "serve", "--params", str(params), "--bundle",
                               bundle, "--port", str(port), "--workers", "1", "-q"], cwd=params.parent,
                              stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"{base}/ready", timeout=2).status_code == 200:
                return server, base
        except httpx.HTTPError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            stop_server(server)
            raise RuntimeError(f"recops serve --params {params} did not become ready")
        time.sleep(0.3)


def stop_server(server: subprocess.Popen) -> None:
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGINT)  # a clean shutdown: the impression log flushes what is left
    server.wait(timeout=30)


def http_rows(params: Path, users: list[str], seconds: float) -> list[str]:
    server, base = start_server(params)
    try:
        asyncio.run(load(base, users, 2, 3.0))  # warm-up
        rows = []
        for concurrency in (1, 2, 4):
            before = rss_mb(server.pid)
            ms, errors = asyncio.run(load(base, users, concurrency, seconds))
            after = rss_mb(server.pid)
            rows.append(f"| {concurrency} | {len(ms) / seconds:.0f} | {percentiles(ms)} | {errors} | "
                        f"{before:.0f} -> {after:.0f} |")
        return rows
    finally:
        stop_server(server)


def ratio_ci(on: np.ndarray, off: np.ndarray) -> tuple[float, float, float]:
    """Geometric mean of the paired ratios off / on and its 95% t interval (on the logs, over pairs)."""
    from scipy import stats

    logs = np.log(np.asarray(off) / np.asarray(on))
    half = stats.t.ppf(0.975, len(logs) - 1) * logs.std(ddof=1) / np.sqrt(len(logs))
    return float(np.exp(logs.mean())), float(np.exp(logs.mean() - half)), float(np.exp(logs.mean() + half))


def abba(pairs: int) -> list[tuple[int, bool]]:
    """(pair, logged?) in ABBA order: ON OFF, OFF ON, ... so that a linear drift cancels within two pairs."""
    return [(n, arm) for n in range(pairs) for arm in ((True, False) if n % 2 == 0 else (False, True))]


def impression_cost_in_process(model, users: np.ndarray, folder: Path, flush_seconds: float,
                               block: int = 200) -> list[str]:
    """Request-path cost of the impression log in process: logged blocks against unlogged ones (module doc, 7)."""
    import uuid

    from recops.serving.api import _plain_id
    from recops.serving.impressions import ImpressionLog, served_record

    log = ImpressionLog(folder, flush_seconds)  # flushed here, synchronously and timed: no thread

    def logged(user, rec) -> None:  # what the API's logged() does for a live answer without a request_id
        n = len(rec.items)
        impression_id = uuid.uuid4().hex[:16]
        log.record(served_record(impression_id, _plain_id(user), rec.version, [_plain_id(i) for i in rec.items],
                                 rec.propensities or [1.0] * n, rec.explored or [False] * n, False, rec.fallback))

    for user in users[:50]:
        logged(model.user_ids[user], model.recommend(model.user_ids[user], 10))
    log.flush()
    pairs = len(users) // block
    seconds = {True: np.zeros(pairs), False: np.zeros(pairs)}
    recommend_s = log_s = flush_cpu_s = flush_wall_s = 0.0
    flushes = flushed = 0
    since_flush = 0.0
    for n, arm in abba(pairs):
        ids = model.user_ids[users[n * block:(n + 1) * block]]
        if not arm:
            started = time.perf_counter()
            for user in ids:
                model.recommend(user, 10)
            seconds[False][n] = time.perf_counter() - started
            continue
        spent = 0.0
        for user in ids:
            started = time.perf_counter()
            rec = model.recommend(user, 10)
            middle = time.perf_counter()
            logged(user, rec)
            ended = time.perf_counter()
            recommend_s += middle - started
            log_s += ended - middle
            spent += ended - started
            since_flush += ended - started
            if since_flush >= flush_seconds:  # as the flusher thread would, every flush_seconds of serving
                cpu, wall = time.thread_time(), time.perf_counter()
                flushed += log.flush()
                flush_cpu_s += time.thread_time() - cpu
                flush_wall_s += time.perf_counter() - wall
                spent += time.thread_time() - cpu
                flushes += 1
                since_flush = 0.0
        seconds[True][n] = spent
    cpu, wall = time.thread_time(), time.perf_counter()
    flushed += log.flush()
    flush_cpu_s += time.thread_time() - cpu
    flush_wall_s += time.perf_counter() - wall
    flushes += 1
    logged_requests = pairs * block
    ratio, low, high = ratio_ci(1 / seconds[True], 1 / seconds[False])
    return [
        f"| in process, {pairs} pairs of {block}-request blocks (ABBA) | without log: "
        f"{seconds[False].sum() / logged_requests * 1e3:.3f} ms/request | with log: "
        f"{seconds[True].sum() / logged_requests * 1e3:.3f} ms/request | {ratio:.4f} [{low:.4f}, {high:.4f}] |",
        "",
        f"breakdown of the logged arm, per request: recommend {recommend_s / logged_requests * 1e3:.3f} ms, "
        f"served_record + record {log_s / logged_requests * 1e6:.1f} us "
        f"({log_s / recommend_s:.2%} of recommend), flush {flush_cpu_s / flushed * 1e6:.1f} us CPU per record "
        f"({flush_cpu_s / recommend_s:.2%} of recommend; {flushes} flushes of {flushed / flushes:.0f} records, "
        f"{flush_wall_s / flushes * 1e3:.2f} ms wall each with the fsync)",
    ]


async def timed_load(base: str, users: list[str], concurrency: int, seconds: float) -> tuple[np.ndarray, int, float]:
    started = time.perf_counter()
    ms, errors = await load(base, users, concurrency, seconds)
    return ms, errors, time.perf_counter() - started  # requests in flight at the deadline still finish


def impressions_ab_rows(params: Path, users: list[str], pairs: int, seconds: float) -> list[str]:
    """HTTP requests/s and latency with the impression log on and off, interleaved (module doc, 8)."""
    import httpx
    import yaml

    raw = yaml.safe_load(params.read_text(encoding="utf-8"))
    flush_seconds = float(raw.get("serving", {}).get("impressions", {}).get("flush_seconds", 1.0))
    rows = []
    with tempfile.TemporaryDirectory(prefix="recops-impressions-ab-") as events:
        paths = {}
        servers: dict[bool, tuple[subprocess.Popen, str]] = {}
        try:
            for arm in (True, False):
                serving = raw.setdefault("serving", {})
                serving["event_log_dir"] = events  # absolute: the project's data/events stays untouched
                serving.setdefault("impressions", {})["enabled"] = arm
                # next to params.yaml: the project's relative paths resolve from the params file's folder
                with tempfile.NamedTemporaryFile("w", dir=params.parent, prefix=".impressions-ab-",
                                                 suffix=".yaml", delete=False) as fh:
                    yaml.safe_dump(raw, fh, sort_keys=False)
                paths[arm] = Path(fh.name)
            for arm in (True, False):
                servers[arm] = start_server(paths[arm])
            for arm in (True, False):
                answer = httpx.get(f"{servers[arm][1]}/recommendations/{users[0]}", params={"k": 10}).json()
                if (answer.get("impression_id") is not None) != arm:
                    raise RuntimeError(f"the {'ON' if arm else 'OFF'} server answered impression_id "
                                       f"{answer.get('impression_id')!r}: serving.impressions.enabled not applied")
                asyncio.run(load(servers[arm][1], users, 2, 3.0))  # warm-up
            served_on = 0
            for concurrency in (4, 1):
                rps = {True: np.zeros(pairs), False: np.zeros(pairs)}
                latencies: dict[bool, list[np.ndarray]] = {True: [], False: []}
                errors = {True: 0, False: 0}
                for n, arm in abba(pairs):
                    time.sleep(flush_seconds + 0.5)  # the ON server's last flush lands before the next round
                    ms, failed, elapsed = asyncio.run(timed_load(servers[arm][1], users, concurrency, seconds))
                    rps[arm][n] = len(ms) / elapsed
                    latencies[arm].append(ms)
                    errors[arm] += failed
                    served_on += len(ms) if arm else 0
                ratio, low, high = ratio_ci(rps[True], rps[False])
                per_pair = rps[False] / rps[True]
                for arm in (True, False):
                    ms = np.concatenate(latencies[arm])
                    rows.append(f"| {concurrency} | {'ON' if arm else 'OFF'} | {rps[arm].mean():.0f} "
                                f"({rps[arm].min():.0f}-{rps[arm].max():.0f}) | {np.percentile(ms, 50):.2f} | "
                                f"{np.percentile(ms, 99):.2f} | {errors[arm]} | "
                                + (f"{ratio:.4f} [{low:.4f}, {high:.4f}]; pairs {per_pair.min():.3f}-"
                                   f"{per_pair.max():.3f} |" if arm else "|"))
        finally:
            for server, _ in servers.values():
                stop_server(server)
            for path in paths.values():
                path.unlink(missing_ok=True)
        from recops.serving.impressions import impressions_folder, read_impressions

        shown, skipped = read_impressions(impressions_folder(Path(events)))
        # one row per item shown: the lists are the rows at position 0 (request ids repeat across rounds)
        rows.append(f"\nimpression log written by the ON server: {int((shown['position'] == 0).sum())} lists "
                    f"({skipped} unreadable lines) for {served_on} timed ON requests plus its warm-up")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--http-seconds", type=float, default=60.0)
    parser.add_argument("--impressions-ab", action="store_true",
                        help="measure only the impression log's cost: in process and over HTTP, ON vs OFF")
    parser.add_argument("--ab-pairs", type=int, default=10, help="ON/OFF round pairs per connection level")
    parser.add_argument("--ab-seconds", type=float, default=8.0, help="seconds per HTTP round")
    args = parser.parse_args()
    params = Path(args.params).resolve()
    from recops.entry import configure_logging, prepare_environment

    prepare_environment(params.parent)
    configure_logging(logging.WARNING)
    from recops.config import load_settings
    from recops.serving.bundle import load_bundle
    from recops.serving.engine import Recommender

    settings = load_settings(params)
    model = Recommender(load_bundle(settings.path("serving_bundle"), None), settings.serving, "local")
    gc.collect()
    gc.freeze()  # as recops serve does after loading a version
    rng = np.random.default_rng(settings.seed)
    users = rng.integers(0, model.n_users, args.requests)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, python "
          f"{platform.python_version()}; {model.n_users} users x {model.n_items} items, "
          f"{model.candidates_config.n_candidates} candidates, {len(model.feature_names)} features, "
          f"serving.threads={settings.serving.threads}\n")

    if args.impressions_ab:
        flush_seconds = settings.serving.impressions.flush_seconds
        print(f"impression log: flush every {flush_seconds:g} s\n")
        print("| impression log | OFF | ON | time ratio ON / OFF [95% CI] |\n|---|---:|---:|---:|")
        with tempfile.TemporaryDirectory(prefix="recops-impressions-") as folder:
            print("\n".join(impression_cost_in_process(model, rng.integers(0, model.n_users, 3000), Path(folder),
                                                       flush_seconds)))
        ids = [str(u) for u in model.user_ids.tolist()]
        print(f"\nover HTTP, 1 uvicorn worker per arm, closed loop, {args.ab_pairs} ABBA pairs of "
              f"{args.ab_seconds:g} s rounds per level (a request id per request: live scoring)\n")
        print("| connections | impression log | requests/s, mean (min-max of rounds) | p50 ms | p99 ms | errors | "
              "requests/s OFF / ON [95% CI] |\n|---:|---|---:|---:|---:|---:|---|")
        print("\n".join(impressions_ab_rows(params, ids, args.ab_pairs, args.ab_seconds)))
        return

    one = in_process(model, users, 10)
    print("| in process, one request (k=10) | p50 ms | p99 ms | mean ms |\n|---|---:|---:|---:|")
    print(f"| retrieve + features + rank ({model.scorer.name}) + rules + reasons | {percentiles(one)} |")
    times, rows = ranker_only(model, users[:500])
    print(f"| ranker only: compiled forest, lleaves ({rows} candidates) | {percentiles(times['lleaves'])} |")
    print(f"| ranker only: onnxruntime, same inputs | {percentiles(times['onnx'])} |")
    print(f"| ranker only: native LightGBM predict, same inputs | {percentiles(times['native'])} |")
    print(f"\nmean time: ONNX / lleaves {times['onnx'].mean() / times['lleaves'].mean():.1f}x, native / ONNX "
          f"{times['native'].mean() / times['onnx'].mean():.1f}x (the served runtime: {model.ranker_runtime})\n")

    fresh, after = np.empty(200), np.empty(200)
    items = rng.integers(0, model.n_items, len(fresh))
    for j, (user, item) in enumerate(zip(users[:200], items)):
        started = time.perf_counter()
        model.add_event(model.user_ids[user], model.item_ids[item])
        applied = time.perf_counter()
        model.recommend(model.user_ids[user], 10)
        fresh[j] = (time.perf_counter() - started) * 1000
        after[j] = (time.perf_counter() - applied) * 1000
    print("| event -> fresh answer, in process | p50 ms | p99 ms | mean ms |\n|---|---:|---:|---:|")
    print(f"| add_event (every source's live update, history) + recommend | {percentiles(fresh)} |")
    print(f"| of which the recommend right after the event | {percentiles(after)} |")
    whole, parts = event_parts(model, users[200:600], rng.integers(0, model.n_items, 400))
    print(f"| add_event alone | {percentiles(whole)} |")
    for name, spent in parts.items():
        if spent.mean() > 0.02:  # sources whose live update does work (MF, sequence)
            print(f"| of which the {name} source's live update | {percentiles(spent)} |")
    print()

    batch_model = Recommender(load_bundle(settings.path("serving_bundle"), None), settings.serving, "local")
    all_users = np.arange(batch_model.n_users)
    started = time.perf_counter()
    batch_model.recommend_users(all_users, 100, block_users=1024)
    batch_seconds = time.perf_counter() - started
    peak, achieved = gemm_peak_gflops(), mf_scoring_gflops(batch_model)
    print(f"batch top-100, every user, one process: {batch_model.n_users / batch_seconds:.0f} users/s "
          f"({batch_seconds:.2f} s); MF scoring {achieved:.1f} GFLOP/s = {achieved / peak:.0%} of the "
          f"single-thread sgemm peak ({peak:.1f} GFLOP/s, 2048^3)\n")

    print("| exploration policy | ndcg@10 | lift [95% CI of the delta] | p | coverage@10 | novelty@10 |")
    print("|---|---:|---:|---:|---:|---:|")
    print("\n".join(exploration_rows(settings, model)))

    if args.http_seconds > 0:
        ids = [str(u) for u in model.user_ids.tolist()]
        print(f"\nover HTTP, 1 uvicorn worker, closed loop for {args.http_seconds:.0f} s per level (live scoring: "
              "a request id per request bypasses the cache)\n")
        print("| connections | requests/s | p50 ms | p99 ms | mean ms | errors | server RSS MB |")
        print("|---:|---:|---:|---:|---:|---:|---|")
        print("\n".join(http_rows(params, ids, args.http_seconds)))


if __name__ == "__main__":
    main()
