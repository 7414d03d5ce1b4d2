"""``recops-monitoring``: the online metrics of what was served (impression log x event log), daily.

Wiring only: the report is ``recops.steps.online_metrics``; the MLflow run is ``recops.registry.report_runs``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.reporting import send_recops_logs
from recops.config import load_settings

TASK = {"cache_policy": NO_CACHE, "persist_result": False}


@task(name="online-metrics", **TASK)
def online_metrics_task(params_path: str) -> dict[str, Any]:
    from recops import steps

    return steps.online_metrics(load_settings(params_path))


@task(name="log-online-metrics", retries=2, retry_delay_seconds=5, **TASK)
def log_task(params_path: str, report: dict[str, Any]) -> str:
    from recops.registry.report_runs import log_report_run

    settings = load_settings(params_path)
    folder = settings.path("monitoring_dir")
    metrics = {f"{row['version']}.{row['day']}.{key}": value for row in report["rows"]
               for key, value in row.items() if key not in ("version", "day")}
    metrics |= {"impressions": report["impressions"], "events": report["events"]}
    return log_report_run(settings, "online-metrics", metrics, [folder / "online.json", folder / "online.html"])


@flow(name="recops-monitoring", validate_parameters=True)
def monitoring_flow(params_path: str = "params.yaml") -> dict[str, Any]:
    """Online metrics per served version and day (``monitoring`` section): JSON and HTML under
    ``paths.monitoring_dir``, and an MLflow run ``online-metrics``."""
    send_recops_logs()
    params_path = str(Path(params_path).resolve())
    report = online_metrics_task(params_path)
    log_task(params_path, report)
    return report
