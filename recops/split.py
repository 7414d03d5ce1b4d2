"""Temporal splits of an interaction table into train / valid / test, and the checks that they do not leak.

- ``per_user_temporal``: each user's interactions ordered by timestamp (ties broken by item), the last
  ``test_fraction`` go to test, the ``valid_fraction`` before them to valid, the rest to train.
- ``global_time``: one time cut for everybody at the timestamp quantiles; test is the most recent period.
- ``predefined``: the input's own ``split`` column (values train / valid / test).

The same functions make the ranker's label holdout inside the training period (``history_and_holdout``), so no
valid/test interaction reaches anything that is fitted; it follows the split's time structure (``holdout_kind``,
``label_folds``). All work is vectorised (sorts and group sizes).
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from recops.columns import Columns, DAY, SPLIT_VALUES
from recops.config import RankerConfig, SplitConfig
from recops.data.order import user_time_order
from recops.errors import RecopsError

TRAIN, VALID, TEST = SPLIT_VALUES
log = logging.getLogger(__name__)


def _tail_counts(sizes: np.ndarray, fraction: float) -> np.ndarray:
    return np.floor(sizes * fraction + 0.5).astype(np.int64)


def per_user_temporal_labels(frame: pd.DataFrame, valid_fraction: float, test_fraction: float) -> np.ndarray:
    """Split label of each row of ``frame`` (in the frame's row order)."""
    users = frame[Columns.USER].to_numpy()
    order = user_time_order(users, frame[Columns.ITEM].to_numpy(), frame[Columns.TIMESTAMP].to_numpy(),
                            newest_first=False)
    sorted_users = users[order]
    starts = np.flatnonzero(np.r_[True, sorted_users[1:] != sorted_users[:-1]])
    sizes = np.diff(np.r_[starts, len(order)])
    n_test = _tail_counts(sizes, test_fraction)
    n_valid = _tail_counts(sizes, valid_fraction)
    # Every user keeps at least one training interaction; the held-out parts shrink first for tiny histories.
    n_test = np.minimum(n_test, np.maximum(sizes - 1, 0))
    n_valid = np.minimum(n_valid, np.maximum(sizes - 1 - n_test, 0))
    position = np.arange(len(order)) - np.repeat(starts, sizes)
    from_end = np.repeat(sizes, sizes) - position  # 1 for the user's most recent interaction
    labels_sorted = np.full(len(order), TRAIN, dtype=object)
    labels_sorted[from_end <= np.repeat(n_test + n_valid, sizes)] = VALID
    labels_sorted[from_end <= np.repeat(n_test, sizes)] = TEST
    labels = np.empty(len(order), dtype=object)
    labels[order] = labels_sorted
    return labels


def global_time_labels(frame: pd.DataFrame, valid_fraction: float, test_fraction: float) -> np.ndarray:
    ts = frame[Columns.TIMESTAMP].to_numpy()
    valid_start, test_start = np.quantile(ts, [1.0 - valid_fraction - test_fraction, 1.0 - test_fraction])
    if not valid_start < test_start:
        raise RecopsError(
            "split.method global_time: the timestamps are too concentrated to cut into train/valid/test "
            f"(valid and test would start at the same time {int(test_start)}); use per_user_temporal"
        )
    labels = np.full(len(ts), TRAIN, dtype=object)
    labels[ts >= valid_start] = VALID
    labels[ts >= test_start] = TEST
    return labels


def split_labels(frame: pd.DataFrame, config: SplitConfig) -> np.ndarray:
    if config.method == "per_user_temporal":
        return per_user_temporal_labels(frame, config.valid_fraction, config.test_fraction)
    if config.method == "global_time":
        return global_time_labels(frame, config.valid_fraction, config.test_fraction)
    if Columns.SPLIT not in frame.columns:
        raise RecopsError("split.method is 'predefined' but the data has no split column (set data.columns.split)")
    return frame[Columns.SPLIT].astype(str).to_numpy()


def split_interactions(frame: pd.DataFrame, config: SplitConfig) -> dict[str, pd.DataFrame]:
    """``{"train": ..., "valid": ..., "test": ...}``; each part non-empty and leak-free, else RecopsError."""
    labels = split_labels(frame, config)
    parts = {name: frame[labels == name].drop(columns=[Columns.SPLIT], errors="ignore").reset_index(drop=True)
             for name in SPLIT_VALUES}
    empty = [name for name, part in parts.items() if part.empty]
    if empty:
        raise RecopsError(
            f"split ({config.method}) left {', '.join(empty)} empty: the data has too few interactions per user "
            "or too short a time span for these fractions"
        )
    if config.method == "predefined":
        # The user's own split may be deliberately non-temporal (e.g. random); say so instead of refusing it.
        try:
            check_no_leakage(parts, per_user=True)
        except RecopsError as exc:
            log.warning("predefined split is not temporal: %s", exc)
    else:
        check_no_leakage(parts, per_user=config.method == "per_user_temporal")
    return parts


def check_no_leakage(parts: dict[str, pd.DataFrame], per_user: bool) -> None:
    """Every later part starts no earlier than the earlier part ends (per user, or globally)."""
    for earlier, later in ((TRAIN, VALID), (VALID, TEST), (TRAIN, TEST)):
        a, b = parts[earlier], parts[later]
        if per_user:
            last = a.groupby(Columns.USER)[Columns.TIMESTAMP].max()
            first = b.groupby(Columns.USER)[Columns.TIMESTAMP].min()
            both = last.index.intersection(first.index)
            bad = both[(last.loc[both] > first.loc[both]).to_numpy()]
            if len(bad):
                raise RecopsError(
                    f"{later} interactions precede {earlier} interactions for {len(bad)} users "
                    f"(e.g. user index {bad[0]}): the split leaks the future"
                )
        elif a[Columns.TIMESTAMP].max() > b[Columns.TIMESTAMP].min():
            raise RecopsError(f"{later} starts before {earlier} ends: the split leaks the future")


def periods_are_global(parts: dict[str, pd.DataFrame]) -> bool:
    """Whether the (non-empty) parts follow each other in time for everybody at once: each earlier part ends no
    later than the next one starts, globally (a global time cut), rather than per user."""
    present = [parts[name] for name in SPLIT_VALUES if name in parts and len(parts[name])]
    return all(a[Columns.TIMESTAMP].max() <= b[Columns.TIMESTAMP].min() for a, b in zip(present, present[1:]))


def holdout_kind(ranker: RankerConfig, split: SplitConfig, parts: dict[str, pd.DataFrame]) -> str:
    """``per_user`` or ``global_time``: how the ranker's label holdout is cut from the training period.

    ``ranker.holdout: auto`` follows the split: a global cut (``global_time``, or a ``predefined`` split whose
    periods are global in time) gives global-time label windows, so the ranker learns the task it is judged on
    ("what will users do after this date"), not "continue each user's own sequence"."""
    if ranker.holdout != "auto":
        return ranker.holdout
    if split.method == "global_time" or (split.method == "predefined" and periods_are_global(parts)):
        return "global_time"
    return "per_user"


def history_and_holdout(train: pd.DataFrame, ranker: RankerConfig, kind: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The training period cut once more in time: (history for fitting, most recent part for ranker labels).

    ``global_time``: the last ``ranker.label_days`` before the training period's end (or, without it, the most
    recent ``holdout_fraction`` of its rows) for everybody; ``per_user``: each user's most recent
    ``holdout_fraction``."""
    if kind == "global_time":
        ts = train[Columns.TIMESTAMP].to_numpy(dtype=np.float64)
        if ranker.label_days is not None:
            start = ts.max(initial=0.0) - ranker.label_days * DAY
        else:
            start = np.quantile(ts, 1.0 - ranker.holdout_fraction) if len(ts) else 0.0
        held = ts > start if ranker.label_days is not None else ts >= start
        if len(ts) and (held.all() or not held.any()):
            raise RecopsError(
                f"ranker label window (global_time, {ranker.label_days or ranker.holdout_fraction} "
                f"{'days' if ranker.label_days else 'of the rows'}) leaves no history or no labels in a training "
                f"period of {(ts.max() - ts.min()) / DAY:.1f} days; change ranker.label_days / holdout_fraction")
    else:
        held = per_user_temporal_labels(train, 0.0, ranker.holdout_fraction) == TEST
    return train[~held].reset_index(drop=True), train[held].reset_index(drop=True)


def label_folds(train: pd.DataFrame, ranker: RankerConfig, kind: str) -> list[tuple[pd.DataFrame, pd.DataFrame]]:
    """The ranker's (history, labels) folds, most recent first: ``history_and_holdout``'s, then, for a
    ``global_time`` holdout with ``ranker.label_windows`` > 1, earlier label windows of the same length stacked
    behind it (each with only the interactions before it as history; windows left without history or labels
    are skipped). More queries for the ranker, each still strictly point-in-time."""
    history, holdout = history_and_holdout(train, ranker, kind)
    folds = [(history, holdout)]
    if kind != "global_time" or ranker.label_windows <= 1 or not len(holdout):
        return folds
    ts = train[Columns.TIMESTAMP].to_numpy(dtype=np.float64)
    start = float(holdout[Columns.TIMESTAMP].min())
    length = max(float(ts.max()) - start, 1.0)
    for j in range(1, ranker.label_windows):
        begin, end = start - j * length, start - (j - 1) * length
        earlier, labels = ts < begin, (ts >= begin) & (ts < end)
        if earlier.any() and labels.any():
            folds.append((train[earlier].reset_index(drop=True), train[labels].reset_index(drop=True)))
    return folds


def folds(parts: dict[str, pd.DataFrame], ranker: RankerConfig, split: SplitConfig
          ) -> dict[str, tuple[pd.DataFrame, pd.DataFrame | None]]:
    """Every fold the candidates and features code runs, by name, oldest history first (each fold's history
    extends the previous one's, so MF can warm-start from it): the earlier label windows ``fit_<j>`` (j = n-1 .. 1),
    ``fit``, ``valid``, ``test``, each as (history, target).

    - ``fit`` (and ``fit_<j>``): the training period minus its most recent part -> that part (ranker labels,
      :func:`label_folds`);
    - ``valid``: the training period -> the validation period;
    - ``test``: training + validation periods -> the test period (None when ``parts`` has no ``test``).

    The one definition of the folds: the split stage writes them (``recops.steps.split``), the workspace reads them
    back (``Workspace.fold``), and the in-memory pipeline (``recops.pipeline.two_stage_lists``: backtests and
    benchmarks) runs them directly."""
    train, valid = parts["train"], parts["valid"]
    labelled = label_folds(train, ranker, holdout_kind(ranker, split, parts))
    out: dict[str, tuple[pd.DataFrame, pd.DataFrame | None]] = {
        f"fit_{j}": labelled[j] for j in range(len(labelled) - 1, 0, -1)}
    out["fit"] = labelled[0]
    out["valid"] = (train, valid)
    out["test"] = (pd.concat([train, valid], ignore_index=True), parts.get("test"))
    return out
