"""The serving event log as interactions: what ``POST /events`` recorded, folded into the next snapshot.

``recops serve`` appends every event it accepts to ``<serving.event_log_dir>/events-YYYYMMDD.jsonl`` (one JSON
object per line: ``user_id``, ``item_id``, ``timestamp`` in unix seconds, ``weight``, ``received_at``) before it
answers. The ``ingest-snapshot`` flow appends those events to the incoming snapshot (:func:`with_events`), in
the interaction log's own column names and formats, drops the rows the snapshot already holds (an upstream log
may contain the same events), and once the snapshot is validated moves the files it consumed to
``<event_log_dir>/ingested/`` (:func:`mark_ingested`). A snapshot that fails validation consumes nothing. Lines
the reader cannot use (not JSON, or an event the API would refuse: see :func:`event_problem`) are quarantined in
``<event_log_dir>/rejected/`` with their file, line and reason, and the snapshot goes on without them.

Every event row keeps its provenance (the events file and its 1-based line) until it is merged, so that an event
the snapshot's validation would refuse is reported by file and line, not as "row 100002" of the merged snapshot:
before merging, :func:`snapshot_problems` applies the row rules of the interaction suite that an event can break
(integer ids non-negative, the timestamp within the validation window, the weight within the rating range when it
fills the rating column, the user and item present in the attribute tables when they are given) and those rows
are quarantined like unreadable lines. A mapped column that events cannot fill (``split``; ``rating`` when a
weight column is mapped too) stops the snapshot before anything is merged, naming the event files and lines.

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
from recops.errors import RecopsError

log = logging.getLogger(__name__)

INGESTED = "ingested"
REJECTED = "rejected"
FIELDS = ("user_id", "item_id", "timestamp", "weight")
PROVENANCE = ("file", "line")  # where each event row of read_events comes from (line: 1-based)
INT64 = int(np.iinfo(np.int64).max)
# Any text up to 256 characters without control characters (C0, DEL and C1: U+0085 would end a line for
# str.splitlines), the GET path's rule too.
ID_PATTERN = r"^[^\x00-\x1f\x7f-\x9f]{1,256}$"
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
    # strict: a JSON number only (true is not 1.0, "5" is not 5.0): what is logged is what the client sent.
    timestamp: float | None = Field(None, ge=0, strict=True,
                                    description="unix seconds, finite, at most a day ahead of the server's clock; "
                                                "default: when received")
    weight: float = Field(1.0, gt=0, le=1e6, strict=True,
                          description="interaction strength (for rating/weight confidence)")

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
    return checked_event(record, id_type)[1]


def checked_event(record: Any, id_type: str) -> tuple[Event | None, str | None]:
    """(the event, None) when a parsed event-log record can become an interaction, else (None, why not)."""
    if not isinstance(record, dict):
        return None, f"is a JSON {type(record).__name__}, not an object"
    try:
        event = Event.model_validate({name: record[name] for name in FIELDS if name in record})
    except ValidationError as exc:
        return None, validation_problems(exc)
    if event.timestamp is None:
        return None, "has no timestamp"
    if id_type == "integer":
        for name in ("user_id", "item_id"):
            value = getattr(event, name)
            if isinstance(value, str) and not _is_int64_text(value):
                return None, f"{name} {value[:40]!r} is not an integer within int64 (data.id_type: integer)"
    return event, None


def _is_int64_text(value: str) -> bool:
    # str.isdigit() is also true for "²" or Arabic-Indic digits, which int() refuses or reads as other numbers.
    digits = value[1:] if value.startswith("-") else value
    return 0 < len(digits) <= 19 and digits.isascii() and digits.isdigit() and -INT64 - 1 <= int(value) <= INT64


def event_files(settings: Settings) -> list[Path]:
    folder = settings.root / settings.serving.event_log_dir
    return sorted(folder.glob("events-*.jsonl")) if folder.is_dir() else []


def read_events(files: list[Path], id_type: str = "string") -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """(the usable events of ``files`` as one frame with columns user_id, item_id, timestamp, weight and their
    provenance file, line; the rejected lines as ``{"file", "line", "reason", "text"}``). A line that is not
    JSON, or an event the API would have refused (``event_problem``: a log written by an older server, or edited
    by hand), is set aside with its reason instead of failing the whole snapshot. Lines are counted from 1 and
    end at a newline only (JSON text may hold U+2028 or U+0085, which ``str.splitlines`` would also cut at)."""
    rows, rejected = [], []
    for path in files:
        text = path.read_bytes().decode("utf-8", errors="replace")  # no newline translation: a "\r" stays put
        for number, line in enumerate(text.split("\n"), start=1):
            line = line.removesuffix("\r")
            if not line.strip():
                continue
            try:
                event, problem = checked_event(parse_strict_json(line), id_type)
            except (ValueError, RecursionError) as exc:
                event, problem = None, f"is not a JSON event ({type(exc).__name__}: {str(exc)[:200]})"
            if event is None:
                rejected.append({"file": str(path), "line": number, "reason": problem, "text": line[:10_000]})
            else:
                rows.append((event.user_id, event.item_id, event.timestamp, event.weight, str(path), number))
    return pd.DataFrame(rows, columns=[*FIELDS, *PROVENANCE]), rejected


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


def unfillable_columns(settings: Settings, columns: list[str]) -> list[str]:
    """The snapshot's mapped columns the validation suite requires to be non-empty and events cannot fill:
    ``split``, and ``rating`` when a weight column takes the event's weight."""
    mapping = settings.data.columns
    roles = {"split": mapping.split}
    if mapping.weight and mapping.weight in columns:
        roles["rating"] = mapping.rating
    return [f"{column!r} (data.columns.{role})" for role, column in roles.items() if column and column in columns]


