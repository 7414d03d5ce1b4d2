"""Atomic file writes: every output of recops is written to a temporary file next to it, then renamed.

A reader (a DVC stage, the serving process, a person) never sees half a file, and a failing writer leaves the
previous file as it was. Used by the pipeline stages, the tuner, the A/B report and the benchmarks alike.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pandas as pd


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates the file 0600; give it the replaced file's mode, or the usual 0644
        os.chmod(tmp_path, path.stat().st_mode & 0o777 if path.exists() else 0o644)
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_text(text: str, path: Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(payload: Any, path: Path) -> None:
    write_text(json.dumps(payload, indent=2, sort_keys=True, default=float) + "\n", path)


def write_csv(frame: pd.DataFrame, path: Path) -> None:
    """CSV with floats to 6 significant digits (the plot tables DVC reads)."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.6g")


def write_parquet(frame: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes, read in blocks (hashlib.file_digest)."""
    with Path(path).open("rb") as fh:
        return hashlib.file_digest(fh, algorithm).hexdigest()
