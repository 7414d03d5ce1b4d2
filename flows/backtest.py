"""The backtest flow ``recops-backtest``: one Prefect task per window, then one that writes the reports.

Wiring only: the windows, the fits and the summary are ``recops.evaluation.backtest``; the reports and the MLflow runs
are ``recops.steps.write_backtest``. The window plan is checked in the flow's process before any task starts (bad
parameters fail the flow with the message naming the numbers, and nothing is written or logged). With
``compute.engine: dask`` the window tasks are submitted to the flow's ``DaskTaskRunner`` (``backtest_flow_for``)
and run side by side on the workers; with ``local`` they run one after the other in the flow's process.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.reporting import backtest_outcome, completed, publish_backtest, send_recops_logs
from flows.training import task_runner, transient_only
from recops.evaluation.backtest import load, run_window, summarise, with_overrides
from recops.config import load_settings


def _settings(params_path: str, overrides: dict[str, Any] | None):
    return with_overrides(load_settings(params_path), **(overrides or {}))


@task(name="backtest-window", retry_condition_fn=transient_only, cache_policy=NO_CACHE, persist_result=False)
def window_task(params_path: str, overrides: dict[str, Any] | None, window: int) -> dict[str, Any]:
    """Fit every model before the window's cut and judge it after (the data is read in the task's process)."""
    from threadpoolctl import threadpool_limits

    send_recops_logs()  # the task may run in a Dask worker, a process of its own
    settings = _settings(params_path, overrides)
    with threadpool_limits(limits=settings.threads):
        return run_window(settings, load(settings), window)


@task(name="backtest-report", cache_policy=NO_CACHE, persist_result=False)
def report_task(params_path: str, overrides: dict[str, Any] | None, results: list[dict[str, Any]],
                seconds: float) -> dict[str, Any]:
    from recops import steps

    settings = _settings(params_path, overrides)
    return steps.write_backtest(settings, summarise(settings, load(settings), results, seconds))


@flow(name="recops-backtest", validate_parameters=True)
def backtest_flow(params_path: str = "params.yaml", overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Rolling-origin backtest of params.yaml's configuration (``backtest`` section, ``overrides`` on top); the
    pooled metrics and lifts also as the run's artifact ``<model>-backtest``."""
    send_recops_logs()
    started = time.perf_counter()
    params_path = str(Path(params_path).resolve())
    settings = _settings(params_path, overrides)
    windows = load(settings).windows  # checks the plan and every window's size before any task runs
    logger = get_run_logger()
    logger.info("backtest: %d windows, cuts %s", len(windows), ", ".join(w.describe()["cut"] for w in windows))
    if settings.compute.engine == "dask":
        futures = [window_task.submit(params_path, overrides, w.index) for w in windows]
        results = [future.result() for future in futures]
    else:
        results = [window_task(params_path, overrides, w.index) for w in windows]
    report = report_task(params_path, overrides, results, time.perf_counter() - started)
    for metric, lift in report["lift"].items():
        logger.info("pooled %s: recops %.4f, best peer %s %.4f (%+.1f%%)", metric, lift["recops_value"],
                    lift["best_peer"], lift["best_peer_value"], lift["lift_over_best_pct"])
    publish_backtest(settings, report)
    return completed(backtest_outcome(report), report)


def backtest_flow_for(params_path: str):
    """``backtest_flow`` on the task runner of params.yaml's ``compute`` section (see ``training_flow_for``)."""
    cfg = load_settings(params_path).compute
    runner = task_runner(cfg.engine, cfg.address, cfg.n_workers, cfg.threads_per_worker)
    return backtest_flow if runner is None else backtest_flow.with_options(task_runner=runner)
