"""The stage timings the register stage reads to give the MLflow run the pipeline's start and each stage's
duration (recops.steps: STAGES record, ``this_training`` reads). Real files in a temporary project, no MLflow."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from recops import steps
from recops.config import Settings


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(root=tmp_path)


def test_a_stage_run_through_stages_records_when_it_started_and_how_long_it_took(settings: Settings) -> None:
    before = time.time()
    recorded = steps._recorded("ingest", lambda s: (time.sleep(0.05), {"ingest.rows": 3.0})[1])
    assert recorded(settings) == {"ingest.rows": 3.0}
    timing = steps._read_stage_timings(settings)["ingest"]
    assert before <= timing["started_at"] <= time.time() and timing["seconds"] >= 0.05
    assert settings.path("stage_timings").is_file()


def test_this_training_is_the_stages_since_the_previous_registration_in_the_order_they_ran(
    settings: Settings,
) -> None:
    now = time.time()
    steps._record_stage(settings, "ingest", now - 500, 1.0)  # the previous training's, DVC skipped it this time
    steps._record_stage(settings, "register", now - 400, 5.0)
    steps._record_stage(settings, "features", now - 100, 10.0)
    steps._record_stage(settings, "train_ranker", now - 90, 60.0)
    start, seconds = steps.this_training(settings, now)
    assert start == pytest.approx(now - 100)
    assert list(seconds) == ["features", "train_ranker"] and seconds["train_ranker"] == 60.0


def test_stages_long_before_the_next_one_belong_to_another_training(settings: Settings) -> None:
    now = time.time()
    steps._record_stage(settings, "ingest", now - 7200, 1.0)  # e.g. `recops backtest` two hours ago
    steps._record_stage(settings, "train_ranker", now - 60, 50.0)
    start, seconds = steps.this_training(settings, now)
    assert start == pytest.approx(now - 60) and list(seconds) == ["train_ranker"]


def test_without_recorded_stages_the_training_starts_with_its_registration(settings: Settings) -> None:
    now = time.time()
    assert steps.this_training(settings, now) == (now, {})
    settings.path("stage_timings").parent.mkdir(parents=True)
    settings.path("stage_timings").write_text("not json")  # an unreadable record is no record
    assert steps.this_training(settings, now) == (now, {})
