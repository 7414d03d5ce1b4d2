"""The ``bundle`` stage's builder: a version's serving bundle, fitted and written once after ``export``.

It fits the version's candidate sources and feature statistics on all interactions of the split outputs (train +
valid + test: what the model serves from), compiles the ranker, samples the drift reference and writes the files
and manifest that ``recops.serving.bundle`` describes and loads. Training-time work only: nothing under
``recops.serving`` may import this module.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recops.candidates.storage import CompressedCSR, RowStore, item_item
from recops.columns import Columns
from recops.config import Settings, StorageConfig
from recops.errors import RecopsError
from recops.serving.bundle import FORMAT, MANIFEST, build_id, sha256_file
from recops.serving.ranker_runtime import DRIFT_REFERENCE
from recops.workspace import Workspace, read_parquet

log = logging.getLogger(__name__)

DRIFT_REFERENCE_ROWS = 5000


# --- a tree of arrays -> files (read back by recops.serving.bundle._load_tree) ---------------------------------


def _save_tree(root: Path, name: str, value: Any) -> Any:
    """Write ``value`` (array, CSR matrix, dict of those, or None) under ``root/name``; return its layout."""
    if value is None:
        return {"kind": "none"}
    if isinstance(value, dict):
        return {"kind": "dict", "items": {str(k): _save_tree(root, f"{name}/{k}", v) for k, v in value.items()}}
    if isinstance(value, RowStore):
        _save_array(root, f"{name}/values", value.values)
        if value.scale is not None:
            _save_array(root, f"{name}/scale", value.scale)
        return {"kind": "rows", "path": name, "storage": value.storage}
    if isinstance(value, CompressedCSR):  # float16 / int8 values: a float32 CSR matrix again when loaded
        for part, array in (("data", value.data), ("indices", value.matrix.indices), ("indptr", value.matrix.indptr)):
            _save_array(root, f"{name}/{part}", array)
        if value.scale is not None:
            _save_array(root, f"{name}/scale", value.scale)
        return {"kind": "csr", "path": name, "shape": [int(n) for n in value.matrix.shape],
                "storage": value.storage}
    if sp.issparse(value):
        matrix = sp.csr_matrix(value)
        for part in ("data", "indices", "indptr"):
            _save_array(root, f"{name}/{part}", getattr(matrix, part))
        return {"kind": "csr", "path": name, "shape": [int(n) for n in matrix.shape]}
    _save_array(root, name, np.asarray(value))
    return {"kind": "array", "path": name}


def _save_array(root: Path, name: str, array: np.ndarray) -> None:
    if array.dtype == object:
        raise RecopsError(f"serving bundle array {name} has dtype object: only numeric arrays are stored")
    path = root / "arrays" / f"{name}.npy"
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, np.ascontiguousarray(array), allow_pickle=False)


# --- build --------------------------------------------------------------------------------------------------------


def _test_fold_factors(settings: Settings, n_users: int, n_items: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The test fold's MF factors (``paths.mf_dir``, fitted on train + valid) to warm-start the bundle's fit on
    all interactions from, when ``candidates.warm_start_iterations`` is set and they match the index."""
    from recops.candidates.mf import warm_start_mismatch

    mf_dir = settings.path("mf_dir")
    if settings.candidates.warm_start_iterations is None or "mf" not in settings.candidates.sources:
        return None
    try:
        users = np.load(mf_dir / "user_factors.npy", allow_pickle=False)
        items = np.load(mf_dir / "item_factors.npy", allow_pickle=False)
    except OSError:
        log.warning("no MF factors in %s: the bundle's MF is fitted from random factors", mf_dir)
        return None
    problem = warm_start_mismatch(settings.candidates, n_users, n_items, users, items)
    if problem:
        log.warning("MF factors in %s: %s; the bundle's MF is fitted from random factors", mf_dir, problem)
        return None
    return users, items


def _pseudonym_fingerprint(settings: Settings) -> str | None:
    """The key fingerprint ingest recorded (``paths.raw_dir``/ingest.json), or None for raw ids."""
    path = settings.path("raw_dir") / "ingest.json"
    try:
        record = json.loads(path.read_text(encoding="utf-8")).get("pseudonymized")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return None
    return record.get("key_fingerprint") if isinstance(record, dict) else None


