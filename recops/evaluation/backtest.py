"""Rolling-origin backtest: how a configuration would have done on the global timeline, window after window.

A deployed recommender is judged on what its users do after it was trained, all users at once. The backtest
replays that ``backtest.windows`` times. Window ``w`` (0 = oldest) has a cut ``c_w``; with ``V`` the validation
length and ``T`` the test length (``params.yaml`` section ``backtest``):

- fit period: every interaction before ``c_w - V``;
- validation period ``[c_w - V, c_w)``: the peers' parameters are chosen on it (grids of
  ``recops.evaluation.peers``), the two-stage ranker is early-stopped on it (its labels come from the end of
  the fit period, cut globally in time: ``ranker.holdout``), then everything is refitted on all of it;
- test period ``[c_w, c_w + T)``: the lists of the users seen before the cut (warm users) are judged on their
  interactions there. Nothing of a window's test period, and nothing after its cut, reaches anything fitted for
  it (``window_parts`` cuts by timestamp; the point-in-time tests append post-cut rows and check).

The cuts step back from the log's end by ``step_days``; the windows must fit the data's time span after
``min_train_days`` of history, and every validation and test period must hold at least ``min_users`` warm
users, or the run stops with an error that names the numbers before anything is fitted or logged.

Output (``summarise``): per-window and pooled metrics of the two-stage list and of every peer (pooled = mean over
all (window, user) rows), and for every peer the paired bootstrap confidence interval of recops' relative lift
over it on the pooled rows (``scipy.stats.bootstrap``, percentile method). ``recops.steps.backtest`` writes the
JSON and HTML reports and the MLflow runs; the Prefect flow ``recops-backtest`` runs the windows as tasks.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pandas as pd

from recops.columns import Columns, DAY
from recops.config import Settings
from recops.errors import RecopsError
from recops.workspace import Workspace, read_parquet

log = logging.getLogger(__name__)

RECOPS = "recops"
POOLED_METRICS = ("ndcg@10", "recall@10", "recall@20", "map@10", "mrr@10", "hitrate@10")
LIFT_METRICS = ("ndcg@10", "recall@20")
LIFT_TARGET_PCT = 10.0


@dataclass(frozen=True)
class Window:
    index: int
    valid_start: float  # timestamps (seconds)
    cut: float
    test_end: float

    def describe(self) -> dict[str, Any]:
        return {"window": self.index, "valid_start": _date(self.valid_start), "cut": _date(self.cut),
                "test_end": _date(self.test_end), "cut_ts": self.cut}


def _date(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%d %H:%M")


def plan_windows(timestamps: np.ndarray, settings: Settings) -> list[Window]:
    """The windows of ``settings.backtest`` over a log with these timestamps; a RecopsError naming the numbers
    when they do not fit the log's time span."""
    cfg = settings.backtest
    if not len(timestamps):
        raise RecopsError("backtest: the interaction log is empty")
    start, end = float(np.min(timestamps)), float(np.max(timestamps))
    span = (end - start) / DAY
    last_cut = end + 1.0 - cfg.test_days * DAY  # the last test period ends just after the last interaction
    cuts = [last_cut - (cfg.windows - 1 - w) * cfg.step * DAY for w in range(cfg.windows)]
    needed = (end + 1.0 - cuts[0]) / DAY + cfg.valid + cfg.min_train_days
    if needed > span:
        raise RecopsError(
            f"backtest: {cfg.windows} windows of test_days={cfg.test_days:g} every step_days={cfg.step:g} with "
            f"valid_days={cfg.valid:g} and min_train_days={cfg.min_train_days:g} need {needed:.1f} days of data, "
            f"but the log spans {span:.1f} days ({_date(start)} to {_date(end)}); lower backtest.windows, "
            f"test_days, step_days, valid_days or min_train_days")
    return [Window(w, cut - cfg.valid * DAY, cut, cut + cfg.test_days * DAY) for w, cut in enumerate(cuts)]


def window_parts(interactions: pd.DataFrame, window: Window) -> dict[str, pd.DataFrame]:
    """(train, valid, test) of one window, cut by timestamp only; nothing at or after ``test_end`` is kept."""
    ts = interactions[Columns.TIMESTAMP].to_numpy(dtype=np.float64)
    return {
        "train": interactions[ts < window.valid_start].reset_index(drop=True),
        "valid": interactions[(ts >= window.valid_start) & (ts < window.cut)].reset_index(drop=True),
        "test": interactions[(ts >= window.cut) & (ts < window.test_end)].reset_index(drop=True),
    }


def warm_users(target: pd.DataFrame, history: pd.DataFrame) -> np.ndarray:
    """The users of ``target`` with at least one interaction in ``history`` (sorted)."""
    return np.intersect1d(target[Columns.USER].to_numpy(), history[Columns.USER].to_numpy()).astype(np.int32)


