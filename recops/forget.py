"""The right to be forgotten: ``recops forget USER_ID...`` removes users from everything recops keeps.

A request runs in three parts; the training between them is the ordinary pipeline (the CLI and the
``recops-forget`` flow run it as ``recops run`` does):

1. :func:`start` — before anything is retrained:
   - the users join the *suppression list* (``paths.forgotten``, kept by :mod:`recops.data.forgotten`): salted
     SHA-256 hashes of their stored ids (their pseudonyms when ``privacy.pseudonymize`` is on, so the list names
     nobody without the key), which ingest drops from any source: the embedded MovieLens wheel, which cannot be
     rewritten, and a later snapshot from an upstream system that still has them;
   - the interaction source and the users table, when they are files in the project, are rewritten without their
     rows (marked as pseudonymised when they were);
   - their lines in the event log (live, ingested and set-aside files) and in the impression log are erased in
     place: overwritten by blanks of the same length under the log's lock, so the servers tailing it keep their
     byte offsets (and once more in part 3, for what servers wrote meanwhile);
   - their cached lists are deleted from Redis for every version, and the batch scores (``reports/batch``) of
     earlier versions are deleted (they list every user).
2. the pipeline retrains every stage on data without them (MF, EASE, item-kNN, popularity statistics, the
   ranker, the serving bundle) and registers a new version;
3. :func:`finish` — the new version becomes champion on the first-model gates (erasure does not wait for an A/B
   "ship"); only then are the earlier versions' artifacts that hold users (serving bundle, MF factors, reports with
   recommendations) deleted from the artifact store (:mod:`recops.registry.erasure`) — and the same artifacts of
   every other run of the experiment, unregistered and deleted runs included — and those versions tagged as never
   to be served again (promote and rollback refuse them), and DVC's cache (and remote) cleared of every
   version the workspace no longer uses (they all held the users). An audit record (request id, time, actor,
   reason, counts — never an id) is written to ``paths.privacy_dir`` and logged on the new version's run.

A request is recorded in ``.recops/forget-pending.json`` (local state, with the ids) until it finishes, so a run
killed at any point is finished by running the same command again (one killed once the retrained version is
known to :func:`finish` is not retrained again); the champion moves before any artifact is deleted, so it never
points at a deleted one.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import subprocess
import sys
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from recops.config import Settings
from recops.data.forgotten import add_forgotten, plain_id
from recops.errors import RecopsError

log = logging.getLogger(__name__)

PENDING = ".recops/forget-pending.json"


# --- ids --------------------------------------------------------------------------------------------------------------


def stored_ids(settings: Settings, raw_ids: list[str]) -> list[Any]:
    """The ids recops keeps for ``raw_ids`` (pseudonyms with privacy.pseudonymize), in the data's id type."""
    from recops.privacy import Pseudonymizer, raw_text

    pseudo = Pseudonymizer.from_settings(settings)
    out = []
    for raw in raw_ids:
        text = raw_text(raw, settings.data.id_type)
        if text is None:
            raise RecopsError(f"{raw!r} is not a {settings.data.id_type} user id (data.id_type)")
        if pseudo is not None:
            out.append(pseudo.one(text))
        else:
            out.append(int(text) if settings.data.id_type == "integer" else text)
    return out


def _known(settings: Settings, stored: list[Any]) -> set[str]:
    """The stored ids (as text) that appear in the prepared tables or the event log."""
    wanted = {str(s) for s in stored}
    found: set[str] = set()
    for name in ("interactions", "users"):
        path = settings.path(name)
        if path.is_file():
            ids = pd.read_parquet(path, columns=["user_id"])["user_id"].astype(str)
            found |= wanted & set(ids.unique())
    for path in _event_files(settings):
        found |= {user for user, _ in _matching_lines(path, wanted)}
    if found != wanted:  # in the source but not ingested yet (a snapshot staged, a file replaced by hand)
        found |= _in_source(settings, wanted - found)
    return found


def _as_stored(settings: Settings, path: Path, ids: pd.Series) -> pd.Series:
    """A source file's user ids as recops keeps them: pseudonymised when privacy is on and the file is the user's
    raw one (not marked as written with pseudonyms), as they are otherwise."""
    from recops.privacy import Pseudonymizer, pseudonymized_with

    pseudo = Pseudonymizer.from_settings(settings)
    if pseudo is not None and pseudonymized_with(path) is None:
        return pseudo.column(ids, str(path))
    return ids


