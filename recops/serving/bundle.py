"""The serving bundle: everything the online API needs to answer for a model version, as plain arrays.

A registered version is its configuration plus its ONNX ranker (``recops.evaluation.versions``); answering a request
also needs the version's candidate sources fitted on everything known (MF factors, EASE weights, item-kNN
similarities, popularity), the feature statistics of that history and the users' histories. The ``bundle`` stage
(after ``export``) fits and computes them once, on all interactions of the split outputs (train + valid + test:
what the model serves from), and writes them as files the server can load **without unpickling anything**:

- ``arrays/<path>.npy`` (``np.load(allow_pickle=False)``): dense arrays; a sparse matrix is stored as its CSR
  ``data`` / ``indices`` / ``indptr`` / ``shape`` arrays;
- ``ids_users.parquet`` / ``ids_items.parquet``: the original ids in dense-index order (any id type), and the
  items' display names (column ``title``) when ``data.item_attributes.title`` names one;
- ``ranker.onnx`` (scored by onnxruntime) and ``ranker.txt`` (LightGBM's text format, read only to explain a
  list with ``pred_contrib``);
- ``manifest.json``: format, the model sections of the settings, the feature names in the ranker's input order,
  the layout of the arrays, and the sha256 of every file.

Registration logs the folder as the version's ``serving`` artifact and records the sha256 of ``manifest.json`` as
the version tag ``recops.serving.manifest_sha256``; :func:`load_bundle` refuses a bundle whose manifest or any file
does not match, so the server only ever runs bytes the registry vouches for. A local folder (``recops serve
--bundle``) has no download to check: :func:`check_local_bundle` finds the registered version it is the bundle of
and refuses it when its manifest's sha256 is not the recorded one; a folder of no registered version is served as
an unverified local folder, and ``/ready`` says so.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recops.candidates.storage import CompressedCSR, RowStore, item_item, top_k_per_row
from recops.columns import Columns
from recops.config import Settings, StorageConfig
from recops.errors import RecopsError
from recops.io import file_digest
from recops.registry.mlflow_registry import SERVING_BUILD_TAG as BUILD_TAG  # noqa: F401 (re-exported)
from recops.registry.mlflow_registry import SERVING_MANIFEST_TAG as SHA_TAG  # noqa: F401 (re-exported)
from recops.workspace import Workspace

log = logging.getLogger(__name__)

FORMAT = 1
MANIFEST = "manifest.json"


def sha256_file(path: Path) -> str:
    return file_digest(path, "sha256")


def build_id(manifest: dict[str, Any]) -> str:
    """A bundle's build id: the sha256 of its manifest as built (canonical JSON, ``build_id`` itself left out).

    It is a function of the content (settings, sizes, every file's digest), so the same inputs build the same
    bundle byte for byte (``dvc.lock`` stays unchanged on a fresh clone's ``recops run``), and it stays in the
    manifest when someone edits a file and recomputes the manifest's digests: :func:`check_local_bundle` then names
    the registered version the folder was built as. (An earlier format kept the build time, ``created_at``, for
    this; it made every bundle unique.)
    """
    body = {key: value for key, value in manifest.items() if key != "build_id"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def build_id_of(manifest_path: Path) -> str | None:
    """The build id a manifest file records, or None (unreadable, or written before build ids)."""
    try:
        value = json.loads(Path(manifest_path).read_text(encoding="utf-8")).get("build_id")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return None
    return value if isinstance(value, str) else None


# --- a tree of arrays <-> files ---------------------------------------------------------------------------------


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


def _load_tree(root: Path, layout: dict[str, Any]) -> Any:
    kind = layout["kind"]
    if kind == "none":
        return None
    if kind == "dict":
        return {k: _load_tree(root, v) for k, v in layout["items"].items()}
    if kind == "csr":
        data, indices, indptr = (_load_array(root, f"{layout['path']}/{p}") for p in ("data", "indices", "indptr"))
        if layout.get("storage", "float32") != "float32":  # export.storage.item_item: scipy needs float32
            scale = _load_array(root, f"{layout['path']}/scale") if layout["storage"] == "int8" else None
            return CompressedCSR.restore(data, indices, indptr, tuple(layout["shape"]), scale)
        return sp.csr_matrix((data, indices, indptr), shape=tuple(layout["shape"]))
    if kind == "rows":
        path = layout["path"]
        return RowStore(_load_array(root, f"{path}/values"),
                        _load_array(root, f"{path}/scale") if layout["storage"] == "int8" else None)
    return _load_array(root, layout["path"])


def _load_array(root: Path, name: str) -> np.ndarray:
    # memory-mapped copy-on-write: the worker processes of a server share the pages of one bundle on disk, and a
    # live event's write (a user's factor row) lands in a private copy of that page only. A plain ndarray view of
    # the map: np.memmap's Python-level indexing cost ~0.4 ms per online request
    return np.load(root / "arrays" / f"{name}.npy", allow_pickle=False, mmap_mode="c").view(np.ndarray)


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


def check_pseudonym_key(manifest: dict[str, Any], fingerprint: str | None, version: str) -> None:
    """RecopsError unless the bundle's user ids are what this process will look them up as: pseudonyms under the
    key with ``fingerprint`` (None: raw ids, privacy.pseudonymize off)."""
    trained = manifest.get("pseudonym_key")
    if trained == fingerprint:
        return
    if trained is None:
        raise RecopsError(f"version {version} was trained on raw user ids, but privacy.pseudonymize is on here: "
                          "every user would be unknown; retrain with pseudonymisation (recops run) or turn it off")
    if fingerprint is None:
        raise RecopsError(f"version {version} was trained on user ids pseudonymised under key {trained}, but "
                          "privacy.pseudonymize is off here: set it and the key (privacy.key_env) to serve it")
    raise RecopsError(f"version {version} was trained on user ids pseudonymised under key {trained}, but the key "
                      f"here has fingerprint {fingerprint}: every user would be unknown; serve with the key it was "
                      "trained with, or retrain under the new key")


DRIFT_REFERENCE = "drift_reference.parquet"
DRIFT_REFERENCE_ROWS = 5000


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
    """Each fitted source's arrays as ``export.storage`` stores them (``recops.candidates.storage``)."""
    stored = {}
    for name, source in sources.items():
        arrays = dict(source.arrays())
        if name == "mf":
            for key in ("user_factors", "item_factors"):
                arrays[key] = RowStore.compress(arrays[key], storage.mf_factors)
        elif name == "ease":
            weights = arrays["weights"]
            if storage.ease_top_k is not None:
                weights = top_k_per_row(weights, storage.ease_top_k)
            arrays["weights"] = item_item(weights, storage.item_item)
        elif "similarity" in arrays:  # item-kNN and its recent-window variant
            arrays["similarity"] = item_item(arrays["similarity"], storage.item_item)
        stored[name] = arrays
    return stored


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
    from recops import steps
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
    titles = _item_titles(settings, index.item_ids, steps.read_parquet)
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


# --- load ---------------------------------------------------------------------------------------------------------


@dataclass
class Bundle:
    """A verified bundle, loaded: what :class:`recops.serving.engine.Recommender` is built from."""

    root: Path
    manifest: dict[str, Any]
    manifest_sha256: str
    user_ids: np.ndarray
    item_ids: np.ndarray
    user_items: sp.csr_matrix
    confidence: sp.csr_matrix
    sources: dict[str, dict[str, Any]]
    stats: dict[str, Any]
    item_attributes: dict[str, dict[str, Any]]
    onnx_bytes: bytes
    booster_path: Path
    item_titles: np.ndarray | None = None  # display names (data.item_attributes.title), in dense-index order


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


def verify_bundle(root: Path, expected_manifest_sha256: str | None) -> dict[str, Any]:
    """Check the manifest against the registry's sha256 and every file against the manifest; return it."""
    root = Path(root)
    manifest_path = root / MANIFEST
    if not manifest_path.is_file():
        raise RecopsError(f"{root} holds no serving bundle ({MANIFEST} missing): register the version with this "
                          "recops (the bundle stage writes it)")
    actual = sha256_file(manifest_path)
    if expected_manifest_sha256 is not None and actual != expected_manifest_sha256:
        raise RecopsError(f"the serving bundle's {MANIFEST} has sha256 {actual}, the registry recorded "
                          f"{expected_manifest_sha256}: refusing to load files the registry does not vouch for")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    if manifest.get("format") != FORMAT:
        raise RecopsError(f"serving bundle format {manifest.get('format')} is not {FORMAT}: rebuild it")
    bad = [name for name, digest in manifest["files"].items()
           if not (root / name).is_file() or sha256_file(root / name) != digest]
    if bad:
        raise RecopsError(f"serving bundle files missing or changed since registration: {', '.join(bad[:5])}"
                          + (f" and {len(bad) - 5} more" if len(bad) > 5 else ""))
    return manifest


def load_bundle(root: Path, expected_manifest_sha256: str | None) -> Bundle:
    """Verify, then load the bundle at ``root`` (arrays with ``allow_pickle=False``, ids from Parquet)."""
    root = Path(root)
    manifest = verify_bundle(root, expected_manifest_sha256)
    layout = manifest["layout"]
    items = pd.read_parquet(root / "ids_items.parquet")
    return Bundle(
        root=root,
        manifest=manifest,
        manifest_sha256=sha256_file(root / MANIFEST),
        user_ids=pd.read_parquet(root / "ids_users.parquet")["id"].to_numpy(),
        item_ids=items["id"].to_numpy(),
        item_titles=(items["title"].astype(object).where(items["title"].notna(), None).to_numpy()
                     if "title" in items else None),
        user_items=_load_tree(root, layout["user_items"]),
        confidence=_load_tree(root, layout["confidence"]),
        sources={name: _load_tree(root, spec) for name, spec in layout["sources"].items()},
        stats={name: _load_tree(root, spec) for name, spec in layout["stats"].items()},
        item_attributes={kind: _load_tree(root, spec) for kind, spec in layout["item_attributes"].items()},
        onnx_bytes=(root / "ranker.onnx").read_bytes(),
        booster_path=root / "ranker.txt",
    )


# --- a local folder (recops serve --bundle) ---------------------------------------------------------------------------

@dataclass(frozen=True)
class LocalTrust:
    """What a local bundle folder is, as far as the registry can tell (:func:`check_local_bundle`)."""

    manifest_sha256: str  # of the manifest judged: load the folder with it, so a manifest swapped since is refused
    version: str | None  # the registered version that recorded this sha256; None: no registered version's bundle
    statement: str  # for /ready and the log: what the folder is trusted on


def check_local_bundle(settings: Settings, root: Path) -> LocalTrust:
    """Judge a local bundle folder against the manifest sha256s the registry recorded, before it is served.

    - Its manifest has the sha256 a registered version recorded: it is that version's bundle, vouched for as a
      download is (:func:`load_bundle` then checks every file against the manifest).
    - It is a registered version's bundle (its manifest's build id, :func:`build_id`, is the one that version
      recorded) with another sha256: changed since registration (say a file altered and the manifest's digests recomputed to
      match), which :func:`verify_bundle` alone cannot see: RecopsError naming the version, both sha256s and the
      files that differ.
    - Otherwise (built but not registered yet; the registry unreachable): served as an unverified local folder,
      trusted on its own manifest, and the statement says so plainly.
    """
    from recops.redaction import redact
    from recops.registry.mlflow_registry import download_serving_file, registered_serving_bundles

    root = Path(root)
    manifest_path = root / MANIFEST
    if not manifest_path.is_file():
        raise RecopsError(f"{root} holds no serving bundle ({MANIFEST} missing): point --bundle at a folder the "
                          "bundle stage wrote (models/serving after recops run)")
    actual = sha256_file(manifest_path)
    try:
        mine = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise RecopsError(f"{manifest_path} is not a JSON manifest: rebuild the bundle (recops run)") from None
    name = settings.registry.model_name
    unverified = f"unverified local folder {root}: "
    trusted = "; serving the folder as it is, trusted on its own manifest"
    try:
        registered = registered_serving_bundles(settings)
    except Exception as exc:  # the registry is away: there is nothing to check the folder against
        return LocalTrust(actual, None, unverified + f"the registry at {redact(settings.tracking_uri())} could not "
                          f"be asked ({redact(str(exc))[:200]}){trusted}")
    for record in registered:
        if record["manifest_sha256"] == actual:
            return LocalTrust(actual, record["version"], f"registry: the manifest of {root} has the sha256 version "
                              f"{record['version']} of {name!r} recorded ({actual})")
    built = mine.get("build_id") if isinstance(mine, dict) else None
    for record in registered:
        if not isinstance(built, str) or record.get("build_id") != built:
            continue
        try:
            with tempfile.TemporaryDirectory(prefix="recops-manifest-") as tmp:
                path = download_serving_file(settings, record["run_id"], MANIFEST, Path(tmp))
                recorded = json.loads(path.read_text(encoding="utf-8")).get("files") or {}
        except Exception as exc:  # noqa: BLE001 (the refusal stands; only the list of changed files is missing)
            log.warning("could not read the registered manifest of version %s: %s", record["version"],
                        redact(str(exc))[:200])
            recorded = None
        ours = mine.get("files") or {}
        changed = ([] if recorded is None else
                   sorted(f for f in set(ours) | set(recorded) if ours.get(f) != recorded.get(f)))
        listed = ("not known: the registered manifest could not be read" if recorded is None
                  else ", ".join(changed[:5]) or "none, the manifest")
        raise RecopsError(
            f"{root} is the serving bundle of version {record['version']} of {name!r} changed since "
            f"registration: its {MANIFEST} has sha256 {actual}, the registry recorded "
            f"{record['manifest_sha256']} (files that differ: {listed}"
            + (f" and {len(changed) - 5} more" if len(changed) > 5 else "") + "). Refusing to serve it: serve "
            f"the registered version (recops serve --version {record['version']}) or rebuild the folder "
            "(recops run)")
    return LocalTrust(actual, None, unverified + f"its manifest (sha256 {actual}) matches no registered version of "
                      f"{name!r} (built but not registered yet?){trusted}")