def check_windows(interactions: pd.DataFrame, windows: list[Window], settings: Settings) -> list[dict[str, Any]]:
    """Sizes of every window; a RecopsError naming the window, its dates and its counts when one is too thin."""
    cfg = settings.backtest
    sizes, problems = [], []
    for window in windows:
        parts = window_parts(interactions, window)
        n_valid = len(warm_users(parts["valid"], parts["train"]))
        history = pd.concat([parts["train"], parts["valid"]], ignore_index=True)
        n_test = len(warm_users(parts["test"], history))
        size = {**window.describe(), "train_rows": len(parts["train"]), "valid_rows": len(parts["valid"]),
                "test_rows": len(parts["test"]), "valid_users": n_valid, "test_users": n_test}
        sizes.append(size)
        if n_valid < cfg.min_users or n_test < cfg.min_users:
            problems.append(f"window {window.index} (cut {_date(window.cut)}): {n_valid} warm validation users "
                            f"in {len(parts['valid'])} rows, {n_test} warm test users in {len(parts['test'])} rows")
    if problems:
        raise RecopsError(f"backtest: windows with fewer than min_users={cfg.min_users} users seen before their "
                          f"period: {'; '.join(problems)}; lengthen backtest.test_days / valid_days, use fewer "
                          f"windows or lower backtest.min_users")
    return sizes


@dataclass
class BacktestData:
    interactions: pd.DataFrame  # encoded (dense user / item indices)
    n_users: int
    n_items: int
    users_attr: Any
    items_attr: Any
    windows: list[Window]
    sizes: list[dict[str, Any]]


def load(settings: Settings) -> BacktestData:
    """The prepared interactions (encoded), their attributes and the checked windows."""
    from recops.data import IdIndex

    interactions = read_parquet(settings.path("interactions"))
    windows = plan_windows(interactions[Columns.TIMESTAMP].to_numpy(dtype=np.float64), settings)
    index = IdIndex.from_interactions(interactions)
    encoded = index.encode(interactions)
    sizes = check_windows(encoded, windows, settings)
    users_attr, items_attr = Workspace(settings).attributes(index)
    return BacktestData(encoded, index.n_users, index.n_items, users_attr, items_attr, windows, sizes)


def timeline_settings(settings: Settings) -> Settings:
    """The settings the two-stage list is fitted with in a window: a global-time split, so the ranker's labels
    are a global-time window too (``ranker.holdout: auto``)."""
    return settings.model_copy(update={"split": settings.split.model_copy(update={"method": "global_time"})})


def _per_user(fold, users: np.ndarray, lists: np.ndarray) -> dict[str, np.ndarray]:
    from recops.evaluation.metrics import per_user_ranking_metrics

    scored, values = per_user_ranking_metrics(users, lists, fold.truth, [10, 20])
    if not scored.all():  # warm test users all have a test interaction by construction
        raise RecopsError("backtest: a test user without test interactions")
    return {name: values[name] for name in POOLED_METRICS}


def run_window(settings: Settings, data: BacktestData, w: int) -> dict[str, Any]:
    """Fit and judge every model on window ``w``: chosen params, metrics, and per-user metric rows (for the
    pooled means and the paired bootstraps; rows in the order of ``users``)."""
    from recops.evaluation.peers import Fold, fit_peer, list_metrics, peers_named, recommend_lists, tune
    from recops.pipeline import two_stage_lists

    cfg = settings.backtest
    window = data.windows[w]
    started = time.perf_counter()
    parts = window_parts(data.interactions, window)
    history = pd.concat([parts["train"], parts["valid"]], ignore_index=True)
    users = warm_users(parts["test"], history)
    valid_fold = Fold.from_frames(parts["train"], parts["valid"], data.n_users, data.n_items,
                                  users=warm_users(parts["valid"], parts["train"]))
    test_fold = Fold.from_frames(history, parts["test"], data.n_users, data.n_items, users=users)
    seeds = [settings.seed + i for i in range(cfg.seeds)]
    models: dict[str, Any] = {}
    for peer in peers_named(cfg.peers):
        chosen = tune(peer, peer.quick_grid if cfg.quick else peer.grid, valid_fold, settings.seed,
                      settings.threads)
        rows, metrics, fit_s = [], [], 0.0
        for seed in seeds if peer.stochastic else seeds[:1]:
            t0 = time.perf_counter()
            model = fit_peer(peer.build(chosen["params"], seed, settings.threads), test_fold)
            lists = recommend_lists(model, test_fold, users, cfg.k)
            fit_s += time.perf_counter() - t0
            rows.append(_per_user(test_fold, users, lists))
            metrics.append(list_metrics(test_fold, users, lists))
        models[peer.name] = _model_result(rows, metrics, fit_s, params=chosen["params"],
                                          valid_ndcg=chosen["valid_ndcg@10"])
    rows, metrics, fit_s, recall = [], [], 0.0, []
    tsettings = timeline_settings(settings)
    for seed in seeds:
        t0 = time.perf_counter()
        lists, candidates = two_stage_lists(tsettings, parts["train"], parts["valid"], users, data.n_users,
                                            data.n_items, data.users_attr, data.items_attr, cfg.k, seed)
        fit_s += time.perf_counter() - t0
        rows.append(_per_user(test_fold, users, lists))
        metrics.append(list_metrics(test_fold, users, lists))
        recall.append(candidate_recalls(candidates, test_fold.truth, settings.candidates))
    models[RECOPS] = _model_result(rows, metrics, fit_s, params="params.yaml")
    models[RECOPS]["candidate_recall"] = {key: float(np.mean([r[key] for r in recall])) for key in recall[0]}
    log.info("backtest window %d (cut %s, %d users): %s in %.0f s", w, _date(window.cut), len(users),
             ", ".join(f"{name} {m['metrics']['ndcg@10']:.4f}" for name, m in models.items()),
             time.perf_counter() - started)
    return {**data.sizes[w], "users": users.tolist(), "models": models, "seconds": time.perf_counter() - started}