def _in_source(settings: Settings, wanted: set[str]) -> set[str]:
    cfg = settings.data
    if cfg.source != "file" or not cfg.interactions_path:
        return set()
    path = settings.resolve(cfg.interactions_path)
    if not path.is_file():
        return set()
    column = cfg.columns.user
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            ids = pd.read_parquet(path, columns=[column])[column]
        else:
            ids = pd.read_csv(path, sep=cfg.csv_separator, usecols=[column], low_memory=False)[column]
    except (ValueError, OSError):
        return set()  # ingest names what is wrong with the file
    return wanted & set(_as_stored(settings, path, ids).astype(str).unique())


# --- the event log ----------------------------------------------------------------------------------------------------


def _event_files(settings: Settings) -> list[Path]:
    folder = settings.root / settings.serving.event_log_dir
    return sorted(p for p in folder.rglob("*.jsonl") if p.is_file()) if folder.is_dir() else []


def _line_user(line: bytes) -> str | None:
    """The user id of an event line, or of the event a set-aside entry (``{"text": ...}``) quotes."""
    try:
        record = json.loads(line)
    except (ValueError, RecursionError):
        return None
    if isinstance(record, dict) and "user_id" in record:
        return str(record["user_id"])
    if isinstance(record, dict) and isinstance(record.get("text"), str):
        return _line_user(record["text"].encode("utf-8", errors="replace"))
    return None


def _matching_lines(path: Path, wanted: set[str]) -> list[tuple[str, tuple[int, int]]]:
    """(user, (start, end)) of the lines of ``path`` that belong to ``wanted`` users (an unparseable line is
    matched by the ids' text, so a damaged line of a forgotten user is erased too)."""
    out, position = [], 0
    for line in path.read_bytes().split(b"\n"):
        start, position = position, position + len(line) + 1
        if not line.strip():
            continue
        user = _line_user(line)
        if user is None:
            text = line.decode("utf-8", errors="replace")
            user = next((w for w in wanted if w in text), None)
        if user in wanted:
            out.append((user, (start, start + len(line))))
    return out


def _erase_events(settings: Settings, stored: list[Any]) -> int:
    """Blank the users' lines of every event file in place (same length, under the file's lock); the count."""
    wanted = {str(s) for s in stored}
    erased = 0
    for path in _event_files(settings):
        with path.open("r+b") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)  # the servers' appends wait; their offsets stay valid
            lines = _matching_lines(path, wanted)
            for _, (start, end) in lines:
                fh.seek(start)
                fh.write(b" " * (end - start))
            if lines:
                fh.flush()
                os.fsync(fh.fileno())
            erased += len(lines)
    return erased


# --- sources ----------------------------------------------------------------------------------------------------------


def _rewrite_source(settings: Settings, source: str | None, column: str | None, stored: list[Any]) -> int:
    """Rewrite a source file of the project without the users' rows (same format; still marked as pseudonymised
    when it was); the rows removed."""
    from recops.privacy import mark_pseudonymized, pseudonymized_with

    if not source or not column:
        return 0
    path = settings.resolve(source)
    try:
        path.resolve().relative_to(settings.root.resolve())
    except ValueError:
        log.warning("forget: %s is outside the project and is not rewritten; the list of forgotten users keeps "
                    "its rows out of every run", source)
        return 0
    if not path.is_file():
        return 0
    parquet = path.suffix.lower() in (".parquet", ".pq")
    sep = settings.data.csv_separator
    frame = pd.read_parquet(path) if parquet else pd.read_csv(path, sep=sep, low_memory=False)
    if column not in frame.columns:
        return 0
    marked = pseudonymized_with(path)
    drop = _as_stored(settings, path, frame[column]).astype(str).isin({str(s) for s in stored}).to_numpy()
    if not drop.any():
        return 0
    kept = frame[~drop]
    tmp = path.with_name(f".{path.name}.forget")
    if parquet:
        kept.to_parquet(tmp, index=False)
    else:
        kept.to_csv(tmp, index=False, sep=sep)
    tmp.replace(path)
    if marked is not None:
        mark_pseudonymized(path, marked)
    return int(drop.sum())