def acceptance_problem(event: Event, settings: Settings) -> str | None:
    """Why the API must refuse ``event`` (None: it takes it), beyond :class:`Event`'s own rules: what the next
    snapshot's validation would refuse (:func:`snapshot_problems`' row rules that need no file), so that an
    acknowledged event is never one the snapshot sets aside. Field names as in the request body."""
    cfg, checks = settings.data, settings.validation
    if cfg.id_type == "integer":
        for name in ("user_id", "item_id"):
            value = getattr(event, name)
            if isinstance(value, str):
                if not (value.lstrip("-").isascii() and value.lstrip("-").isdigit()):
                    return f"{name}: {value[:40]!r} is not an integer id (data.id_type: integer)"
                value = int(value)
            if not -INT64 - 1 <= value <= INT64:
                return f"{name}: {value} is beyond the 64-bit integer range"
            if value < 0:
                return f"{name}: {value} is negative (the interaction suite takes non-negative integer ids)"
    if event.timestamp is not None and event.timestamp < checks.earliest_epoch_seconds():
        return (f"timestamp: {_moment(event.timestamp)} is before validation.earliest_timestamp "
                f"({checks.earliest_timestamp})")
    mapping = cfg.columns
    if mapping.rating and not mapping.weight and not checks.rating_min <= event.weight <= checks.rating_max:
        return (f"weight: {event.weight:g} is outside validation.rating_min..rating_max ({checks.rating_min:g}.."
                f"{checks.rating_max:g}); it fills the rating column {mapping.rating!r}")
    return None


def snapshot_problems(events: pd.DataFrame, settings: Settings, columns: list[str]) -> pd.Series:
    """Per event row (of :func:`read_events`), why the snapshot's validation would refuse it as an interaction
    (None: it would not): the row rules of the interaction suite that an event can break, checked here so that
    the row is quarantined with its file and line instead of failing the merged snapshot as a row number of it.
    ``columns``: the snapshot's columns (where the weight goes)."""
    cfg, checks = settings.data, settings.validation
    reasons = pd.Series(None, index=events.index, dtype=object)

    def refuse(mask: pd.Series, why) -> None:
        for index in mask[mask & reasons.isna()].index:
            reasons[index] = why(events.loc[index])

    if cfg.id_type == "integer":  # the suite's rule: non-negative integers
        for name in ("user_id", "item_id"):
            negative = events[name].map(lambda v: int(v) < 0)
            refuse(negative, lambda row, name=name: f"{name} {row[name]} is negative (the interaction suite takes "
                                                    "non-negative integer ids)")
    earliest, now = checks.earliest_epoch_seconds(), time.time()
    seconds = events["timestamp"].astype("float64")
    refuse(seconds < earliest, lambda row: f"timestamp {_moment(row['timestamp'])} is before "
                                           f"validation.earliest_timestamp ({checks.earliest_timestamp})")
    refuse(seconds > now, lambda row: f"timestamp {_moment(row['timestamp'])} is ahead of the snapshot's clock (the "
                                      "interaction suite takes none after its run)")
    mapping = cfg.columns
    if mapping.rating and mapping.rating in columns and not (mapping.weight and mapping.weight in columns):
        weight = events["weight"].astype("float64")
        refuse((weight < checks.rating_min) | (weight > checks.rating_max),
               lambda row: f"weight {row['weight']:g} is outside validation.rating_min..rating_max "
                           f"({checks.rating_min:g}..{checks.rating_max:g}); it fills the rating column "
                           f"{mapping.rating!r}")
    for name, (path, spec) in {"user_id": (cfg.users_path, cfg.user_attributes),
                               "item_id": (cfg.items_path, cfg.item_attributes)}.items():
        known = _attribute_ids(settings, path, spec.id if spec else None)
        if known is not None and name == "user_id":
            known = _as_logged_users(settings, path, known)
        if known is not None:
            table = "users" if name == "user_id" else "items"
            refuse(~events[name].map(lambda v: _id_key(v, cfg.id_type) in known),
                   lambda row, name=name, table=table, path=path: f"{name} {row[name]!r} is not in the {table} "
                                                                  f"table ({path})")
    return reasons


