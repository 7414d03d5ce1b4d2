"""The serving event log folded into the next snapshot (recops.data.events)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import pytest
from pydantic import ValidationError

from recops.config import Settings
from recops.data.events import (INGESTED, Event, event_files, mark_ingested, read_events, stage_snapshot,
                                with_events)
from recops.errors import RecopsError


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


T0 = 1_600_000_000  # 2020-09-13: event timestamps must lie in the validation window (after 1990, not ahead)
SNAPSHOT = pd.DataFrame({"uid": [1, 2], "sku": [10, 20], "ts": [T0 + 1_000, T0 + 2_000], "stars": [4, 5]})


def test_new_events_are_appended_in_the_logs_columns_and_known_ones_dropped(tmp_path):
    settings = project(tmp_path)
    log_events(settings, [{"user_id": "1", "item_id": "10", "timestamp": T0 + 1000.0, "weight": 4.0},  # known
                          {"user_id": "3", "item_id": "30", "timestamp": T0 + 3000.4, "weight": 2.0},
                          {"user_id": "3", "item_id": "30", "timestamp": T0 + 3000.4, "weight": 2.0}])  # a repeat
    combined, files, added = with_events(SNAPSHOT, settings)
    assert added == 1 and len(files) == 1
    assert combined.iloc[-1].to_dict() == {"uid": 3, "sku": 30, "ts": T0 + 3000, "stars": 2.0}
    assert list(combined.columns) == list(SNAPSHOT.columns)


def test_timestamps_follow_the_configured_unit(tmp_path):
    settings = project(tmp_path, timestamp_unit="ms")
    log_events(settings, [{"user_id": "3", "item_id": "30", "timestamp": T0 + 3.5, "weight": 1.0}])
    combined, _, _ = with_events(SNAPSHOT, settings)
    assert combined["ts"].iloc[-1] == T0 * 1000 + 3500


def test_a_staged_snapshot_carries_the_events_and_consumed_files_move_aside(tmp_path):
    settings = project(tmp_path)
    source = tmp_path / "snapshot.csv"
    SNAPSHOT.to_csv(source, index=False)
    log_events(settings, [{"user_id": "5", "item_id": "50", "timestamp": T0 + 5000, "weight": 3}])
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
    log_events(settings, [{"user_id": "5", "item_id": "50", "timestamp": T0 + 5000, "weight": 3}])
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
    path = log_events(settings, [{"user_id": "5", "item_id": "50", "timestamp": T0 + 5000, "weight": 3}])
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


def rejected_entries(settings: Settings) -> list[dict]:
    folder = settings.root / settings.serving.event_log_dir / "rejected"
    return [json.loads(line) for f in sorted(folder.glob("*.jsonl")) for line in f.read_text().splitlines()]


def test_read_events_keeps_each_rows_file_and_line(tmp_path):
    settings = project(tmp_path)
    first = log_events(settings, [{"user_id": "5", "item_id": "50", "timestamp": T0, "weight": 3}], day="20261123")
    second = log_events(settings, [{"user_id": "6", "item_id": "60", "timestamp": T0, "weight": 3}] * 2,
                        day="20261124")
    second.write_text("\n" + second.read_text())  # a blank first line still counts as line 1
    events, rejected = read_events([first, second])
    assert rejected == []
    assert list(zip(events["file"], events["line"])) == [(str(first), 1), (str(second), 2), (str(second), 3)]


def test_lines_end_at_newlines_only_so_json_text_may_hold_line_separators(tmp_path):
    settings = project(tmp_path, id_type="string")
    path = log_events(settings, [])
    path.write_text(json.dumps({"user_id": "a\u2028b", "item_id": "c\u2029d", "timestamp": T0},
                               ensure_ascii=False) + "\n", encoding="utf-8")
    events, rejected = read_events([path], "string")
    assert rejected == [] and events["user_id"].tolist() == ["a\u2028b"] and events["line"].tolist() == [1]


@pytest.mark.parametrize("body", [
    {"user_id": "a\x85b", "item_id": "1"},          # a C1 control character
    {"user_id": "1", "item_id": "1", "timestamp": True},
    {"user_id": "1", "item_id": "1", "weight": "2"},
    {"user_id": "1", "item_id": "1", "timestamp": "1600000000"},
])
def test_control_characters_and_numbers_written_as_other_types_are_refused(body):
    with pytest.raises(ValidationError):
        Event.model_validate(body)


def test_events_the_snapshots_validation_would_refuse_are_quarantined_with_file_and_line(tmp_path):
    users = tmp_path / "data" / "external" / "users.csv"
    users.parent.mkdir(parents=True)
    pd.DataFrame({"uid": [1, 2, 3, 5, 7, 8]}).to_csv(users, index=False)
    settings = project(tmp_path, users_path="data/external/users.csv", user_attributes={"id": "uid"})
    path = log_events(settings, [
        {"user_id": "5", "item_id": "50", "timestamp": T0 + 5000, "weight": 3},     # usable
        {"user_id": -7, "item_id": "50", "timestamp": T0 + 5000, "weight": 3},      # the suite: ids >= 0
        {"user_id": "7", "item_id": "50", "timestamp": 500_000_000, "weight": 3},   # 1985: before the window
        {"user_id": "7", "item_id": "50", "timestamp": time.time() + 3600, "weight": 3},  # an hour ahead
        {"user_id": "7", "item_id": "50", "timestamp": T0 + 5000, "weight": 9},     # the rating range is 1..5
        {"user_id": "99", "item_id": "50", "timestamp": T0 + 5000, "weight": 3},    # not in users.csv
        {"user_id": "8", "item_id": "80", "timestamp": T0 + 5000, "weight": 1},     # usable
    ])
    combined, files, added = with_events(SNAPSHOT, settings)
    assert added == 2 and combined["uid"].tolist() == [1, 2, 5, 8] and files == [path]
    rejected = rejected_entries(settings)
    assert [(entry["file"], entry["line"]) for entry in rejected] == [(str(path), n) for n in (2, 3, 4, 5, 6)]
    reasons = [entry["reason"] for entry in rejected]
    assert "user_id -7 is negative" in reasons[0]
    assert "before validation.earliest_timestamp (1990-01-01)" in reasons[1]
    assert "ahead of the snapshot's clock" in reasons[2]
    assert "weight 9 is outside validation.rating_min..rating_max (1..5)" in reasons[3]
    assert "user_id '99' is not in the users table (data/external/users.csv)" in reasons[4]
    assert json.loads(rejected[0]["text"])["user_id"] == -7


def test_a_split_column_events_cannot_fill_stops_the_snapshot_naming_the_event_lines(tmp_path):
    settings = project(tmp_path, columns={"user": "uid", "item": "sku", "timestamp": "ts", "split": "fold"})
    path = log_events(settings, [{"user_id": "5", "item_id": "50", "timestamp": T0 + 5000}] * 7)
    source, staging = tmp_path / "snapshot.csv", tmp_path / ".log.csv.incoming"
    SNAPSHOT.assign(fold="train").to_csv(source, index=False)
    with pytest.raises(RecopsError) as caught:
        stage_snapshot(settings, source, staging)
    message = str(caught.value)
    assert f"{path} lines 1, 2, 3, 4, 5 and 2 more" in message
    assert "'fold' (data.columns.split) must not be empty" in message and "include_events=False" in message
    assert not staging.exists() and event_files(settings) == [path]  # nothing merged, nothing consumed
