"""Reading a user's own interaction log and attribute tables (CSV or Parquet) through a column mapping.

The loader renames mapped columns to recops' canonical names and converts timestamps to Unix seconds when that
is lossless; it does not otherwise coerce or drop anything, so that validation (Great Expectations) sees the
data as the user gave it and can name the offending values. Problems that stop a file from being read at all
(missing file, empty file, not UTF-8, malformed CSV, a mapped column that is absent) raise RecopsError here.

A path may also be a folder of Parquet files holding one table in parts (``part-00000.parquet``, ..., as Spark,
DuckDB or ``recops synth`` write them; hive-style ``key=value`` sub-folders become columns). Parquet is read
column by column, so only the mapped columns are read from disk, which matters for logs of tens of millions of
rows.
"""

from __future__ import annotations

import gzip
import logging
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from recops.columns import Columns
from recops.config import AttributeColumns, DataConfig
from recops.errors import RecopsError

log = logging.getLogger(__name__)

_UNIT_SECONDS = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}
_PARQUET_SUFFIXES = {".parquet", ".pq"}


def read_table(path: Path, csv_separator: str = ",", columns: Sequence[str] | None = None) -> pd.DataFrame:
    """A CSV or Parquet file, or a folder of Parquet files, as a DataFrame; unreadable input raises RecopsError
    naming the file and the cause.

    ``columns``: only these columns (Parquet reads nothing else from disk); one that is absent raises RecopsError.
    """
    if path.is_dir():
        return _read_parquet_dataset(_parquet_dataset(path), path, columns)
    if not path.is_file():
        raise RecopsError(f"{path}: file not found (check data.*_path in params.yaml)")
    if path.stat().st_size == 0:
        raise RecopsError(f"{path}: the file is empty")
    suffix = path.suffix.lower()
    if suffix in _PARQUET_SUFFIXES:
        if columns is not None:
            _require_requested(_parquet_file_columns(path), path, columns)
        try:
            return pq.read_table(path, columns=None if columns is None else list(columns)).to_pandas()
        except (pa.ArrowException, OSError) as exc:
            raise RecopsError(f"{path}: not a readable Parquet file ({exc})") from None
    if suffix not in {".csv", ".tsv", ".txt", ".gz"}:
        raise RecopsError(f"{path}: unknown file type '{suffix}' (expected .csv, .tsv or .parquet)")
    compressed = suffix == ".gz"
    if compressed:
        with path.open("rb") as fh:
            if fh.read(2) != b"\x1f\x8b":
                raise RecopsError(f"{path}: named .gz but not gzip-compressed (no gzip header); rename it without "
                                  f".gz or compress it")
    _check_utf8(path, opener=gzip.open if compressed else open)
    sep = "\t" if path.name.lower().removesuffix(".gz").endswith(".tsv") else csv_separator
    try:
        frame = pd.read_csv(path, sep=sep, encoding="utf-8", on_bad_lines="error", low_memory=False,
                            compression="gzip" if compressed else None)
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise RecopsError(f"{path}: a damaged or truncated gzip file ({exc})") from None
    except pd.errors.EmptyDataError:
        raise RecopsError(f"{path}: the file has no header and no rows") from None
    except pd.errors.ParserError as exc:
        raise RecopsError(f"{path}: malformed CSV ({exc}); is the file truncated or the separator wrong?") from None
    if frame.empty:
        raise RecopsError(f"{path}: the file has a header ({', '.join(map(str, frame.columns))}) but no rows")
    if not compressed:  # a gzip stream cut short fails its own checks above
        _check_last_row_complete(path, sep, len(frame.columns), len(frame) + 1)
    if columns is not None:
        _require_requested(list(frame.columns), path, columns)
        frame = frame[list(columns)]
    return frame


def _parquet_columns(path: Path) -> list[str] | None:
    """The column names of a Parquet file or folder (from the footers, no data); None for CSV and for paths
    ``read_table`` will refuse (it names the problem)."""
    try:
        if path.is_dir():
            return _schema_columns(_parquet_dataset(path).schema)
        if path.is_file() and path.stat().st_size > 0 and path.suffix.lower() in _PARQUET_SUFFIXES:
            return _parquet_file_columns(path)
    except RecopsError:
        return None
    return None


