"""Experiment tracking and the model registry (MLflow 3): log a trained ranker with its lineage, register it as a
new model version, and list the versions. MLflow is used only inside this package, and only when one of these
functions is called (importing it sets no tracking URI and does not import MLflow).
"""

from recops.registry.mlflow_registry import (
    METRIC_KEYS_ARTIFACT,
    MODEL_ARTIFACT_NAME,
    download_version,
    download_version_files,
    latest_version,
    list_versions,
    log_and_register,
    mlflow_metric_key,
)
from recops.registry.gates import DEFAULT_FIRST_MODEL_GATES, FirstModelGates, first_model_gates
from recops.registry.history import promotion_history
from recops.registry.promotion import (
    CHALLENGER,
    CHAMPION,
    list_models,
    promote,
    recover_interrupted_move,
    rollback,
    set_challenger,
)

__all__ = [
    "CHALLENGER",
    "CHAMPION",
    "DEFAULT_FIRST_MODEL_GATES",
    "FirstModelGates",
    "METRIC_KEYS_ARTIFACT",
    "MODEL_ARTIFACT_NAME",
    "download_version",
    "download_version_files",
    "first_model_gates",
    "latest_version",
    "list_models",
    "list_versions",
    "log_and_register",
    "mlflow_metric_key",
    "promote",
    "promotion_history",
    "recover_interrupted_move",
    "rollback",
    "set_challenger",
]
