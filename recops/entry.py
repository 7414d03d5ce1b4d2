"""What every entry point (CLI, DVC stage scripts, Prefect flows) does before running stages.

Kept out of the library modules on purpose: configuring logging and turning user errors into a clean exit are
the job of entry points, never of code that runs at import.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from recops.errors import RecopsError

# Tools we call phone home by default; a pipeline run on someone's data must not.
QUIET_ENV = {
    "GX_ANALYTICS_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "1",
    "DVC_NO_ANALYTICS": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",  # progress bars in logs of non-interactive runs
}


def prepare_environment(project_root: Path | None = None) -> None:
    """Environment defaults for a run: no telemetry, Prefect's home inside the project (SQLite there)."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    root = (project_root or Path.cwd()).resolve()
    os.environ.setdefault("PREFECT_HOME", str(root / ".prefect"))
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")


def configure_logging(level: int = logging.INFO) -> None:
    from recops.redaction import install_log_redaction

    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    install_log_redaction()  # URI passwords never reach a log line
    for noisy in ("alembic", "mlflow", "urllib3", "great_expectations", "numexpr", "matplotlib", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def fail(message: str, prefix: str = "recops") -> None:
    from recops.redaction import redact

    print(f"{prefix}: error: {redact(message)}", file=sys.stderr)
    raise SystemExit(1)


def run_stage_main(stage: str, params: str = "params.yaml") -> None:
    """Body of ``python -m pipelines.<stage>``: run one stage; a RecopsError exits 1 with its message only."""
    prepare_environment()
    configure_logging()
    from recops import steps
    from recops.config import load_settings

    try:
        steps.STAGES[stage](load_settings(params))
    except RecopsError as exc:
        fail(str(exc), prefix=f"recops {stage}")


def leave_no_orphans(settings, *, runs_flows: bool = False) -> None:
    """First thing a command that writes MLflow runs does: clean up after commands that were killed, and make
    sure this one cannot leave a process behind.

    Marks FAILED the MLflow runs a killed recops process left RUNNING (``recops.registry.orphans``); with
    ``runs_flows``, also stops temporary Prefect servers of killed commands and starts this command's own, which
    dies with it (``recops.orchestration``; nothing when ``PREFECT_API_URL`` is set).
    """
    from recops.registry.orphans import fail_orphaned_runs

    fail_orphaned_runs(settings)
    if runs_flows:
        from recops.orchestration import ensure_prefect_api

        ensure_prefect_api()
