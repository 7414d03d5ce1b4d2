"""The serving event log as interactions: what ``POST /events`` recorded, folded into the next snapshot.

``recops serve`` appends every event it accepts to ``<serving.event_log_dir>/events-YYYYMMDD.jsonl`` (one JSON
object per line: ``user_id``, ``item_id``, ``timestamp`` in unix seconds, ``weight``, ``received_at``) before it
answers. The ``ingest-snapshot`` flow appends those events to the incoming snapshot (:func:`with_events`), in
the interaction log's own column names and formats, drops the rows the snapshot already holds (an upstream log
may contain the same events), and once the snapshot is validated moves the files it consumed to
``<event_log_dir>/ingested/`` (:func:`mark_ingested`). A snapshot that fails validation consumes nothing.

Mapping: ``user_id`` / ``item_id`` to the configured user / item columns (as integers when ``data.id_type`` is
integer), ``timestamp`` to the timestamp column in ``data.timestamp_unit``, and ``weight`` to the weight column
or, in a log with ratings and no weight column, to the rating column (send the rating as the weight). Other
columns stay empty: if the validation suite requires them, the snapshot fails and says which rows.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd

from recops.config import Settings
from recops.errors import RecopsError

INGESTED = "ingested"


def event_files(settings: Settings) -> list[Path]:
    folder = settings.root / settings.serving.event_log_dir
    return sorted(folder.glob("events-*.jsonl")) if folder.is_dir() else []


def read_events(files: list[Path]) -> pd.DataFrame:
    """The events of ``files`` as one frame (columns user_id, item_id, timestamp, weight)."""
    rows = []
    for path in files:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise RecopsError(f"{path}:{number} is not a JSON event ({exc}): fix or remove the line") from None
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "weight"])
    return frame


def as_interactions(events: pd.DataFrame, settings: Settings, columns: list[str]) -> pd.DataFrame:
    """``events`` in the interaction log's columns (``columns``, in that order) and formats."""
    cfg = settings.data
    mapping = cfg.columns
    out = pd.DataFrame(index=events.index, columns=columns)
    for column, values in ((mapping.user, events["user_id"]), (mapping.item, events["item_id"])):
        out[column] = pd.to_numeric(values, errors="coerce").astype("Int64") if cfg.id_type == "integer" \
            else values.astype(str)
    seconds = pd.to_numeric(events["timestamp"], errors="coerce")
    if cfg.timestamp_unit == "datetime":
        out[mapping.timestamp] = pd.to_datetime(seconds, unit="s", utc=True).dt.strftime("%Y-%m-%d %H:%M:%S")
    else:
        scale = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}[cfg.timestamp_unit]
        out[mapping.timestamp] = (seconds * scale).round().astype("Int64")
    weight = pd.to_numeric(events["weight"], errors="coerce")
    if mapping.weight and mapping.weight in columns:
        out[mapping.weight] = weight
    elif mapping.rating and mapping.rating in columns:
        out[mapping.rating] = weight
    return out[columns]


def with_events(snapshot: pd.DataFrame, settings: Settings) -> tuple[pd.DataFrame, list[Path], int]:
    """(snapshot + the logged events it does not hold yet, the event files used, number of rows added)."""
    files = event_files(settings)
    if not files:
        return snapshot, [], 0
    events = read_events(files)
    if events.empty:
        return snapshot, files, 0
    added = as_interactions(events, settings, list(snapshot.columns))
    keys = [settings.data.columns.user, settings.data.columns.item, settings.data.columns.timestamp]
    existing = pd.MultiIndex.from_frame(snapshot[keys].astype(str))
    new = ~pd.MultiIndex.from_frame(added[keys].astype(str)).isin(existing)
    added = added[new].drop_duplicates(subset=keys)
    combined = pd.concat([snapshot, added], ignore_index=True)
    return combined, files, int(len(added))


def mark_ingested(files: list[Path]) -> None:
    """Move consumed event files to ``ingested/`` (kept, not deleted: the log stays auditable)."""
    for path in files:
        target = path.parent / INGESTED / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():  # a later part of the same day: append
            with target.open("a", encoding="utf-8") as fh:
                fh.write(path.read_text(encoding="utf-8"))
            path.unlink()
        else:
            shutil.move(str(path), target)


def stage_snapshot(settings: Settings, source: Path, staging: Path, include_events: bool = True) -> tuple[list[Path],
                                                                                                       int]:
    """Copy the snapshot ``source`` to ``staging`` (same format as the project's interaction file), with the new
    events of the serving log appended when asked; return (event files used, rows added)."""
    if not include_events or not event_files(settings):
        shutil.copy2(source, staging)
        return [], 0
    sep = settings.data.csv_separator
    frame = pd.read_parquet(source) if source.suffix == ".parquet" else pd.read_csv(source, sep=sep)
    combined, files, added = with_events(frame, settings)
    if ".parquet" in staging.name:
        combined.to_parquet(staging, index=False)
    else:
        combined.to_csv(staging, index=False, sep=sep)
    return files, added
