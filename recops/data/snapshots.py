"""Time-ordered snapshots of an interaction log: what a production system receives week after week.

``weekly_snapshots`` cuts a log at the ends of its last ``n`` weeks (each snapshot holds everything up to its cut,
so snapshots grow); ``recops replay`` (``flows.lifecycle.replay``) writes them and passes each through the
``ingest-snapshot`` flow in order (validate -> train a challenger -> A/B -> promote), which is how a team rehearses
its lifecycle on history.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from recops.config import Settings
from recops.errors import RecopsError

WEEK = 7 * 86_400


def weekly_cuts(timestamps: np.ndarray, n: int) -> list[int]:
    """The ends (exclusive, unix seconds) of the last ``n`` whole weeks of the log, oldest first; the last cut
    lies after the newest interaction so the last snapshot holds the whole log."""
    if n < 1:
        raise RecopsError(f"the number of weekly snapshots must be at least 1, not {n}")
    last = int(np.max(timestamps)) + 1
    cuts = [last - WEEK * back for back in range(n - 1, -1, -1)]
    if cuts[0] <= int(np.min(timestamps)):
        raise RecopsError(f"the log spans less than {n} weeks: cannot cut {n} weekly snapshots")
    return cuts


def weekly_snapshots(frame: pd.DataFrame, timestamp_column: str, n: int, out_dir: Path,
                     stem: str = "snapshot") -> list[Path]:
    """Write ``n`` growing snapshots of ``frame`` (Parquet) to ``out_dir``; return their paths, oldest first."""
    ts = frame[timestamp_column].to_numpy()
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    order = np.argsort(ts, kind="stable")
    sorted_ts = ts[order]
    for number, cut in enumerate(weekly_cuts(ts, n), start=1):
        rows = order[: np.searchsorted(sorted_ts, cut, side="left")]
        path = out_dir / f"{stem}_{number:02d}.parquet"
        frame.iloc[np.sort(rows)].to_parquet(path, index=False)
        paths.append(path)
    return paths


def write_weekly_snapshots(settings: Settings, source: Path, n: int, timestamp_column: str = "timestamp") -> list[Path]:
    """Cut ``source`` (CSV or Parquet) into ``n`` weekly snapshots in ``paths.snapshots_dir``, oldest first."""
    frame = pd.read_parquet(source) if source.suffix == ".parquet" else pd.read_csv(source)
    if timestamp_column not in frame.columns:
        raise RecopsError(f"{source}: no column {timestamp_column!r} to cut snapshots by")
    return weekly_snapshots(frame, timestamp_column, n, settings.path("snapshots_dir"))
