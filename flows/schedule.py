"""Serve the training flow on a schedule (a Prefect deployment): ``recops schedule --cron "0 3 * * *"``.

``flow.serve`` registers the deployment with the Prefect API (the project's SQLite-backed server unless
PREFECT_API_URL points elsewhere) and runs scheduled flow runs in this process until interrupted.
"""

from __future__ import annotations

from flows.training import training_flow_for


def serve(params_path: str, cron: str, name: str = "recops-training-scheduled") -> None:
    training_flow_for(params_path).serve(name=name, cron=cron, parameters={"params_path": params_path})
