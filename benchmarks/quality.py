"""Recommendation quality of the two-stage pipeline against single-stage peers, one protocol for every model.

    .venv/bin/python -m benchmarks.quality [--seeds 3] [--out reports/quality.json] [--quick] [--params params.yaml]
        [--protocol headline|per_user_temporal|global_time|positive_rating4|timeline|all]

``make quality`` runs the headline: ``per_user_temporal`` (the protocol recops' params are tuned on) and
``timeline`` (the rolling-origin backtest, the protocol a deployment lives in), side by side.

What runs, in one process, for each protocol:

1. Data: the prepared MovieLens tables (``recops ingest`` writes them; they are ingested here when missing), ids
   encoded with ``IdIndex``, split with ``recops.split.split_interactions``.
   - ``per_user_temporal``: the split of params.yaml (each user's last 10 % test, the 10 % before valid);
   - ``global_time``: one time cut for everybody (test = the most recent 10 % of the log); test users may have no
     history at all, and every model then falls back to whatever it scores without one;
   - ``positive_rating4``: only interactions rated 4 or 5 exist (filtered before encoding, so the catalogue is the
     items with at least one positive), then the per-user temporal split. Low-rated items are neither history nor
     truth, so they can be recommended and count as misses;
   - ``timeline``: ``recops.evaluation.backtest`` with params.yaml's ``backtest`` windows: per window, every model
     fitted on what precedes the cut (peers tuned, ranker early-stopped on the validation window before it) and
     judged on the next ``test_days`` of the users seen before the cut; pooled over the windows, with paired bootstrap
     intervals of recops' lift over every peer.
2. Peers (``recops.evaluation.peers`` over ``recops.candidates.sources``, the same classes that feed the ranker):
   all-time, recent-window and decayed popularity (as of the fold's cut), item-kNN, EASE, implicit ALS and BPR
   (and LightFM when it imports). Each is tuned on validation only (fit on train, rank every
   item for the users with valid interactions, their train items excluded) by NDCG@10 over a fixed grid (stochastic
   models with the first seed); ties go to the first grid point. The chosen parameters are refitted on train+valid
   and evaluated once on test (users with test interactions, train+valid items excluded). Stochastic models are
   refitted with every seed (``settings.seed + 0..n-1``); deterministic ones once.
3. recops: ``recops.pipeline.two_stage_recommend`` with the params.yaml configuration (tuned on valid by
   ``recops tune``, not here), once per seed, timed end to end (fit and recommend).
4. Metrics from ``recops.evaluation.metrics``: NDCG@10, Recall@10/20, MAP@10, MRR@10, HitRate@10, coverage@10 and
   novelty@10 (item popularity of train+valid). Mean and sample standard deviation over seeds.

Output: ``--out`` (JSON, written atomically; protocols not run now are kept from the existing file, each protocol
carries its own run metadata) and, on stdout, one Markdown table per protocol plus the lift of recops over the
best peer on NDCG@10 and Recall@20, ready for BENCHMARKS.md. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import math
import platform
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recops.workspace import TABLES, read_parquet
from recops.evaluation.peers import (METRICS, PEERS, TUNING_METRIC, Fold, Peer, fit_peer, list_metrics,
                                     parameter_grid, recommend_lists, tune)
from recops.io import write_json

log = logging.getLogger("benchmarks.quality")

PROTOCOLS = ("per_user_temporal", "global_time", "positive_rating4", "timeline")
# `make quality`: the protocol recops is tuned on and the one a deployment lives in, side by side
HEADLINE = ("per_user_temporal", "timeline")
POSITIVE_RATING = 4
TOP_K = 20
LIFT_METRICS = ("ndcg@10", "recall@20")
LIFT_TARGET_PCT = 10.0
RECOPS = "recops"
LIGHTFM_UNAVAILABLE = ("does not install here: its setup.py fails under pip's PEP 517 build "
                       "(AttributeError: 'dict' object has no attribute '__LIGHTFM_SETUP__')")


# ------------------------------------------------------------------------------------------------------- data
@dataclass(frozen=True)
class ProtocolData:
    """One protocol's encoded split and the attributes aligned to its dense indices."""

    name: str
    settings: Any  # recops.config.Settings with this protocol's split method
    train: pd.DataFrame
    valid: pd.DataFrame
    test: pd.DataFrame
    n_users: int
    n_items: int
    users_attr: Any
    items_attr: Any


