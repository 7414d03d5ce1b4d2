"""Progress of long steps: log lines with an ETA off a terminal, one shared bar for nested steps on one."""

import logging

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest

from recops import progress as progress_module
from recops.config import RankerConfig
from recops.progress import Step, mode, progress
from recops.ranking.lambdarank import train_lambdarank


def test_the_line_gives_count_share_and_time_left():
    step = Step("training trees", 400, "trees", "log", every_s=15.0)
    step.started -= 30.0  # 30 s for the first 100 trees: about 90 s for the other 300
    step.done = 100
    line = step.line()
    assert line.startswith("training trees: 100/400 trees (25%), 30 s, about 9")
    assert "s left" in line
    step.done = 400
    assert "left" not in step.line()
    assert Step("scoring", None, "", "log", 1.0).line().startswith("scoring: 0, ")


def test_the_mode_follows_the_environment_and_the_log_level(monkeypatch):
    monkeypatch.setenv("RECOPS_PROGRESS", "off")
    assert mode() == "off"
    monkeypatch.delenv("RECOPS_PROGRESS")
    logger = logging.getLogger("recops")
    previous = logger.level
    try:
        logger.setLevel(logging.WARNING)  # recops --quiet
        assert mode() == "off"
        logger.setLevel(logging.INFO)
        assert mode() == "log"  # pytest's stderr is not a terminal
    finally:
        logger.setLevel(previous)


def test_off_a_terminal_a_long_step_logs_its_progress_at_most_every_interval(monkeypatch, caplog):
    monkeypatch.setenv("RECOPS_PROGRESS", "log")
    with caplog.at_level(logging.INFO, logger="recops.progress"):
        with progress("windows", 4, "windows", every_s=0.0) as step:
            for _ in range(4):
                step.advance()
        assert [r.getMessage().split(" (")[0] for r in caplog.records] == [
            "windows: 1/4 windows", "windows: 2/4 windows", "windows: 3/4 windows", "windows: 4/4 windows"]
        caplog.clear()
        with progress("quiet", 1000, every_s=3600.0) as step:
            for _ in range(1000):
                step.advance()
        assert not caplog.records  # a short step says nothing; the log is never flooded


def test_nested_bars_share_one_live_display(monkeypatch):
    monkeypatch.setenv("RECOPS_PROGRESS", "bar")
    with progress("outer", 2) as outer:
        live = progress_module._live
        assert live is not None
        with progress("inner", 3) as inner:
            assert progress_module._live is live and len(live.tasks) == 2
            inner.advance(3)
        outer.advance()
        assert len(live.tasks) == 1
    assert progress_module._live is None


def test_the_ranker_reports_one_step_per_tree(monkeypatch, caplog):
    monkeypatch.setenv("RECOPS_PROGRESS", "log")
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"user_idx": np.repeat(np.arange(40), 10), "item_idx": np.tile(np.arange(10), 40),
                          "f": rng.normal(size=400), "label": rng.integers(0, 2, 400)})
    seen = []
    monkeypatch.setattr(Step, "advance", lambda self, n=1: seen.append(n))
    config = RankerConfig(n_estimators=7, early_stopping_rounds=100, min_child_samples=20)  # 400 rows: trees split
    booster = train_lambdarank(frame, None, ["f"], config, seed=1, threads=1)
    assert isinstance(booster, lgb.Booster)
    assert len(seen) == booster.num_trees() == 7


@pytest.fixture(autouse=True)
def _no_live_left():
    yield
    assert progress_module._live is None