def candidate_recalls(candidates: pd.DataFrame, truth, config) -> dict[str, float]:
    """Recall@n_candidates of the merged candidates and of each source's own top n (the test interactions of the
    listed users that the candidate stage retrieves): what the ranker can at best put in front."""
    from recops.evaluation.metrics import candidate_recall

    import scipy.sparse as sp

    n = config.n_candidates
    users, items = candidates[Columns.USER].to_numpy(), candidates[Columns.ITEM].to_numpy()
    listed = np.zeros(truth.shape[0])
    listed[np.unique(users)] = 1.0
    truth = (sp.diags(listed) @ truth).tocsr()  # the listed (warm) users' test interactions only
    truth.eliminate_zeros()
    out = {f"merged@{n}": candidate_recall(users, items, truth)}
    for name in config.sources:
        own = candidates[f"{name}_rank"].to_numpy() <= n
        out[f"{name}@{n}"] = candidate_recall(users[own], items[own], truth)
    return out


def _model_result(rows: list[dict[str, np.ndarray]], metrics: list[dict[str, float]], fit_s: float,
                  **extra: Any) -> dict[str, Any]:
    """Per-user rows and metrics averaged over the seeds."""
    return {**extra, "metrics": {key: float(np.mean([m[key] for m in metrics])) for key in metrics[0]},
            "per_user": {key: np.mean([r[key] for r in rows], axis=0).tolist() for key in rows[0]},
            "n_seeds": len(rows), "seconds": fit_s}


def lift_interval(ours: np.ndarray, peer: np.ndarray, resamples: int, confidence: float,
                  seed: int) -> dict[str, float]:
    """Relative lift ``mean(ours) / mean(peer) - 1`` on paired rows and its percentile bootstrap interval
    (``scipy.stats.bootstrap``, rows resampled together)."""
    from scipy.stats import bootstrap

    ours, peer = np.asarray(ours, np.float64), np.asarray(peer, np.float64)
    lift = float(ours.mean() / peer.mean() - 1.0) if peer.mean() > 0 else float("nan")
    if not np.isfinite(lift) or len(ours) < 2:
        return {"lift_pct": lift * 100, "low_pct": float("nan"), "high_pct": float("nan")}

    def ratio(x, y, axis=-1):
        denominator = y.mean(axis=axis)
        return np.where(denominator > 0, x.mean(axis=axis) / np.where(denominator > 0, denominator, 1.0) - 1.0,
                        np.nan)

    result = bootstrap((ours, peer), ratio, paired=True, vectorized=True, n_resamples=resamples,
                       confidence_level=confidence, method="percentile", random_state=seed)
    return {"lift_pct": lift * 100, "low_pct": float(result.confidence_interval.low) * 100,
            "high_pct": float(result.confidence_interval.high) * 100}


