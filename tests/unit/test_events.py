"""The serving event log folded into the next snapshot (recops.data.events)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from recops.config import Settings
from recops.data.events import INGESTED, event_files, mark_ingested, stage_snapshot, with_events


def project(tmp_path: Path, **data) -> Settings:
    base = {"source": "file", "interactions_path": "data/external/log.csv",
            "columns": {"user": "uid", "item": "sku", "timestamp": "ts", "rating": "stars"}}
    return Settings.model_validate({"data": {**base, **data}, "root": tmp_path})


def log_events(settings: Settings, events: list[dict], day: str = "20261123") -> Path:
    folder = settings.root / settings.serving.event_log_dir
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"events-{day}.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    return path


SNAPSHOT = pd.DataFrame({"uid": [1, 2], "sku": [10, 20], "ts": [1_000, 2_000], "stars": [4, 5]})


def test_new_events_are_appended_in_the_logs_columns_and_known_ones_dropped(tmp_path):
    settings = project(tmp_path)
    log_events(settings, [{"user_id": "1", "item_id": "10", "timestamp": 1000.0, "weight": 4.0},  # already there
                          {"user_id": "3", "item_id": "30", "timestamp": 3000.4, "weight": 2.0},
                          {"user_id": "3", "item_id": "30", "timestamp": 3000.4, "weight": 2.0}])  # a repeat
    combined, files, added = with_events(SNAPSHOT, settings)
    assert added == 1 and len(files) == 1
    assert combined.iloc[-1].to_dict() == {"uid": 3, "sku": 30, "ts": 3000, "stars": 2.0}
    assert list(combined.columns) == list(SNAPSHOT.columns)


def test_timestamps_follow_the_configured_unit(tmp_path):
    settings = project(tmp_path, timestamp_unit="ms")
    log_events(settings, [{"user_id": "3", "item_id": "30", "timestamp": 3.5, "weight": 1.0}])
    combined, _, _ = with_events(SNAPSHOT, settings)
    assert combined["ts"].iloc[-1] == 3500


def test_a_staged_snapshot_carries_the_events_and_consumed_files_move_aside(tmp_path):
    settings = project(tmp_path)
    source = tmp_path / "snapshot.csv"
    SNAPSHOT.to_csv(source, index=False)
    log_events(settings, [{"user_id": "5", "item_id": "50", "timestamp": 5000, "weight": 3}])
    staging = tmp_path / ".log.csv.incoming"
    files, added = stage_snapshot(settings, source, staging)
    assert added == 1 and pd.read_csv(staging)["uid"].tolist() == [1, 2, 5]
    mark_ingested(files)
    assert event_files(settings) == []
    assert (settings.root / settings.serving.event_log_dir / INGESTED / files[0].name).is_file()
    again = tmp_path / ".again.incoming"
    assert stage_snapshot(settings, source, again) == ([], 0)  # nothing is ingested twice
    assert pd.read_csv(again)["uid"].tolist() == [1, 2]


def test_without_events_the_snapshot_is_copied_as_is(tmp_path):
    settings = project(tmp_path)
    source = tmp_path / "snapshot.csv"
    SNAPSHOT.to_csv(source, index=False)
    log_events(settings, [{"user_id": "5", "item_id": "50", "timestamp": 5000, "weight": 3}])
    staging = tmp_path / ".log.csv.incoming"
    assert stage_snapshot(settings, source, staging, include_events=False) == ([], 0)
    assert staging.read_bytes() == source.read_bytes()


POISONED = [  # what servers before the validation of issue 14 logged, and what broke every snapshot after it
    "{broken",
    '{"user_id": "6", "item_id": "60", "timestamp": Infinity, "weight": 1}',
    '{"user_id": "6", "item_id": "60", "timestamp": 1e308, "weight": 1}',
    '{"user_id": "6", "item_id": "60", "timestamp": 1000000000000, "weight": 1}',
    '{"user_id": 1180591620717411303424, "item_id": "60", "timestamp": 6000, "weight": 1}',
    '{"user_id": true, "item_id": "60", "timestamp": 6000, "weight": 1}',
    '{"user_id": "u-6", "item_id": "60", "timestamp": 6000, "weight": 1}',
    '{"user_id": "6", "item_id": "60", "timestamp": 6000, "weight": NaN}',
    '{"user_id": "6", "item_id": "60", "timestamp": 6000, "weight": -1}',
    '[1, 2]',
    '{"item_id": "60", "timestamp": 6000}',
]


def test_a_poisoned_log_is_quarantined_line_by_line_and_the_snapshot_goes_on(tmp_path):
    settings = project(tmp_path)
    path = log_events(settings, [{"user_id": "5", "item_id": "50", "timestamp": 5000, "weight": 3}])
    path.write_text(path.read_text() + "\n".join(POISONED) + "\n")
    combined, files, added = with_events(SNAPSHOT, settings)
    assert added == 1 and combined["uid"].tolist() == [1, 2, 5] and files == [path]
    assert combined["ts"].dtype.kind in "iu" or str(combined["ts"].dtype) == "Int64"
    rejected = [json.loads(line) for folder in [settings.root / settings.serving.event_log_dir / "rejected"]
                for f in folder.glob("*.jsonl") for line in f.read_text().splitlines()]
    assert [entry["line"] for entry in rejected] == list(range(2, 2 + len(POISONED)))
    assert all(entry["file"] == str(path) and entry["reason"] for entry in rejected)
    reasons = " | ".join(entry["reason"] for entry in rejected)
    for fragment in ("weight: Input should be greater than 0", "not a JSON event", "Infinity", "ahead of the clock",
                     "22 digits", "user_id: Input should be a valid integer", "not an integer within int64", "NaN",
                     "not an object", "user_id: Field required"):
        assert fragment in reasons, fragment
