"""Batch scoring: the top-k list of every known user by a registered model version (the champion by default).

The version is rebuilt on everything known now (``recops.evaluation.versions``): its candidate sources and
features are refitted with its own logged configuration on *all* interactions of the split outputs (train +
valid + test), and its registered ONNX ranker scores the candidates. Items a user has interacted with are never
recommended (the candidate merge masks them); users without any history get the popularity fallback of the
merge.

Output, in ``out_dir`` (default ``<reports_dir>/batch``):

- ``recommendations_v<version>.parquet``: ``user_id``, ``item_id`` (original ids), ``rank`` (1..k), ``score``
  (float32, the ranker's raw output: comparable within one version only);
- ``recommendations_v<version>.json``: the manifest (model, version, what was asked for, k, counts, md5 of the
  prepared tables the lists were computed from, timing);
- ``latest.json``: a stable pointer to the newest file, for whatever loads the lists.

Every check (alias, version, k) runs and every list is computed before the first file is written, and each file
is written atomically, so a failed call leaves the previous outputs as they were. This module must not train or
register anything: it only reads the registry and the split outputs.
"""

from __future__ import annotations

import logging
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recops.columns import Columns
from recops.config import Settings
from recops.errors import RecopsError

log = logging.getLogger(__name__)

DEFAULT_K = 100
LATEST = "latest.json"


def batch_score(settings: Settings, version: str = "champion", k: int | None = None,
                out_dir: Path | None = None) -> dict[str, Any]:
    """Score every user of the index with registered ``version`` (an alias or a version number); write the top-k
    lists, their manifest and ``latest.json`` to ``out_dir``; return the manifest."""
    from recops import steps
    from recops.evaluation.abtest import resolve_version
    from recops.evaluation.versions import rebuild_lists
    from recops.registry.mlflow_registry import download_version_files

    started = time.perf_counter()
    k = DEFAULT_K if k is None else k
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise RecopsError(f"k must be a whole number of at least 1 (the length of each user's list), got {k!r}")
    k = int(k)
    asked = str(version)
    number = resolve_version(settings, asked)
    index = steps._index(settings)
    if k > index.n_items:
        raise RecopsError(f"k = {k} is more than the {index.n_items} items in the catalogue: ask for at most "
                          f"{index.n_items}")
    history, target = steps._fold_tables(settings, "test")
    history = pd.concat([history, target], ignore_index=True)  # everything known now
    users_attr, items_attr = steps._attributes(settings, index)
    users = np.arange(index.n_users, dtype=np.int32)
    data_md5 = {name: steps._md5(settings.path(name)) for name in steps.TABLES}
    with tempfile.TemporaryDirectory(prefix="recops-batch-") as tmp:
        files = download_version_files(settings, number, Path(tmp))
        built = rebuild_lists(settings, files, history, users, index.n_users, index.n_items, users_attr,
                              items_attr, k, measure_latency=False)
    frame = recommendation_frame(index.user_ids, index.item_ids, built.users, built.lists, built.scores)
    per_user = np.bincount(np.searchsorted(index.user_ids, frame[Columns.USER_ID].to_numpy()),
                           minlength=index.n_users)
    short = int((per_user < k).sum())
    if short:
        log.warning("%d of %d users got fewer than k = %d items (a user's list holds at most the version's "
                    "candidates.n_candidates unseen items)", short, index.n_users, k)
    seconds = time.perf_counter() - started
    name = f"recommendations_v{number}"
    manifest = {
        "model_name": settings.registry.model_name,
        "version": number,
        "requested": asked,
        "alias": None if asked.isdigit() else asked,
        "run_id": files["version"].get("run_id"),
        "k": k,
        "users": int((per_user > 0).sum()),
        "users_in_index": int(index.n_users),
        "users_with_fewer_than_k": short,
        "rows": int(len(frame)),
        "file": f"{name}.parquet",
        "columns": list(frame.columns),
        "history": "train+valid+test",
        "data_md5": data_md5,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seconds": seconds,
        "users_per_second": index.n_users / seconds if seconds > 0 else None,
    }
    out_dir = Path(out_dir) if out_dir is not None else settings.path("reports_dir") / "batch"
    steps.write_parquet(frame, out_dir / f"{name}.parquet")
    steps.write_json(manifest, out_dir / f"{name}.json")
    steps.write_json({"file": f"{name}.parquet", "manifest": f"{name}.json", "model_name": manifest["model_name"],
                      "version": number, "created_at": manifest["created_at"]}, out_dir / LATEST)
    log.info("version %s (%s): %d rows for %d users in %.1f s -> %s", number, asked, len(frame), manifest["users"],
             seconds, out_dir / f"{name}.parquet")
    return manifest


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
