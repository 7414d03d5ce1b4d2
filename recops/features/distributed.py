"""Ranker features of a candidate table built on a Dask cluster: ``gather_features`` per partition.

The expensive part of the feature stage is gathering the per-user / per-item statistics for every candidate row;
the statistics themselves (:class:`~recops.features.builder.HistoryStatistics`, bincounts over the history) are
cheap and computed once, here. They go to every worker once (``client.scatter(..., broadcast=True)``) and each
candidate partition becomes its feature rows with dask.dataframe ``map_partitions`` running the same
:func:`~recops.features.builder.gather_features` as the local stage, so the two give identical tables (the rows
are independent of each other: a row's features depend on its user, item and source columns only).

The candidates come as a pandas frame (cut into ``npartitions``), a Dask DataFrame, or a Parquet file / directory
(``dd.read_parquet``, one partition per file or row group). The result keeps the candidates' row order and comes
back as a pandas frame, or is written as Parquet parts to ``out_dir`` (``part.<i>.parquet``; written to a
staging folder and moved into place when every part is done, so a failed run leaves the previous output).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from recops.columns import Columns
from recops.errors import RecopsError
from recops.features.builder import HistoryStatistics, gather_features, target_keys, with_labels

if TYPE_CHECKING:
    import dask.dataframe as dd
    from distributed import Client

log = logging.getLogger(__name__)


def labelled_features(candidates: pd.DataFrame, stats: HistoryStatistics, target_keys: np.ndarray | None,
                      n_items: int, chunk_rows: int) -> pd.DataFrame:
    """(user_idx, item_idx, label, features...) of candidate rows, laid out as
    :func:`recops.features.builder.build_features` lays them out."""
    return with_labels(gather_features(candidates, stats, chunk_rows), candidates, target_keys, n_items)


def _partition_features(part: pd.DataFrame, stats: HistoryStatistics, target_keys: np.ndarray | None,
                        n_items: int, chunk_rows: int) -> pd.DataFrame:
    out = labelled_features(part, stats, target_keys, n_items, chunk_rows)
    out.index = part.index  # keep the partition's index so the result lines up with the candidates'
    return out


def candidate_partitions(candidates: pd.DataFrame | dd.DataFrame | str | Path, npartitions: int) -> dd.DataFrame:
    """The candidates as a Dask DataFrame: a pandas frame cut into ``npartitions`` in row order, a Parquet file or
    directory read with ``dd.read_parquet``, a Dask DataFrame as it is."""
    import dask.dataframe as dd

    if isinstance(candidates, pd.DataFrame):
        return dd.from_pandas(candidates, npartitions=max(int(npartitions), 1), sort=False)
    if isinstance(candidates, (str, Path)):
        if not Path(candidates).exists():
            raise RecopsError(f"{candidates} not found: run the candidates stage first (recops run)")
        return dd.read_parquet(str(candidates))
    return candidates


def build_features_distributed(client: Client, candidates: pd.DataFrame | dd.DataFrame | str | Path,
                               stats: HistoryStatistics, n_items: int, chunk_rows: int,
                               target: pd.DataFrame | None = None, *, npartitions: int | None = None,
                               out_dir: Path | None = None) -> pd.DataFrame | list[Path]:
    """:func:`recops.features.builder.build_features` of ``candidates`` with precomputed ``stats``, one task per
    candidate partition. Returns the feature table (candidates' row order), or with ``out_dir`` writes it there
    as Parquet parts and returns their paths. ``npartitions`` (pandas input only): default two per worker."""
    from recops.compute import lost_work_as_error, worker_addresses

    started = time.perf_counter()
    if npartitions is None:
        npartitions = 2 * len(worker_addresses(client))
    ddf = candidate_partitions(candidates, npartitions)
    missing = {Columns.USER, Columns.ITEM} - set(ddf.columns)
    if missing:
        raise RecopsError(f"the candidate table lacks columns {sorted(missing)}: rerun the candidates stage")
    keys = target_keys(target, n_items)
    meta = labelled_features(ddf._meta, stats, None, n_items, chunk_rows)
    # once per worker, not once per task: the statistics are the largest input (item x item similarities)
    shared_stats = client.scatter(stats, broadcast=True, hash=False)
    shared_keys = None if keys is None else client.scatter(keys, broadcast=True, hash=False)
    features = ddf.map_partitions(_partition_features, shared_stats, shared_keys, n_items, chunk_rows, meta=meta,
                                  enforce_metadata=False)
    with lost_work_as_error("features (dask)"):
        if out_dir is None:
            table = client.compute(features).result().reset_index(drop=True)
            log.info("features (dask): %d rows in %d partitions in %.1f s", len(table), features.npartitions,
                     time.perf_counter() - started)
            return table
        paths = _write_parts(client, features, Path(out_dir))
    log.info("features (dask): %d parts -> %s in %.1f s", len(paths), out_dir, time.perf_counter() - started)
    return paths


def _part_name(i: int) -> str:
    return f"part.{i:05d}.parquet"  # zero-padded: the parts read back in order


def _write_parts(client: Client, features: dd.DataFrame, out_dir: Path) -> list[Path]:
    """``features.to_parquet`` into a staging folder next to ``out_dir`` (the workers must see the same
    filesystem), which replaces ``out_dir`` once every part is written."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        write = features.to_parquet(str(staging), write_index=False, name_function=_part_name, compute=False)
        client.compute(write).result()
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return sorted(out_dir.glob("part.*.parquet"))


def read_feature_parts(out_dir: Path) -> pd.DataFrame:
    """The feature table written by :func:`build_features_distributed` with ``out_dir``, parts in order."""
    parts = sorted(Path(out_dir).glob("part.*.parquet"))
    if not parts:
        raise RecopsError(f"{out_dir} holds no feature parts: run the features stage first")
    return pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)
