"""The serving event log: the durable record of ``POST /events``, shared by every worker process of a server.

One JSON line per event, one file per UTC day (``events-YYYYMMDD.jsonl`` in ``serving.event_log_dir``). What this
module guarantees, with any number of worker processes appending to the same folder:

- **Durable before acknowledged**: :meth:`SharedEventLog.append` returns only after the lines are written and
  fsynced; a process killed at any point loses no acknowledged event.
- **Whole lines, one order**: writers hold an exclusive ``flock`` on the file while they append, so lines never
  interleave and the file's order is the order in which events were acknowledged.
- **Every worker sees every event**: each worker *tails* the log (:meth:`SharedEventLog.read_new`): before it
  answers, it reads the lines other workers appended since it last looked (one ``stat`` when nothing is new) and
  applies them to its model, so an event acknowledged by one worker shows in the next answer of any worker. The
  lines a worker wrote itself (and has already applied) are skipped by their byte offsets.

A line a worker cannot read (an older server's bad line, a hand edit) is skipped and counted here; the next
snapshot quarantines it (:mod:`recops.data.events`). What this module must not do: validate events (the API
does, before anything reaches the log) or know about models.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from recops.data.events import event_problem, parse_strict_json

log = logging.getLogger(__name__)

PATTERN = "events-*.jsonl"
FIELDS = ("user_id", "item_id", "timestamp", "weight")


def day_file(folder: Path, when: float | None = None) -> Path:
    return folder / f"events-{time.strftime('%Y%m%d', time.gmtime(when))}.jsonl"


class SharedEventLog:
    """Append (durably, whole lines, across processes) and tail the event log of one server."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self._lock = threading.Lock()  # appends and reads of this process (the flock orders processes)
        # file name -> (inode, bytes consumed): what this process has read or written of each file
        self._offsets: dict[str, tuple[int, int]] = {}
        # file name -> [(start, end)] byte ranges this process appended and has not yet passed while tailing
        self._own: dict[str, list[tuple[int, int]]] = {}
        self.unreadable = 0
        self._prefix = f"{self.folder}{os.sep}"  # has_news: the folder as text, once
        self._today, self._day_ends = "", 0.0  # has_news: today's file name, and when today ends

    # --- writing ------------------------------------------------------------------------------------------------

    def append(self, events: list[dict[str, Any]]) -> Path:
        """Append ``events`` as JSON lines, fsynced before returning; this process will not read them back."""
        self.folder.mkdir(parents=True, exist_ok=True)
        path = day_file(self.folder)
        data = "".join(json.dumps(e, separators=(",", ":"), allow_nan=False) + "\n" for e in events).encode()
        with self._lock, path.open("ab") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)  # released when the file closes
            st = os.fstat(fh.fileno())
            if self._offsets.get(path.name, (None, 0))[0] != st.st_ino:
                # a file new to this process (or a new one under a name a snapshot took in): tail it from its start
                self._offsets[path.name] = (st.st_ino, 0)
                self._own[path.name] = []
            start = st.st_size  # O_APPEND + the lock: our bytes go exactly here
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
            self._own.setdefault(path.name, []).append((start, start + len(data)))
        return path

    # --- tailing ------------------------------------------------------------------------------------------------

    def start_tailing(self) -> None:
        """Track every file now in the folder from its beginning (a (re)started worker replays them all)."""
        with self._lock:
            if self.folder.is_dir():
                for path in sorted(self.folder.glob(PATTERN)):
                    self._offsets.setdefault(path.name, (_inode(path), 0))

    def has_news(self) -> bool:
        """Whether any tracked file (or today's, when new) grew since it was last read: a few ``stat`` calls.

        Called before every answer, so it works on plain strings: today's file name is formatted once a day, not
        per call (with ``Path`` objects and the formatting, this took 2 % of a worker's time under load)."""
        now = time.time()
        if now >= self._day_ends:
            self._today = day_file(self.folder, now).name
            self._day_ends = (now // 86400 + 1) * 86400  # UTC days are 86,400 s: the next midnight
        offsets = self._offsets
        # a snapshot of the names (another thread's read_new may add one meanwhile)
        for name in tuple(offsets) if self._today in offsets else (self._today, *offsets):
            try:
                st = os.stat(f"{self._prefix}{name}")
            except FileNotFoundError:
                continue
            inode, offset = offsets.get(name, (st.st_ino, 0))
            if st.st_ino != inode or st.st_size > offset:
                return True
        return False

    def read_new(self) -> list[dict[str, Any]]:
        """The events other processes appended since the last call, in file order (whole lines only)."""
        out: list[dict[str, Any]] = []
        with self._lock:
            names = sorted(self._offsets.keys() | {day_file(self.folder).name})
            for name in names:
                path = self.folder / name
                try:
                    fh = path.open("rb")
                except FileNotFoundError:  # taken in by a snapshot (moved to ingested/)
                    self._offsets.pop(name, None)
                    self._own.pop(name, None)
                    continue
                with fh:
                    st = os.fstat(fh.fileno())
                    inode, offset = self._offsets.get(name, (st.st_ino, 0))
                    if st.st_ino != inode:  # the file was replaced (a snapshot took the old one in)
                        offset = 0
                        self._own.pop(name, None)
                    if st.st_size <= offset:
                        self._offsets[name] = (st.st_ino, offset)
                        continue
                    fh.seek(offset)
                    chunk = fh.read(st.st_size - offset)
                end = chunk.rfind(b"\n") + 1  # a line still being written is read next time
                out.extend(self._parse(name, chunk[:end], offset))
                self._offsets[name] = (st.st_ino, offset + end)
        return out

    def _parse(self, name: str, chunk: bytes, offset: int) -> list[dict[str, Any]]:
        own = sorted(self._own.get(name, []))
        events = []
        position = offset
        for line in chunk.splitlines(keepends=True):
            start, position = position, position + len(line)
            if any(a <= start < b for a, b in own):
                continue  # this process wrote (and applied) it
            if not line.strip():
                continue  # erased in place by recops forget (blanks of the line's length), or an empty line
            try:
                record = parse_strict_json(line)
                problem = event_problem(record, "string")
            except (ValueError, RecursionError) as exc:
                problem = str(exc)
            if problem is not None:
                self.unreadable += 1
                log.warning("event log %s at byte %d: an unreadable line is not applied (%s); the next snapshot "
                            "quarantines it", name, start, problem)
                continue
            events.append({"user_id": str(record["user_id"]), "item_id": str(record["item_id"]),
                           "timestamp": float(record["timestamp"]), "weight": float(record.get("weight", 1.0))})
        if own:  # ranges now passed are forgotten: the list stays as short as the appends not yet tailed
            self._own[name] = [(a, b) for a, b in own if b > position]
        return events


def _inode(path: Path) -> int:
    try:
        return os.stat(path).st_ino
    except FileNotFoundError:
        return 0
