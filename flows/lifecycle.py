"""The flows a team runs every day besides training: A/B + promotion, batch scoring, new data snapshots.

- ``recops-evaluate-and-promote``: A/B-evaluate the challenger against the champion and promote it on ``ship``
  (the first model, with no champion, is promoted on the first-model gates instead). A ``hold`` is a normal
  outcome, not a failure: the flow completes and the champion stays. When the challenger already is the
  champion (training bootstrapped the first champion, or nothing was trained since) there is nothing to do.
- ``recops-batch-score``: the champion's top-k for every user to Parquet.
- ``recops-ingest-snapshot``: a new interaction snapshot replaces the project's interaction file, is ingested and
  validated — a bad snapshot restores the previous file and fails the flow before anything is trained — then
  training runs (registering a challenger, recorded in DVC and pushed) and, optionally, evaluate-and-promote.

Wiring only: each task calls one function of the recops package.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from recops import steps
from recops.config import load_settings
from recops.errors import RecopsError

from flows.reporting import HELD, completed, held, hold_reason, publish_decision, send_recops_logs
from flows.training import training_flow_for, transient_only, with_retries

NOTHING_TO_DO = "none"  # the decision when the challenger already is the champion
# what recops.registry.promote says when a first model fails the quality gates (a decision, not a breakage)
GATES_REFUSED = "fails the quality gates"
TASK = {"cache_policy": NO_CACHE, "persist_result": False, "retry_condition_fn": transient_only}


@task(name="ab-evaluation", **TASK)
def ab_task(params_path: str) -> dict[str, Any] | None:
    """The A/B summary; None when there is no champion yet (the first model goes through the gates instead);
    ``{"decision": "none", ...}`` when the challenger already is the champion (nothing new was trained)."""
    from recops.evaluation.abtest import run_ab
    from recops.registry.mlflow_registry import resolve_version

    settings = load_settings(params_path)
    try:
        champion = resolve_version(settings, "champion")
    except RecopsError:
        get_run_logger().info("no champion yet: the challenger goes through the first-model gates")
        return None
    challenger = resolve_version(settings, "challenger")
    if champion == challenger:
        get_run_logger().info("the challenger is the champion (version %s): nothing to evaluate", champion)
        return {"decision": NOTHING_TO_DO, "champion_version": champion, "challenger_version": challenger}
    report = run_ab(settings)
    report["off_policy"] = steps.off_policy_section(settings, report["challenger_version"])
    return report


@task(name="drift", **TASK)
def drift_task(params_path: str) -> dict[str, Any] | None:
    """``recops drift`` of the current snapshot against the champion's training data, logged to MLflow; None
    without a champion (nothing to compare with)."""
    from recops.registry.mlflow_registry import resolve_version
    from recops.registry.report_runs import log_report_run

    settings = load_settings(params_path)
    try:
        resolve_version(settings, "champion")
    except RecopsError:
        return None
    out = steps.drift(settings)
    folder = settings.path("monitoring_dir")
    metrics = {f"{c['name']}.statistic": c["statistic"] for c in out["report"]["checks"]}
    metrics |= {f"{c['name']}.drifted": float(c["drifted"]) for c in out["report"]["checks"]}
    log_report_run(settings, "drift", metrics, [folder / "drift.json", folder / "drift.html"],
                   tags={"recops.drift.decision": out["decision"]["decision"], "recops.drift.version": out["version"]})
    return out


@task(name="promote", **TASK)
def promote_task(params_path: str, ab_report: dict[str, Any] | None) -> dict[str, Any] | None:
    """The promotion entry; None when nothing moved (a hold, nothing to evaluate). Without a champion the
    first-model gates decide: their refusal comes back as ``{"refused": <their message>}`` instead of an error
    (the run held the promotion, it did not fail)."""
    from recops.registry import promote

    logger = get_run_logger()
    if ab_report is not None and ab_report["decision"] == NOTHING_TO_DO:
        return None
    if ab_report is not None and ab_report["decision"] != "ship":
        logger.info("A/B decision for %s vs %s is hold: the champion stays",
                    ab_report["challenger_version"], ab_report["champion_version"])
        return None
    settings = load_settings(params_path)
    try:
        entry = promote(settings, ab_report=ab_report, gates=settings.registry.first_model_gates,
                        reason="scheduled evaluate-and-promote")
    except RecopsError as exc:
        if ab_report is None and GATES_REFUSED in str(exc):
            logger.warning("no champion: %s", exc)
            return {"refused": str(exc)}
        raise
    logger.info("champion -> version %s (was %s)", entry["to_version"], entry["from_version"])
    return entry


@flow(name="recops-evaluate-and-promote", validate_parameters=True)
def evaluate_and_promote_flow(params_path: str = "params.yaml") -> dict[str, Any]:
    """A/B of the challenger against the champion, then the promotion on ``ship``. The decision with its reasons
    is the run's artifact ``<model>-ab-decision``; a hold (or the first-model gates' refusal) ends the run in a
    COMPLETED state named ``Held`` whose message gives the reason."""
    send_recops_logs()
    params_path = str(Path(params_path).resolve())
    drifted = with_retries(drift_task, params_path)(params_path)
    if drifted is not None and drifted["decision"]["drift"]:
        action = load_settings(params_path).monitoring.drift.action
        why = "; ".join(drifted["decision"]["reasons"])
        if action == "block":
            return held(f"drift blocks the promotion (monitoring.drift.action: block): {why}",
                        {"decision": None, "promotion": None, "drift": drifted["decision"]})
        if action == "retrain":
            get_run_logger().warning("drift: retraining on the current snapshot before the A/B: %s", why)
            training_flow_for(params_path)(params_path=params_path)
        else:
            get_run_logger().warning("drift (monitoring.drift.action: warn, promotion goes on): %s", why)
    report = with_retries(ab_task, params_path)(params_path)
    entry = with_retries(promote_task, params_path)(params_path, report)
    refused = (entry or {}).get("refused")
    promotion = None if refused else entry
    result = {"decision": None if report is None else report["decision"], "promotion": promotion}
    publish_decision(load_settings(params_path), report, promotion, refused)
    if refused:
        return held(refused, result)
    if report is not None and report["decision"] == "hold":
        return held(hold_reason(report), result)
    if promotion:
        return completed(f"champion -> version {promotion['to_version']} (was {promotion['from_version']})", result)
    return completed(f"nothing to evaluate: version {report['challenger_version']} already is the champion", result)


@task(name="batch-score", **TASK)
def batch_task(params_path: str, version: str, k: int | None) -> dict[str, Any]:
    from recops.serving.batch import batch_score

    return batch_score(load_settings(params_path), version=version, k=k)


@flow(name="recops-batch-score", validate_parameters=True)
def batch_score_flow(params_path: str = "params.yaml", version: str = "champion",
                     k: int | None = None) -> dict[str, Any]:
    params_path = str(Path(params_path).resolve())
    return with_retries(batch_task, params_path)(params_path, version, k)


@task(name="take-snapshot", **TASK)
def take_snapshot(params_path: str, snapshot_path: str, include_events: bool = True) -> dict[str, float]:
    from recops.intake import take_snapshot as take

    return take(load_settings(params_path), snapshot_path, include_events)


@flow(name="recops-ingest-snapshot", validate_parameters=True)
def ingest_snapshot_flow(snapshot_path: str, params_path: str = "params.yaml", train: bool = True,
                         promote: bool = True, push: bool = True, include_events: bool = True) -> dict[str, Any]:
    """A new snapshot (plus the serving event log's new events) -> validate -> training (challenger; DVC commit +
    push) -> evaluate-and-promote. Held when the training or the promotion it ran held, with their message."""
    send_recops_logs()
    params_path = str(Path(params_path).resolve())
    out: dict[str, Any] = {"snapshot": take_snapshot(params_path, snapshot_path, include_events)}
    rows = f"snapshot {Path(snapshot_path).name}: {int(out['snapshot'].get('ingest.rows', 0))} interactions accepted"
    states = []
    if train:
        states.append(training_flow_for(params_path)(params_path=params_path, dvc=True, push=push,
                                                     return_state=True))
        out["training"] = states[-1].result()
        if promote:
            states.append(evaluate_and_promote_flow(params_path=params_path, return_state=True))
            out["promotion"] = states[-1].result()
    for state in reversed(states):  # the promotion's word first: it is the later decision
        if state.name == HELD:
            return held(f"{rows}; {state.message.removeprefix('held: ')}", out)
    return completed("; ".join([rows, *(state.message for state in states if state.message)]), out)


def replay(params_path: Path, source: Path, n: int, timestamp_column: str = "timestamp",
           push: bool = True) -> list[dict[str, Any]]:
    """Cut ``source`` (CSV or Parquet) into ``n`` weekly snapshots (``recops.data.snapshots``) and run each through
    the ingest-snapshot flow, oldest first, in one process. Stops at the first failing snapshot (its flow restores
    the previous data)."""
    from recops.data.snapshots import write_weekly_snapshots

    results = []
    for path in write_weekly_snapshots(load_settings(params_path), source, n, timestamp_column):
        out = ingest_snapshot_flow(snapshot_path=str(path), params_path=str(params_path), push=push)
        results.append({"snapshot": str(path), "rows": int(out["snapshot"].get("ingest.rows", 0)),
                        "promotion": out.get("promotion")})
    return results
