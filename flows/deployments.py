"""The scheduled deployments of recops, defined in code from params.yaml, served by one process.

``recops deploy`` (``make deploy``) registers six deployments with the Prefect API (PREFECT_API_URL: the server
``make server`` starts, or Prefect's ephemeral one) and executes their runs in this process until interrupted —
Prefect's ``serve``, which needs no work pool and runs the flows from this checkout:

| deployment | flow | schedule (params.yaml ``deployments``) |
|---|---|---|
| ``training`` | recops-training | ``training_cron`` |
| ``evaluate-and-promote`` | recops-evaluate-and-promote | ``promotion_cron`` |
| ``batch-score`` | recops-batch-score | every ``batch_interval_minutes`` |
| ``ingest-snapshot`` | recops-ingest-snapshot | none: triggered with a snapshot path |
| ``backtest`` | recops-backtest | ``backtest_cron``: the configuration judged on the rolling timeline |
| ``monitoring`` | recops-monitoring | ``monitoring_cron``: online metrics of what was served |
"""

from __future__ import annotations

from datetime import timedelta

from recops.config import Settings

DEPLOYMENT_NAMES = ("training", "evaluate-and-promote", "batch-score", "ingest-snapshot", "backtest", "monitoring")


def build_deployments(settings: Settings, params_path: str) -> list:
    from prefect.client.schemas.schedules import CronSchedule, IntervalSchedule

    from flows.backtest import backtest_flow_for
    from flows.lifecycle import batch_score_flow, evaluate_and_promote_flow, ingest_snapshot_flow
    from flows.monitoring import monitoring_flow
    from flows.training import training_flow_for

    cfg = settings.deployments
    tags = ["recops", settings.registry.model_name]
    return [
        training_flow_for(params_path).to_deployment(
            name="training", schedule=CronSchedule(cron=cfg.training_cron, timezone=cfg.timezone),
            parameters={"params_path": params_path}, tags=tags,
            description="ingest .. register: a new challenger, recorded in DVC and pushed"),
        evaluate_and_promote_flow.to_deployment(
            name="evaluate-and-promote", schedule=CronSchedule(cron=cfg.promotion_cron, timezone=cfg.timezone),
            parameters={"params_path": params_path}, tags=tags,
            description="A/B of challenger vs champion; promote on ship"),
        batch_score_flow.to_deployment(
            name="batch-score",
            schedule=IntervalSchedule(interval=timedelta(minutes=cfg.batch_interval_minutes)),
            parameters={"params_path": params_path, "version": "champion", "k": cfg.batch_k}, tags=tags,
            description="the champion's top-k for every user to Parquet"),
        ingest_snapshot_flow.to_deployment(
            name="ingest-snapshot", parameters={"params_path": params_path}, tags=tags,
            description="a new interaction snapshot -> validate -> training -> evaluate-and-promote"),
        backtest_flow_for(params_path).to_deployment(
            name="backtest", schedule=CronSchedule(cron=cfg.backtest_cron, timezone=cfg.timezone),
            parameters={"params_path": params_path}, tags=tags,
            description="rolling-origin backtest of the configuration: recops vs every peer on the timeline"),
        monitoring_flow.to_deployment(
            name="monitoring", schedule=CronSchedule(cron=cfg.monitoring_cron, timezone=cfg.timezone),
            parameters={"params_path": params_path}, tags=tags,
            description="online metrics per served version and day: impression log x event log"),
    ]


def serve_deployments(settings: Settings, params_path: str, limit: int | None = None) -> None:
    from prefect import serve

    serve(*build_deployments(settings, params_path), limit=limit, print_starting_message=True)
