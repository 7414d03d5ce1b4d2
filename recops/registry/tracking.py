"""Experiment runs that register nothing (a hyper-parameter search, its trials): a parent run in the project's
experiment, nested runs under it, and what is logged on the active run. MLflow is imported only inside these
functions; the tracking URI is set for the parent run's duration and restored after it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from recops.config import Settings
from recops.registry.mlflow_registry import _experiment_id, _tracking_uri
from recops.registry.orphans import owner_tags


@contextmanager
def experiment_run(settings: Settings, run_name: str, kind: str, params: Mapping[str, Any]) -> Iterator[str]:
    """A run ``run_name`` in the project's experiment, tagged ``recops.kind`` = ``kind``, with ``params``; yields
    its id. The run is active (and closed, failed on an exception) for the ``with`` block."""
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = settings.tracking_uri()
    with _tracking_uri(uri):
        experiment = _experiment_id(MlflowClient(tracking_uri=uri), settings, uri)
        with mlflow.start_run(experiment_id=experiment, run_name=run_name, tags=owner_tags()) as run:
            mlflow.set_tag("recops.kind", kind)
            mlflow.log_params(dict(params))
            yield run.info.run_id


def log_nested_run(run_name: str, params: Mapping[str, Any], metrics: Mapping[str, float]) -> None:
    """A finished run nested under the active one, in the parent's experiment (MLflow would otherwise put it in
    the default one)."""
    import mlflow

    parent = mlflow.active_run()
    with mlflow.start_run(run_name=run_name, nested=True,
                          experiment_id=parent.info.experiment_id if parent else None, tags=owner_tags()):
        mlflow.log_params(dict(params))
        mlflow.log_metrics(dict(metrics))


def log_metric(key: str, value: float) -> None:
    """One metric on the active run."""
    import mlflow

    mlflow.log_metric(key, value)


def log_artifact(path: Path) -> None:
    """One file on the active run, at its artifact root."""
    import mlflow

    mlflow.log_artifact(str(path))
