"""Batch scoring across Dask workers: blocks of users scored by the serving engine on each worker.

The same :class:`~recops.serving.engine.Recommender` as ``recops batch-score`` and the online API scores each
block (``recommend_users``), so the lists are those of the local batch path, list for list: a user's list depends
only on that user's row of the bundle (candidates, features, exploration key), never on which block it is in.

Each task gets the bundle's *folder* (and the sha256 the registry recorded for its manifest), not pickled
arrays: a worker loads and verifies the bundle on its first block and keeps the engine for the next ones (one
load per worker process, per bundle). The folder must therefore be readable at the same path by every worker
(the same machine, or shared storage). Each block's lists go to their own Parquet part, written atomically under
a staging folder that replaces ``out_dir`` only when every block is done: a failed run leaves the previous
output. A block whose worker died is rerun by Dask on another worker and rewrites the same part.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from recops.columns import Columns
from recops.config import ServingConfig
from recops.errors import RecopsError

if TYPE_CHECKING:
    from distributed import Client

    from recops.serving.engine import Recommender

log = logging.getLogger(__name__)

# per worker process: (bundle folder, manifest sha256, serving config, version) -> engine
_ENGINES: dict[tuple[str, str | None, str, str], Recommender] = {}
_LOADS: dict[tuple[str, str | None, str, str], int] = {}
_ENGINES_LOCK = threading.Lock()


@dataclass(frozen=True)
class BatchParts:
    """What a distributed batch run wrote: the Parquet parts (in user order), row and user counts, and which
    worker processes loaded the bundle how many times."""

    out_dir: Path
    parts: list[Path]
    rows: int
    users: int
    bundle_loads: dict[int, int]
    seconds: float

    def read(self) -> pd.DataFrame:
        """All parts as one table (user_id, item_id, rank, score), in user order."""
        return pd.concat([pd.read_parquet(p) for p in self.parts], ignore_index=True)


def recommendation_frame(user_ids: np.ndarray, item_ids: np.ndarray, users: np.ndarray, lists: np.ndarray,
                         scores: np.ndarray) -> pd.DataFrame:
    """Long table (user_id, item_id, rank, score) of ``len(users) x k`` lists of dense indices, -1 padded, in
    original ids; padded slots are dropped."""
    filled = lists >= 0
    depth = lists.shape[1]
    return pd.DataFrame({
        Columns.USER_ID: np.repeat(user_ids[users], depth)[filled.ravel()],
        Columns.ITEM_ID: item_ids[lists[filled]],
        Columns.RANK: np.tile(np.arange(1, depth + 1, dtype=np.int32), len(users))[filled.ravel()],
        Columns.SCORE: scores[filled].astype(np.float32),
    })


def _engine(bundle_dir: str, expected_sha256: str | None, serving_json: str, version: str,
            model_name: str) -> tuple[Recommender, int]:
    """The engine of this process for the bundle, loaded on first use; (engine, loads so far in this process)."""
    key = (bundle_dir, expected_sha256, serving_json, version)
    with _ENGINES_LOCK:
        if key not in _ENGINES:
            from recops.serving.bundle import load_bundle
            from recops.serving.engine import Recommender

            config = ServingConfig.model_validate_json(serving_json)
            _ENGINES[key] = Recommender(load_bundle(Path(bundle_dir), expected_sha256), config, version, model_name)
            _LOADS[key] = _LOADS.get(key, 0) + 1
        return _ENGINES[key], _LOADS[key]


def score_block(bundle_dir: str, expected_sha256: str | None, serving_json: str, version: str, model_name: str,
                users: np.ndarray, k: int, block_users: int, part_path: str) -> dict[str, Any]:
    """One task: the top-``k`` lists of ``users`` (dense indices) by the bundle's engine, written atomically to
    ``part_path``; returns counts and this process's bundle loads."""
    model, loads = _engine(bundle_dir, expected_sha256, serving_json, version, model_name)
    lists, scores, _ = model.recommend_users(users, k, block_users=block_users)
    frame = recommendation_frame(model.user_ids, model.item_ids, users, lists, np.nan_to_num(scores, nan=0.0))
    tmp = f"{part_path}.{os.getpid()}.{threading.get_ident()}.tmp"
    frame.to_parquet(tmp, index=False)
    os.replace(tmp, part_path)  # a rerun of the block (its worker died) rewrites the same part
    return {"rows": len(frame), "users": len(users), "pid": os.getpid(), "loads": loads}


def score_users_distributed(client: Client, bundle_dir: Path, expected_sha256: str | None, serving: ServingConfig,
                            version: str, k: int, out_dir: Path, *, model_name: str = "",
                            users: np.ndarray | None = None, users_per_task: int | None = None,
                            block_users: int = 1024) -> BatchParts:
    """Top-``k`` lists of ``users`` (dense indices; default every user of the bundle) by the bundle at
    ``bundle_dir``, one task per block of ``users_per_task`` users (default: two blocks per worker), written to
    ``out_dir/part.<i>.parquet`` with the columns of ``recops batch-score``'s file."""
    from recops.compute import lost_work_as_error, worker_addresses
    from recops.serving.bundle import verify_bundle

    started = time.perf_counter()
    bundle_dir = Path(bundle_dir).resolve()
    verify_bundle(bundle_dir, expected_sha256)  # a clear error here, before any worker loads it
    n_users = len(pd.read_parquet(bundle_dir / "ids_users.parquet"))
    n_items = len(pd.read_parquet(bundle_dir / "ids_items.parquet"))
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= n_items:
        raise RecopsError(f"k must be a whole number from 1 to the {n_items} items in the catalogue, got {k!r}")
    users = np.arange(n_users, dtype=np.int32) if users is None else np.asarray(users, dtype=np.int32)
    if len(users) and (users.min() < 0 or users.max() >= n_users):
        raise RecopsError(f"user indices must lie in 0..{n_users - 1} (the bundle's users)")
    if users_per_task is None:
        users_per_task = max(int(np.ceil(len(users) / (2 * max(len(worker_addresses(client)), 1)))), 1)
    blocks = [users[start:start + users_per_task] for start in range(0, len(users), users_per_task)]
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    names = [f"part.{i:05d}.parquet" for i in range(len(blocks))]
    serving_json = serving.model_dump_json()
    try:
        futures = [client.submit(score_block, str(bundle_dir), expected_sha256, serving_json, str(version),
                                 model_name, block, int(k), block_users, str(staging / name), pure=False)
                   for block, name in zip(blocks, names)]
        with lost_work_as_error("batch scoring (dask)"):
            results = client.gather(futures)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    loads: dict[int, int] = {}
    for result in results:
        loads[result["pid"]] = max(loads.get(result["pid"], 0), result["loads"])
    seconds = time.perf_counter() - started
    parts = BatchParts(out_dir, [out_dir / name for name in names], sum(r["rows"] for r in results),
                       sum(r["users"] for r in results), loads, seconds)
    log.info("batch (dask): %d users, %d rows in %d parts on %d worker process(es) in %.1f s -> %s", parts.users,
             parts.rows, len(names), len(loads), seconds, out_dir)
    return parts
