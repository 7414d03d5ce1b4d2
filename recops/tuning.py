"""Hyper-parameter search on the validation fold (Optuna), logged to MLflow as nested runs, written to params.yaml.

``recops tune`` runs two searches under one time budget (``tuning.time_budget_s``):

1. each candidate source in ``tuning.sources`` (MF, EASE, item-kNN) on its own: fitted on ``train``, scored by
   NDCG@10 of its full-ranking top list on ``valid`` (train items excluded) — what the source contributes as a
   candidate generator and as a ranker feature;
2. the ranker, with the tuned sources: candidates and features of the ``fit`` and ``valid`` folds are built once,
   then each trial fits LambdaRank on ``fit`` (early-stopped on ``valid``) and is scored by NDCG@10 of its lists on
   ``valid``.

Test data is never read. Each trial is a nested MLflow run under one ``tune`` run (params and the valid score);
the best values and every trial go to ``paths.tuning_report`` (reports/tuning.json); with ``write=True`` the best
values replace the ones in params.yaml (comments kept), so ``dvc repro`` picks them up and reproduces the tuned model.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from recops.columns import Columns
from recops.config import Settings
from recops.workspace import Workspace

log = logging.getLogger(__name__)

# search spaces: (params section, key) -> suggest(trial)
SOURCE_SPACES: dict[str, dict[str, Callable[[Any], Any]]] = {
    "mf": {
        "factors": lambda t: t.suggest_int("factors", 8, 128, log=True),
        "regularization": lambda t: t.suggest_float("regularization", 1e-3, 10.0, log=True),
        "alpha": lambda t: t.suggest_float("alpha", 0.5, 50.0, log=True),
        "iterations": lambda t: t.suggest_int("iterations", 5, 30),
    },
    "bpr": {
        "factors": lambda t: t.suggest_int("factors", 16, 256, log=True),
        "learning_rate": lambda t: t.suggest_float("learning_rate", 1e-3, 0.2, log=True),
        "regularization": lambda t: t.suggest_float("regularization", 1e-4, 0.1, log=True),
        "iterations": lambda t: t.suggest_int("iterations", 20, 300, log=True),
    },
    "ease": {"ease_l2": lambda t: t.suggest_float("ease_l2", 1.0, 5000.0, log=True)},
    "itemknn": {
        "knn_neighbours": lambda t: t.suggest_int("knn_neighbours", 10, 1000, log=True),
        "knn_shrinkage": lambda t: t.suggest_float("knn_shrinkage", 0.0, 200.0),
    },
    # the time-aware sources: how far back "now" reaches, chosen on the validation window
    "recent_popularity": {
        "recent_popularity_days": lambda t: t.suggest_float("recent_popularity_days", 2.0, 180.0, log=True),
    },
    "decayed_popularity": {
        "decayed_popularity_half_life_days":
            lambda t: t.suggest_float("decayed_popularity_half_life_days", 1.0, 180.0, log=True),
    },
    "recent_itemknn": {
        "recent_cooccurrence_days": lambda t: t.suggest_float("recent_cooccurrence_days", 7.0, 365.0, log=True),
    },
    # the transformer (costly: minutes per trial on ML-100k; add it to tuning.sources deliberately). Embedding
    # sizes are multiples of every head count up to 4, so sequence_heads stays valid.
    "sequence": {
        "sequence_embedding": lambda t: t.suggest_categorical("sequence_embedding", [32, 64, 128]),
        "sequence_layers": lambda t: t.suggest_int("sequence_layers", 1, 3),
        "sequence_dropout": lambda t: t.suggest_float("sequence_dropout", 0.0, 0.5),
        "sequence_learning_rate": lambda t: t.suggest_float("sequence_learning_rate", 1e-4, 1e-2, log=True),
        "sequence_epochs": lambda t: t.suggest_int("sequence_epochs", 5, 50),
    },
}
RANKER_SPACE: dict[str, Callable[[Any], Any]] = {
    "learning_rate": lambda t: t.suggest_float("learning_rate", 0.01, 0.2, log=True),
    "num_leaves": lambda t: t.suggest_int("num_leaves", 4, 63, log=True),
    "min_child_samples": lambda t: t.suggest_int("min_child_samples", 5, 300, log=True),
    "feature_fraction": lambda t: t.suggest_float("feature_fraction", 0.3, 1.0),
    "bagging_fraction": lambda t: t.suggest_float("bagging_fraction", 0.5, 1.0),
    "lambdarank_truncation_level": lambda t: t.suggest_int("lambdarank_truncation_level", 5, 60, log=True),
}


def _valid_ndcg(users: np.ndarray, items: np.ndarray, truth) -> float:
    from recops.evaluation.metrics import ranking_metrics

    return float(ranking_metrics(users, items, truth, [10])["ndcg@10"])


def _search(study_name: str, space: dict[str, Callable[[Any], Any]], current: Any,
            score: Callable[[dict[str, Any]], float], seed: int, budget_s: float, max_trials: int,
            mlflow_on: bool) -> tuple[dict[str, Any], float, list[dict[str, Any]]]:
    """Maximise ``score(params)`` over ``space`` with TPE, the current values (attributes of ``current``) as the
    first trial; each trial recorded (and logged as a nested MLflow run). Returns (best params, best, records)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    records: list[dict[str, Any]] = []

    def objective(trial) -> float:
        params = {key: suggest(trial) for key, suggest in space.items()}
        started = time.perf_counter()
        value = score(params)
        seconds = time.perf_counter() - started
        records.append({"trial": trial.number, "params": params, "valid_ndcg@10": value, "seconds": seconds})
        if mlflow_on:
            from recops.registry.tracking import log_nested_run

            log_nested_run(f"{study_name}-{trial.number}", {f"{study_name}.{k}": v for k, v in params.items()},
                           {"valid.ndcg_at_10": value, "fit_seconds": seconds})
        return value

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    study.enqueue_trial({key: getattr(current, key) for key in space})
    from recops.progress import progress

    with progress(f"tuning {study_name}: trials (budget {budget_s:.0f} s)", max_trials, "trials",
                  every_s=10.0) as step:
        study.optimize(objective, n_trials=max_trials, timeout=budget_s,
                       callbacks=[lambda _study, _trial: step.advance()])
    return dict(study.best_params), float(study.best_value), records


