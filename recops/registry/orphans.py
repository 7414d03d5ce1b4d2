"""MLflow runs left RUNNING by a recops process that was killed: recognised by their owner tags, marked FAILED.

A process killed with SIGKILL mid-register (or mid-backtest, mid-tuning) runs no ``finally``: its run stays
RUNNING forever, with part of its artifacts, and looks like work in progress to anyone reading MLflow. Every run
recops starts carries :func:`owner_tags` — the owning process's pid, start time and host (see
:mod:`recops.processes`) — so that at the next start of a command that writes runs, :func:`fail_orphaned_runs`
can tell a run whose process is gone (marked FAILED, tagged ``recops.orphaned_by_pid``) from one whose process
still runs (a concurrent command: left alone). Runs without owner tags (older recops, other tools) and runs owned
by another host are never touched: nothing here can prove their owner is gone.

No model version is deleted here: registration is the last step of a run (``log_and_register``), so a killed run
has none, or one that was complete before its run could be closed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

from recops.config import Settings
from recops.processes import ProcessId

log = logging.getLogger(__name__)

OWNER_PID_TAG = "recops.owner.pid"
OWNER_START_TAG = "recops.owner.start_time"
OWNER_HOST_TAG = "recops.owner.host"
ORPHANED_TAG = "recops.orphaned_by_pid"
ORPHANED_REASON_TAG = "recops.failed_reason"
# a check at start must not hold the command for MLflow's default retries (minutes) when a server is away
_CHECK_HTTP = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


def owner_tags() -> dict[str, str]:
    """Tags naming this process as the owner of a run it starts (pass them to ``create_run`` / ``start_run``)."""
    me = ProcessId.current()
    tags = {OWNER_PID_TAG: str(me.pid), OWNER_HOST_TAG: me.host}
    if me.start_time is not None:
        tags[OWNER_START_TAG] = me.start_time
    return tags


def run_owner(tags: dict[str, str]) -> ProcessId | None:
    """The process named by a run's owner tags; None for a run recops did not tag."""
    try:
        return ProcessId(int(tags[OWNER_PID_TAG]), tags.get(OWNER_START_TAG) or None, tags[OWNER_HOST_TAG])
    except (KeyError, ValueError):
        return None


def fail_orphaned_runs(settings: Settings) -> list[str]:
    """Mark FAILED every run of the project's experiment left RUNNING by a recops process that no longer runs;
    the run ids. Best effort: a tracking store that cannot be read now is logged as a warning and skipped (the
    runs are checked again at the next start)."""
    from mlflow import MlflowClient

    uri = settings.tracking_uri()
    failed: list[str] = []
    if settings.registry.tracking_uri is None and not settings.path("mlflow_db").is_file():
        return failed  # no store yet (asking would create an empty one)
    try:
        with _quick_http():
            client = MlflowClient(tracking_uri=uri)
            experiment = client.get_experiment_by_name(settings.registry.experiment)
            if experiment is None:
                return failed
            me = ProcessId.current()
            token = None
            while True:
                page = client.search_runs([experiment.experiment_id], filter_string="attributes.status = 'RUNNING'",
                                          max_results=500, page_token=token)
                for run in page:
                    owner = run_owner(run.data.tags)
                    if owner is None or owner.is_running():
                        continue
                    reason = (f"left RUNNING by process {owner.pid} on {owner.host}, which no longer runs (killed); "
                              f"marked FAILED at the next start of recops (process {me.pid})")
                    client.set_tag(run.info.run_id, ORPHANED_TAG, str(owner.pid))
                    client.set_tag(run.info.run_id, ORPHANED_REASON_TAG, reason)
                    client.set_terminated(run.info.run_id, status="FAILED")
                    log.warning("MLflow run %s (%s) was %s", run.info.run_id, run.info.run_name, reason)
                    failed.append(run.info.run_id)
                token = page.token
                if not token:
                    return failed
    except Exception as exc:  # noqa: BLE001 - a check at start never stops the command it starts
        from recops.redaction import redact

        log.warning("could not check the MLflow runs left RUNNING by killed commands (%s): %s", redact(uri),
                    redact(str(exc)).splitlines()[0] if str(exc) else type(exc).__name__)
        return failed


@contextmanager
def _quick_http() -> Iterator[None]:
    """MLflow's HTTP retries off and a 10 s timeout for the duration (read per request by MLflow)."""
    before = {key: os.environ.get(key) for key in _CHECK_HTTP}
    os.environ.update(_CHECK_HTTP)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