def _write_drift_reference(settings: Settings, names: list[str], booster_path: Path, path: Path) -> None:
    """What ``recops drift`` compares a later snapshot with: a seeded sample of the ranker's training rows (its
    features, no ids) with the ranker's score of each. Nothing is written when there is no training table."""
    import lightgbm as lgb

    table_path = settings.path("features_dir") / "fit.parquet"
    if not table_path.is_file():
        return
    table = pd.read_parquet(table_path, columns=names)
    if len(table) > DRIFT_REFERENCE_ROWS:
        rows = np.sort(np.random.default_rng(settings.seed).choice(len(table), DRIFT_REFERENCE_ROWS, replace=False))
        table = table.iloc[rows].reset_index(drop=True)
    booster = lgb.Booster(model_file=str(booster_path))
    table["score"] = booster.predict(table[names].to_numpy(dtype=np.float32),
                                     num_threads=settings.threads).astype(np.float32)
    table.to_parquet(path, index=False)


def _compile_ranker(settings: Settings, names: list[str], root: Path) -> dict[str, Any]:
    """Compile ``root/ranker.txt`` with lleaves and check it against native LightGBM on the test candidates with
    the ONNX export's rules (``export.max_abs_diff``, every user's top-10 order); raises when they disagree."""
    import lightgbm as lgb

    from recops.export import parity_report
    from recops.serving.ranker_runtime import COMPILED_FILE, compile_ranker, compiled_scorer

    info = compile_ranker(root / "ranker.txt", root / COMPILED_FILE)
    table_path = settings.path("features_dir") / "test.parquet"
    if table_path.is_file():
        table = pd.read_parquet(table_path, columns=[Columns.USER, *names])
        features = table[names].to_numpy(np.float32)
        native = lgb.Booster(model_file=str(root / "ranker.txt")).predict(features, num_threads=settings.threads)
        scorer, _ = compiled_scorer(root, {"compiled_ranker": info}, settings.threads)
        info["parity"] = parity_report(table[Columns.USER].to_numpy(), native, scorer.predict(features), k=10,
                                       max_abs_diff=settings.export.max_abs_diff,
                                       tie_tolerance=settings.export.tie_tolerance, prefix="compiled.parity",
                                       what="compiled (lleaves)")
    log.info("bundle: max |compiled ranker - LightGBM| %.2g",
             info.get("parity", {}).get("compiled.parity.max_abs_diff", float("nan")))
    return info


def stored_sources(sources: dict[str, Any], storage: StorageConfig) -> dict[str, dict[str, Any]]:
    """Each fitted source's arrays as ``export.storage`` stores them (each source's ``stored_arrays``)."""
    return {name: source.stored_arrays(storage) for name, source in sources.items()}


def stored_stats(stats, storage: StorageConfig) -> dict[str, Any]:
    """The feature statistics' fields as ``export.storage`` stores them: the unit MF item factors like the MF
    factors, the similarity cosines like the other item-item matrices."""
    values = {f.name: getattr(stats, f.name) for f in fields(stats) if f.init}
    if values.get("item_unit_factors") is not None:
        values["item_unit_factors"] = RowStore.compress(values["item_unit_factors"], storage.mf_factors)
    values["similarity"] = item_item(values["similarity"], storage.item_item)
    return values