def _parquet_file_columns(path: Path) -> list[str]:
    """Column names from the file's footer, less the index columns pandas stores (they become the index)."""
    try:
        return _schema_columns(pq.read_schema(path))
    except (pa.ArrowException, OSError) as exc:
        raise RecopsError(f"{path}: not a readable Parquet file ({exc})") from None


def _schema_columns(schema: pa.Schema) -> list[str]:
    index = {c for c in ((schema.pandas_metadata or {}).get("index_columns") or []) if isinstance(c, str)}
    return [name for name in schema.names if name not in index]


def _parquet_dataset(folder: Path) -> ds.Dataset:
    """The Parquet files under ``folder`` as one dataset, in file-name order; hidden and ``_``-prefixed entries
    (``_SUCCESS``, ``.crc`` files, staging folders) are skipped, as Spark and Arrow do."""
    files = sorted(
        p for p in folder.rglob("*")
        if p.suffix.lower() in _PARQUET_SUFFIXES and p.is_file()
        and not any(part.startswith((".", "_")) for part in p.relative_to(folder).parts)
    )
    if not files:
        raise RecopsError(f"{folder}: a folder with no Parquet files (*.parquet) in it; data.*_path takes a CSV or "
                          "Parquet file or a folder of Parquet parts")
    empty = [p for p in files if p.stat().st_size == 0]
    if empty:
        raise RecopsError(f"{empty[0]}: the file is empty (a part of the table in {folder})")
    schemas = [_parquet_file_columns(p) for p in files]
    for part, names in zip(files[1:], schemas[1:]):
        if names != schemas[0]:
            raise RecopsError(f"{folder}: its parts have different columns: {files[0].name} has "
                              f"{', '.join(schemas[0])}; {part.relative_to(folder)} has {', '.join(names)}")
    try:
        return ds.dataset([str(p) for p in files], format="parquet", partitioning="hive",
                          partition_base_dir=str(folder))
    except (pa.ArrowException, OSError) as exc:
        raise RecopsError(f"{folder}: not a readable folder of Parquet files ({exc})") from None


def _read_parquet_dataset(dataset: ds.Dataset, folder: Path, columns: Sequence[str] | None) -> pd.DataFrame:
    if columns is not None:
        _require_requested(_schema_columns(dataset.schema), folder, columns)
    try:
        # Rows come back in file order, then row order: the table reads as the parts laid end to end.
        table = dataset.to_table(columns=None if columns is None else list(columns))
    except (pa.ArrowException, OSError) as exc:
        raise RecopsError(f"{folder}: its Parquet parts cannot be read as one table ({exc}); do they share one "
                          "schema (same column types)?") from None
    # self_destruct frees each Arrow column once converted: peak memory about one copy of the table, not two.
    return table.to_pandas(self_destruct=True, split_blocks=True)


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


def _check_utf8(path: Path, block: int = 1 << 24, opener=open) -> None:
    """Fail with the byte offset of the first invalid sequence, reading in blocks to bound memory (``opener``:
    ``gzip.open`` to check what a compressed file holds)."""
    try:
        _scan_utf8(path, block, opener)
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise RecopsError(f"{path}: a damaged or truncated gzip file ({exc})") from None


def _scan_utf8(path: Path, block: int, opener) -> None:
    offset = 0
    lines = 0
    tail = b""
    with opener(path, "rb") as fh:
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


def _require_columns(present: Sequence[str], path: Path, wanted: dict[str, str]) -> None:
    missing = [f"'{src}' (for {role})" for role, src in wanted.items() if src not in present]
    if missing:
        raise RecopsError(
            f"{path}: missing column {', '.join(missing)}; columns present: "
            f"{', '.join(repr(str(c)) for c in present)} (set the mapping in params.yaml data.columns)"
        )


def _require_requested(present: Sequence[str], path: Path, columns: Sequence[str]) -> None:
    missing = [c for c in columns if c not in present]
    if missing:
        raise RecopsError(f"{path}: missing column {', '.join(map(repr, missing))}; columns present: "
                          f"{', '.join(repr(str(c)) for c in present)}")


def _read_mapped(path: Path, config: DataConfig, wanted: dict[str, str]) -> pd.DataFrame:
    """The columns named in ``wanted`` (role -> column) and no other (data minimisation): from Parquet only those
    are read from disk; a CSV is parsed whole (so that every row's field count is checked) and only those columns
    are kept. A missing column is reported with its role."""
    present = _parquet_columns(path)
    if present is None:
        frame = read_table(path, config.csv_separator)
        _require_columns(list(frame.columns), path, wanted)
        return frame[list(dict.fromkeys(wanted.values()))]
    _require_columns(present, path, wanted)
    return read_table(path, config.csv_separator, columns=list(dict.fromkeys(wanted.values())))


