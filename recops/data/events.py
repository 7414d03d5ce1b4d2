"""The serving event log as interactions: what ``POST /events`` recorded, folded into the next snapshot.

``recops serve`` appends every event it accepts to ``<serving.event_log_dir>/events-YYYYMMDD.jsonl`` (one JSON
object per line: ``user_id``, ``item_id``, ``timestamp`` in unix seconds, ``weight``, ``received_at``) before it
answers. The ``ingest-snapshot`` flow appends those events to the incoming snapshot (:func:`with_events`), in
the interaction log's own column names and formats, drops the rows the snapshot already holds (an upstream log
may contain the same events), and once the snapshot is validated moves the files it consumed to
``<event_log_dir>/ingested/`` (:func:`mark_ingested`). A snapshot that fails validation consumes nothing. Lines
the reader cannot use (not JSON, or an event the API would refuse: see :func:`event_problem`) are quarantined in
``<event_log_dir>/rejected/`` with their file, line and reason, and the snapshot goes on without them.

Mapping: ``user_id`` / ``item_id`` to the configured user / item columns (as integers when ``data.id_type`` is
integer), ``timestamp`` to the timestamp column in ``data.timestamp_unit``, and ``weight`` to the weight column
or, in a log with ratings and no weight column, to the rating column (send the rating as the weight). Other
columns stay empty: if the validation suite requires them, the snapshot fails and says which rows.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pandas as pd

from recops.config import Settings

log = logging.getLogger(__name__)

INGESTED = "ingested"
REJECTED = "rejected"
FIELDS = ("user_id", "item_id", "timestamp", "weight")
INT64 = 2**63 - 1
MAX_FUTURE_S = 86_400.0
MAX_ID_CHARS = 256


def event_files(settings: Settings) -> list[Path]:
    folder = settings.root / settings.serving.event_log_dir
    return sorted(folder.glob("events-*.jsonl")) if folder.is_dir() else []


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def _id_problem(value: Any, id_type: str) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        return f"is {type(value).__name__}, not text or an integer"
    if isinstance(value, int):
        return None if -INT64 - 1 <= value <= INT64 else "is an integer beyond int64"
    if not 0 < len(value) <= MAX_ID_CHARS or any(ord(c) < 32 or ord(c) == 127 for c in value):
        return f"is not 1-{MAX_ID_CHARS} printable characters"
    if id_type == "integer":
        try:
            number = int(value)
        except ValueError:
            return f"{value[:40]!r} is not an integer (data.id_type: integer)"
        return None if -INT64 - 1 <= number <= INT64 else "is an integer beyond int64"
    return None


def event_problem(record: Any, id_type: str, now: float) -> str | None:
    """Why a parsed event-log record cannot become an interaction (None: it can): the API's rules — ids as text
    or int64 (integers when ``data.id_type`` is integer), a finite timestamp >= 0 at most a day after ``now``, a
    finite positive weight."""
    if not isinstance(record, dict):
        return f"is a JSON {type(record).__name__}, not an object"
    missing = [name for name in ("user_id", "item_id") if name not in record]
    if missing:
        return f"has no {', '.join(missing)}"
    for name in ("user_id", "item_id"):
        problem = _id_problem(record[name], id_type)
        if problem:
            return f"{name} {problem}"
    for name, default in (("timestamp", None), ("weight", 1.0)):
        value = record.get(name, default)
        if value is None and name == "timestamp":
            return "has no timestamp"
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return f"{name} {value!r:.40} is not a finite number"
    if not 0 <= record["timestamp"] <= now + MAX_FUTURE_S:
        return f"timestamp {record['timestamp']:.6g} is negative or more than a day after the snapshot"
    if not record.get("weight", 1.0) > 0:
        return f"weight {record['weight']!r} is not positive"
    return None


def read_events(files: list[Path], id_type: str = "string", now: float | None = None
                ) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """(the usable events of ``files`` as one frame with columns user_id, item_id, timestamp, weight; the
    rejected lines as ``{"file", "line", "reason", "text"}``). A line that is not JSON, or an event the API
    would have refused (``event_problem``: a log written by an older server, or edited by hand), is set aside
    with its reason instead of failing the whole snapshot."""
    now = time.time() if now is None else now
    rows, rejected = [], []
    for path in files:
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line, parse_constant=_no_constant)
                problem = event_problem(record, id_type, now)
            except (ValueError, RecursionError) as exc:
                record, problem = None, f"is not a JSON event ({type(exc).__name__}: {str(exc)[:200]})"
            if problem:
                rejected.append({"file": str(path), "line": number, "reason": problem, "text": line[:10_000]})
            else:
                rows.append({name: record.get(name, 1.0 if name == "weight" else None) for name in FIELDS})
    return pd.DataFrame(rows, columns=list(FIELDS)), rejected


def quarantine(settings: Settings, rejected: list[dict[str, Any]]) -> Path | None:
    """Append rejected event lines (with file, line and reason) to ``<event_log_dir>/rejected/`` — kept for
    inspection, never read back into a snapshot."""
    if not rejected:
        return None
    folder = settings.root / settings.serving.event_log_dir / REJECTED
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"rejected-{time.strftime('%Y%m%d', time.gmtime())}.jsonl"
    with path.open("a", encoding="utf-8") as handle:
        for entry in rejected:
            handle.write(json.dumps(entry, ensure_ascii=True) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    for entry in rejected[:5]:
        log.warning("event log %s:%d set aside: %s", entry["file"], entry["line"], entry["reason"])
    log.warning("%d event log line(s) set aside in %s", len(rejected), path)
    return path


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
    events, rejected = read_events(files, settings.data.id_type)
    quarantine(settings, rejected)
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
