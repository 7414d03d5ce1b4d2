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
import os
import shutil
import time
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pandas as pd
from pydantic import (BaseModel, ConfigDict, Field, StrictInt, StrictStr, StringConstraints, ValidationError,
                      field_validator)

from recops.config import Settings

log = logging.getLogger(__name__)

INGESTED = "ingested"
REJECTED = "rejected"
FIELDS = ("user_id", "item_id", "timestamp", "weight")
INT64 = int(np.iinfo(np.int64).max)
ID_PATTERN = r"^[^\x00-\x1f\x7f]{1,256}$"  # any printable text up to 256 characters (the GET path's rule too)
MAX_FUTURE_S = 86_400.0  # a client clock may run ahead a little; an event a day in the future is an error
MAX_JSON_DIGITS = 20     # longer integer literals are refused before Python parses them (int64 has 19 digits)

# An event id: text by the GET path's rule or an integer within int64 (what the training data's ids are read
# as). Strict: a JSON true is not user 1, a 1.5 is not an id.
EventId = (Annotated[StrictStr, StringConstraints(pattern=ID_PATTERN)]
           | Annotated[StrictInt, Field(ge=-INT64 - 1, le=INT64)])


class Event(BaseModel):
    """One interaction event: the rules ``POST /events`` applies before logging, and the snapshot's reader applies
    again to what a log holds (one written by an older server, or edited by hand)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    user_id: EventId = Field(description="the user's original id (text, or an integer within int64)")
    item_id: EventId = Field(description="the item's original id (text, or an integer within int64)")
    timestamp: float | None = Field(None, ge=0, description="unix seconds, finite, at most a day ahead of the "
                                                              "server's clock; default: when received")
    weight: float = Field(1.0, gt=0, le=1e6, description="interaction strength (for rating/weight confidence)")

    @field_validator("timestamp")
    @classmethod
    def _not_in_the_future(cls, value: float | None) -> float | None:
        if value is not None and value > time.time() + MAX_FUTURE_S:
            raise ValueError(f"timestamp {value:.6g} is more than {MAX_FUTURE_S:.0f} s ahead of the clock")
        return value


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number JSON allows")


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_JSON_DIGITS:
        raise ValueError(f"an integer of {len(text.lstrip('-'))} digits")
    return int(text)


def parse_strict_json(text: str | bytes) -> Any:
    """JSON as events must be: ValueError for NaN / Infinity (not JSON, although Python's parser takes them) and
    integer literals longer than any id or timestamp; RecursionError for nesting too deep; JSONDecodeError /
    UnicodeDecodeError for what is not JSON at all."""
    return json.loads(text, parse_constant=_no_constant, parse_int=_bounded_int)


def error_field(loc: tuple) -> str:
    """``events.0.user_id`` from a validation error's location, without pydantic's union-member tags."""
    parts = [str(p) for p in loc if isinstance(p, int) or not str(p).startswith(("constrained-", "function-"))]
    return ".".join(parts) or "body"


def validation_problems(exc: ValidationError) -> str:
    """The distinct ``field: message`` pairs of a validation error, joined."""
    return "; ".join(dict.fromkeys(f"{error_field(e['loc'])}: {e['msg']}" for e in exc.errors(include_url=False)))


def event_problem(record: Any, id_type: str) -> str | None:
    """Why a parsed event-log record cannot become an interaction (None: it can): the :class:`Event` rules, a
    timestamp (the server always writes one), and integer ids when ``data.id_type`` is integer."""
    if not isinstance(record, dict):
        return f"is a JSON {type(record).__name__}, not an object"
    try:
        event = Event.model_validate({name: record[name] for name in FIELDS if name in record})
    except ValidationError as exc:
        return validation_problems(exc)
    if event.timestamp is None:
        return "has no timestamp"
    if id_type == "integer":
        for name in ("user_id", "item_id"):
            value = getattr(event, name)
            if isinstance(value, str) and not (value.lstrip("-").isdigit() and -INT64 - 1 <= int(value) <= INT64):
                return f"{name} {value[:40]!r} is not an integer within int64 (data.id_type: integer)"
    return None


def event_files(settings: Settings) -> list[Path]:
    folder = settings.root / settings.serving.event_log_dir
    return sorted(folder.glob("events-*.jsonl")) if folder.is_dir() else []


def read_events(files: list[Path], id_type: str = "string") -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """(the usable events of ``files`` as one frame with columns user_id, item_id, timestamp, weight; the
    rejected lines as ``{"file", "line", "reason", "text"}``). A line that is not JSON, or an event the API
    would have refused (``event_problem``: a log written by an older server, or edited by hand), is set aside
    with its reason instead of failing the whole snapshot."""
    rows, rejected = [], []
    for path in files:
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = parse_strict_json(line)
                problem = event_problem(record, id_type)
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