def to_epoch_seconds(values: pd.Series, unit: str) -> pd.Series:
    """Timestamps as int64 Unix seconds when every non-null value converts; otherwise the values as given (the
    validation report then names the rows whose values are neither numbers nor dates)."""
    if unit != "datetime" and not pd.api.types.is_numeric_dtype(values):
        numbers = pd.to_numeric(values, errors="coerce")  # numbers stored as text (a Parquet string column)
        if numbers.notna().sum() == values.notna().sum() and values.notna().any():
            values = numbers
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
    mapping = config.columns
    roles = {"user": mapping.user, "item": mapping.item, "timestamp": mapping.timestamp}
    for optional in ("rating", "weight", "split"):
        if getattr(mapping, optional):
            roles[optional] = getattr(mapping, optional)
    frame = _read_mapped(path, config, roles)
    canonical = {
        "user": Columns.USER_ID, "item": Columns.ITEM_ID, "timestamp": Columns.TIMESTAMP,
        "rating": Columns.RATING, "weight": Columns.WEIGHT, "split": Columns.SPLIT,
    }
    out = pd.DataFrame({canonical[role]: frame[src].to_numpy() for role, src in roles.items()})
    out[Columns.TIMESTAMP] = to_epoch_seconds(out[Columns.TIMESTAMP], config.timestamp_unit)
    if config.id_type == "string":
        for col in (Columns.USER_ID, Columns.ITEM_ID):
            out[col] = out[col].astype("string")
    else:
        for role in ("user", "item"):
            _check_int64(out[canonical[role]], path, roles[role])
    return out


INT64_MAX = int(np.iinfo(np.int64).max)


def _check_int64(values: pd.Series, path: Path, column: str, limit: int = 5) -> None:
    """Integer ids beyond int64 (a CSV reader keeps them as Python ints in an object column, as uint64 up to
    2**64, or as text when the column also holds a negative number or a word; writing or encoding them fails
    deep in pyarrow or numpy): a RecopsError naming the file, the column and the offending rows and values."""
    if pd.api.types.is_signed_integer_dtype(values.dtype) or pd.api.types.is_float_dtype(values.dtype) \
            or pd.api.types.is_bool_dtype(values.dtype):
        return  # floats are not ids: validation reports them
    numeric = pd.to_numeric(values, errors="coerce")  # huge integers come back as floats or uint64; words as NaN
    # float64 cannot tell 2**63 - 1 from 2**63: the candidates are confirmed with Python's exact integers.
    candidates = np.flatnonzero((numeric.abs() >= 2.0**63).to_numpy())
    huge = [i for i in candidates if _beyond_int64(values.iloc[i])]
    if huge:
        shown = ", ".join(f"row {i + 1}: {values.iloc[i]}" for i in huge[:limit])
        raise RecopsError(f"{path}, column {column!r}: {len(huge)} id(s) beyond the 64-bit integer range "
                          f"(data.id_type: integer), e.g. {shown} (rows are data rows counted from 1 without the "
                          f"header line); fix them or set data.id_type: string")


def _beyond_int64(value: object) -> bool:
    try:
        number = int(str(value).strip())
    except ValueError:
        return True  # a float literal beyond 2**63 (to_numeric read it)
    return not -INT64_MAX - 1 <= number <= INT64_MAX


def load_attributes(path: Path, spec: AttributeColumns, id_name: str, config: DataConfig) -> pd.DataFrame:
    """An attribute table with its id column renamed to ``id_name`` and only the declared columns kept."""
    declared = [spec.id, *spec.numeric, *spec.categorical, *spec.multi_label, *([spec.title] if spec.title else [])]
    frame = _read_mapped(path, config, {f"attribute '{c}'" if c != spec.id else "id": c for c in declared})
    out = frame[declared].rename(columns={spec.id: id_name})
    if spec.title:
        out[spec.title] = out[spec.title].astype("string")
    if config.id_type == "string":
        out[id_name] = out[id_name].astype("string")
    else:
        _check_int64(out[id_name], path, spec.id)
    return out
