"""Batch scoring: the top-k list of every known user by a registered model version (the champion by default).

The version is rebuilt on everything known now (``recops.evaluation.versions``): its candidate sources and
features are refitted with its own logged configuration on *all* interactions of the split outputs (train +
valid + test), and its registered ONNX ranker scores the candidates. Items a user has interacted with are never
recommended (the candidate merge masks them); users without any history get the popularity fallback of the
merge.

Output, in ``out_dir`` (default ``paths.batch_dir``, reports/batch):

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
from recops.io import write_json, write_parquet
from recops.serving.distributed_batch import recommendation_frame, score_users_distributed
from recops.workspace import Workspace
from recops.compute import settings_client

log = logging.getLogger(__name__)

DEFAULT_K = 100
LATEST = "latest.json"


def batch_score(settings: Settings, version: str = "champion", k: int | None = None,
                out_dir: Path | None = None, block_users: int = 1024, cache: bool | None = None) -> dict[str, Any]:
    """Score every user of the index with registered ``version`` (an alias or a version number); write the top-k
    lists, their manifest and ``latest.json`` to ``out_dir``; return the manifest."""
    from recops.registry.mlflow_registry import download_serving_bundle, resolve_version
    from recops.serving.bundle import load_bundle
    from recops.serving.engine import Recommender

    started = time.perf_counter()
    k = DEFAULT_K if k is None else k
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise RecopsError(f"k must be a whole number of at least 1 (the length of each user's list), got {k!r}")
    k = int(k)
    asked = str(version)
    number = resolve_version(settings, asked)
    data_md5 = Workspace(settings).table_md5s()
    with tempfile.TemporaryDirectory(prefix="recops-batch-") as tmp:
        folder, expected, run_id = download_serving_bundle(settings, number, Path(tmp))
        bundle = load_bundle(folder, expected)
        model = Recommender(bundle, settings.serving, number, settings.registry.model_name)
        if k > model.n_items:
            raise RecopsError(f"k = {k} is more than the {model.n_items} items in the catalogue: ask for at most "
                              f"{model.n_items}")
        users = np.arange(model.n_users, dtype=np.int32)
        scored = time.perf_counter()
        if settings.compute.engine == "dask":
            # the same engine on every worker, each loading the verified bundle from this folder once (workers on
            # other machines need it at the same path: a shared file system)
            with settings_client(settings) as client:
                frame = score_users_distributed(client, folder, expected, settings.serving, number, k,
                                                Path(tmp) / "parts", model_name=settings.registry.model_name,
                                                users=users, block_users=block_users).read()
        else:
            from recops.progress import progress

            with progress(f"batch scoring version {number}", len(users), "users") as step:
                lists, scores, _ = model.recommend_users(users, k, block_users=block_users, on_block=step.advance)
            frame = recommendation_frame(model.user_ids, model.item_ids, users, lists,
                                         np.nan_to_num(scores, nan=0.0))
        scoring_seconds = time.perf_counter() - scored
        bundle_sha256 = bundle.manifest_sha256
    index = model  # the version's own ids
    per_user = (frame[Columns.USER_ID].value_counts().reindex(pd.Index(index.user_ids), fill_value=0)
                .to_numpy())
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
        "run_id": run_id,
        "k": k,
        "users": int((per_user > 0).sum()),
        "users_in_index": int(index.n_users),
        "users_with_fewer_than_k": short,
        "rows": int(len(frame)),
        "file": f"{name}.parquet",
        "columns": list(frame.columns),
        "history": "train+valid+test",
        "bundle_sha256": bundle_sha256,
        "scoring_seconds": scoring_seconds,
        "data_md5": data_md5,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seconds": seconds,
        "users_per_second": index.n_users / seconds if seconds > 0 else None,
    }
    if cache if cache is not None else settings.serving.cache.backend == "redis":
        manifest["cached"] = _write_cache(settings, number, frame)
    out_dir = Path(out_dir) if out_dir is not None else settings.path("batch_dir")
    write_parquet(frame, out_dir / f"{name}.parquet")
    write_json(manifest, out_dir / f"{name}.json")
    write_json({"file": f"{name}.parquet", "manifest": f"{name}.json", "model_name": manifest["model_name"],
                "version": number, "created_at": manifest["created_at"]}, out_dir / LATEST)
    log.info("version %s (%s): %d rows for %d users in %.1f s -> %s", number, asked, len(frame), manifest["users"],
             seconds, out_dir / f"{name}.parquet")
    return manifest


def _write_cache(settings: Settings, version: str, frame: pd.DataFrame) -> dict[str, Any]:
    """Every user's list into the serving cache (Redis in production) under the version's keys, with its TTL."""
    from recops.serving.cache import make_cache

    started = time.perf_counter()
    cache = make_cache(settings.serving.cache, settings.registry.model_name)
    try:
        users = frame[Columns.USER_ID].astype(str).to_numpy()
        items = frame[Columns.ITEM_ID].astype(str).to_numpy()
        scores = frame[Columns.SCORE].to_numpy(np.float64)
        starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
        ends = np.r_[starts[1:], len(users)]
        written = 0
        for chunk in range(0, len(starts), 10_000):
            lists = {users[a]: (items[a:b].tolist(), scores[a:b].tolist())
                     for a, b in zip(starts[chunk:chunk + 10_000], ends[chunk:chunk + 10_000])}
            written += cache.put_many(version, lists, source="batch")
    finally:
        cache.close()
    seconds = time.perf_counter() - started
    log.info("%d lists of version %s written to the %s cache in %.1f s", written, version, cache.backend, seconds)
    return {"backend": cache.backend, "lists": written, "ttl_seconds": settings.serving.cache.ttl_seconds,
            "seconds": seconds}