# --- the cache --------------------------------------------------------------------------------------------------------


def _forget_cached(settings: Settings, stored: list[Any]) -> int:
    """Delete the users' cached lists of every version from Redis (the in-process cache lives in the servers)."""
    if settings.serving.cache.backend != "redis":
        return 0
    from recops.serving.cache import make_cache

    cache = make_cache(settings.serving.cache, settings.registry.model_name)
    return sum(cache.forget_user(str(s)) for s in stored)


# --- the request ------------------------------------------------------------------------------------------------------


def _pending_path(settings: Settings) -> Path:
    return settings.root / PENDING


def pending(settings: Settings) -> dict[str, Any] | None:
    path = _pending_path(settings)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise RecopsError(f"{path}: an unfinished forget request is recorded there but unreadable; run the "
                          "request again with the same user ids") from None


def start(settings: Settings, raw_ids: list[str], reason: str | None = None,
          actor: str | None = None) -> dict[str, Any]:
    """Part 1 (module docstring). Returns the request: ``{"request_id", "users", "known", "counts", ...}``;
    ``known == 0`` (and no unfinished request for them): nothing recops keeps names these users, nothing was
    changed and nothing needs retraining."""
    if not raw_ids:
        raise RecopsError("name at least one user id to forget")
    stored = stored_ids(settings, list(dict.fromkeys(raw_ids)))
    earlier = pending(settings)
    if earlier is not None and sorted(map(str, earlier["stored"])) != sorted(map(str, stored)):
        raise RecopsError(f"an earlier forget request ({earlier['request_id']}, {len(earlier['stored'])} user(s)) "
                          "did not finish: run it again with the same user ids first")
    known = _known(settings, stored)
    if earlier is None and not known:
        return {"request_id": None, "users": len(stored), "known": 0, "counts": {}}
    request = earlier or {
        "request_id": uuid.uuid4().hex[:12],
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "actor": actor or os.environ.get("USER") or "unknown",
        "reason": reason or "",
        "stored": [plain_id(s) for s in stored],
        "counts": {},
        "known": len(known),
    }
    path = _pending_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(request, indent=1) + "\n", encoding="utf-8")  # before the first change
    counts = request["counts"]
    counts["listed"] = counts.get("listed", 0) + add_forgotten(settings, stored)
    cfg = settings.data
    if cfg.source == "file":
        counts["source_rows"] = counts.get("source_rows", 0) + _rewrite_source(
            settings, cfg.interactions_path, cfg.columns.user, stored)
        counts["user_rows"] = counts.get("user_rows", 0) + _rewrite_source(
            settings, cfg.users_path, cfg.user_attributes.id if cfg.user_attributes else None, stored)
    counts["event_lines"] = counts.get("event_lines", 0) + _erase_events(settings, stored)
    # before retraining: the new version's run logs the reports folder, which must not carry them
    counts["batch_files"] = counts.get("batch_files", 0) + _erase_batch_outputs(settings)
    counts["cache_entries"] = counts.get("cache_entries", 0) + _forget_cached(settings, stored)
    path.write_text(json.dumps(request, indent=1) + "\n", encoding="utf-8")
    log.info("forget %s: %d user(s) listed; %d source row(s), %d user row(s), %d event line(s), %d cache entries "
             "removed; retraining without them", request["request_id"], len(stored), counts.get("source_rows", 0),
             counts.get("user_rows", 0), counts["event_lines"], counts["cache_entries"])
    return request


def retrained_version(request: dict[str, Any]) -> str | None:
    """The version an interrupted request was retrained as (recorded by :func:`finish` before it promotes):
    a rerun finishes with it instead of training again. None: the request has not reached :func:`finish`."""
    version = request.get("version")
    return str(version) if version is not None else None


