"""flows.reporting: artifact keys Prefect accepts, the metrics table's rows, and recops' log lines kept local
outside a run (the integration test tests/integration/test_prefect_ui.py reads them back from a server)."""

from __future__ import annotations

import logging
import warnings

import pytest

from flows.reporting import RECOPS_LOGGER, RunLogHandler, artifact_key, metrics_rows, send_recops_logs
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