def build_bundle(settings: Settings, out_dir: Path | None = None) -> dict[str, Any]:
    """Fit the version's sources and feature statistics on all interactions and write the bundle; returns the
    manifest. Writes into a temporary sibling folder and swaps it in, so a failure leaves the previous bundle."""
    from recops.candidates import fit_sources, interaction_matrix
    from recops.candidates.merge import source_columns
    from recops.features.builder import history_statistics

    started = time.perf_counter()
    out_dir = Path(out_dir) if out_dir is not None else settings.path("serving_bundle")
    onnx_path, booster_path = settings.path("onnx_model"), settings.path("ranker_model")
    for path in (onnx_path, booster_path):
        if not path.is_file():
            raise RecopsError(f"{path} not found: run the train_ranker and export stages first (recops run)")
    names = Workspace(settings).feature_names()
    index = Workspace(settings).index()
    history, target = Workspace(settings).fold("test")
    history = pd.concat([history, target], ignore_index=True)  # everything known now
    users_attr, items_attr = Workspace(settings).attributes(index)
    n_users, n_items = index.n_users, index.n_items
    sources, _ = fit_sources(history, n_users, n_items, settings.candidates, settings.seed, settings.threads,
                             _test_fold_factors(settings, n_users, n_items))
    mf = sources.get("mf")
    stats = history_statistics(history, n_users, n_items, settings.features, users_attr, items_attr,
                               None if mf is None else mf.item_factors_)
    user_items = interaction_matrix(history, n_users, n_items, "binary")
    weights = interaction_matrix(history, n_users, n_items, settings.candidates.confidence)

    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    layout = {
        "user_items": _save_tree(tmp, "user_items", user_items),
        "confidence": _save_tree(tmp, "confidence", weights),
        "sources": {name: _save_tree(tmp, f"sources/{name}", arrays)
                    for name, arrays in stored_sources(sources, settings.export.storage).items()},
        "stats": {name: _save_tree(tmp, f"stats/{name}", value)
                  for name, value in stored_stats(stats, settings.export.storage).items()},
        "item_attributes": {
            "multi_label": _save_tree(tmp, "item_attributes/multi_label", dict(items_attr.multi_label)),
            "categorical": _save_tree(tmp, "item_attributes/categorical", dict(items_attr.categorical)),
        },
    }
    pd.DataFrame({"id": index.user_ids}).to_parquet(tmp / "ids_users.parquet", index=False)
    item_ids = pd.DataFrame({"id": index.item_ids})
    titles = _item_titles(settings, index.item_ids, read_parquet)
    if titles is not None:
        item_ids["title"] = titles
    item_ids.to_parquet(tmp / "ids_items.parquet", index=False)
    shutil.copyfile(onnx_path, tmp / "ranker.onnx")
    shutil.copyfile(booster_path, tmp / "ranker.txt")
    _write_drift_reference(settings, names, booster_path, tmp / DRIFT_REFERENCE)
    compiled = _compile_ranker(settings, names, tmp)
    files = {p.relative_to(tmp).as_posix(): sha256_file(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
    manifest = {
        "format": FORMAT,
        "settings": {key: settings.model_dump(mode="json")[key] for key in ("seed", "candidates", "features")},
        "feature_names": names,
        "source_columns": source_columns(settings.candidates),
        "n_users": int(n_users),
        "n_items": int(n_items),
        "history_rows": int(len(history)),
        "history_end": float(history[Columns.TIMESTAMP].max()) if len(history) else None,
        # the fingerprint of the key the user ids are pseudonyms under (None: raw ids): a server must hold it
        "pseudonym_key": _pseudonym_fingerprint(settings),
        # the forest compiled by lleaves (recops.serving.ranker_runtime): target, versions, parity with LightGBM
        "compiled_ranker": compiled,
        # how the retrieval arrays are stored (export.storage: float32, float16, int8 factors, pruned EASE)
        "storage": settings.export.storage.model_dump(mode="json"),
        "layout": layout,
        "files": files,
    }
    manifest["build_id"] = build_id(manifest)
    # key order matters (the feature statistics are gathered in dict order): never sort the keys
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    if out_dir.exists():
        old = out_dir.with_name(out_dir.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        out_dir.rename(old)
        tmp.rename(out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out_dir)
    manifest["seconds"] = time.perf_counter() - started
    log.info("serving bundle of %d users x %d items (%d files) in %.1f s -> %s", n_users, n_items, len(files),
             manifest["seconds"], out_dir)
    return manifest


def _item_titles(settings: Settings, item_ids: np.ndarray, read_parquet) -> np.ndarray | None:
    """The items' display names (``data.item_attributes.title`` of the prepared items table) in dense-index order;
    None when no title column is configured."""
    spec = settings.data.item_attributes
    path = settings.path("items")
    if spec is None or spec.title is None or not path.is_file():
        return None
    table = read_parquet(path)
    if spec.title not in table.columns:
        return None
    titles = table.drop_duplicates(Columns.ITEM_ID).set_index(Columns.ITEM_ID)[spec.title]
    return titles.reindex(item_ids).astype("string").to_numpy(dtype=object, na_value=None)
