"""The impression log: what every answer of ``GET /recommendations`` showed, to whom, from which version, and with
which probability the policy would show each item there — what online metrics and off-policy evaluation read.

One JSON line per served list (live, cached or fallback), one file per UTC day:
``<serving.event_log_dir>/impressions/impressions-YYYYMMDD.jsonl``. Under the event log's folder on purpose:
retention (``privacy.retention_days``) and ``recops forget`` already cover every ``*.jsonl`` file there, and the
snapshot reader only takes ``events-*.jsonl`` files, so impressions are never read as interactions.

What this module guarantees, with any number of worker processes writing to the same folder:

- **Nothing on the request path but a list append**: :meth:`ImpressionLog.record` puts the record in an in-memory
  buffer; a background thread writes the buffer every ``flush_seconds`` as *one* append of whole lines, under the
  file's ``flock`` (no interleaving with other workers), fsynced. A batch that was written is never lost; a
  process killed with SIGKILL loses at most what it served in its last ``flush_seconds``. A batch cut short by
  the kill leaves a torn last line, which the reader skips (:func:`read_impressions` counts it).
- **Bounded**: the buffer holds at most ``max_buffer`` records; when the disk stalls beyond that, the oldest
  records are dropped and counted (``dropped``), and requests never wait for the disk.
- **Never an unreadable record**: records are built by the API from validated values and serialised with
  ``allow_nan=False`` (an unknown propensity is ``null``).

Fields: ``impression_id`` (the request's ``request_id`` when given, else a fresh one: the response carries it),
``time`` (unix seconds), ``user_id`` (as stored: the pseudonym when ``privacy.pseudonymize`` is on), ``version``,
``items`` (ids, in list order), ``propensities`` (per position; 1 for deterministic positions, ``null`` when
unknown), ``explored`` (positions that showed an exploration item), ``cached``, ``fallback``.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

FOLDER = "impressions"
PATTERN = "impressions-*.jsonl"
COLUMNS = ("impression_id", "time", "user_id", "version", "position", "item_id", "propensity", "explored",
           "cached", "fallback")


def impressions_folder(event_log_dir: Path) -> Path:
    return Path(event_log_dir) / FOLDER


def day_file(folder: Path, when: float | None = None) -> Path:
    return folder / f"impressions-{time.strftime('%Y%m%d', time.gmtime(when))}.jsonl"


class ImpressionLog:
    """Buffered, batched, durable appends of served lists (module docstring)."""

    def __init__(self, folder: Path, flush_seconds: float = 1.0, max_buffer: int = 100_000) -> None:
        self.folder = Path(folder)
        self.flush_seconds = float(flush_seconds)
        self._buffer: deque[dict[str, Any]] = deque(maxlen=int(max_buffer))
        self._lock = threading.Lock()  # the buffer (requests and the flusher)
        self._write_lock = threading.Lock()  # one flush at a time in this process
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.dropped = 0
        self.written = 0
        self.failed_flushes = 0

    def record(self, record: dict[str, Any]) -> None:
        """Queue one served list; O(1), no I/O."""
        with self._lock:
            if len(self._buffer) == self._buffer.maxlen:
                self.dropped += 1  # the deque drops the oldest
            self._buffer.append(record)

    def pending(self) -> int:
        with self._lock:
            return len(self._buffer)

    def flush(self) -> int:
        """Write what is buffered now as one fsynced append; the number of records written. A failed write
        puts its records back (the oldest are then dropped first if the buffer fills meanwhile)."""
        with self._write_lock:
            with self._lock:
                batch = list(self._buffer)
                self._buffer.clear()
            if not batch:
                return 0
            data = "".join(json.dumps(r, separators=(",", ":"), allow_nan=False) + "\n" for r in batch).encode()
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
                with day_file(self.folder).open("ab") as fh:
                    fcntl.flock(fh.fileno(), fcntl.LOCK_EX)  # whole batches: released when the file closes
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
            except OSError as exc:
                self.failed_flushes += 1
                with self._lock:
                    room = self._buffer.maxlen - len(self._buffer)
                    self.dropped += max(0, len(batch) - room)
                    self._buffer.extendleft(reversed(batch[-room:] if room else []))
                log.warning("impression log: writing %d record(s) to %s failed (%s); kept in memory to retry",
                            len(batch), self.folder, exc)
                return 0
            self.written += len(batch)
            return len(batch)

    def start(self) -> None:
        """Flush every ``flush_seconds`` in a daemon thread until :meth:`close`."""
        if self._thread is not None:
            return

        def run() -> None:
            while not self._stop.wait(self.flush_seconds):
                self.flush()

        self._thread = threading.Thread(target=run, name="recops-impressions", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the flusher and write what is left (a clean shutdown loses nothing)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=max(5.0, 2 * self.flush_seconds))
            self._thread = None
        self.flush()


def served_record(impression_id: str, user_id: Any, version: str, items: list[Any],
                  propensities: list[float | None], explored: list[bool], cached: bool,
                  fallback: str | None, when: float | None = None) -> dict[str, Any]:
    """The log record of one answer (the API's values, JSON-safe)."""
    return {
        "impression_id": impression_id,
        "time": round(time.time() if when is None else when, 3),
        "user_id": user_id if isinstance(user_id, (int, str)) else str(user_id),
        "version": str(version),
        "items": items,
        "propensities": [None if p is None or not np.isfinite(p) else round(float(p), 9) for p in propensities],
        "explored": [n for n, flag in enumerate(explored) if flag],
        "cached": bool(cached),
        "fallback": fallback,
    }


def impression_files(folder: Path) -> list[Path]:
    return sorted(folder.glob(PATTERN)) if folder.is_dir() else []


def read_impressions(folder: Path, start: float | None = None, end: float | None = None) -> tuple[pd.DataFrame, int]:
    """Every shown (impression, position) of the log's files, served in ``[start, end)`` (unix seconds): columns
    :data:`COLUMNS`, one row per item shown; and the number of lines skipped (a torn last line of a killed
    worker, a blanked line of a forgotten user is not counted). Files whose day lies wholly outside the window
    are not opened."""
    import calendar

    import pyarrow as pa
    import pyarrow.compute as pc

    records: list[dict[str, Any]] = []
    skipped = 0
    for path in impression_files(folder):
        day = calendar.timegm(time.strptime(path.stem.split("-")[-1], "%Y%m%d"))
        # a flush just after midnight holds lines served just before it: one day of slack each side
        if (start is not None and day + 2 * 86_400 <= start) or (end is not None and day - 86_400 >= end):
            continue
        for line in path.read_bytes().split(b"\n"):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                if not isinstance(record, dict) or not isinstance(record.get("items"), list) \
                        or len(record.get("propensities") or ()) != len(record["items"]):
                    raise ValueError("not an impression")
            except (ValueError, RecursionError):
                skipped += 1
                continue
            records.append(record)
    lists = pd.DataFrame.from_records(records, columns=["impression_id", "time", "user_id", "version", "items",
                                                        "propensities", "explored", "cached", "fallback"])
    times = lists["time"].to_numpy(dtype=np.float64)
    keep = (times >= (-np.inf if start is None else start)) & (times < (np.inf if end is None else end))
    lists = lists[keep].reset_index(drop=True)
    if lists.empty:
        return pd.DataFrame({name: [] for name in COLUMNS}), skipped
    try:
        items = pa.array(lists["items"].tolist())  # list columns flattened in C, not item by item
    except (pa.ArrowInvalid, pa.ArrowTypeError):  # integer and text ids in one window: all as text
        items = pa.array([[str(i) for i in row] for row in lists["items"].tolist()], type=pa.list_(pa.string()))
    rows = pc.list_parent_indices(items).to_numpy()
    lengths = pc.list_value_length(items).to_numpy(zero_copy_only=False)
    starts = np.cumsum(lengths) - lengths
    explored_lists = pa.array(lists["explored"].tolist(), type=pa.list_(pa.int64()))
    explored = np.zeros(len(rows), dtype=bool)
    explored[starts[pc.list_parent_indices(explored_lists).to_numpy()]
             + pc.list_flatten(explored_lists).to_numpy()] = True
    propensity = pc.list_flatten(pa.array(lists["propensities"].tolist(), type=pa.list_(pa.float64())))
    out = pd.DataFrame({
        "impression_id": lists["impression_id"].to_numpy()[rows],
        "time": lists["time"].to_numpy(dtype=np.float64)[rows],
        "user_id": lists["user_id"].to_numpy()[rows],
        "version": lists["version"].astype(str).to_numpy()[rows],
        "position": (np.arange(len(rows)) - starts[rows]).astype(np.int32),
        "item_id": pc.list_flatten(items).to_numpy(zero_copy_only=False),
        "propensity": propensity.to_numpy(zero_copy_only=False).astype(np.float64),
        "explored": explored,
        "cached": lists["cached"].to_numpy(dtype=bool)[rows],
        "fallback": lists["fallback"].to_numpy()[rows],
    })
    return out, skipped
