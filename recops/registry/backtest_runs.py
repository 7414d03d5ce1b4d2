"""The backtest in MLflow: one parent run ``backtest`` (config as params, pooled metrics and lifts as metrics, the
JSON and HTML reports as artifacts) with one nested run per window (its dates, sizes, every model's metrics and
the peers' chosen parameters). Nothing is registered: a backtest is evidence about a configuration, not a model.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from recops.config import Settings
from recops.registry.mlflow_registry import _experiment_id, _tracking_uri, mlflow_metric_key
from recops.registry.orphans import owner_tags

log = logging.getLogger(__name__)


def _finite(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {mlflow_metric_key(key): float(value) for key, value in metrics.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)}


def log_backtest(settings: Settings, report: Mapping[str, Any], artifacts: list[Path]) -> str:
    """Log ``report`` (``recops.evaluation.backtest.summarise``) as a parent run with nested window runs.

    Returns the parent run's id.
    """
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = settings.tracking_uri()
    with _tracking_uri(uri):
        experiment = _experiment_id(MlflowClient(tracking_uri=uri), settings, uri)
        with mlflow.start_run(experiment_id=experiment, run_name="backtest", tags=owner_tags()) as parent:
            mlflow.set_tags({"recops.kind": "backtest", "recops.protocol": report["protocol"]})
            config = report["config"]
            mlflow.log_params({f"backtest.{key}": (",".join(value) if isinstance(value, list) else value)
                               for key, value in config.items()} | {"seed": report["seed"]})
            metrics = {f"pooled.{model}.{name}": value
                       for model, values in report["pooled"]["metrics"].items() for name, value in values.items()}
            for metric, lift in report["lift"].items():
                metrics[f"lift.{metric}.over_best_pct"] = lift["lift_over_best_pct"]
                for peer, interval in lift["over"].items():
                    metrics |= {f"lift.{metric}.{peer}.{key}": value for key, value in interval.items()}
            pooled = {"seconds": report["seconds"], "pooled.rows": report["pooled"]["rows"]}
            mlflow.log_metrics(_finite(metrics | pooled))
            for window in report["windows"]:
                with mlflow.start_run(run_name=f"backtest-window-{window['window']}", nested=True,
                                      experiment_id=experiment, tags=owner_tags()):
                    mlflow.set_tags({"recops.kind": "backtest-window", "recops.cut": window["cut"]})
                    mlflow.log_params({key: window[key] for key in ("window", "valid_start", "cut", "test_end")}
                                      | {f"{model}.params": str(result.get("params"))
                                         for model, result in window["models"].items()})
                    values = {f"{model}.{name}": value for model, result in window["models"].items()
                              for name, value in result["metrics"].items()}
                    sizes = {key: window[key] for key in ("train_rows", "valid_rows", "test_rows", "valid_users",
                                                          "test_users", "seconds")}
                    mlflow.log_metrics(_finite(values | sizes))
            for path in artifacts:
                if path.is_file():
                    mlflow.log_artifact(str(path))
            run_id = parent.info.run_id
    log.info("backtest logged to MLflow run %s (%d nested window runs)", run_id, len(report["windows"]))
    return run_id