def protocol_settings(settings, protocol: str):
    if protocol == "global_time":
        return settings.model_copy(update={"split": settings.split.model_copy(update={"method": "global_time"})})
    return settings.model_copy(update={"split": settings.split.model_copy(update={"method": "per_user_temporal"})})


def load_protocol(settings, protocol: str) -> ProtocolData:
    from recops import steps
    from recops.columns import Columns
    from recops.data import IdIndex
    from recops.errors import RecopsError
    from recops.features import align_attributes
    from recops.split import split_interactions

    if not all(settings.path(name).is_file() for name in TABLES):
        log.info("prepared tables missing: running the ingest stage")
        steps.ingest(settings)
    interactions = read_parquet(settings.path("interactions"))
    if protocol == "positive_rating4":
        if Columns.RATING not in interactions.columns:
            raise RecopsError("protocol positive_rating4 needs a rating column (set data.columns.rating)")
        interactions = interactions[interactions[Columns.RATING] >= POSITIVE_RATING].reset_index(drop=True)
    psettings = protocol_settings(settings, protocol)
    index = IdIndex.from_interactions(interactions)
    parts = split_interactions(index.encode(interactions), psettings.split)
    cfg = settings.data
    use_users = cfg.source == "movielens100k" or bool(cfg.users_path)
    use_items = cfg.source == "movielens100k" or bool(cfg.items_path)
    users_attr = align_attributes(read_parquet(settings.path("users")) if use_users else None,
                                  Columns.USER_ID, index.user_ids, cfg.user_attributes if use_users else None)
    items_attr = align_attributes(read_parquet(settings.path("items")) if use_items else None,
                                  Columns.ITEM_ID, index.item_ids, cfg.item_attributes if use_items else None)
    return ProtocolData(protocol, psettings, parts["train"], parts["valid"], parts["test"], index.n_users,
                        index.n_items, users_attr, items_attr)


# ------------------------------------------------------------------------------------------------------ peers
# The peers, their grids, tuning and metrics are recops.evaluation.peers (shared with `recops backtest`);
# LightFM is the benchmark's own extra peer, used only when it imports.
class LightFMSource:
    """LightFM (WARP loss, no side features) behind the candidate-source interface; used only if it imports."""

    def __init__(self, components: int, learning_rate: float, epochs: int, seed: int = 0, threads: int = 1) -> None:
        self.components = components
        self.learning_rate = learning_rate
        self.epochs = epochs
        self.seed = seed
        self.threads = threads

    def fit(self, user_items: sp.csr_matrix) -> LightFMSource:
        from lightfm import LightFM

        model = LightFM(no_components=self.components, learning_rate=self.learning_rate, loss="warp",
                        random_state=self.seed)
        model.fit(user_items.tocoo(), epochs=self.epochs, num_threads=self.threads)
        user_bias, self.user_vectors_ = model.get_user_representations()
        self.item_bias_, self.item_vectors_ = model.get_item_representations()
        return self

    def score(self, users: np.ndarray, user_items: sp.csr_matrix) -> np.ndarray:
        # The user bias shifts a whole row and cannot change the order, so it is left out.
        return (self.user_vectors_[users] @ self.item_vectors_.T + self.item_bias_).astype(np.float32)


def _lightfm(params: dict[str, Any], seed: int, threads: int):
    return LightFMSource(params["components"], params["learning_rate"], params["epochs"], seed=seed, threads=threads)


LIGHTFM = Peer("lightfm", _lightfm,
               parameter_grid(components=[32, 64, 128], learning_rate=[0.01, 0.05], epochs=[30]),
               parameter_grid(components=[64], learning_rate=[0.05], epochs=[30]), stochastic=True)


def available_peers() -> tuple[list[Peer], dict[str, str]]:
    """The peers that can run here, and the reason each missing one is skipped."""
    try:
        importlib.import_module("lightfm")
    except ImportError as exc:
        return list(PEERS), {"lightfm": f"{LIGHTFM_UNAVAILABLE}; import failed with: {exc}"}
    return [*PEERS, LIGHTFM], {}


# ---------------------------------------------------------------------------------------------------- metrics
def fold_metrics(fold: Fold, recommended: np.ndarray) -> tuple[dict[str, float], dict[str, float] | None]:
    """Metrics over all of the fold's users, and over its warm users only when some users have no history."""
    everyone = list_metrics(fold, fold.users, recommended)
    warm = fold.warm
    if warm.all() or not warm.any():
        return everyone, None
    return everyone, list_metrics(fold, fold.users[warm], recommended[warm])


