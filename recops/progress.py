"""Progress of the long steps (ranker trees, candidate blocks, backtest windows, batch scoring, tuning trials).

On a terminal: a rich progress bar with the count, the elapsed time and an ETA, on stderr, removed when the step
ends (the step's own log line says how it went). Steps inside steps (the ranker's trees inside a backtest window)
share one live display, one line each. Anywhere else (CI logs, a Prefect worker, Dask workers, a file): a log line
at most every ``every_s`` seconds — "training trees: 120/500 (24 %), 35 s, about 110 s left" — so a long step is
never silent and a log is never flooded.

``RECOPS_PROGRESS`` = ``bar`` / ``log`` / ``off`` forces one behaviour; by default a bar when stderr is a terminal
and INFO is logged, log lines when INFO is logged elsewhere, nothing under ``--quiet``.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger("recops.progress")

_lock = threading.Lock()
_live = None  # the one rich Progress shown on the terminal, shared by nested steps
_users = 0


def mode() -> str:
    """``bar``, ``log`` or ``off`` for this process (see the module docstring)."""
    forced = os.environ.get("RECOPS_PROGRESS", "").strip().lower()
    if forced in ("bar", "log", "off"):
        return forced
    if not logging.getLogger("recops").isEnabledFor(logging.INFO):
        return "off"
    stream = sys.stderr
    return "bar" if stream is not None and hasattr(stream, "isatty") and stream.isatty() else "log"


class Step:
    """One step's progress: :meth:`advance` as work gets done; ``total`` may grow (:meth:`set_total`)."""

    def __init__(self, description: str, total: int | None, unit: str, how: str, every_s: float) -> None:
        self.description, self.total, self.unit, self.how, self.every_s = description, total, unit, how, every_s
        self.done = 0
        self.started = time.perf_counter()
        self._last_log = self.started
        self._task = None

    def advance(self, n: int = 1) -> None:
        self.done += n
        if self.how == "bar" and _live is not None and self._task is not None:
            _live.update(self._task, completed=self.done)
        elif self.how == "log":
            now = time.perf_counter()
            if now - self._last_log >= self.every_s:
                self._last_log = now
                log.info("%s", self.line(now))

    def set_total(self, total: int) -> None:
        self.total = total
        if self.how == "bar" and _live is not None and self._task is not None:
            _live.update(self._task, total=total)

    def line(self, now: float | None = None) -> str:
        """'training trees: 120/500 (24 %), 35 s, about 110 s left' (the ETA from the rate so far)."""
        elapsed = (now or time.perf_counter()) - self.started
        unit = f" {self.unit}" if self.unit else ""
        if not self.total:
            return f"{self.description}: {self.done}{unit}, {elapsed:.0f} s"
        share = min(self.done / self.total, 1.0)
        text = f"{self.description}: {self.done}/{self.total}{unit} ({share:.0%}), {elapsed:.0f} s"
        if 0 < self.done < self.total:
            text += f", about {elapsed * (self.total - self.done) / self.done:.0f} s left"
        return text


def _start_bar(step: Step) -> None:
    global _live, _users
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    with _lock:
        if _live is None:
            _live = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                             TextColumn("{task.fields[unit]}"), TimeElapsedColumn(), TextColumn("eta"),
                             TimeRemainingColumn(), console=Console(stderr=True), transient=True)
            _live.start()
        _users += 1
        step._task = _live.add_task(step.description, total=step.total, unit=step.unit)


def _stop_bar(step: Step) -> None:
    global _live, _users
    with _lock:
        if _live is None:
            return
        if step._task is not None:
            _live.remove_task(step._task)
        _users -= 1
        if _users <= 0:
            _live.stop()
            _live, _users = None, 0


@contextmanager
def progress(description: str, total: int | None = None, unit: str = "", every_s: float = 15.0) -> Iterator[Step]:
    """A :class:`Step` for the ``with`` block: a bar on a terminal, a log line every ``every_s`` seconds elsewhere
    (no line at all for a step done sooner), nothing with ``--quiet``."""
    how = mode()
    step = Step(description, total, unit, how, every_s)
    if how == "bar":
        try:
            _start_bar(step)
        except Exception:  # a display problem never stops the work
            step.how = "log"
    try:
        yield step
    finally:
        if step.how == "bar":
            _stop_bar(step)
