"""Monitoring reports in MLflow: one run per report (online metrics, drift, off-policy evaluation) in the
project's experiment, tagged ``recops.kind``; its numbers as metrics and its files as artifacts. Nothing is
registered: a report is evidence about what is served, not a model."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from recops.config import Settings
from recops.registry.mlflow_registry import _experiment_id, _tracking_uri, mlflow_metric_key
from recops.registry.orphans import owner_tags


def log_report_run(settings: Settings, kind: str, metrics: Mapping[str, Any], artifacts: list[Path],
                   tags: Mapping[str, str] | None = None) -> str:
    """A finished run ``kind`` with the finite ``metrics`` and ``artifacts`` (files); its id."""
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = settings.tracking_uri()
    values = {mlflow_metric_key(key): float(value) for key, value in metrics.items()
              if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)}
    with _tracking_uri(uri):
        experiment = _experiment_id(MlflowClient(tracking_uri=uri), settings, uri)
        with mlflow.start_run(experiment_id=experiment, run_name=kind, tags=owner_tags()) as run:
            mlflow.set_tags({"recops.kind": kind, **(tags or {})})
            if values:
                mlflow.log_metrics(values)
            for path in artifacts:
                if path.is_file():
                    mlflow.log_artifact(str(path), artifact_path=kind)
            return run.info.run_id