def list_defects(fold: Fold, users: np.ndarray, recommended: np.ndarray) -> dict[str, float]:
    """Protocol violations in a list set: history items recommended, duplicates in a list, empty slots."""
    from recops.evaluation.metrics import hits_matrix

    filled = recommended >= 0
    ordered = np.sort(np.where(filled, recommended, -1 - np.arange(recommended.shape[1])), axis=1)
    return {
        "seen_share": float(hits_matrix(users, recommended, fold.history).sum() / max(filled.sum(), 1)),
        "duplicate_slots": float((ordered[:, 1:] == ordered[:, :-1]).sum()),
        "empty_share": float(1.0 - filled.mean()) if filled.size else 1.0,
    }


def summarise(runs: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Mean and sample standard deviation (0 for a single run) of every key over runs."""
    out = {}
    for key in runs[0]:
        values = np.array([run[key] for run in runs], dtype=np.float64)
        out[key] = {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0}
    return out


def lift_over_best_peer(means: dict[str, dict[str, float]], metric: str, challenger: str = RECOPS,
                        target_pct: float = LIFT_TARGET_PCT) -> dict[str, Any]:
    """Relative lift (%) of ``challenger`` over the peer with the highest mean ``metric``."""
    peers = {name: values[metric] for name, values in means.items()
             if name != challenger and math.isfinite(values.get(metric, math.nan))}
    if not peers:
        raise ValueError(f"no peer has a finite {metric}")
    best = max(peers, key=lambda name: peers[name])
    ours = means.get(challenger, {}).get(metric, math.nan)
    lift = (ours / peers[best] - 1.0) * 100.0 if peers[best] > 0 and math.isfinite(ours) else math.nan
    return {"best_peer": best, "best_peer_value": peers[best], "recops_value": ours, "lift_pct": lift,
            "meets_target": bool(lift >= target_pct) if math.isfinite(lift) else False}


# --------------------------------------------------------------------------------------------------- protocol
def evaluate_peer(peer: Peer, params: dict[str, Any], fold: Fold, seeds: list[int], threads: int) -> dict[str, Any]:
    runs, warm_runs, fits, recs, defects = [], [], [], [], []
    for seed in seeds if peer.stochastic else seeds[:1]:
        started = time.perf_counter()
        model = fit_peer(peer.build(params, seed, threads), fold)
        fitted = time.perf_counter()
        lists = recommend_lists(model, fold, fold.users, TOP_K)
        fits.append(fitted - started)
        recs.append(time.perf_counter() - fitted)
        everyone, warm = fold_metrics(fold, lists)
        runs.append(everyone)
        warm_runs += [warm] if warm else []
        defects.append(list_defects(fold, fold.users, lists))
    return {"metrics": summarise(runs), "n_seeds": len(runs), "seeds": seeds if peer.stochastic else seeds[:1],
            **({"metrics_warm_users": summarise(warm_runs)} if warm_runs else {}),
            "fit_seconds": summarise([{"s": s} for s in fits])["s"],
            "recommend_seconds": summarise([{"s": s} for s in recs])["s"],
            "defects": summarise(defects)}


def two_stage_function() -> tuple[Callable[..., np.ndarray] | None, str | None]:
    """``recops.pipeline.two_stage_recommend``, or None and why it cannot be benchmarked."""
    try:
        module = importlib.import_module("recops.pipeline")
    except ImportError as exc:
        return None, f"recops.pipeline does not import ({exc}); the two-stage entry point is not there yet"
    function = getattr(module, "two_stage_recommend", None)
    if function is None:
        return None, "recops.pipeline has no two_stage_recommend; the two-stage entry point is not there yet"
    return function, None


def evaluate_recops(function, data: ProtocolData, fold: Fold, seeds: list[int]) -> dict[str, Any]:
    from recops.errors import RecopsError

    runs, warm_runs, seconds, defects = [], [], [], []
    for seed in seeds:
        started = time.perf_counter()
        lists = function(data.settings, data.train, data.valid, fold.users, data.n_users, data.n_items,
                         data.users_attr, data.items_attr, TOP_K, seed)
        seconds.append(time.perf_counter() - started)
        lists = np.asarray(lists)
        if lists.shape != (len(fold.users), TOP_K) or not np.issubdtype(lists.dtype, np.integer):
            raise RecopsError(f"two_stage_recommend returned a {lists.dtype} array of shape {lists.shape}; "
                              f"expected integers of shape ({len(fold.users)}, {TOP_K})")
        if ((lists < -1) | (lists >= data.n_items)).any():
            raise RecopsError("two_stage_recommend returned item indices outside [-1, n_items)")
        everyone, warm = fold_metrics(fold, lists)
        runs.append(everyone)
        warm_runs += [warm] if warm else []
        defects.append(list_defects(fold, fold.users, lists))
        log.info("recops seed %d: %s=%.4f in %.1f s", seed, TUNING_METRIC, runs[-1][TUNING_METRIC], seconds[-1])
    summary = summarise(defects)
    if summary["seen_share"]["mean"] > 0 or summary["duplicate_slots"]["mean"] > 0:
        log.warning("recops lists break the protocol: %s", summary)
    return {"params": "params.yaml (tuned on valid by `recops tune`)", "metrics": summarise(runs),
            **({"metrics_warm_users": summarise(warm_runs)} if warm_runs else {}),
            "n_seeds": len(runs), "seeds": seeds, "fit_seconds": summarise([{"s": s} for s in seconds])["s"],
            "fit_seconds_includes": "fit and recommend, end to end", "defects": summary}


def run_timeline(settings, seeds: list[int], quick: bool) -> tuple[dict[str, Any], bool]:
    """The ``timeline`` protocol: ``recops.evaluation.backtest`` (params.yaml's ``backtest`` windows, every peer of
    ``recops.evaluation.peers`` tuned on each validation window, ``len(seeds)`` refits of the stochastic models),
    pooled over the windows, with the paired bootstrap intervals of the lifts."""
    from recops.evaluation.backtest import LIFT_METRICS as TIMELINE_LIFTS, run_backtest, with_overrides
    from recops.evaluation.peers import PEER_NAMES

    started = time.perf_counter()
    from recops import steps

    if not all(settings.path(name).is_file() for name in TABLES):
        steps.ingest(settings)
    bt = with_overrides(settings, seeds=len(seeds), quick=quick, peers=list(PEER_NAMES))
    report = run_backtest(bt)
    lift = {metric: {"best_peer": report["lift"][metric]["best_peer"],
                     "best_peer_value": report["lift"][metric]["best_peer_value"],
                     "recops_value": report["lift"][metric]["recops_value"],
                     "lift_pct": report["lift"][metric]["lift_over_best_pct"],
                     "meets_target": report["lift"][metric]["meets_target"],
                     "interval_over": report["lift"][metric]["over"]} for metric in TIMELINE_LIFTS}
    lift["target_pct"] = LIFT_TARGET_PCT
    lift["target_met"] = all(lift[m]["meets_target"] for m in TIMELINE_LIFTS)
    return {"created": report["created"], "quick": quick, "seeds": seeds, "threads": settings.threads,
            "k": bt.backtest.k, "protocol": report["protocol"], "config": report["config"],
            "machine": f"{platform.processor() or platform.machine()}, python {platform.python_version()}",
            "data": report["data"], "windows": report["windows"], "pooled": report["pooled"], "lift": lift,
            "seconds": time.perf_counter() - started}, True


def render_timeline(report: dict[str, Any]) -> str:
    cfg = report["config"]
    pooled = report["pooled"]["metrics"]
    metrics = ("ndcg@10", "recall@10", "recall@20", "map@10", "mrr@10", "hitrate@10")
    best = {m: max(values[m] for values in pooled.values()) for m in metrics}
    lines = [f"### timeline{' (quick grids)' if report['quick'] else ''}\n",
             f"{report['protocol']}: {len(report['windows'])} windows of {cfg['test_days']:g} days (validation "
             f"{cfg['valid_days'] or cfg['test_days']:g} days, step {cfg['step_days'] or cfg['test_days']:g} days); "
             f"cuts {', '.join(w['cut'][:10] for w in report['windows'])}; {report['pooled']['rows']} (window, "
             f"user) rows; seeds {report['seeds']}; threads={report['threads']}; {report['machine']}\n",
             "| model | " + " | ".join(metrics) + " |", "|---|" + "---:|" * len(metrics)]
    for name, values in pooled.items():
        lines.append(f"| {name} | " + " | ".join(f"**{values[m]:.4f}**" if values[m] == best[m] else f"{values[m]:.4f}"
                                                for m in metrics) + " |")
    parts = []
    for metric in ("ndcg@10", "recall@20"):
        lift = report["lift"][metric]
        recent = lift["interval_over"].get("recent_popularity", {})
        parts.append(f"{metric}: {lift['lift_pct']:+.1f}% over {lift['best_peer']} ({lift['recops_value']:.4f} vs "
                     f"{lift['best_peer_value']:.4f}); over recent_popularity {recent.get('lift_pct', math.nan):+.1f}% "
                     f"(95% CI {recent.get('low_pct', math.nan):+.1f}% to {recent.get('high_pct', math.nan):+.1f}%)")
    verdict = "met" if report["lift"]["target_met"] else "NOT met"
    lines.append(f"\nlift of recops over the best peer — {'; '.join(parts)}; ≥{LIFT_TARGET_PCT:.0f}% target {verdict}")
    return "\n".join(lines) + "\n"


def run_protocol(settings, protocol: str, seeds: list[int], quick: bool) -> tuple[dict[str, Any], bool]:
    """Tune, refit and evaluate every model on one protocol; (report, whether recops ran without error)."""
    if protocol == "timeline":
        return run_timeline(settings, seeds, quick)
    started = time.perf_counter()
    data = load_protocol(settings, protocol)
    valid_fold = Fold.from_frames(data.train, data.valid, data.n_users, data.n_items)
    test_fold = Fold.from_frames(pd.concat([data.train, data.valid], ignore_index=True), data.test,
                                 data.n_users, data.n_items)
    cold = int((np.diff(test_fold.history.indptr)[test_fold.users] == 0).sum())
    log.info("%s: %d users, %d items; train/valid/test rows %d/%d/%d; %d valid users, %d test users (%d cold)",
             protocol, data.n_users, data.n_items, len(data.train), len(data.valid), len(data.test),
             len(valid_fold.users), len(test_fold.users), cold)
    peers, skipped = available_peers()
    models: dict[str, Any] = {}
    threads = settings.threads
    for peer in peers:
        chosen = tune(peer, peer.quick_grid if quick else peer.grid, valid_fold, settings.seed, threads)
        result = evaluate_peer(peer, chosen["params"], test_fold, seeds, threads)
        models[peer.name] = {**chosen, **result}
        log.info("%s test %s=%.4f (fit %.2f s)", peer.name, TUNING_METRIC,
                 result["metrics"][TUNING_METRIC]["mean"], result["fit_seconds"]["mean"])
    ok = True
    function, reason = two_stage_function()
    if function is None:
        log.warning("recops skipped: %s", reason)
        skipped[RECOPS] = reason
    else:
        try:
            models[RECOPS] = evaluate_recops(function, data, test_fold, seeds)
        except Exception as exc:  # keep the peers' results; the run still exits non-zero
            log.exception("recops two-stage pipeline failed on %s", protocol)
            skipped[RECOPS] = f"failed: {type(exc).__name__}: {exc}"
            ok = False
    means = {name: {m: v["mean"] for m, v in model["metrics"].items()} for name, model in models.items()}
    lift = None
    if RECOPS in models:
        lift = {metric: lift_over_best_peer(means, metric) for metric in LIFT_METRICS}
        lift["target_pct"] = LIFT_TARGET_PCT
        lift["target_met"] = all(lift[m]["meets_target"] for m in LIFT_METRICS)
    report = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "quick": quick, "seeds": seeds, "threads": threads, "k": TOP_K, "tuning_metric": f"valid {TUNING_METRIC}",
        "machine": f"{platform.processor() or platform.machine()}, python {platform.python_version()}",
        "data": {"n_users": data.n_users, "n_items": data.n_items, "train_rows": len(data.train),
                 "valid_rows": len(data.valid), "test_rows": len(data.test), "valid_users": int(len(valid_fold.users)),
                 "test_users": int(len(test_fold.users)), "cold_test_users": cold},
        "models": models, "skipped": skipped, "lift": lift,
        "best_peer": {m: max((n for n in means if n != RECOPS), key=lambda n: means[n][m]) for m in METRICS},
        "seconds": time.perf_counter() - started,
    }
    return report, ok


# ------------------------------------------------------------------------------------------------------ output
def markdown_table(models: dict[str, Any], metrics: tuple[str, ...] = METRICS, key: str = "metrics") -> str:
    """Model rows, metric columns as ``mean ± std`` (bold: best mean in the column), then fit seconds."""
    best = {m: max(model[key][m]["mean"] for model in models.values()) for m in metrics}
    lines = ["| model | " + " | ".join(metrics) + " | fit (s) | seeds |",
             "|---|" + "---:|" * (len(metrics) + 2)]
    for name, model in models.items():
        cells = []
        for m in metrics:
            value = model[key][m]
            text = f"{value['mean']:.4f}" + (f" ± {value['std']:.4f}" if model["n_seeds"] > 1 else "")
            cells.append(f"**{text}**" if value["mean"] == best[m] else text)
        cells.append(f"{model['fit_seconds']['mean']:.2f}")
        cells.append(str(model["n_seeds"]))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def lift_line(lift: dict[str, Any] | None) -> str:
    if lift is None:
        return "lift: recops not evaluated"
    parts = [f"{m}: {lift[m]['lift_pct']:+.1f}% over {lift[m]['best_peer']} "
             f"({lift[m]['recops_value']:.4f} vs {lift[m]['best_peer_value']:.4f})" for m in LIFT_METRICS]
    verdict = "met" if lift["target_met"] else "NOT met"
    return f"lift of recops over the best peer — {'; '.join(parts)}; ≥{lift['target_pct']:.0f}% target {verdict}"


def render(protocol: str, report: dict[str, Any]) -> str:
    if protocol == "timeline":
        return render_timeline(report)
    data = report["data"]
    head = (f"### {protocol}{' (quick grids)' if report['quick'] else ''}\n\n"
            f"{data['n_users']} users, {data['n_items']} items; {data['test_users']} test users "
            f"({data['cold_test_users']} without history); seeds {report['seeds']}; threads={report['threads']}; "
            f"{report['machine']}\n")
    skipped = "".join(f"\n- {name} skipped: {why}" for name, why in report["skipped"].items())
    warm = ""
    if all("metrics_warm_users" in model for model in report["models"].values()):
        warm = (f"\nWarm test users only ({data['test_users'] - data['cold_test_users']} with history):\n\n"
                f"{markdown_table(report['models'], key='metrics_warm_users')}\n")
    return f"{head}\n{markdown_table(report['models'])}\n\n{lift_line(report['lift'])}\n{warm}{skipped}\n"


def merged_report(path: Path, reports: dict[str, Any]) -> dict[str, Any]:
    """The existing report with the protocols run now replaced (an unreadable file is started afresh)."""
    previous: dict[str, Any] = {}
    if path.is_file():
        try:
            previous = json.loads(path.read_text(encoding="utf-8")).get("protocols", {})
        except (OSError, ValueError, AttributeError):
            log.warning("%s is not a quality report; starting it afresh", path)
    return {"benchmark": "quality", "protocols": {**previous, **reports}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--seeds", type=int, default=3, help="refits of stochastic models (settings.seed + 0..n-1)")
    parser.add_argument("--protocol", choices=[*PROTOCOLS, "headline", "all"], default="headline",
                        help="headline: per_user_temporal and timeline (the rolling-origin backtest)")
    parser.add_argument("--out", default="reports/quality.json")
    parser.add_argument("--quick", action="store_true", help="2-3 grid points per peer instead of the full grids")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every grid point")
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error("--seeds must be at least 1")

    from recops.entry import configure_logging, fail, prepare_environment

    prepare_environment(Path(args.params).resolve().parent)
    configure_logging(logging.DEBUG if args.verbose else logging.INFO)
    from threadpoolctl import threadpool_limits

    from recops.config import load_settings
    from recops.errors import RecopsError

    started = time.perf_counter()
    settings = load_settings(args.params)
    seeds = [settings.seed + i for i in range(args.seeds)]
    protocols = {"all": list(PROTOCOLS), "headline": list(HEADLINE)}.get(args.protocol, [args.protocol])
    out = Path(args.out) if Path(args.out).is_absolute() else settings.root / args.out
    reports: dict[str, Any] = {}
    all_ok = True
    try:
        with threadpool_limits(limits=settings.threads):
            for protocol in protocols:
                reports[protocol], ok = run_protocol(settings, protocol, seeds, args.quick)
                all_ok &= ok
                write_json(merged_report(out, reports), out)
    except RecopsError as exc:
        fail(str(exc), prefix="benchmarks.quality")
    for protocol, report in reports.items():
        print(render(protocol, report))
    log.info("wrote %s in %.0f s", out, time.perf_counter() - started)
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
