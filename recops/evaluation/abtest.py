"""`recops ab`: the challenger against the champion on the same test users and the same data snapshot.

Both registered versions are rebuilt on the current snapshot (``recops.evaluation.versions``): the split outputs
of the project as they are now (history = train + valid, ground truth = test). Then, with the statistics of
``recops.evaluation.ab``: the offline paired test on the primary metric, the simulated online test (hash-bucketed
arms, held-out interactions replayed as clicks) with the primary metric compared between the arms too, both with
CUPED on a pre-period covariate (``ab.cuped``, `pre_period_covariate`), team-draft interleaving, guardrails
(coverage, novelty, ONNX p99 latency of the challenger) and the decision. ``reports/ab.json`` and
``reports/ab.html`` are written and both are logged to MLflow on the challenger's run, with the headline numbers
as metrics and the sha256 of the ab.json bytes as the run tag ``recops.ab.report_sha256``: ``recops promote``
acts on the file only when it still has that digest (``recops.registry.promotion``).
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from recops.columns import Columns
from recops.config import Settings
from recops.errors import RecopsError
from recops.io import write_json
from recops.registry.mlflow_registry import resolve_version
from recops.registry.promotion import CHALLENGER, CHAMPION, log_ab_decision
from recops.workspace import Workspace
from recops.evaluation.metrics import activity_segments

if TYPE_CHECKING:
    from recops.data import IdIndex
    from recops.features import Attributes

log = logging.getLogger(__name__)

def run_ab(settings: Settings, champion: str = CHAMPION, challenger: str = CHALLENGER,
           log_to_mlflow: bool = True, timeline: bool | None = None,
           allow_other_data: bool = False) -> dict[str, Any]:
    """Compare two registered versions (aliases or numbers); returns the summary written to reports/ab.json.
    ``timeline`` (default ``ab.timeline``): also refit both versions' configurations on the rolling timeline and
    require the challenger to be better there (:func:`timeline_comparison`)."""
    from recops.candidates import interaction_matrix
    from recops.evaluation.ab import CHALLENGER_ARM
    from recops.evaluation.ab import (ab_summary, arm_test, assign_arms, decide, guardrails, interleaving_test,
                                      paired_test, per_user_metric, relevant_users_mask, simulated_online_test,
                                      team_draft_interleave)
    from recops.evaluation.ab_report import write_html_report
    from recops.evaluation.metrics import evaluate_lists
    from recops.evaluation.versions import rebuild_lists
    from recops.registry.mlflow_registry import download_version_files

    started = time.perf_counter()
    cfg = settings.ab
    champion_version = resolve_version(settings, champion)
    challenger_version = resolve_version(settings, challenger)
    if champion_version == challenger_version:
        raise RecopsError(
            f"champion and challenger are the same version ({champion_version}): nothing to compare. Train a "
            "challenger first: change params.yaml (or take a new data snapshot) and run `recops run`, which "
            "registers the new version as the challenger")
    from recops.registry.mlflow_registry import list_versions

    records = {str(v["version"]): v for v in list_versions(settings)}
    compared = {role: version_card(records.get(version, {}), version)
                for role, version in ((CHAMPION, champion_version), (CHALLENGER, challenger_version))}
    sources = {role: card["data_source"] for role, card in compared.items()}
    if sources[CHAMPION] != sources[CHALLENGER] and not allow_other_data:
        raise RecopsError(
            f"version {champion_version} was trained on data source {sources[CHAMPION]!r} and version "
            f"{challenger_version} on {sources[CHALLENGER]!r}: an A/B test on today's snapshot would judge one of "
            "them on data it never saw the like of. Compare versions of one data source (or pass "
            "--allow-other-data if that is what you mean)")

    index = Workspace(settings).index()
    history, target = Workspace(settings).fold("test")
    users_attr, items_attr = Workspace(settings).attributes(index)
    users = np.unique(target[Columns.USER].to_numpy()).astype(np.int32)
    truth = interaction_matrix(target, index.n_users, index.n_items, "binary")
    seen = interaction_matrix(history, index.n_users, index.n_items, "binary")
    depth = max(cfg.k, 10, *settings.evaluation.ks)
    built, configs, files_of = {}, {}, {}
    with tempfile.TemporaryDirectory(prefix="recops-ab-") as tmp:
        for role, version in ((CHAMPION, champion_version), (CHALLENGER, challenger_version)):
            files_of[role] = files = download_version_files(settings, version, Path(tmp) / role)
            configs[role] = files["settings"]
            built[role] = rebuild_lists(settings, files, history, users, index.n_users, index.n_items,
                                        users_attr, items_attr, depth)
            log.info("%s = version %s rebuilt on the current snapshot", role, version)
        # inside the block: the champion_metric covariate rebuilds the champion from its downloaded files
        covariate, covariate_name = (
            pre_period_covariate(settings, index, users, files_of[CHAMPION], users_attr, items_attr)
            if cfg.cuped else (None, None))
    lists = {}
    for role, result in built.items():  # align both to ``users`` (a user without candidates gets an empty list)
        aligned = np.full((len(users), depth), -1, dtype=np.int64)
        position = np.searchsorted(users, result.users)
        aligned[position] = result.lists[:, :depth]
        lists[role] = aligned
    scored = relevant_users_mask(users, truth)
    users_scored = users[scored]
    a = per_user_metric(users_scored, lists[CHAMPION][scored], truth, cfg.primary_metric)
    b = per_user_metric(users_scored, lists[CHALLENGER][scored], truth, cfg.primary_metric)
    paired = paired_test(a, b, alpha=cfg.alpha, power=cfg.power, n_boot=cfg.bootstrap_samples, seed=settings.seed,
                         min_lift=cfg.min_lift)
    arms = assign_arms(index.user_ids[users_scored], cfg.salt, cfg.split)
    covariate_scored = covariate[scored] if covariate is not None else None
    online = simulated_online_test(arms, lists[CHAMPION][scored], lists[CHALLENGER][scored], users_scored, truth,
                                   k=cfg.k, alpha=cfg.alpha, expected_split=cfg.split, srm_p_value=cfg.srm_p_value,
                                   covariate=covariate_scored)
    # each user's primary metric under their own arm's model: what an online test of the metric would observe
    online_metric = arm_test(np.where(arms == CHALLENGER_ARM, b, a), arms, covariate_scored,
                             metric=cfg.primary_metric, alpha=cfg.alpha, covariate_name=covariate_name)
    interleaved, team = team_draft_interleave(lists[CHAMPION][scored], lists[CHALLENGER][scored], cfg.k,
                                              seed=settings.seed)
    interleaving = interleaving_test(interleaved, team, users_scored, truth)
    item_user_counts = np.diff(seen.tocsc().indptr).astype(np.float64)
    n_history_users = int((np.diff(seen.indptr) > 0).sum())
    model_metrics = {
        role: evaluate_lists(users_scored, lists[role][scored], truth, sorted(set(settings.evaluation.ks)),
                             item_user_counts=item_user_counts, n_history_users=n_history_users,
                             item_vectors=None)
        for role in (CHAMPION, CHALLENGER)}
    guards = guardrails(model_metrics[CHAMPION], model_metrics[CHALLENGER],
                        built[CHALLENGER].latency_ms["p99"], cfg.guardrails)
    on_timeline = (timeline_comparison(settings, configs[CHAMPION], configs[CHALLENGER])
                   if (cfg.timeline if timeline is None else timeline) else None)
    decision = decide(paired, online, interleaving, guards, cfg, timeline=on_timeline, online_metric=online_metric)
    segment_of = activity_segments(np.diff(seen.indptr), users_scored)
    labels = np.full(len(users_scored), "", dtype=object)
    for name, mask in segment_of.items():
        labels[mask] = name
    segments = {"activity": labels.astype(str)}
    summary = ab_summary(a, b, paired, decision, cfg, online=online, interleaving=interleaving, guards=guards,
                         segments=segments, seed=settings.seed, online_metric=online_metric)
    summary.update({
        "champion_version": champion_version, "challenger_version": challenger_version,
        "model_name": settings.registry.model_name,
        "snapshot": {f"data_md5.{name}": digest for name, digest in Workspace(settings).table_md5s().items()},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": compared,
        "param_diff": param_diff(configs[CHAMPION], configs[CHALLENGER]),
        "test_users": int(len(users)),
        "metrics": {role: {k: (None if not np.isfinite(v) else float(v)) for k, v in values.items()}
                    for role, values in model_metrics.items()},
        "latency_ms": {role: result.latency_ms for role, result in built.items()},
        "seconds": time.perf_counter() - started,
    })
    if on_timeline is not None:
        summary["timeline"] = {key: (None if isinstance(v, float) and not np.isfinite(v) else v)
                               for key, v in dataclasses.asdict(on_timeline).items()}
    report, html = settings.path("ab_report"), settings.path("ab_html")
    write_json(summary, report)
    write_html_report(summary, b - a, segments, html)
    if log_to_mlflow:
        log_ab_decision(settings, challenger_version, summary, [report, html])
    return summary


def pre_period_covariate(settings: Settings, index: IdIndex, users: np.ndarray, champion_files: dict[str, Any],
                         users_attr: Attributes, items_attr: Attributes) -> tuple[np.ndarray, str]:
    """Each of ``users``' CUPED covariate (``ab.cuped_covariate``) and its name for the report.

    The pre-period is the validation fold: the period right before the test period, whose interactions are the
    test's held-out clicks. Nothing of the test fold is read, and the value is the same whichever arm a user is
    in, so the arm cannot have moved it (what keeps CUPED unbiased).

    - ``activity``: the user's number of interactions in the pre-period (0 for a user without any). Free, and on
      ML-100k the best single covariate of those measured (docs/architecture.md, "CUPED").
    - ``champion_metric``: the primary metric of the champion's list in the pre-period, the champion rebuilt on
      the training fold alone (one more rebuild); NaN for users without pre-period interactions, which `cuped`
      fills with the mean.
    """
    from recops.candidates import interaction_matrix
    from recops.evaluation.ab import parse_metric, per_user_metric, relevant_users_mask
    from recops.evaluation.versions import rebuild_lists

    cfg = settings.ab
    train, pre_period = Workspace(settings).fold("valid")
    if cfg.cuped_covariate == "activity":
        counts = np.bincount(pre_period[Columns.USER].to_numpy(), minlength=index.n_users)
        return counts[users].astype(np.float64), "pre-period interactions"
    _, k = parse_metric(cfg.primary_metric)
    truth = interaction_matrix(pre_period, index.n_users, index.n_items, "binary")
    active = relevant_users_mask(users, truth)
    rebuilt = rebuild_lists(settings, champion_files, train, users[active], index.n_users, index.n_items,
                            users_attr, items_attr, k, measure_latency=False)
    lists = np.full((int(active.sum()), k), -1, dtype=np.int64)  # a user without candidates: an empty list
    lists[np.searchsorted(users[active], rebuilt.users)] = rebuilt.lists[:, :k]
    values = np.full(len(users), np.nan)
    values[active] = per_user_metric(users[active], lists, truth, cfg.primary_metric)
    return values, f"pre-period {cfg.primary_metric} of the champion"


def version_card(record: dict[str, Any], version: str) -> dict[str, Any]:
    """What the A/B report says of a compared version: when, from which commit, parameters and data."""
    tags = record.get("tags") or {}
    return {"version": str(version), "created_at": record.get("created_at"), "git_commit": tags.get("git_commit"),
            "params_hash": tags.get("params_hash"), "data_source": tags.get("data_source"),
            "data_md5": {key[len("data_md5."):]: value for key, value in sorted(tags.items())
                         if key.startswith("data_md5.")}}


def param_diff(champion: dict[str, Any], challenger: dict[str, Any], limit: int = 200) -> list[dict[str, Any]]:
    """The configuration keys (``a.b.c``) whose values differ between two versions, with both values."""
    def flat(tree: Any, prefix: str = "") -> dict[str, Any]:
        if isinstance(tree, dict):
            return {k: v for key, sub in tree.items() for k, v in flat(sub, f"{prefix}{key}.").items()}
        return {prefix[:-1]: tree}

    a, b = flat(champion), flat(challenger)
    keys = sorted(key for key in a.keys() | b.keys() if a.get(key) != b.get(key) and not key.startswith("paths."))
    return [{"key": key, "champion": a.get(key), "challenger": b.get(key)} for key in keys[:limit]]


def timeline_comparison(settings: Settings, champion_config: dict[str, Any],
                        challenger_config: dict[str, Any]):
    """The paired test of two versions' configurations on the rolling timeline: each refitted before every cut of
    ``settings.backtest``'s windows on the current snapshot (nothing of a version's trained ranker is reused: it
    saw those windows), judged per (window, warm user) on ``ab.primary_metric``."""
    from recops.evaluation.backtest import load, two_stage_per_user
    from recops.evaluation.ab import paired_test
    from recops.evaluation.versions import version_settings

    cfg = settings.ab
    data = load(settings)
    rows = {role: two_stage_per_user(version_settings(settings, config), data, cfg.primary_metric)
            for role, config in ((CHAMPION, champion_config), (CHALLENGER, challenger_config))}
    log.info("timeline: %s %.4f (champion) vs %.4f (challenger) over %d (window, user) rows", cfg.primary_metric,
             rows[CHAMPION].mean(), rows[CHALLENGER].mean(), len(rows[CHAMPION]))
    return paired_test(rows[CHAMPION], rows[CHALLENGER], alpha=cfg.alpha, power=cfg.power,
                       n_boot=cfg.bootstrap_samples, seed=settings.seed, min_lift=cfg.min_lift)
