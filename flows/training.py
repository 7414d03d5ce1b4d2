"""The training flow: every pipeline stage as a Prefect task, then one task that records the run in DVC.

Tasks pass the params path in and small metric dicts out; data moves through the Parquet / npy files that
``recops.steps`` writes (and DVC versions), never through task state. The ingest task (it may download) and the
register task (it talks to the tracking server) retry, and only on unexpected errors; a data or parameter error
(RecopsError) fails fast and the stages after it do not run, so the previous good models, reports and registry
entries stay as they were.

The final task runs ``dvc commit`` (one DVC command, from one task, after all stages) so that ``dvc.lock``
describes what the flow produced and ``dvc repro`` has nothing to redo; then ``dvc push`` to the default remote.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.reporting import completed, first_model_held, held, publish_training, send_recops_logs
from recops.workspace import read_json
from recops import steps
from recops.compute import check_engine, check_sizes
from recops.config import load_settings
from recops.errors import RecopsError


def transient_only(task, task_run, state) -> bool:
    """Retry condition: retry an unexpected failure (a download, a tracking server briefly away), never a
    RecopsError (bad data or parameters: the same input fails the same way again)."""
    try:
        state.result(raise_on_failure=True)
    except RecopsError:
        return False
    except Exception:
        return True
    return False


# stages that talk to something outside the process: the package index (ingest), the tracking server (register);
# their retries come from params.yaml (orchestration)
RETRIED = ("ingest", "register")


def _stage_task(name: str):
    def run(params_path: str) -> dict[str, float]:
        send_recops_logs()  # the task may run in a Dask worker, a process of its own
        return steps.STAGES[name](load_settings(params_path))

    run.__name__ = name
    return task(name=name, retry_condition_fn=transient_only, cache_policy=NO_CACHE, persist_result=False)(run)


STAGE_TASKS = {name: _stage_task(name) for name in steps.STAGES}


def with_retries(stage, params_path: str):
    """``stage`` with the retries of params.yaml's ``orchestration`` section."""
    cfg = load_settings(params_path).orchestration
    return stage.with_options(retries=cfg.retries, retry_delay_seconds=cfg.retry_delay_seconds)


@task(name="dvc-commit", cache_policy=NO_CACHE, persist_result=False)
def dvc_commit(params_path: str, push: bool) -> None:
    """Record the flow's outputs in dvc.lock (and the DVC cache), then push them to the default remote."""
    root = Path(params_path).resolve().parent
    logger = get_run_logger()
    dvc = [sys.executable, "-m", "dvc"]
    commands = [[*dvc, "commit", "--force", "--quiet"]]
    if push:
        commands.append([*dvc, "push", "--quiet"])
    for command in commands:
        proc = subprocess.run(command, cwd=root, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RecopsError(f"`dvc {command[3]}` failed in {root}: {(proc.stderr or proc.stdout).strip()[-800:]}")
        logger.info("dvc %s: ok", command[3])


@flow(name="recops-training", validate_parameters=True)
def training_flow(params_path: str = "params.yaml", dvc: bool = True, push: bool = True) -> dict[str, float]:
    """Run ingest -> validate -> split -> candidates -> features -> train_ranker -> evaluate -> export ->
    register, in that order; return all metrics.

    The run's logs get recops' own lines, its artifacts the test metrics table (``<model>-metrics``), and its
    final state says which version was registered; a first model the quality gates kept from becoming the
    champion ends the run ``Held``."""
    send_recops_logs()
    params_path = str(Path(params_path).resolve())
    # compute.engine: dask: each stage is submitted to the flow's task runner (a DaskTaskRunner, see
    # training_flow_for) and runs on a worker; local: called in the flow's process, as always
    submit = load_settings(params_path).compute.engine == "dask"
    metrics: dict[str, float] = {}
    for name, stage in STAGE_TASKS.items():
        if name in RETRIED:
            stage = with_retries(stage, params_path)
        metrics.update(stage.submit(params_path).result() if submit else stage(params_path))
    if dvc:
        dvc_commit(params_path, push)
    settings = load_settings(params_path)
    registry = read_json(settings.path("registry_report"))
    outcome = publish_training(settings, metrics, registry)
    return held(outcome, metrics) if first_model_held(settings, registry) else completed(outcome, metrics)


def task_runner(engine: str, address: str | None, n_workers: int = 2, threads_per_worker: int = 1) -> Any | None:
    """The task runner a flow should run on: a ``prefect_dask.DaskTaskRunner`` for ``dask`` (on the scheduler at
    ``address``, or on a LocalCluster it starts and stops with the flow run), None for ``local`` (keep the flow's
    default). Use it as ``flow.with_options(task_runner=runner)`` when it is not None.

    Tasks run on the Dask workers only when they are submitted (``task.submit(...)``); a task called directly runs
    in the flow's process. A worker process running Prefect tasks needs ``PREFECT_API_URL`` in its environment
    (a real Prefect server): without it each worker starts a temporary server of its own (20-40 s).
    """
    check_engine(engine)
    if engine == "local":
        return None
    from prefect_dask import DaskTaskRunner

    if address:
        return DaskTaskRunner(address=address)
    check_sizes(n_workers, threads_per_worker)
    return DaskTaskRunner(cluster_kwargs={
        "n_workers": n_workers, "threads_per_worker": threads_per_worker, "processes": True, "host": "127.0.0.1",
        "dashboard_address": None, "silence_logs": logging.WARNING})


def training_flow_for(params_path: str):
    """``training_flow`` on the task runner of params.yaml's ``compute`` section: a ``DaskTaskRunner``
    (prefect-dask) on ``compute.address``, or on a LocalCluster of its own, for ``engine: dask``; the default
    runner for ``local``."""
    cfg = load_settings(params_path).compute
    runner = task_runner(cfg.engine, cfg.address, cfg.n_workers, cfg.threads_per_worker)
    return training_flow if runner is None else training_flow.with_options(task_runner=runner)
