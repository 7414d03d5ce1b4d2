"""The MLflow part of a forget request (:mod:`recops.forget`): deleting the artifacts that hold users from the
earlier versions' runs and from every other run of the experiment, tagging those versions as erased, and logging
the audit record on the new version. MLflow is imported only inside these functions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from recops.config import Settings

USER_ARTIFACTS = ("serving", "mf", "reports")  # what a version's run logged that holds users (ids, factors, lists)


def _artifact_repository(settings: Settings, run_id: str):
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=settings.tracking_uri())
    return client, get_artifact_repository(client.get_run(run_id).info.artifact_uri)


def erase_versions(settings: Settings, versions: list[dict[str, Any]], keep: str,
                   request_id: str) -> tuple[list[str], int]:
    """Delete the user-bearing artifacts of every version's run but ``keep``'s (and of every other run of the
    experiment); tag those versions. Returns (erased versions, artifact files deleted)."""
    from mlflow.tracking import MlflowClient

    from recops.registry.promotion import TAG_ERASED_BY_FORGET

    client = MlflowClient(tracking_uri=settings.tracking_uri(), registry_uri=settings.tracking_uri())
    erased, files = [], 0
    kept_run = next((r.get("run_id") for r in versions if str(r["version"]) == keep), None)
    for record in versions:
        if str(record["version"]) == keep or not record.get("run_id"):
            continue
        _, repo = _artifact_repository(settings, record["run_id"])
        files += _delete_user_artifacts(repo)
        if not (record.get("tags") or {}).get(TAG_ERASED_BY_FORGET):
            client.set_model_version_tag(settings.registry.model_name, str(record["version"]),
                                         TAG_ERASED_BY_FORGET, request_id)
        erased.append(str(record["version"]))
    files += _erase_unregistered_runs(settings, client, kept_run)
    return erased, files


def _delete_user_artifacts(repo) -> int:
    files = 0
    for name in USER_ARTIFACTS:
        listed = _count_files(repo, name)
        if listed:
            repo.delete_artifacts(name)
            files += listed
    return files


def _erase_unregistered_runs(settings: Settings, client, keep_run: str | None) -> int:
    """The same artifacts of every other run of the experiment, deleted runs included: a training whose
    registration failed, or a run someone deleted (``mlflow gc`` would purge only the latter, and with their
    metrics)."""
    from mlflow.entities import ViewType
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    experiment = client.get_experiment_by_name(settings.registry.experiment)
    if experiment is None:
        return 0
    files, token = 0, None
    while True:
        page = client.search_runs([experiment.experiment_id], run_view_type=ViewType.ALL, max_results=500,
                                  page_token=token)
        for run in page:
            if run.info.run_id != keep_run:
                files += _delete_user_artifacts(get_artifact_repository(run.info.artifact_uri))
        token = page.token
        if not token:
            return files


def _count_files(repo, path: str) -> int:
    try:
        entries = repo.list_artifacts(path)
    except Exception:  # noqa: BLE001 (an artifact that is not there)
        return 0
    return sum(_count_files(repo, e.path) if e.is_dir else 1 for e in entries)


def log_forget_audit(settings: Settings, record: dict[str, Any], audit_file: Path, request_id: str) -> None:
    """Log the audit record on the new version's run (``privacy/``) and tag the version with the request id."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=settings.tracking_uri(), registry_uri=settings.tracking_uri())
    client.log_artifact(record["run_id"], str(audit_file), artifact_path="privacy")
    client.set_model_version_tag(settings.registry.model_name, str(record["version"]), "recops.forget.request_id",
                                 request_id)
