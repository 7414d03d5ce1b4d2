"""The serving bundle: everything the online API needs to answer for a model version, as plain arrays.

A registered version is its configuration plus its ONNX ranker (``recops.evaluation.versions``); answering a request
also needs the version's candidate sources fitted on everything known (MF factors, EASE weights, item-kNN
similarities, popularity), the feature statistics of that history and the users' histories. The ``bundle`` stage
(``recops.bundling``, after ``export``) fits and computes them once, on all interactions of the split outputs
(train + valid + test: what the model serves from), and writes them as files the server can load **without
unpickling anything**; this module only checks and loads them:

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
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recops.candidates.storage import CompressedCSR, RowStore
from recops.config import Settings
from recops.errors import RecopsError
from recops.io import file_digest

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


# --- files -> a tree of arrays (written by recops.bundling) ---------------------------------------------------


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
      recorded) with another sha256: changed since registration (say a file altered and the manifest's digests
      recomputed to match), which :func:`verify_bundle` alone cannot see: RecopsError naming the version, both
      sha256s and the files that differ.
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