def tune_source(settings: Settings, name: str, train: pd.DataFrame, valid: pd.DataFrame, n_users: int,
                n_items: int, budget_s: float, max_trials: int, mlflow_on: bool) -> tuple[dict[str, Any], float, list]:
    """Best params of one source by valid NDCG@10 of its own top-10 lists."""
    from recops.candidates import fit_sources, interaction_matrix, recommend

    space = SOURCE_SPACES["bpr" if name == "mf" and settings.candidates.algorithm == "bpr" else name]
    user_items = interaction_matrix(train, n_users, n_items, "binary")
    truth = interaction_matrix(valid, n_users, n_items, "binary")
    users = np.unique(valid[Columns.USER].to_numpy()).astype(np.int32)

    def score(params: dict[str, Any]) -> float:
        config = settings.candidates.model_copy(update={**params, "sources": [name]})
        sources, _ = fit_sources(train, n_users, n_items, config, settings.seed, settings.threads)
        items, _ = recommend(sources[name], users, user_items, 10)
        return _valid_ndcg(users, items, truth)

    return _search(f"source.{name}", space, settings.candidates, score, settings.seed, budget_s, max_trials,
                   mlflow_on)


def tune_ranker(settings: Settings, fit_table: pd.DataFrame, valid_table: pd.DataFrame, valid: pd.DataFrame,
                n_users: int, n_items: int, budget_s: float, max_trials: int,
                mlflow_on: bool) -> tuple[dict[str, Any], float, list]:
    """Best ranker params by valid NDCG@10 of the two-stage lists (ranker fitted on ``fit``, early-stopped)."""
    from recops.candidates import interaction_matrix
    from recops.pipeline import feature_columns
    from recops.ranking import ranked_lists
    from recops.ranking import train_lambdarank

    names = feature_columns(fit_table)
    truth = interaction_matrix(valid, n_users, n_items, "binary")
    features = valid_table[names].to_numpy(np.float32)

    def score(params: dict[str, Any]) -> float:
        config = settings.ranker.model_copy(update=params)
        booster = train_lambdarank(fit_table, valid_table, names, config, settings.seed, settings.threads)
        users, items, _ = ranked_lists(valid_table, booster.predict(features, num_threads=settings.threads), 10)
        return _valid_ndcg(users, items, truth)

    return _search("ranker", RANKER_SPACE, settings.ranker, score, settings.seed, budget_s, max_trials, mlflow_on)


