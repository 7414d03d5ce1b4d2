"""Reading a user's own interaction log and attribute tables (CSV or Parquet) through a column mapping.

The loader renames mapped columns to recops' canonical names and converts timestamps to Unix seconds when that
is lossless; it does not otherwise coerce or drop anything, so that validation (Great Expectations) sees the
data as the user gave it and can name the offending values. Problems that stop a file from being read at all
(missing file, empty file, not UTF-8, malformed CSV, a mapped column that is absent) raise RecopsError here.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from recops.columns import Columns
from recops.config import AttributeColumns, DataConfig
from recops.errors import RecopsError

log = logging.getLogger(__name__)

_UNIT_SECONDS = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}


def read_table(path: Path, csv_separator: str = ",") -> pd.DataFrame:
    """A CSV or Parquet file as a DataFrame; unreadable files raise RecopsError naming the file and the cause."""
    if not path.is_file():
        raise RecopsError(f"{path}: file not found (check data.*_path in params.yaml)")
    if path.stat().st_size == 0:
        raise RecopsError(f"{path}: the file is empty")
    suffix = path.suffix.lower()
    if suffix in {".parquet", ".pq"}:
        try:
            return pq.read_table(path).to_pandas()
        except (pa.ArrowException, OSError) as exc:
            raise RecopsError(f"{path}: not a readable Parquet file ({exc})") from None
    if suffix not in {".csv", ".tsv", ".txt", ".gz"}:
        raise RecopsError(f"{path}: unknown file type '{suffix}' (expected .csv, .tsv or .parquet)")
    _check_utf8(path)
    sep = "\t" if suffix == ".tsv" else csv_separator
    try:
        frame = pd.read_csv(path, sep=sep, encoding="utf-8", on_bad_lines="error", low_memory=False)
    except pd.errors.EmptyDataError:
        raise RecopsError(f"{path}: the file has no header and no rows") from None
    except pd.errors.ParserError as exc:
        raise RecopsError(f"{path}: malformed CSV ({exc}); is the file truncated or the separator wrong?") from None
    if frame.empty:
        raise RecopsError(f"{path}: the file has a header ({', '.join(map(str, frame.columns))}) but no rows")
    _check_last_row_complete(path, sep, len(frame.columns), len(frame) + 1)
    return frame


def _check_last_row_complete(path: Path, sep: str, n_columns: int, last_line: int) -> None:
    """pandas pads a short last row with NaN; a last row with missing fields and no newline is a cut-off file."""
    with path.open("rb") as fh:
        fh.seek(max(path.stat().st_size - (1 << 16), 0))
        tail = fh.read()
    if tail.endswith(b"\n"):
        return
    last = tail.rsplit(b"\n", 1)[-1].decode("utf-8", errors="replace")
    fields = len(last.split(sep))
    if fields < n_columns:
        raise RecopsError(
            f"{path}: the file looks truncated: its last line ({last_line}) has {fields} of {n_columns} fields "
            f"and no line end ({last[:60]!r}); re-export the complete file"
        )


def _check_utf8(path: Path, block: int = 1 << 24) -> None:
    """Fail with the byte offset of the first invalid sequence, reading in blocks to bound memory."""
    offset = 0
    lines = 0
    tail = b""
    with path.open("rb") as fh:
        while chunk := fh.read(block):
            data = tail + chunk
            try:
                data.decode("utf-8")
                tail = b""
            except UnicodeDecodeError as exc:
                # A multi-byte character cut by the block boundary is not an error: carry it to the next block.
                if exc.start >= len(data) - 3 and exc.reason == "unexpected end of data":
                    tail = data[exc.start:]
                else:
                    line = lines + data.count(b"\n", 0, exc.start) + 1
                    raise RecopsError(
                        f"{path}: not valid UTF-8 at byte {offset - len(tail) + exc.start} (line {line}: "
                        f"{data[exc.start:exc.start + 8]!r}); re-save the file as UTF-8"
                    ) from None
            lines += chunk.count(b"\n")
            offset += len(chunk)
    if tail:
        raise RecopsError(f"{path}: not valid UTF-8: the file ends inside a multi-byte character (truncated?)")


def _require_columns(frame: pd.DataFrame, path: Path, wanted: dict[str, str]) -> None:
    missing = [f"'{src}' (for {role})" for role, src in wanted.items() if src not in frame.columns]
    if missing:
        raise RecopsError(
            f"{path}: missing column {', '.join(missing)}; columns present: "
            f"{', '.join(repr(str(c)) for c in frame.columns)} (set the mapping in params.yaml data.columns)"
        )


def to_epoch_seconds(values: pd.Series, unit: str) -> pd.Series:
    """Timestamps as int64 Unix seconds when every non-null value converts; otherwise the values as given."""
    if unit == "datetime" or not pd.api.types.is_numeric_dtype(values):
        if pd.api.types.is_numeric_dtype(values):
            return values
        parsed = pd.to_datetime(values, errors="coerce", utc=True, format="mixed")
        if parsed.notna().sum() != values.notna().sum():
            return values  # unparseable text stays as text; validation reports it with examples
        # pandas may parse at s/ms/us/ns resolution: subtract the epoch instead of reinterpreting the integers.
        seconds = ((parsed - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)).where(parsed.notna())
        return seconds.astype("Int64") if seconds.isna().any() else seconds.astype("int64")
    numeric = values.astype("float64")
    seconds = np.floor_divide(numeric, _UNIT_SECONDS.get(unit, 1))
    if numeric.isna().any():
        return pd.Series(seconds, index=values.index).astype("Int64")
    return pd.Series(seconds, index=values.index).astype("int64")


def load_interactions(path: Path, config: DataConfig) -> pd.DataFrame:
    """The interaction log with canonical column names (user_id, item_id, timestamp, rating?, weight?, split?)."""
    frame = read_table(path, config.csv_separator)
    mapping = config.columns
    roles = {"user": mapping.user, "item": mapping.item, "timestamp": mapping.timestamp}
    for optional in ("rating", "weight", "split"):
        if getattr(mapping, optional):
            roles[optional] = getattr(mapping, optional)
    _require_columns(frame, path, roles)
    canonical = {
        "user": Columns.USER_ID, "item": Columns.ITEM_ID, "timestamp": Columns.TIMESTAMP,
        "rating": Columns.RATING, "weight": Columns.WEIGHT, "split": Columns.SPLIT,
    }
    out = pd.DataFrame({canonical[role]: frame[src].to_numpy() for role, src in roles.items()})
    out[Columns.TIMESTAMP] = to_epoch_seconds(out[Columns.TIMESTAMP], config.timestamp_unit)
    if config.id_type == "string":
        for col in (Columns.USER_ID, Columns.ITEM_ID):
            out[col] = out[col].astype("string")
    return out


def load_attributes(path: Path, spec: AttributeColumns, id_name: str, config: DataConfig) -> pd.DataFrame:
    """An attribute table with its id column renamed to ``id_name`` and only the declared columns kept."""
    frame = read_table(path, config.csv_separator)
    declared = [spec.id, *spec.numeric, *spec.categorical, *spec.multi_label]
    _require_columns(frame, path, {f"attribute '{c}'" if c != spec.id else "id": c for c in declared})
    out = frame[declared].rename(columns={spec.id: id_name})
    if config.id_type == "string":
        out[id_name] = out[id_name].astype("string")
    return out
