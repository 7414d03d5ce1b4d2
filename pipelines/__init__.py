"""DVC stage entry points: one tiny module per stage of dvc.yaml, each calling recops.steps."""

from recops.entry import configure_logging, fail, prepare_environment


def run_stage_main(stage: str, params: str = "params.yaml") -> None:
    """Body of ``python -m pipelines.<stage>``: run one stage; a RecopsError exits 1 with its message only."""
    prepare_environment()  # before the stages import Prefect and MLflow: telemetry off, Prefect home in the project
    configure_logging()
    from recops import steps
    from recops.config import load_settings
    from recops.errors import RecopsError

    try:
        steps.STAGES[stage](load_settings(params))
    except RecopsError as exc:
        fail(str(exc), prefix=f"recops {stage}")
