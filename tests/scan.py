"""Looking for people in files: where a forget request's users could still be (tests of recops forget)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path


def files_under(*roots: Path) -> list[Path]:
    """Every file under ``roots`` but Prefect's own database folder (flow-run records, no data)."""
    return [p for root in roots for p in root.rglob("*") if p.is_file() and ".prefect" not in p.parts]


def files_with_text(files: Iterable[Path], texts: Iterable[str]) -> list[str]:
    """The files whose bytes contain one of ``texts`` (JSON, CSV, logs, databases, uncompressed pages)."""
    needles = [t.encode() for t in texts]
    return [str(p) for p in files if any(n in p.read_bytes() for n in needles)]


def tables_with_values(files: Iterable[Path], wanted: set[int]) -> list[str]:
    """``file:column`` of every Parquet table among ``files`` (DVC's cache objects and MLflow's artifacts too,
    whatever their names) holding one of ``wanted`` in an integer, float or text column: compressed pages hide
    values from a byte scan."""
    import pyarrow.parquet as pq

    texts = {str(w) for w in wanted}
    as_float = [float(w) for w in wanted]
    found = []
    for path in files:
        try:
            table = pq.read_table(path)
        except Exception:  # noqa: BLE001 (not a Parquet file)
            continue
        for name in table.column_names:
            column = table.column(name).to_pandas()
            kind = column.dtype.kind
            if kind in "iu" and column.isin(list(wanted)).any() \
                    or kind == "f" and column.isin(as_float).any() \
                    or kind == "O" and column.astype(str).isin(texts).any():
                found.append(f"{path}:{name}")
    return found