def _moment(seconds: float) -> str:
    """``500000000 (1985-11-05 00:53:20 UTC)``."""
    shown = f"{seconds:.0f}" if float(seconds).is_integer() else f"{seconds:.3f}"
    return f"{shown} ({time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(seconds))})"


def _id_key(value: Any, id_type: str) -> Any:
    return int(value) if id_type == "integer" else str(value)


def _attribute_ids(settings: Settings, path: str | None, id_column: str | None) -> set[Any] | None:
    """The ids of an attribute table in the form events are compared in; None when there is no table, or it
    cannot be read (the snapshot's ingest then names the problem)."""
    from recops.data.loaders import read_table  # not at import: the API imports this module

    if not path or not id_column:
        return None
    try:
        ids = read_table(settings.resolve(path), settings.data.csv_separator, columns=[id_column])[id_column]
    except RecopsError as exc:
        log.warning("events not checked against %s: %s", path, exc)
        return None
    if settings.data.id_type == "integer":
        numbers = pd.to_numeric(ids, errors="coerce").dropna()
        return {int(v) for v in numbers if float(v).is_integer()}
    return set(ids.dropna().astype(str))


def _as_logged_users(settings: Settings, path: str, ids: set[Any]) -> set[Any]:
    """The users table's ids as the event log holds them: pseudonyms with ``privacy.pseudonymize`` (the table is
    the user's raw file unless recops wrote it with pseudonyms), else as they are."""
    from recops.privacy import Pseudonymizer, pseudonymized_with

    pseudo = Pseudonymizer.from_settings(settings)
    if pseudo is None or pseudonymized_with(settings.resolve(path)) == pseudo.fingerprint:
        return ids
    return {pseudo.one(v) for v in ids} - {None}


def with_events(snapshot: pd.DataFrame, settings: Settings) -> tuple[pd.DataFrame, list[Path], int]:
    """(snapshot + the logged events it does not hold yet, the event files used, number of rows added).

    Event rows the snapshot's validation would refuse are quarantined with their file and line (see
    :func:`snapshot_problems`); a mapped column that events cannot fill raises RecopsError naming them."""
    files = event_files(settings)
    if not files:
        return snapshot, [], 0
    events, rejected = read_events(files, settings.data.id_type)
    if events.empty:
        quarantine(settings, rejected)
        return snapshot, files, 0
    columns = list(snapshot.columns)
    unfillable = unfillable_columns(settings, columns)
    if unfillable:  # nothing is set aside or consumed: the log stays as it is for a snapshot that can take it
        raise RecopsError(
            f"{len(events)} event(s) of the serving log cannot be added to the snapshot: {_where(events)}: the "
            f"interaction log's column {', '.join(unfillable)} must not be empty and events carry no value for it; "
            "take the snapshot without the serving events (ingest_snapshot_flow(include_events=False)) or unmap "
            "the column"
        )
    problems = snapshot_problems(events, settings, columns)
    refused = problems.notna()
    rejected += [{"file": row.file, "line": int(row.line), "reason": problems[index],
                  "text": json.dumps({name: row[name] for name in FIELDS}, ensure_ascii=True)}
                 for index, row in events[refused].iterrows()]
    quarantine(settings, rejected)
    events = events[~refused]
    if events.empty:
        return snapshot, files, 0
    added = as_interactions(events, settings, columns)
    keys = [settings.data.columns.user, settings.data.columns.item, settings.data.columns.timestamp]
    existing = pd.MultiIndex.from_frame(snapshot[keys].astype(str))
    new = ~pd.MultiIndex.from_frame(added[keys].astype(str)).isin(existing)
    added = added[new].drop_duplicates(subset=keys)
    combined = pd.concat([snapshot, added], ignore_index=True)
    return combined, files, int(len(added))