def summarise(settings: Settings, data: BacktestData, results: list[dict[str, Any]],
              seconds: float) -> dict[str, Any]:
    """The report: windows, per-window metrics, pooled metrics, lifts with paired bootstrap intervals."""
    cfg = settings.backtest
    names = list(results[0]["models"])
    pooled_rows = {name: {m: np.concatenate([r["models"][name]["per_user"][m] for r in results])
                          for m in POOLED_METRICS} for name in names}
    pooled = {name: {m: float(v.mean()) for m, v in rows.items()} for name, rows in pooled_rows.items()}
    peers = [name for name in names if name != RECOPS]
    lifts: dict[str, Any] = {}
    for metric in LIFT_METRICS:
        best = max(peers, key=lambda name: pooled[name][metric])
        per_peer = {name: lift_interval(pooled_rows[RECOPS][metric], pooled_rows[name][metric],
                                        cfg.bootstrap_resamples, cfg.confidence, settings.seed)
                    for name in peers}
        lifts[metric] = {"best_peer": best, "best_peer_value": pooled[best][metric],
                         "recops_value": pooled[RECOPS][metric], "over": per_peer,
                         "lift_over_best_pct": per_peer[best]["lift_pct"],
                         "meets_target": bool(per_peer[best]["lift_pct"] >= LIFT_TARGET_PCT)}
    recalls = [r["models"][RECOPS].get("candidate_recall", {}) for r in results]
    candidate_recall = {key: float(np.mean([r[key] for r in recalls])) for key in recalls[0]} if recalls[0] else {}
    windows = [{key: value for key, value in r.items() if key not in ("users", "models")}
               | {"models": {name: {k: v for k, v in m.items() if k != "per_user"}
                             for name, m in r["models"].items()}} for r in results]
    return {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "protocol": "rolling origin on the global timeline; warm users (seen before each cut)",
        "config": cfg.model_dump(mode="json"),
        "seed": settings.seed,
        "data": {"n_users": data.n_users, "n_items": data.n_items, "rows": len(data.interactions)},
        "windows": windows,
        "pooled": {"rows": int(len(next(iter(pooled_rows.values()))["ndcg@10"])), "metrics": pooled},
        "lift": lifts,
        "candidate_recall": candidate_recall,  # mean over windows, merged and per source
        "lift_target_pct": LIFT_TARGET_PCT,
        "recent_popularity_lift": {m: lifts[m]["over"].get("recent_popularity") for m in LIFT_METRICS},
        "seconds": seconds,
    }


def run_backtest(settings: Settings, run_window_fn=None) -> dict[str, Any]:
    """Every window in this process (``run_window_fn(settings, data, w)`` to run them elsewhere), summarised."""
    started = time.perf_counter()
    data = load(settings)
    from recops.progress import progress

    results = []
    with progress("backtest: windows", len(data.windows), "windows", every_s=0.0) as step:
        for w in range(len(data.windows)):
            results.append((run_window_fn or run_window)(settings, data, w))
            step.advance()
    return summarise(settings, data, results, time.perf_counter() - started)


def with_overrides(settings: Settings, **overrides: Any) -> Settings:
    """``settings`` with these ``backtest`` keys replaced (None values ignored), validated like params.yaml: a bad
    value is a RecopsError naming the key and the value."""
    from pydantic import ValidationError

    from recops.config import BacktestConfig

    given = {key: value for key, value in overrides.items() if value is not None}
    if not given:
        return settings
    try:
        config = BacktestConfig.model_validate({**settings.backtest.model_dump(), **given})
    except ValidationError as exc:
        problems = "; ".join(f"backtest.{'.'.join(map(str, e['loc']))}={e.get('input')!r}: {e['msg']}"
                             for e in exc.errors())
        raise RecopsError(f"bad backtest parameters: {problems}") from None
    return settings.model_copy(update={"backtest": config})


# --- the backtest as offline evidence (first-model gates, recops ab --timeline) ---------------------------------------

# the backtest's model names as the pipeline's reports and gates call them (``<fold>.<model>.<metric>``)
PIPELINE_NAMES = {RECOPS: "ranker", "als": "mf"}


def timeline_metrics(report: dict[str, Any]) -> dict[str, float]:
    """``timeline.<model>.<metric>`` of a backtest report's pooled metrics (models named as in the pipeline's
    metrics: ``ranker`` for the two-stage list, ``mf`` for ALS), and ``timeline.lift_low_pct.<peer>.<metric>``:
    the lower bound of the paired bootstrap interval of the two-stage list's lift over each peer. What the
    first-model gates read with ``fold: timeline``, logged on the version's run."""
    out = {f"timeline.{PIPELINE_NAMES.get(name, name)}.{metric}": float(value)
           for name, values in report["pooled"]["metrics"].items() for metric, value in values.items()}
    for metric, lift in report.get("lift", {}).items():
        for peer, interval in lift["over"].items():
            out[f"timeline.lift_low_pct.{PIPELINE_NAMES.get(peer, peer)}.{metric}"] = float(interval["low_pct"])
    return out


def two_stage_per_user(settings: Settings, data: BacktestData, metric: str) -> np.ndarray:
    """The two-stage list's per-(window, user) ``metric`` over every window of ``data``, fitted with ``settings``
    (no peers): rows in window order, then in the order of each window's warm users, which depend on the data
    and the windows alone, so two configurations' rows pair one to one."""
    alone = settings.model_copy(update={"backtest": settings.backtest.model_copy(update={"peers": []})})
    return np.concatenate([np.asarray(run_window(alone, data, w)["models"][RECOPS]["per_user"][metric])
                           for w in range(len(data.windows))])
