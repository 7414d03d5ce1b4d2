"""flows.reporting: artifact keys Prefect accepts, the metrics table's rows, recops' log lines kept local outside
a run, and which of Prefect's lines the terminal drops (tests/integration/test_prefect_ui.py reads the runs back
from a server and checks a real terminal)."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import pytest

from flows.reporting import (RECOPS_LOGGER, PrefectChatter, RunLogHandler, artifact_key, metrics_rows,
                             send_recops_logs)
from recops.config import Settings


@pytest.mark.parametrize("model_name", ["recops-ranker", "Shop_Ranker.v2", "  spaces and CAPS  "])
def test_artifact_keys_are_keys_prefect_accepts(model_name):
    from prefect.client.schemas.actions import ArtifactCreate

    settings = Settings.model_validate({"registry": {"model_name": model_name}})
    key = artifact_key(settings, "ab-decision")
    assert ArtifactCreate(key=key, type="markdown", data="x").key == key
    assert key.endswith("-ab-decision")


def test_the_metrics_table_has_the_two_stage_list_first_then_the_models_best_first():
    metrics = {"test.popularity.ndcg@10": 0.05, "test.ease.ndcg@10": 0.09, "test.ranker.ndcg@10": 0.08,
               "test.ranker.recall@20": 0.3, "test.ranker.users": 60.0, "test.candidates.recall@50": 0.5,
               "valid.ranker.ndcg@10": 0.2}
    rows = metrics_rows(metrics)
    assert [row["model"] for row in rows] == ["two-stage", "ease", "popularity"]
    assert rows[0] == {"model": "two-stage", "users": 60, "ndcg@10": 0.08, "recall@20": 0.3}
    assert rows[1]["recall@20"] is None  # a metric a model lacks is an empty cell, not a missing column


def test_recops_lines_outside_a_run_stay_local_without_a_warning(caplog):
    logger = logging.getLogger(RECOPS_LOGGER)
    level, handlers = logger.level, list(logger.handlers)
    try:
        send_recops_logs()
        send_recops_logs()
        assert sum(isinstance(h, RunLogHandler) for h in logger.handlers) == 1
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # Prefect's own API handler warns about every such line
            with caplog.at_level(logging.INFO, logger=RECOPS_LOGGER):
                logging.getLogger("recops.steps").info("a line outside any flow run")
        assert "a line outside any flow run" in caplog.text
    finally:
        logger.handlers[:] = handlers
        logger.setLevel(level)


def engine_record(name: str, message: str, level: int = logging.INFO, source: str | None = None) -> logging.LogRecord:
    """A record as Prefect's engine makes it (``source``: the file that logged it; default inside prefect)."""
    import prefect

    path = source or str(Path(prefect.__file__).resolve().parent / "task_engine.py")
    return logging.LogRecord(name, level, path, 1, message, None, None)


def test_the_terminal_drops_prefects_per_run_lines_only():
    chatter = PrefectChatter()
    dropped = [engine_record("prefect.task_runs", "Finished in state Completed()"),
               engine_record("prefect.flow_runs", "Beginning flow run 'x' for flow 'recops-training'")]
    kept = [engine_record("prefect.task_runs", "Task run failed with exception: OSError() - Retry 1/2 will start"),
            engine_record("prefect.flow_runs", "Finished in state Held('held: gates', type=COMPLETED)"),
            engine_record("prefect.flow_runs", "View at http://127.0.0.1:4200/runs/flow-run/1"),
            engine_record("prefect.task_runs", "Finished in state Completed()", source=__file__),  # a flow's own
            engine_record("prefect.task_runs", "Finished in state Completed()", level=logging.WARNING),
            engine_record("recops.steps", "Finished in state Completed()")]
    assert [chatter.filter(r) for r in dropped] == [False] * len(dropped)
    assert [chatter.filter(r) for r in kept] == [True] * len(kept)
