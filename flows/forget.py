"""``recops-forget``: forget users everywhere recops keeps them (recops.forget), then retrain and promote.

Wiring only: the start and finish of the request are recops.forget's; the retraining between them is the
training flow itself, as a subflow.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from recops.workspace import read_json
from recops import forget as forgetting
from recops.config import load_settings

from flows.reporting import send_recops_logs
from flows.training import training_flow_for

TASK = {"cache_policy": NO_CACHE, "persist_result": False}


@task(name="forget-start", **TASK)
def start_task(params_path: str, user_ids: list[str], reason: str | None, actor: str | None) -> dict[str, Any]:
    return forgetting.start(load_settings(params_path), user_ids, reason, actor)


@task(name="forget-finish", **TASK)
def finish_task(params_path: str, request: dict[str, Any]) -> dict[str, Any]:
    settings = load_settings(params_path)
    version = forgetting.retrained_version(request) \
        or str(read_json(settings.path("registry_report"))["model_version"])
    return forgetting.finish(settings, request, version)


@flow(name="recops-forget", validate_parameters=True)
def forget_flow(user_ids: list[str], reason: str | None = None, actor: str | None = None,
                params_path: str = "params.yaml", push: bool = True) -> dict[str, Any]:
    """Forget ``user_ids`` (raw ids, as the input data has them): erase, retrain without them, promote the new
    version on the first-model gates, erase the earlier versions' user data; returns the audit record (no ids).
    Users recops holds no data of: a no-op, said in the log."""
    send_recops_logs()
    params_path = str(Path(params_path).resolve())
    request = start_task(params_path, user_ids, reason, actor)
    if not request["known"]:
        get_run_logger().info("nothing to forget: no data recops keeps names the %d user(s) given",
                              request["users"])
        return {"request_id": None, "users": request["users"], "users_known": 0}
    if forgetting.retrained_version(request) is None:  # else: interrupted after retraining; finish it
        training_flow_for(params_path)(params_path=params_path, push=push)
    return finish_task(params_path, request)
