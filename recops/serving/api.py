"""The online API (``recops serve``): FastAPI over the champion's serving bundle, hot-swapped when the alias moves.

Endpoints:

- ``GET /recommendations/{user_id}?k=10[&explain=true][&request_id=...]``: the engine's list
  (``recops.serving.engine``) with original item ids, scores, the model version, a reason per item (none with
  ``serving.reasons: false``: then the answer's schema has ``reason: null`` and ``explain`` adds nothing) and, for
  users the version does not know, the popularity fallback marked as such. A fresh cached list (batch scoring's
  or an earlier answer's, keyed by model version; ``recops.serving.cache``) is served when there is one for at
  least ``k`` items and the user has no live event since; otherwise the list is scored live.
- ``POST /events``: ``{"user_id", "item_id", "timestamp"?, "weight"?}`` (or ``{"events": [...]}``, at most
  1000): appended to the durable event log (JSON lines, flushed and fsynced before the answer, in
  ``serving.event_log_dir``) and applied to the served model at once (history overlay, MF fold-in), so the next
  GET reflects it. An event for a user the version does not know is logged (the next snapshot trains on it) and
  reported as not applied; an unknown item is refused (404). Every event is validated before anything is logged
  or acknowledged, so nothing unreadable reaches the durable log: ``application/json`` only (415), the body read
  in chunks and cut at ``serving.max_body_bytes`` even without Content-Length (413), no NaN / Infinity, integer
  literals of more than 20 digits or nesting too deep to parse (400), ids text by the GET path's rule or integers
  within int64 (a JSON ``true`` is not user 1), timestamps finite and at most a day ahead of the server's clock
  (422, naming the field).
- ``GET /health`` (the process answers), ``GET /ready`` (a model is loaded and verified: 503 until then, with
  details, including the last failed reload and ``alias_warning``: a sentence when the champion alias was moved
  outside recops, e.g. with the registry UI's buttons, else null), ``GET /metrics`` (Prometheus text), ``/docs``
  (OpenAPI).
- Readers: when the environment variable named by ``serving.read_token_env`` (``RECOPS_READ_TOKEN``) holds a token
  (16 characters at least), ``GET /recommendations`` needs ``Authorization: Bearer <token>`` (compared in constant
  time, 401 before anything of the request is looked at); without one the server warns at start that anyone who
  reaches it can read any user's list. ``/health``, ``/ready``, ``/metrics`` and ``/docs`` stay open: they carry
  no user's data (counts, versions, route templates — never a user id).
- Producers: when the environment variable named by ``serving.events_token_env`` (``RECOPS_EVENTS_TOKEN``) holds a
  token (16 characters at least), ``POST /events`` needs ``Authorization: Bearer <token>`` (compared in constant
  time, 401 otherwise); without one the server warns at start that anyone who reaches it can write events.
- ``POST /admin/reload``: look at the registry now. Admin endpoints exist only when the environment variable
  named by ``serving.admin_token_env`` holds a token, and need ``Authorization: Bearer <token>``.

Restart: the events of the durable log that no snapshot has taken in yet (the files not yet moved to
``ingested/``) are applied to the first version a server loads, so a restarted server does not recommend again
what a user consumed before the restart.

Hot swap: a background thread looks at the ``champion`` alias every ``serving.reload_poll_seconds``; when it
points at another version, that version's bundle is downloaded, verified against the registry's sha256, loaded
and the live events received so far are replayed onto it, all while the old model keeps serving; then one
reference assignment switches requests over. A request holds the model it started with, so in-flight requests
finish on the old one. A failed load keeps the old model and is reported in ``/ready`` and the log; its download
is removed at once and the same version is not downloaded again until the alias moves (or ``/admin/reload``).
Download folders are ``<tmp>/recops-serve-<pid>-*``; those of servers that are gone (kill -9) are removed at start.

The server never unpickles: it loads ``.npy`` (``allow_pickle=False``), Parquet, ONNX and LightGBM's text model.
"""


import contextlib
import fcntl
import gc
import hmac
import json
import logging
import os
import shutil
import socket
import tempfile
import threading
import time
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Annotated, Any

import numpy as np
import orjson
import pandas as pd
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from recops.config import ServingConfig, Settings
from recops.data.events import ID_PATTERN, Event, acceptance_problem, parse_strict_json, validation_problems
from recops.errors import RecopsError
from recops.redaction import redact
from recops.registry.mlflow_registry import download_serving_bundle
from recops.privacy import Pseudonymizer, pseudonym
from recops.serving.bundle import check_local_bundle, check_pseudonym_key, load_bundle, verify_bundle
from recops.serving.engine import Recommender, UnknownIdError
from recops.serving.event_log import SharedEventLog
from recops.serving.impressions import ImpressionLog, impressions_folder, served_record
from recops.threads import set_blas_threads

log = logging.getLogger(__name__)

MAX_EVENTS_PER_REQUEST = 1000
MAX_REPLAY_EVENTS = 1_000_000  # live events kept in memory to replay onto a hot-swapped version


# --- what the API answers (its OpenAPI schemas) -----------------------------------------------------------------------

AnyId = int | str  # ids come back in the data's type: integers when data.id_type is integer, text otherwise


class FeatureContribution(BaseModel):
    feature: str
    contribution: float = Field(description="LightGBM pred_contrib: the feature's share of the score")


class Reason(BaseModel):
    because: AnyId | None = Field(description="the item of the user's history this one is most similar to, among "
                                              "those at least serving.min_reason_support other users interacted "
                                              "with together with this one; null for a user without history or "
                                              "when no history item is shared by that many")
    because_title: str | None = Field(None, description="its display name (data.item_attributes.title)")
    similarity: float | None = Field(None, description="cosine similarity of the two items")
    text: str = Field(description="the reason in words", examples=["because you interacted with 50"])
    features: list[FeatureContribution] | None = Field(None, description="explain=true only: the ranker's top "
                                                                         "feature contributions")