def finish(settings: Settings, request: dict[str, Any], version: str) -> dict[str, Any]:
    """Part 3 (module docstring): promote ``version`` (retrained without the users), then erase what the earlier
    versions and runs hold, then the audit record. Returns the audit record."""
    from recops.registry.erasure import erase_versions, log_forget_audit
    from recops.registry.mlflow_registry import list_versions
    from recops.registry.promotion import promote

    request_id = request["request_id"]
    versions = list_versions(settings)
    record = next((v for v in versions if str(v["version"]) == str(version)), None)
    if record is None:
        raise RecopsError(f"version {version} is not registered: the retraining of forget request {request_id} "
                          "did not finish; run the request again")
    if request.get("version") != str(version):  # a rerun after this point goes straight to finish (retrained)
        request["version"] = str(version)
        _pending_path(settings).write_text(json.dumps(request, indent=1) + "\n", encoding="utf-8")
    if "champion" not in (record.get("aliases") or []):
        promote(settings, ab_report=None, version=str(version), gates=settings.registry.first_model_gates,
                actor=request["actor"],
                reason=f"forget request {request_id}" + (f": {request['reason']}" if request["reason"] else ""),
                forget_request=request_id)
    counts = dict(request["counts"])
    try:  # what the retraining's ingest dropped through the list (all of their rows, whatever the source)
        ingested = json.loads((settings.path("raw_dir") / "ingest.json").read_text(encoding="utf-8"))
        counts["interactions_dropped_at_ingest"] = int(ingested.get("forgotten_rows_dropped", 0))
    except (OSError, ValueError):
        pass
    # again: what running servers logged of them since the first pass (an impression batch is written up to
    # serving.impressions.flush_seconds after the answer; a request during the retraining)
    counts["event_lines"] = counts.get("event_lines", 0) + _erase_events(settings, request["stored"])
    erased_versions, files = erase_versions(settings, versions, str(version), request_id)
    counts["artifact_files"] = files
    counts["dvc_cache_objects"] = _dvc_gc(settings)
    audit = {
        "request_id": request_id,
        "requested_at": request["started_at"],
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "actor": request["actor"],
        "reason": request["reason"],
        "users": len(request["stored"]),
        "users_known": request.get("known"),
        "counts": counts,
        "new_version": str(version),
        "erased_versions": erased_versions,
    }
    out = settings.path("privacy_dir") / f"forget-{request_id}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(audit, indent=2) + "\n", encoding="utf-8")
    log_forget_audit(settings, record, out, request_id)
    _pending_path(settings).unlink(missing_ok=True)
    log.info("forget %s done: version %s serves without the users; %d earlier version(s) erased (%d artifact "
             "files); audit record %s", request_id, version, len(erased_versions), files, out)
    return audit


def _erase_batch_outputs(settings: Settings) -> int:
    """Batch scores of earlier versions (``reports/batch``) hold the users' lists: deleted."""
    folder = settings.path("batch_dir")
    if not folder.is_dir():
        return 0
    removed = 0
    for path in sorted(folder.iterdir()):
        if path.is_file():
            path.unlink()
            removed += 1
        elif path.is_dir():
            removed += sum(1 for p in path.rglob("*") if p.is_file())
            shutil.rmtree(path)
    return removed


def _dvc_gc(settings: Settings) -> int:
    """``dvc gc --workspace`` (and ``--cloud`` with a default remote): every data version but the workspace's held
    the users. The number of cache objects removed (-1: no DVC project)."""
    if not (settings.root / ".dvc").is_dir():
        return -1
    cache = settings.root / ".dvc" / "cache"
    before = sum(1 for p in cache.rglob("*") if p.is_file()) if cache.is_dir() else 0
    dvc = [sys.executable, "-m", "dvc"]
    remote = subprocess.run([*dvc, "remote", "default"], cwd=settings.root, capture_output=True, text=True)
    cloud = ["--cloud"] if remote.returncode == 0 and remote.stdout.strip() else []
    proc = subprocess.run([*dvc, "gc", "--workspace", "--force", *cloud], cwd=settings.root, capture_output=True,
                          text=True)
    if proc.returncode != 0:
        raise RecopsError(f"`dvc gc --workspace{' --cloud' if cloud else ''}` failed (exit {proc.returncode}): "
                          f"{(proc.stderr or proc.stdout)[-500:]}; older data versions holding the users are still "
                          "in DVC's cache: run the forget request again")
    after = sum(1 for p in cache.rglob("*") if p.is_file()) if cache.is_dir() else 0
    return before - after
