"""The MLflow client of a project's registry and the lookups every registry module shares. MLflow is imported
when a function is called, never at import."""

from __future__ import annotations

from typing import TYPE_CHECKING

from recops.config import Settings
from recops.errors import RecopsError

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import RegisteredModel


def registry_client(settings: Settings) -> MlflowClient:
    from mlflow import MlflowClient

    uri = settings.tracking_uri()
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def registered_model(client: MlflowClient, settings: Settings) -> RegisteredModel:
    """The registered model with its aliases and tags, read in one call so checks see one consistent state."""
    name = settings.registry.model_name
    try:
        return client.get_registered_model(name)
    except Exception as exc:
        if not_found(exc):
            raise RecopsError(
                f"model {name!r} is not registered in {settings.tracking_uri()}: run the pipeline (recops run) first"
            ) from None
        raise


def alias_version(registered: RegisteredModel, alias: str) -> str | None:
    version = (registered.aliases or {}).get(alias)
    return None if version is None else str(version)


def not_found(exc: Exception) -> bool:
    from mlflow.exceptions import MlflowException

    return isinstance(exc, MlflowException) and exc.error_code == "RESOURCE_DOES_NOT_EXIST"