class RecommendedItem(BaseModel):
    item_id: AnyId
    title: str | None = Field(None, description="the item's display name (data.item_attributes.title)")
    score: float | None = Field(description="the ranker's score; null in an exploration slot")
    explored: bool = Field(False, description="an exploration slot (serving.exploration), not the ranker's pick")
    reason: Reason | None = Field(None, description="null for the popularity fallback of an unknown user")


class Recommendations(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "user_id": 196, "model_name": "recops-ranker", "model_version": "3",
        "items": [{"item_id": 50, "title": "Star Wars", "score": 1.92, "explored": False,
                   "reason": {"because": 181, "because_title": "Return of the Jedi", "similarity": 0.87,
                              "text": "because you interacted with Return of the Jedi"}}],
        "fallback": None, "cached": False, "cache_source": None, "impression_id": "5f0c2a9e41b7d3c8"}]})

    user_id: AnyId
    model_name: str
    model_version: str = Field(description="the registered version that answered (\"local\" for --bundle)")
    items: list[RecommendedItem]
    fallback: str | None = Field(description="unknown_user: the popularity list; cold_user: known, no history "
                                             "yet; null: the ranker's list")
    cached: bool = Field(description="served from the cache (recops batch-score --cache) instead of scored live")
    cache_source: str | None = Field(None, description="who wrote the cached list (batch / online)")
    impression_id: str | None = Field(None, description="this answer's line in the impression log (the request_id "
                                                        "when one was given); null when serving.impressions is off")


NO_REASONS = "always null: this server gives no reasons (serving.reasons: false)"


class RecommendedItemWithoutReason(RecommendedItem):
    """An item of a server with ``serving.reasons: false``: the schema itself says there is no reason."""

    reason: None = Field(None, description=NO_REASONS)


class RecommendationsWithoutReasons(Recommendations):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "user_id": 196, "model_name": "recops-ranker", "model_version": "3",
        "items": [{"item_id": 50, "title": "Star Wars", "score": 1.92, "explored": False, "reason": None}],
        "fallback": None, "cached": False, "cache_source": None, "impression_id": "5f0c2a9e41b7d3c8"}]})

    items: list[RecommendedItemWithoutReason]


class EventResult(BaseModel):
    user_id: AnyId
    item_id: AnyId
    applied: bool = Field(description="applied to the served model (false: logged for the next snapshot only)")
    fold_in_ms: float | None = None
    detail: str | None = Field(None, description="why it was not applied")


class EventsAccepted(BaseModel):
    recorded: int = Field(description="events written to the durable log")
    model_version: str
    events: list[EventResult]


class Health(BaseModel):
    status: str = "ok"


class EventBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    events: list[Event] = Field(min_length=1, max_length=MAX_EVENTS_PER_REQUEST)