def _where(events: pd.DataFrame, shown: int = 5) -> str:
    """``events-20261123.jsonl lines 1, 2, 5; events-20261124.jsonl line 3`` for the first ``shown`` rows."""
    parts = []
    for path, lines in events.head(shown).groupby("file", sort=False)["line"]:
        numbers = [str(int(n)) for n in lines]
        parts.append(f"{path} line{'s' if len(numbers) > 1 else ''} {', '.join(numbers)}")
    return "; ".join(parts) + (f" and {len(events) - shown} more" if len(events) > shown else "")


def expire_event_files(settings: Settings, cutoff: float) -> int:
    """Delete the event log's day files (live, ingested and set-aside) whose whole day lies before ``cutoff``
    (unix seconds; ``privacy.retention_days`` before the newest interaction); the number deleted. Servers tailing a
    live file that goes away stop tracking it (its events are older than anything kept anyway)."""
    import re
    from datetime import datetime, timezone

    folder = settings.root / settings.serving.event_log_dir
    if not folder.is_dir():
        return 0
    deleted = 0
    for path in sorted(folder.rglob("*.jsonl")):
        match = re.search(r"-(\d{8})\.jsonl$", path.name)
        if not match:
            continue
        day_end = datetime.strptime(match.group(1), "%Y%m%d").replace(tzinfo=timezone.utc).timestamp() + 86_400
        if day_end <= cutoff:
            path.unlink(missing_ok=True)
            deleted += 1
    if deleted:
        log.info("retention: %d event log file(s) older than the kept period deleted from %s", deleted, folder)
    return deleted


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
    events of the serving log appended when asked; return (event files used, rows added).

    With ``privacy.pseudonymize`` the staged file holds pseudonyms (the user column of a raw snapshot is
    pseudonymised, the serving log's events already are) and is marked as such (recops.privacy), so that ingest
    reads it as it is; the raw snapshot is never copied under the project."""
    from recops.privacy import Pseudonymizer, mark_pseudonymized, pseudonymized_with

    from recops.data.forgotten import forgotten_mask, has_forgotten

    pseudo = Pseudonymizer.from_settings(settings)
    take_events = include_events and bool(event_files(settings))
    if pseudo is None and not take_events and not has_forgotten(settings):
        shutil.copy2(source, staging)
        return [], 0
    sep = settings.data.csv_separator
    frame = pd.read_parquet(source) if source.suffix == ".parquet" else pd.read_csv(source, sep=sep)
    if pseudo is not None:
        marked = pseudonymized_with(source)
        if marked is not None and marked != pseudo.fingerprint:
            raise RecopsError(f"snapshot {source} holds pseudonyms made with another key (fingerprint {marked}, the "
                              f"key here has {pseudo.fingerprint}): take the snapshot from a raw export")
        user = settings.data.columns.user
        if marked is None:
            if user not in frame.columns:
                raise RecopsError(f"snapshot {source}: no user column {user!r} to pseudonymise (data.columns.user)")
            frame[user] = pseudo.column(frame[user], f"snapshot {source}")
    user = settings.data.columns.user
    gone = forgotten_mask(settings, frame[user]) if user in frame.columns else None
    if gone is not None and gone.any():  # users forgotten earlier that the upstream export still has
        log.info("snapshot %s: %d row(s) of forgotten users left out", source, int(gone.sum()))
        frame = frame[~gone].reset_index(drop=True)
    combined, files, added = with_events(frame, settings) if take_events else (frame, [], 0)
    if ".parquet" in staging.name:
        combined.to_parquet(staging, index=False)
    else:
        combined.to_csv(staging, index=False, sep=sep)
    if pseudo is not None:
        mark_pseudonymized(staging, pseudo.fingerprint)
    return files, added