def tune(settings: Settings, *, budget_s: float | None = None, write: bool = False,
         params_path: Path | None = None) -> dict[str, Any]:
    """Run the searches on the split outputs (``paths.split_dir``); returns and writes the tuning report."""
    from recops.io import write_json
    from recops.pipeline import run_fold

    cfg = settings.tuning
    budget = cfg.time_budget_s if budget_s is None else budget_s
    started = time.perf_counter()
    index = Workspace(settings).index()
    n_users, n_items = index.n_users, index.n_items
    fit_history, fit_target = Workspace(settings).fold("fit")
    train, valid = Workspace(settings).fold("valid")
    mlflow_on = cfg.log_to_mlflow
    report: dict[str, Any] = {"budget_s": budget, "sources": {}, "ranker": {}}

    def run_searches() -> None:
        tuned = settings
        sources = [s for s in cfg.sources if s in settings.candidates.sources]
        source_budget = budget * cfg.source_share / max(len(sources), 1)
        for name in sources:
            best, value, records = tune_source(tuned, name, train, valid, n_users, n_items, source_budget,
                                               cfg.max_trials, mlflow_on)
            report["sources"][name] = {"best": best, "valid_ndcg@10": value, "trials": records}
            tuned = tuned.model_copy(update={"candidates": tuned.candidates.model_copy(update=best)})
            log.info("tuned %s: %s (valid ndcg@10 %.4f, %d trials)", name, best, value, len(records))
        if cfg.ranker:
            users_attr, items_attr = Workspace(tuned).attributes(index)
            args = (n_users, n_items, users_attr, items_attr)
            fit = run_fold(tuned, fit_history, fit_target, np.unique(fit_target[Columns.USER]), *args)
            valid_fold = run_fold(tuned, train, valid, np.unique(valid[Columns.USER]), *args)
            remaining = max(budget - (time.perf_counter() - started), 1.0)
            best, value, records = tune_ranker(tuned, fit.table, valid_fold.table, valid, n_users, n_items,
                                               remaining, cfg.max_trials, mlflow_on)
            report["ranker"] = {"best": best, "valid_ndcg@10": value, "trials": records}
            log.info("tuned ranker: %s (valid ndcg@10 %.4f, %d trials)", best, value, len(records))

    def finish() -> None:
        report["seconds"] = time.perf_counter() - started
        report["updates"] = updates(report)
        if write:
            target = params_path or settings.root / "params.yaml"
            report["changed"] = write_params(target, report["updates"])
            report["written_to"] = str(target)
        write_json(report, settings.path("tuning_report"))

    if not mlflow_on:
        run_searches()
        finish()
        return report
    from recops.registry.tracking import experiment_run, log_artifact, log_metric

    params = {"budget_s": budget, "max_trials": cfg.max_trials, "sources": ",".join(cfg.sources),
              "ranker": cfg.ranker}
    with experiment_run(settings, "tune", "tuning", params) as run_id:
        report["mlflow_run_id"] = run_id
        run_searches()
        for name, result in report["sources"].items():
            log_metric(f"valid.{name}.ndcg_at_10", result["valid_ndcg@10"])
        if report["ranker"]:
            log_metric("valid.ranker.ndcg_at_10", report["ranker"]["valid_ndcg@10"])
        finish()
        log_artifact(settings.path("tuning_report"))
    return report


def updates(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{section: {key: value}} to write into params.yaml from a tuning report."""
    out: dict[str, dict[str, Any]] = {}
    for result in report["sources"].values():
        out.setdefault("candidates", {}).update(result["best"])
    if report.get("ranker"):
        out["ranker"] = dict(report["ranker"]["best"])
    return {section: {k: _plain(v) for k, v in values.items()} for section, values in out.items()}


def _plain(value: Any) -> Any:
    if isinstance(value, float):
        return float(f"{value:.4g}")
    return value.item() if hasattr(value, "item") else value


def write_params(path: Path, values: dict[str, dict[str, Any]]) -> dict[str, list[Any]]:
    """Replace ``section.key`` values in params.yaml in place, keeping its comments and layout; return what
    changed (``{"section.key": [old, new]}``; the file is not rewritten when nothing did)."""
    from ruamel.yaml import YAML

    from recops.io import atomic_path

    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.width = 120
    yaml.representer.add_representer(  # keep "null" written out (ruamel's default writes nothing)
        type(None), lambda representer, _: representer.represent_scalar("tag:yaml.org,2002:null", "null"))
    data = yaml.load(path.read_text(encoding="utf-8"))
    changed: dict[str, list[Any]] = {}
    for section, entries in values.items():
        for key, value in entries.items():
            old = data[section].get(key)
            if old != value:
                changed[f"{section}.{key}"] = [old, value]
            data[section][key] = value
    if not changed:
        return changed
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as handle:
            yaml.dump(data, handle)
    return changed