class ModelHolder:
    """The served :class:`Recommender`, how it was loaded, and the hot swap."""

    def __init__(self, settings: Settings, version: str = "champion", bundle_dir: Path | None = None,
                 downloads: Path | None = None) -> None:
        self.settings = settings
        # privacy.pseudonymize: requests name raw ids, everything kept names pseudonyms (no key: no server)
        self.pseudo = Pseudonymizer.from_settings(settings)
        self.requested = str(version)
        self.bundle_dir = bundle_dir  # serve a local bundle (no registry): development and tests
        # what the served bundle is trusted on, for /ready (a local folder's is known once it is loaded)
        self.trust = (None if bundle_dir is not None
                      else "registry: every bundle is checked against the manifest sha256 its version recorded")
        self.current: Recommender | None = None
        self.last_error: str | None = None
        self.last_check: float | None = None
        self.swaps = 0
        # a champion alias moved outside recops (e.g. the registry UI's buttons): said in /ready (checked per move)
        self.alias_warning: str | None = None
        self._alias_checked: str | None = None
        # replayed onto every version this server loads: the events of the durable log no snapshot has taken in
        # yet (logged by any worker of this server, or before a restart), in log order
        self._events: list[dict[str, Any]] = []
        # (version, user) pairs with live events: their cached lists are stale, always score them live
        self.fresh: set[tuple[str, str]] = set()
        self._dropping = False
        self._lock = threading.Lock()       # event application vs. a swap (never taken by a read)
        self._tailing = threading.Lock()    # one thread of this process reads the log at a time
        self._reloading = threading.Lock()
        self._stop = threading.Event()
        remove_stale_download_folders()
        # Bundles are downloaded into a folder private to this server: its own, or (several workers) the one the
        # supervisor made, shared so that a version is downloaded and verified once and its arrays memory-mapped
        # by every worker (the pages are shared; live events write to private copies of the few they change).
        self._tmp = (None if downloads is not None
                     else tempfile.TemporaryDirectory(prefix=f"{TMP_PREFIX}{os.getpid()}-"))
        self.downloads = Path(downloads) if downloads is not None else Path(self._tmp.name)
        self._failed: tuple[str, str] | None = None  # (version, error) of the last failed load: not retried
        self.event_log = SharedEventLog(settings.root / settings.serving.event_log_dir)
        self.event_log.start_tailing()
        self.catch_up()
        if self._events:
            log.info("replaying %d logged event(s) not yet in a snapshot onto the loaded version", len(self._events))

    def _drop_forgotten(self) -> None:
        """Drop the events of users forgotten since they were told (``recops forget`` erased them from the log and
        lists them in ``paths.forgotten``): a version loaded now must not learn them again from memory."""
        from recops.data.forgotten import forgotten_mask

        if not self._events:
            return
        try:
            gone = forgotten_mask(self.settings, pd.Series([str(e["user_id"]) for e in self._events]))
        except RecopsError as exc:
            log.warning("the list of forgotten users could not be read (%s): events kept in memory", exc)
            return
        if gone is not None and gone.any():
            forgotten = {str(e["user_id"]) for e, drop in zip(self._events, gone) if drop}
            self._events = [e for e, drop in zip(self._events, gone) if not drop]
            self.fresh = {(v, u) for v, u in self.fresh if u not in forgotten}
            log.info("dropped %d event(s) of %d forgotten user(s) from memory", int(gone.sum()), len(forgotten))

    # --- loading ----------------------------------------------------------------------------------------------

    def target_version(self) -> str:
        from recops.registry.mlflow_registry import resolve_version

        return str(resolve_version(self.settings, self.requested))

    def load(self, version: str | None = None, force: bool = False) -> Recommender:
        """Download (registry) or open (local) a bundle, verify it and build the engine; not yet served."""
        cfg = self.settings
        if self.bundle_dir is not None:
            # a registered version's bundle changed since registration is refused; any other folder is served on
            # its own manifest, and /ready and the log say so
            trust = check_local_bundle(cfg, self.bundle_dir)
            (log.info if trust.version is not None else log.warning)("%s", trust.statement)
            bundle = load_bundle(self.bundle_dir, trust.manifest_sha256)
            self.trust = trust.statement
            number = version or "local"
        else:
            number = version or self.target_version()
            bundle = load_bundle(*self._fetch(number, force))
        check_pseudonym_key(bundle.manifest, None if self.pseudo is None else self.pseudo.fingerprint, number)
        model = Recommender(bundle, cfg.serving, number, cfg.registry.model_name)
        model.recommend(model.user_ids[0], 1)  # warm-up: the first request should not pay for lazy imports
        return model

    def _failure_file(self, number: str) -> Path:
        return self.downloads / f".failed-v{number}"

    def _fetch(self, number: str, force: bool = False) -> tuple[Path, str]:
        """(folder, manifest sha256 the registry recorded) of version ``number``, downloaded and verified once per
        server: under an exclusive lock on the downloads folder, a worker that finds the version there (marked
        verified by whichever worker downloaded it) uses it; otherwise it downloads to a scratch folder (removed
        at once if the download or the verification fails), verifies it, and renames it into place."""
        final = self.downloads / f"v{number}"
        marker = final / VERIFIED_MARKER
        with _exclusive(self.downloads / ".lock"):
            if marker.is_file():
                return final, marker.read_text(encoding="utf-8").strip()
            failure = self._failure_file(number)
            if failure.is_file() and not force:
                raise FailedElsewhere(failure.read_text(encoding="utf-8"))
            scratch = self.downloads / f".v{number}-{uuid.uuid4().hex[:8]}"
            try:
                folder, expected, _ = download_serving_bundle(self.settings, number, scratch)
                verify_bundle(folder, expected)
                shutil.rmtree(final, ignore_errors=True)
                folder.rename(final)
                marker.write_text(expected + "\n", encoding="utf-8")
                failure.unlink(missing_ok=True)
            except Exception as exc:  # the other workers will not download it again (until the alias moves)
                failure.write_text(redact(f"loading version {number} failed: {exc}"), encoding="utf-8")
                raise
            finally:
                shutil.rmtree(scratch, ignore_errors=True)  # a failed download never stays on disk
            # older versions go (a worker still serving one keeps its memory-mapped pages: unlinking does not
            # unmap); the one being replaced stays for in-flight requests that read its LightGBM text to explain
            keep = {final.name} | ({f"v{self.current.version}"} if self.current is not None else set())
            for old in self.downloads.iterdir():
                if old.is_dir() and old.name not in keep and not old.name.startswith("."):
                    shutil.rmtree(old, ignore_errors=True)
        return final, expected

    def reload(self, force: bool = False) -> dict[str, Any]:
        """Swap to the version the alias names now, if it changed; returns what happened. Never raises. A version
        that failed to load is not downloaded again until the alias moves (or ``force``: the admin endpoint)."""
        if not self._reloading.acquire(blocking=False):
            return {"changed": False, "detail": "a reload is already running"}
        try:
            self.last_check = time.time()
            try:
                target = "local" if self.bundle_dir is not None else self.target_version()
            except Exception as exc:  # the registry is away: keep serving
                self.last_error = redact(f"could not resolve {self.requested!r}: {exc}")
                log.warning("%s", self.last_error)
                return {"changed": False, "error": self.last_error}
            current = self.current
            if self._failed is not None and self._failed[0] != target:
                # the alias moved since that failure: a later move back retries it (in every worker)
                self._failure_file(self._failed[0]).unlink(missing_ok=True)
                self._failed = None
            if target != self._alias_checked:
                self._check_alias(target)
            if current is not None and current.version == target:
                return {"changed": False, "version": target}
            if not force and self._failed is not None:
                return {"changed": False, "error": self._failed[1]}
            started = time.perf_counter()
            try:
                model = self.load(target if self.bundle_dir is None else None, force)
                with self._lock:
                    self._drop_forgotten()
                    for event in self._events:  # what this server was told since it started
                        try:
                            model.add_event(**event)
                            self.fresh.add((model.version, str(event["user_id"])))
                        except UnknownIdError:
                            pass
                    previous, self.current = self.current, model  # the swap: one reference assignment
                    self.swaps += previous is not None
                previous_version = previous.version if previous is not None else None
                del previous  # the old model is freed once its in-flight requests end
                # The loaded arrays and lookups are long-lived: move them out of the cyclic GC's generations so
                # that a full collection (a pause proportional to the live objects) never scans them.
                gc.collect()
                gc.freeze()
            except FailedElsewhere as exc:  # another worker of this server tried it: not downloaded again
                self.last_error = redact(f"{exc}; still serving " + (
                    f"version {current.version}" if current is not None else "nothing"))
                log.info("version %s is not loaded: another worker of this server could not load it", target)
                self._failed = (target, self.last_error)
                return {"changed": False, "error": self.last_error}
            except Exception as exc:
                self.last_error = redact(f"loading version {target} failed, still serving " + (
                    f"version {current.version}" if current is not None else "nothing") + f": {exc}")
                log.error("%s", self.last_error)
                self._failed = (target, self.last_error)
                if self.bundle_dir is None:
                    self._failure_file(target).write_text(self.last_error, encoding="utf-8")
                return {"changed": False, "error": self.last_error}
            self.last_error, self._failed = None, None
            log.info("serving version %s (was %s), loaded in %.1f s", target,
                     previous_version or "none", time.perf_counter() - started)
            return {"changed": True, "version": target, "previous": previous_version,
                    "seconds": time.perf_counter() - started}
        finally:
            self._reloading.release()

    def _check_alias(self, target: str) -> None:
        """Once per alias move: whether recops put the champion there (its promotion history agrees)."""
        if self.bundle_dir is not None or self.requested != "champion":
            return
        from recops.registry.promotion import champion_alias_check

        try:
            self.alias_warning = champion_alias_check(self.settings)["warning"]
        except Exception as exc:  # the registry is away: no verdict, asked again at the next poll
            log.warning("could not compare the champion alias with the promotion history: %s", redact(str(exc)))
            return
        self._alias_checked = target
        if self.alias_warning:
            log.warning("%s", self.alias_warning)

    def start_polling(self) -> None:
        interval = self.settings.serving.reload_poll_seconds
        if interval <= 0 or self.bundle_dir is not None:
            return

        def poll() -> None:
            while not self._stop.wait(interval):
                self.reload()

        threading.Thread(target=poll, name="recops-reload", daemon=True).start()

    def catch_up(self) -> int:
        """Apply the events other workers logged since this one last looked (in log order; one ``stat`` when
        there are none) and keep them for replay; return how many were applied. Called before every answer, so
        an event acknowledged by any worker shows in the next answer of every worker."""
        if not self.event_log.has_news():
            return 0
        applied = 0
        with self._tailing:
            for event in self.event_log.read_new():
                with self._lock:
                    model = self.current
                    if model is not None:
                        try:
                            model.add_event(**event)
                            applied += 1
                        except UnknownIdError:
                            pass
                    self._record(model.version if model is not None else None, event)
        return applied

    def apply_event(self, event: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """Apply ``event`` to the served model and keep it for replay, atomically with respect to a swap (an event
        is either replayed onto the new version or applied to it, never lost between them)."""
        with self._lock:
            model = self.current
            if model is None:
                raise HTTPException(503, detail="no model loaded yet: see /ready")
            change = model.add_event(**event)  # UnknownIdError: not kept
            self._record(model.version, event)
            return model.version, change

    def _record(self, version: str | None, event: dict[str, Any]) -> None:
        """Keep ``event`` for replay (the caller holds the lock)."""
        if len(self._events) >= MAX_REPLAY_EVENTS:
            if not self._dropping:
                log.warning("%d live events since start: older ones will not be replayed onto a newly loaded "
                            "version (ingest a snapshot: recops snapshot)", MAX_REPLAY_EVENTS)
                self._dropping = True
            del self._events[0]
        self._events.append(event)
        if version is not None:
            self.fresh.add((version, str(event["user_id"])))

    def close(self) -> None:
        self._stop.set()
        if self._tmp is not None:
            self._tmp.cleanup()


VERIFIED_MARKER = ".verified-manifest-sha256"


class FailedElsewhere(RecopsError):
    """A version another worker of this server already failed to load (its error is the message)."""


@contextlib.contextmanager
def _exclusive(path: Path):
    """An exclusive ``flock`` on ``path`` (created if missing), across the worker processes of a server."""
    with path.open("a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        yield


MIN_TOKEN_CHARS = 16
TMP_PREFIX = "recops-serve-"


def remove_stale_download_folders(root: Path | None = None) -> list[Path]:
    """Remove the bundle download folders of servers that are gone (``recops-serve-<pid>-*`` of a pid that no
    longer runs: a kill -9 skips the cleanup at shutdown); return what was removed."""
    removed = []
    for folder in Path(root or tempfile.gettempdir()).glob(f"{TMP_PREFIX}*"):
        pid = folder.name[len(TMP_PREFIX):].split("-", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
            continue  # that server still runs
        except ProcessLookupError:
            pass
        except PermissionError:
            continue  # another user's process
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    if removed:
        log.info("removed %d download folder(s) of servers that are gone", len(removed))
    return removed


def configured_token(env: str) -> str | None:
    """The token in environment variable ``env`` (None when unset or empty); a RecopsError when it is too short
    to be a secret."""
    token = os.environ.get(env) or None
    if token is not None and len(token) < MIN_TOKEN_CHARS:
        raise RecopsError(f"{env} holds a token of {len(token)} characters: use at least {MIN_TOKEN_CHARS} "
                          f"(e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')")
    return token


def check_tokens(cfg: ServingConfig) -> dict[str, str | None]:
    """The configured tokens (admin, events, read) of ``serving``: a RecopsError before anything starts when one is
    too short, so that a server never runs with a guessable secret (or, with several workers, each worker dies
    on it in turn)."""
    return {env: configured_token(env) for env in (cfg.admin_token_env, cfg.events_token_env, cfg.read_token_env)}


def bearer_matches(request: Request, token: str | None) -> bool:
    """True without a configured token; otherwise whether ``Authorization: Bearer <token>`` was sent (compared in
    constant time)."""
    if token is None:
        return True
    sent = request.headers.get("authorization", "")
    return hmac.compare_digest(sent.encode("utf-8", "replace"), f"Bearer {token}".encode())


async def bounded_body(request: Request, limit: int) -> bytes:
    """The request body, read chunk by chunk and refused (413) as soon as it passes ``limit`` bytes — a chunked
    body without Content-Length never sits in memory whole."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, detail=f"request body larger than serving.max_body_bytes = {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_event_json(body: bytes) -> Any:
    """The JSON of an events body, or a 400 naming what is wrong: not UTF-8 JSON, NaN / Infinity (not JSON,
    although Python's parser takes them), integers longer than any id or timestamp, nesting too deep."""
    try:
        return parse_strict_json(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise HTTPException(400, detail=f"the body is not JSON: {exc}") from None
    except ValueError as exc:
        raise HTTPException(400, detail=f"the body is not acceptable JSON: {exc}") from None
    except RecursionError:
        raise HTTPException(400, detail="the body is not acceptable JSON: nested too deeply") from None


def inlined_schema(model: type[BaseModel]) -> dict[str, Any]:
    """``model``'s JSON schema with its ``$defs`` put in place: pasted into an OpenAPI document, a ``#/$defs/..``
    reference would point at the document's root, where ReDoc finds nothing and shows only an error."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return resolve(defs[ref.removeprefix("#/$defs/")])
            return {key: resolve(value) for key, value in node.items()}
        return [resolve(value) for value in node] if isinstance(node, list) else node

    return resolve(schema)


def _plain_id(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


# ReDoc 2.x draws the Redocly logo of its "API docs by Redocly" footer from cdn.redoc.ly, with no option to turn it
# off; it leaves the image out when loading fails. /redoc serves fastapi-offline's copy with that one address
# replaced by an empty data: URL, so the page makes no request beyond this server.
REDOC_JS_URL = "/docs-assets/redoc.standalone.js"
_REDOC_LOGO = b"https://cdn.redoc.ly/redoc/logo-mini.svg"


def offline_redoc_script() -> bytes:
    """fastapi-offline's ``redoc.standalone.js`` with the Redocly footer logo's CDN address replaced by ``data:,``."""
    import fastapi_offline

    script = (Path(fastapi_offline.__file__).parent / "static" / "redoc.standalone.js").read_bytes()
    return script.replace(_REDOC_LOGO, b"data:,")


def edge_pseudonym(pseudo: Pseudonymizer, raw: Any, typed: bool = False) -> Any:
    """The pseudonym a raw id from a request is kept and looked up as (text; the data's id type with ``typed``).
    A value that is no id of the data's type still gets one (of its text): an unknown user, never a raw id kept."""
    value = pseudo.one(raw)
    if value is None:
        value = pseudonym(pseudo.key, str(raw))
    return value if typed else str(value)


class ValidationProblem(BaseModel):
    """A 422: what was wrong with which parameter (FastAPI's validation error shape)."""

    detail: list[dict[str, Any]]


def recommendation_query(cfg: ServingConfig) -> type[BaseModel]:
    """The parameters of ``GET /recommendations/{user_id}`` (the path's user id and the query) as one model."""
    explain_text = ("add the ranker's top feature contributions to each reason" if cfg.reasons
                    else "ignored: this server gives no reasons (serving.reasons: false)")

    class RecommendationQuery(BaseModel):
        model_config = ConfigDict(extra="ignore")  # unknown query parameters are ignored, as FastAPI does

        user_id: str = Field(pattern=ID_PATTERN, description="the user's original id")
        k: int = Field(cfg.default_k, ge=1, le=cfg.max_k, description="list length")
        explain: bool = Field(False, description=explain_text)
        request_id: str | None = Field(None, max_length=128, pattern=ID_PATTERN,
                                       description="the caller's id of this request: the impression's id, and "
                                                   "the seed of its exploration slots; never cached")

    return RecommendationQuery


def openapi_parameters(model: type[BaseModel], path: set[str]) -> list[dict[str, Any]]:
    """OpenAPI parameter objects of ``model``'s fields (``path``: those in the URL path, the others query)."""
    schema = model.model_json_schema()
    out = []
    for name, field in schema["properties"].items():
        field = dict(field)
        description = field.pop("description", None)
        field.pop("title", None)
        out.append({"name": name, "in": "path" if name in path else "query",
                    "required": name in schema.get("required", ()), "schema": field,
                    **({"description": description} if description else {})})
    return out


EMPTY_REASON = dict.fromkeys(Reason.model_fields)  # every field of a reason, in order: what an answer spells out


def full_reason(reason: dict[str, Any] | None) -> dict[str, Any] | None:
    """``reason`` (the engine's, which leaves out what it has no value for) with every field of :class:`Reason`,
    as the documented answer has them."""
    return None if reason is None else {**EMPTY_REASON, **reason}


def json_answer(payload: dict[str, Any]) -> Response:
    """``payload`` as a JSON answer, encoded by orjson. FastAPI would validate a returned dict against the route's
    response model and then serialise it: 3.5 % of a worker's time under load (py-spy, BENCHMARKS.md "Serving:
    three cuts of the request path"). The answers are built here from plain values, and a test checks each kind
    against the documented model (test_serving's ``test_every_kind_of_answer_is_exactly_the_documented_model``)."""
    return Response(orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json")


def echoed_id(raw: str, id_type: str) -> Any:
    """The id a request named, answered in the data's id type (an integer for integer ids)."""
    digits = raw[1:] if raw.startswith("-") else raw
    if id_type == "integer" and digits.isascii() and digits.isdigit():
        return int(raw)
    return raw


class Measured:
    """The app's outer layer, plain ASGI: refuses a declared body above ``serving.max_body_bytes`` (413) before
    anything reads it, and counts every answer and its latency by route. Starlette's ``@app.middleware("http")``
    did the same through a task group and memory streams per request: ~0.3 ms of a ~2.5 ms live request."""

    def __init__(self, app, max_body_bytes: int, requests_total, latency) -> None:
        self.app, self.max_body_bytes = app, max_body_bytes
        self.requests_total, self.latency = requests_total, latency

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        length = next((value.decode("latin-1") for name, value in scope["headers"] if name == b"content-length"),
                      None)
        status = 500
        if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
            status = 413
            await JSONResponse({"detail": f"request body larger than serving.max_body_bytes = "
                                          f"{self.max_body_bytes} bytes"}, status_code=413)(scope, receive, send)
        else:
            async def sending(message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                await send(message)

            try:
                await self.app(scope, receive, sending)
            except Exception:  # a server error: counted like any answer, then Starlette's 500
                self.requests_total.labels(getattr(scope.get("route"), "path", "unmatched"), "500").inc()
                raise
        endpoint = getattr(scope.get("route"), "path", "unmatched")
        self.requests_total.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(time.perf_counter() - started)


def create_app(settings: Settings, version: str = "champion", bundle_dir: Path | None = None,
               load: bool = True, downloads: Path | None = None) -> FastAPI:
    """The API. ``load=False`` defers the first load to the app's startup (``recops serve``); tests load now."""
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

    from recops.serving.cache import make_cache

    cfg = settings.serving
    set_blas_threads(cfg.threads)  # this process serves: its BLAS pools at serving.threads for good
    holder = ModelHolder(settings, version, bundle_dir, downloads=downloads)
    cache = make_cache(cfg.cache, settings.registry.model_name)
    impressions = (ImpressionLog(impressions_folder(settings.root / cfg.event_log_dir), cfg.impressions.flush_seconds,
                                 cfg.impressions.max_buffer) if cfg.impressions.enabled else None)

    # Several worker processes (``run_workers`` sets PROMETHEUS_MULTIPROC_DIR before they start): each writes its
    # values to files there and /metrics sums the counters and histograms over all of them, whichever answers.
    multiprocess_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    registry = None if multiprocess_dir else CollectorRegistry()
    requests_total = Counter("recops_requests_total", "HTTP requests", ["endpoint", "status"], registry=registry)
    latency = Histogram("recops_request_seconds", "request latency", ["endpoint"], registry=registry,
                        buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5))
    cache_lookups = Counter("recops_cache_lookups_total", "cache lookups", ["result"], registry=registry)
    events_total = Counter("recops_events_total", "events received", ["applied"], registry=registry)
    model_version = Gauge("recops_model_version", "served model version (0: local bundle)", registry=registry,
                          multiprocess_mode="mostrecent")
    swaps = Gauge("recops_model_swaps", "hot swaps since start (the most of any worker)", registry=registry,
                  multiprocess_mode="max")

    def exposition() -> bytes:
        if registry is not None:
            return generate_latest(registry)
        from prometheus_client import multiprocess

        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged, path=multiprocess_dir)
        return generate_latest(merged)

    # /docs and /redoc from the package's own copies of Swagger UI and ReDoc: they work without internet
    app = FastAPIOffline(title="recops", version="1", description="Recommendations from the registered champion.",
                         redoc_url=None)
    redoc_js = offline_redoc_script()

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(openapi_url=app.openapi_url, title="recops - ReDoc", redoc_js_url=REDOC_JS_URL,
                              with_google_fonts=False, redoc_favicon_url="/static-offline-docs/favicon.png")

    @app.get(REDOC_JS_URL, include_in_schema=False)
    async def redoc_script() -> Response:
        return Response(redoc_js, media_type="text/javascript", headers={"Cache-Control": "public, max-age=86400"})
    app.state.holder, app.state.cache, app.state.impressions = holder, cache, impressions

    def admin_token() -> str | None:
        return configured_token(cfg.admin_token_env)

    tokens = check_tokens(cfg)
    if tokens[cfg.events_token_env] is None:
        log.warning("POST /events accepts events from anyone who reaches this server: set %s to a token (at least "
                    "%d characters) to require Authorization: Bearer <token>", cfg.events_token_env, MIN_TOKEN_CHARS)
    read_token = tokens[cfg.read_token_env]
    if read_token is None:
        log.warning("GET /recommendations answers anyone who reaches this server, for any user%s: set %s to a token "
                    "(at least %d characters) to require Authorization: Bearer <token>",
                    " (and its reasons name the items of their history)" if cfg.reasons else "", cfg.read_token_env,
                    MIN_TOKEN_CHARS)
    read_needs = f"GET /recommendations needs Authorization: Bearer <the token in {cfg.read_token_env}>"
    bearer = HTTPBearer(auto_error=False, scheme_name="readToken",
                        description=f"the token in {cfg.read_token_env} (reads need it when it is set)")

    async def reader(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> None:
        """A dependency, so that it runs before the request's parameters are validated: without the token, nothing
        of the request (not even whether the user id is well formed) is looked at. Constant-time comparison; the
        401 names the variable, never the token."""
        sent = credentials.credentials if credentials is not None else ""
        if not hmac.compare_digest(sent.encode("utf-8", "replace"), read_token.encode()):
            raise HTTPException(401, detail=read_needs, headers={"WWW-Authenticate": "Bearer"})

    read_guard = [Depends(reader)] if read_token is not None else []
    unauthorised = ({401: {"description": read_needs, "content": {"application/json": {"example": {
        "detail": read_needs}}}}} if read_token is not None else {})

    app.add_middleware(Measured, max_body_bytes=cfg.max_body_bytes, requests_total=requests_total, latency=latency)

    @app.exception_handler(RecopsError)
    async def recops_error(request: Request, exc: RecopsError):
        return JSONResponse({"detail": redact(str(exc))}, status_code=400)

    def served() -> Recommender:
        model = holder.current
        if model is None:
            raise HTTPException(503, detail="no model loaded yet: see /ready")
        return model

    # Scored on the event loop, not in the thread pool: a worker has one core, and threads taking turns on the GIL
    # only add switches (BENCHMARKS.md, "Serving throughput by worker processes, under wrk"); a slow request
    # delays the next ones of its worker alone.
    query = recommendation_query(cfg)

    @app.get("/recommendations/{user_id}", summary="Top-k items for a user",
             response_model=Recommendations if cfg.reasons else RecommendationsWithoutReasons,
             dependencies=read_guard, responses={**unauthorised, 422: {"model": ValidationProblem,
                                                                       "description": "Validation Error"}},
             openapi_extra={"parameters": openapi_parameters(query, path={"user_id"})})
    async def recommendations(request: Request) -> Response:
        # the parameters of RecommendationQuery, validated by pydantic in one call: FastAPI's per-parameter
        # handling cost ~0.15 ms of a ~2.5 ms request (BENCHMARKS.md, "Compressed retrieval")
        try:
            asked_for = query.model_validate({**request.query_params, "user_id": request.path_params["user_id"]})
        except ValidationError as exc:
            raise RequestValidationError([{**error, "loc": ("path" if error["loc"][:1] == ("user_id",) else
                                                            "query", *error["loc"])}
                                          for error in exc.errors(include_url=False)]) from None
        user_id, k, explain, request_id = (asked_for.user_id, asked_for.k, asked_for.explain,
                                           asked_for.request_id)
        holder.catch_up()  # what other workers were told: an acknowledged event shows in every worker's answer
        model = served()  # this request's model, whatever a swap does meanwhile
        explain = explain and cfg.reasons  # nothing to explain without reasons: the answer may come from the cache
        asked = user_id
        if holder.pseudo is not None:  # from here on the user is their pseudonym: the cache, the log, the engine
            user_id = edge_pseudonym(holder.pseudo, user_id)
        answer = {"user_id": (model.original_user_id(user_id) if holder.pseudo is None
                              else echoed_id(asked, settings.data.id_type)),
                  "model_name": model.model_name, "model_version": model.version}
        cacheable = not explain and request_id is None
        if cacheable and (model.version, user_id) not in holder.fresh:
            hit = cache.get(model.version, user_id, k)
            if hit is not None:
                cache_lookups.labels("hit").inc()
                kept = [(j, score) for j, score in ((model.item_index(i), s) for i, s in zip(hit.items, hit.scores))
                        if j is not None]
                dense = np.array([j for j, _ in kept], dtype=np.int64)
                reasons = model.reasons_for(user_id, dense)
                items = [{"item_id": _plain_id(model.item_ids[j]), "title": model.title(j), "score": score,
                          "explored": False, "reason": full_reason(reason)}
                         for (j, score), reason in zip(kept, reasons)]
                # a cached list is shown as it is: every position deterministic
                shown = logged(user_id, model.version, [i["item_id"] for i in items], [1.0] * len(items),
                               [False] * len(items), True, None, request_id)
                return json_answer({**answer, "items": items, "fallback": None, "cached": True,
                                    "cache_source": hit.source, "impression_id": shown})
            cache_lookups.labels("miss").inc()
        rec = model.recommend(user_id, k, request_id=request_id, explain=explain)
        if cacheable and rec.fallback is None and not any(rec.explored):
            cache.put(model.version, user_id, [str(i) for i in rec.items], [float(s) for s in rec.scores])
        items = [{"item_id": item, "title": model.title(model.item_index(item)), "score": rec.scores[n],
                  "explored": bool(rec.explored and rec.explored[n]),
                  "reason": full_reason(rec.reasons[n]) if rec.reasons else None}
                 for n, item in enumerate(rec.items)]
        shown = logged(user_id, model.version, rec.items, rec.propensities or [1.0] * len(rec.items),
                       rec.explored or [False] * len(rec.items), False, rec.fallback, request_id)
        return json_answer({**answer, "items": items, "fallback": rec.fallback, "cached": False, "cache_source": None,
                            "impression_id": shown})

    def logged(user_id: Any, version: str, items: list[Any], propensities: list[float | None],
               explored: list[bool], cached: bool, fallback: str | None, request_id: str | None) -> str | None:
        """Queue the answer's impression (no I/O here); its id, or None with the log off."""
        if impressions is None:
            return None
        impression_id = request_id or uuid.uuid4().hex[:16]
        impressions.record(served_record(impression_id, _plain_id(user_id), version, [_plain_id(i) for i in items],
                                         propensities, explored, cached, fallback))
        return impression_id

    @app.post("/events", status_code=202, summary="Record interactions and apply them to the served model",
              openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": {
                  "anyOf": [Event.model_json_schema(), inlined_schema(EventBatch)]}}}}})
    async def events(request: Request) -> EventsAccepted:
        if not bearer_matches(request, configured_token(cfg.events_token_env)):
            raise HTTPException(401, detail=f"POST /events needs Authorization: Bearer <the token in "
                                            f"{cfg.events_token_env}>", headers={"WWW-Authenticate": "Bearer"})
        media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type != "application/json":
            raise HTTPException(415, detail=f"POST /events takes application/json, not {media_type or 'no type'!r}")
        body = await bounded_body(request, cfg.max_body_bytes)
        payload = parse_event_json(body)
        try:
            batch = (EventBatch.model_validate(payload) if isinstance(payload, dict) and "events" in payload
                     else EventBatch(events=[Event.model_validate(payload)]))
        except ValidationError as exc:
            raise HTTPException(422, detail=f"invalid event: {validation_problems(exc)}") from None
        holder.catch_up()
        for n, event in enumerate(batch.events):
            problem = acceptance_problem(event, settings)
            if problem is not None:
                where = f"events.{n}." if len(batch.events) > 1 or "events" in payload else ""
                raise HTTPException(422, detail=f"invalid event: {where}{problem}; no event of this request was "
                                                "recorded")
        asked = [event.user_id for event in batch.events]
        if holder.pseudo is not None:  # the durable log and the engine never see a raw user id
            pseudonyms = [edge_pseudonym(holder.pseudo, event.user_id, typed=True) for event in batch.events]
            batch = EventBatch(events=[event.model_copy(update={"user_id": pseudonym})
                                       for event, pseudonym in zip(batch.events, pseudonyms)])
        model = served()
        records = []
        for event in batch.events:
            if model.item_index(event.item_id) is None:
                raise HTTPException(404, detail=f"item {event.item_id!r} is not in the catalogue of version "
                                                f"{model.version}: no event of this request was recorded")
            received = time.time()
            # a client clock a little ahead (Event allows a day) is clamped to the server's: the snapshot's
            # validation takes no interaction after its own run
            records.append({"user_id": str(event.user_id), "item_id": str(event.item_id),
                            "timestamp": min(event.timestamp, received) if event.timestamp is not None else received,
                            "weight": event.weight, "received_at": received})
        holder.event_log.append(records)
        def ids(record: dict[str, Any], raw: Any) -> dict[str, Any]:  # in the data's id type, as GET answers them
            return {"user_id": (model.original_user_id(record["user_id"]) if holder.pseudo is None
                                else echoed_id(str(raw), settings.data.id_type)),
                    "item_id": _plain_id(model.item_ids[model.item_index(record["item_id"])])}

        results = []
        for record, raw in zip(records, asked):
            event = {k: record[k] for k in ("user_id", "item_id", "timestamp", "weight")}
            try:
                applied_to, change = holder.apply_event(event)
                try:  # the user is in holder.fresh: their cached list is bypassed even if this fails
                    cache.invalidate(applied_to, record["user_id"])
                except RecopsError as exc:
                    log.warning("cache invalidation failed: %s", exc)
                events_total.labels("true").inc()
                results.append({**ids(record, raw), "applied": True,
                                "fold_in_ms": round(change["fold_in_ms"], 3)})
            except UnknownIdError as exc:
                events_total.labels("false").inc()
                detail = redact(str(exc))
                if holder.pseudo is not None:  # the engine names the pseudonym: say it of the id the client sent
                    detail = detail.replace(str(record["user_id"]), str(raw))
                results.append({**ids(record, raw), "applied": False, "detail": detail})
        return EventsAccepted(recorded=len(records), model_version=model.version,
                              events=[EventResult(**r) for r in results])

    @app.get("/health", summary="The process answers")
    def health() -> Health:
        return Health()

    @app.get("/ready", summary="A model is loaded and verified")
    def ready() -> JSONResponse:
        holder.catch_up()  # events_applied counts what every worker was told
        model = holder.current
        details = {"requested": holder.requested, "last_error": holder.last_error, "last_check": holder.last_check,
                   "swaps": holder.swaps, "cache": cache.backend, "trust": holder.trust,
                   "alias_warning": holder.alias_warning}
        if model is None:
            return JSONResponse({"ready": False, **details}, status_code=503)
        return JSONResponse({"ready": True, **model.describe(), **details})

    @app.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
    def metrics() -> PlainTextResponse:
        model = holder.current
        model_version.set(float(model.version) if model is not None and model.version.isdigit() else 0.0)
        swaps.set(holder.swaps)
        return PlainTextResponse(exposition().decode() + online_lines(), media_type="text/plain; version=0.0.4")

    online_report = settings.path("monitoring_dir") / "online.json"

    def online_lines() -> str:
        """The last ``recops monitor`` report's latest day per version (online CTR, coverage, ...)."""
        from recops.monitoring.online import prometheus_lines

        try:
            return prometheus_lines(json.loads(online_report.read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError, TypeError):  # none yet, or being rewritten: next scrape
            return ""

    if admin_token() is not None:
        @app.post("/admin/reload", summary="Look at the registry now and swap if the alias moved")
        def admin_reload(request: Request) -> dict[str, Any]:
            if not bearer_matches(request, admin_token()):
                raise HTTPException(401, detail="admin endpoints need Authorization: Bearer <token>")
            return holder.reload(force=True)

    @app.on_event("startup")
    def startup() -> None:
        if holder.current is None:
            holder.reload()
        holder.start_polling()
        if impressions is not None:
            impressions.start()

    @app.on_event("shutdown")
    def shutdown() -> None:
        holder.close()
        cache.close()
        if impressions is not None:
            impressions.close()

    if load:
        outcome = holder.reload()
        if holder.current is None:
            raise RecopsError(outcome.get("error") or "no model could be loaded")
    return app



# --- several worker processes ---------------------------------------------------------------------------------------

WORKER_ENV = "RECOPS_SERVE_WORKER"  # what the supervisor tells each worker process (JSON)


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def worker_app() -> FastAPI:
    """The app of one worker process of ``recops serve --workers N`` (uvicorn's factory): the settings, version
    and shared downloads folder come from the supervisor through :data:`WORKER_ENV`."""
    from recops.config import load_settings
    from recops.entry import configure_logging, prepare_environment

    spec = json.loads(os.environ[WORKER_ENV])
    params = Path(spec["params"])
    prepare_environment(params.parent)
    configure_logging(int(spec["log_level"]))
    settings = load_settings(params)
    return create_app(settings, version=spec["version"], load=False, downloads=Path(spec["downloads"]),
                      bundle_dir=Path(spec["bundle"]) if spec["bundle"] else None)


def _first_load(params: str, version: str, bundle: str, downloads: str) -> dict[str, str]:
    """Load the version as a worker will (download, verify, build the engine); a RecopsError if it cannot be."""
    from recops.config import load_settings
    from recops.entry import configure_logging, prepare_environment

    prepare_environment(Path(params).parent)
    configure_logging(logging.WARNING)
    holder = ModelHolder(load_settings(Path(params)), version, Path(bundle) if bundle else None,
                         downloads=Path(downloads))
    outcome = holder.reload()
    if holder.current is None:
        raise RecopsError(outcome.get("error") or "no model could be loaded")
    return {"model_name": holder.current.model_name, "version": holder.current.version}


def run_workers(settings: Settings, params: Path, version: str, bundle_dir: Path | None, host: str, port: int,
                workers: int, log_level: int = logging.INFO, ready: Any = None) -> None:
    """Serve with ``workers`` processes on one port (uvicorn's supervisor restarts a worker that dies).

    The supervisor first loads the version once, as a worker would: a version that cannot be served stops here,
    before any port opens, and its verified bundle is left in the downloads folder the workers share. Every
    worker memory-maps that bundle, appends to the one event log and tails it (:mod:`recops.serving.event_log`),
    and follows the alias on its own (the first worker to see a new version downloads and verifies it, the
    others find it verified)."""
    import uvicorn

    import multiprocessing

    check_tokens(settings.serving)  # a short token stops here, not in every worker in turn
    downloads = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{os.getpid()}-"))
    try:
        # in a child process, so that the supervisor does not keep a loaded model's memory (and imports) for life
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            loaded = pool.apply(_first_load, (str(Path(params).resolve()), version,
                                              str(bundle_dir.resolve()) if bundle_dir else "", str(downloads)))
        if ready is not None:
            ready(SimpleNamespace(**loaded))
        metrics_dir = downloads / ".metrics"
        metrics_dir.mkdir()
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
        os.environ[WORKER_ENV] = json.dumps({"params": str(Path(params).resolve()), "version": version,
                                             "bundle": str(bundle_dir.resolve()) if bundle_dir else "",
                                             "downloads": str(downloads), "log_level": log_level})
        from uvicorn.supervisors import Multiprocess

        config = uvicorn.Config("recops.serving.api:worker_app", factory=True, host=host, port=port,
                                workers=workers, log_level="warning", access_log=False)
        sock = config.bind_socket()
        # uvicorn binds the shared socket without a protocol number, so asyncio (which checks ``sock.proto``) does
        # not set TCP_NODELAY on the connections the workers accept: every small answer then waited for the
        # client's delayed ACK, ~40 ms (175 req/s at 8 connections on /health). Linux copies the option from the
        # listening socket to the accepted ones.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        Multiprocess(config, sockets=[sock]).run()
    finally:
        shutil.rmtree(downloads, ignore_errors=True)
