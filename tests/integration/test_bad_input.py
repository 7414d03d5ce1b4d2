"""Every bad-input case stops at ingest or validation with a message naming the file, column and problem."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from recops import steps
from recops.config import load_settings
from recops.errors import RecopsError
from tests.conftest import PROJECT, set_params
from tests.data.cases import PARAMS, cases, clean_files, clean_tables, write_case

CASES = cases()


def workspace(tmp_path: Path, files: dict[str, bytes], overrides: dict) -> Path:
    shutil.copy(PROJECT / "params.yaml", tmp_path / "params.yaml")
    set_params(tmp_path, **PARAMS, **overrides)
    set_params(tmp_path, paths={"expectations_dir": str(PROJECT / "expectations"),
                                "cache_dir": str(tmp_path / "cache")})
    write_case(tmp_path, files)
    return tmp_path


def test_the_clean_version_of_the_cases_passes_and_runs_the_whole_pipeline(tmp_path):
    """A user's own CSV log with attribute tables goes through every stage; the table compares the two-stage
    list with every single-stage baseline on their data."""
    files = clean_files()
    settings = load_settings(workspace(tmp_path, files, {}) / "params.yaml")
    steps.ingest(settings)
    summary = steps.validate(settings)
    assert summary["validation.success"] == 1.0
    for name in ("split", "candidates", "features", "train_ranker", "evaluate", "export"):
        steps.STAGES[name](settings)
    metrics = steps.all_metrics(settings)
    for model in (*settings.evaluation.baselines, "ranker"):
        assert 0 <= metrics[f"test.{model}.ndcg@10"] <= 1
        assert metrics[f"test.{model}.users"] == metrics["test.ranker.users"]
    # every user has the same history size here, so all of them fall in the first activity tercile
    segments = [k for k in metrics if k.startswith("test.ranker.segment.") and k.endswith(".users")]
    assert sum(metrics[k] for k in segments) == metrics["test.ranker.users"]
    features = (tmp_path / "data" / "features" / "feature_names.json").read_text()
    for name in ("ease_rank", "itemknn_score", "n_sources", "seq_cooc_max", "seq_mf_mean", "lift_among_country",
                 "affinity_tags"):
        assert f'"{name}"' in features
    assert metrics["export.parity.top10_mismatched_users"] == 0


@pytest.mark.parametrize(("name", "files", "overrides", "words"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_rejected_with_a_message_naming_the_problem(tmp_path, name, files, overrides, words):
    settings = load_settings(workspace(tmp_path, files, overrides) / "params.yaml")
    with pytest.raises(RecopsError) as err:
        steps.ingest(settings)
        steps.validate(settings)
    message = str(err.value)
    for word in words:
        assert word in message, f"{name}: {word!r} not in: {message}"
    # nothing downstream of validation was produced
    assert not settings.path("split_dir").exists()
    assert not settings.path("metrics").exists()


def test_an_event_the_snapshots_validation_would_refuse_is_quarantined_naming_the_events_file_and_line(tmp_path):
    """Issue 14: such an event used to fail the merged snapshot's validation as "row 1502" of the snapshot file;
    now it is set aside with its file, line and reason, and the snapshot is validated without it."""
    from recops.data.events import stage_snapshot

    events, users, items = clean_tables()
    settings = load_settings(workspace(tmp_path, clean_files(), {}) / "params.yaml")
    log_dir = settings.root / settings.serving.event_log_dir
    log_dir.mkdir(parents=True)
    good = {"user_id": "1", "item_id": "3", "timestamp": 1_600_000_000.0, "weight": 4.0}
    log = log_dir / "events-20261123.jsonl"
    log.write_text("\n".join(json.dumps(e) for e in [
        good,
        {**good, "user_id": "999"},          # not in users.csv
        {**good, "timestamp": 500_000_000},  # 1985: before validation.earliest_timestamp
        {**good, "weight": 9.0},             # fills the rating column: outside 1..5
    ]) + "\n")
    target = settings.resolve(settings.data.interactions_path)
    staging = target.with_name(f".{target.name}.incoming")
    consumed, added = stage_snapshot(settings, target, staging)
    staging.replace(target)

    assert steps.ingest(settings)["ingest.rows"] == len(events) + 1 and added == 1 and consumed == [log]
    assert steps.validate(settings)["validation.success"] == 1.0
    rejected = [json.loads(line) for path in (log_dir / "rejected").glob("*.jsonl")
                for line in path.read_text().splitlines()]
    assert [(entry["file"], entry["line"]) for entry in rejected] == [(str(log), 2), (str(log), 3), (str(log), 4)]
    assert "user_id '999' is not in the users table (data/external/users.csv)" in rejected[0]["reason"]
