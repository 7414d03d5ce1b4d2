"""Where a stage's work runs: in this process (``compute.engine: local``) or on a Dask cluster (``dask``).

This module only opens the cluster and names the errors; what runs on it lives with the stage it belongs to
(``recops.features.distributed``, ``recops.ranking.dask_ranker``, ``recops.serving.distributed_batch``), written
with dask.dataframe, ``lightgbm.dask`` and ``Client.map`` as those libraries intend: there is no scheduling,
retrying or data placement of recops's own. Dask retries a task whose worker died on another worker
(``distributed.scheduler.allowed-failures`` times) and recomputes lost inputs from the task graph; what it cannot
recover surfaces here as one :class:`~recops.errors.RecopsError` that says what happened.

Nothing happens at import: dask and distributed are imported by the functions that use them, so the local
engine never loads them. Prefect is not named here: the flows' task runner (``flows.training.task_runner``,
prefect-dask's ``DaskTaskRunner``) lives with the flows.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Literal

from recops.errors import RecopsError

if TYPE_CHECKING:
    from distributed import Client

log = logging.getLogger(__name__)

Engine = Literal["local", "dask"]
ENGINES: tuple[str, ...] = ("local", "dask")
CONNECT_TIMEOUT_S = 10.0
# The loggers a LocalCluster and a Client write to; silenced below WARNING for the cluster's lifetime (a stage's
# log should say what the stage did, not every worker start and heartbeat).
_DASK_LOGGERS = ("distributed", "distributed.scheduler", "distributed.nanny", "distributed.worker",
                 "distributed.core", "distributed.http.proxy", "distributed.shuffle")


def check_engine(engine: str) -> None:
    if engine not in ENGINES:
        raise RecopsError(f"compute.engine must be one of {', '.join(ENGINES)}, got {engine!r}")


def check_sizes(n_workers: int, threads_per_worker: int) -> None:
    if n_workers < 1 or threads_per_worker < 1:
        raise RecopsError(f"a local Dask cluster needs at least 1 worker with at least 1 thread, got "
                          f"n_workers={n_workers}, threads_per_worker={threads_per_worker} (compute section of "
                          "params.yaml)")


def _worker_scheduler() -> str | None:
    """The scheduler address of the Dask worker this code runs on (a task: e.g. a Prefect task on a
    DaskTaskRunner), or None outside a worker."""
    try:
        from distributed import get_worker

        return str(get_worker().scheduler.address)
    except (ImportError, ValueError):
        return None


@contextmanager
def quiet_dask_logs(level: int = logging.WARNING) -> Iterator[None]:
    """Raise the Dask loggers of this process to ``level`` for the duration (restored after)."""
    loggers = [logging.getLogger(name) for name in _DASK_LOGGERS]
    before = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(max(level, logger.level))
    try:
        yield
    finally:
        for logger, value in zip(loggers, before):
            logger.setLevel(value)


@contextmanager
def dask_client(address: str | None, n_workers: int = 2, threads_per_worker: int = 1, *,
                connect_timeout_s: float = CONNECT_TIMEOUT_S) -> Iterator[Client]:
    """A ``distributed.Client`` for the duration of the block.

    - ``address`` None: a throw-away ``LocalCluster`` of ``n_workers`` worker processes (``threads_per_worker``
      threads each) on 127.0.0.1, without dashboard, its logs below WARNING silenced; closed on exit.
    - ``address`` set (``tcp://host:8786``): a client of that running scheduler; the cluster stays up on exit. A
      scheduler that does not answer within ``connect_timeout_s``, or has no worker, is a RecopsError naming
      the address.
    - Called from inside a Dask task (a Prefect task on a DaskTaskRunner) with no address or the worker's own
      scheduler: the worker's client (``distributed.worker_client``), which secedes from the worker's thread
      pool while the block waits, so the stage's own tasks can use that worker's thread too (a plain client
      would hold it idle for the whole stage). A worker process cannot start a LocalCluster of its own (its
      processes are daemonic).
    """
    inside = _worker_scheduler()
    if inside is not None and address in (None, inside):
        from distributed import worker_client

        with worker_client() as client:
            yield client
        return
    if address is None:
        check_sizes(n_workers, threads_per_worker)
        from distributed import Client, LocalCluster

        with quiet_dask_logs():
            with warnings.catch_warnings():
                # the scheduler's HTTP endpoints (health, metrics) try 8787 first, then any port: say nothing
                warnings.filterwarnings("ignore", message="Port 8787 is already in use", category=UserWarning)
                cluster = LocalCluster(n_workers=n_workers, threads_per_worker=threads_per_worker, processes=True,
                                       host="127.0.0.1", dashboard_address=None, silence_logs=logging.WARNING)
            try:
                with Client(cluster) as client:
                    yield client
            finally:
                cluster.close()
        return
    client = connect(address, connect_timeout_s=connect_timeout_s)
    try:
        yield client
    finally:
        client.close()


def connect(address: str, *, connect_timeout_s: float = CONNECT_TIMEOUT_S, min_workers: int = 1) -> Client:
    """A client of the running scheduler at ``address`` with at least ``min_workers`` workers, or a RecopsError
    naming the address and what to do."""
    from distributed import Client

    try:
        client = Client(address, timeout=connect_timeout_s)
    except (OSError, TimeoutError) as exc:
        raise RecopsError(f"no Dask scheduler answers at {address} (compute.address) within {connect_timeout_s:g} s: "
                          f"start one (`dask scheduler`, then `dask worker {address}`) or set compute.address to "
                          f"null for a local cluster ({type(exc).__name__}: {exc})") from exc
    try:
        client.wait_for_workers(min_workers, timeout=connect_timeout_s)
    except (TimeoutError, OSError) as exc:
        n = len(client.scheduler_info().get("workers", {}))
        client.close()
        raise RecopsError(f"the Dask scheduler at {address} has {n} worker(s), {min_workers} needed: start workers "
                          f"with `dask worker {address}`") from exc
    return client


def worker_addresses(client: Client) -> list[str]:
    """The addresses of the cluster's workers, sorted."""
    return sorted(client.scheduler_info(n_workers=-1)["workers"])


def worker_pids(client: Client) -> dict[str, int]:
    """``{worker address: process id}`` of every worker (for logs, and for tests that kill one)."""
    return client.run(os.getpid)


@contextmanager
def lost_work_as_error(stage: str) -> Iterator[None]:
    """Turn what Dask could not recover from into one RecopsError naming the stage and what happened.

    Dask already retries a task whose worker died on another worker and recomputes lost inputs from the graph;
    what reaches here is a task that killed ``allowed-failures`` workers in a row (it runs out of memory, or
    crashes the process), or a cluster that lost every worker or its scheduler.
    """
    from distributed import KilledWorker
    from distributed.client import FutureCancelledError
    from distributed.comm.core import CommClosedError

    try:
        yield
    except KilledWorker as exc:
        raise RecopsError(f"{stage}: Dask workers died while running task {exc.task!r} ({exc}); it was retried on "
                          "other workers and they died too (out of memory? see the workers' logs). Nothing was "
                          "written: give the workers more memory or use smaller partitions, then rerun") from exc
    except (CommClosedError, FutureCancelledError) as exc:
        raise RecopsError(f"{stage}: the Dask cluster went away during the stage ({type(exc).__name__}: {exc}). "
                          "Nothing was written: check the scheduler and workers, then rerun") from exc


@contextmanager
def stage_client(engine: str, address: str | None, n_workers: int = 2, threads_per_worker: int = 1
                 ) -> Iterator[Client | None]:
    """What a stage runs on: None for the local engine (the stage computes in its own process), else a Dask client
    (:func:`dask_client`) held for the whole stage, so its folds share one cluster."""
    check_engine(engine)
    if engine == "local":
        yield None
        return
    with dask_client(address, n_workers, threads_per_worker) as client:
        yield client


def settings_client(settings):
    """:func:`stage_client` as ``settings.compute`` configures it: None (compute.engine: local) or a Dask client."""
    cfg = settings.compute
    return stage_client(cfg.engine, cfg.address, cfg.n_workers, cfg.threads_per_worker)
