"""The promotion history of a registered model: every promotion and rollback, oldest first, kept in its tags.

The history is a JSON list of ``{"action", "from_version", "to_version", "at", "by", "reason"}`` in the
registered-model tag ``recops.promotion_history``. A registered-model tag holds at most 5000 characters in the SQL
stores, so when the list outgrows it the oldest entries move, unchanged, to archive tags
``recops.promotion_history.1``, ``.2``, ...; :func:`promotion_history` reads them back as one list. The registered
model's description shows it as a table (:func:`describe_registered_model`).
"""

from __future__ import annotations

import getpass
import json
import os
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from recops.config import Settings
from recops.errors import RecopsError
from recops.registry import descriptions
from recops.registry.client import not_found, registry_client

if TYPE_CHECKING:
    from mlflow import MlflowClient


HISTORY_TAG = "recops.promotion_history"


# SqlRegisteredModelTag.value is VARCHAR(5000): PostgreSQL refuses longer values (SQLite would silently keep them).
MAX_REGISTERED_MODEL_TAG_VALUE = 5000


# One history entry must always fit in a tag, whatever reason a user typed; the version tag keeps it whole.
_MAX_HISTORY_REASON = 1000


def promotion_history(settings: Settings) -> list[dict[str, Any]]:
    """Every promotion and rollback of ``settings.registry.model_name``, oldest first (empty if none)."""
    client = registry_client(settings)
    try:
        registered = client.get_registered_model(settings.registry.model_name)
    except Exception as exc:
        if not_found(exc):
            return []
        raise
    return read_history(registered.tags or {})


def champion_stack(history: list[dict[str, Any]]) -> list[str]:
    """The champions in force, oldest first, after replaying ``history``: promote pushes, rollback pops.

    A history that starts mid-way (an alias set by hand before the first recorded promotion) still gives a
    usable stack: the ``from_version`` of the first promotion is taken as the champion it replaced.
    """
    stack: list[str] = []
    for entry in history:
        source, target = entry.get("from_version"), entry.get("to_version")
        if entry.get("action") == "rollback":
            if stack and stack[-1] == source:
                stack.pop()
            if target is not None and (not stack or stack[-1] != target):
                stack.append(str(target))
        else:
            if source is not None and (not stack or stack[-1] != source):
                stack.append(str(source))
            if target is not None:
                stack.append(str(target))
    return stack


def history_entry(
    action: str, from_version: str | None, to_version: str, actor: str | None, reason: str
) -> dict[str, Any]:
    short = reason if len(reason) <= _MAX_HISTORY_REASON else reason[: _MAX_HISTORY_REASON - 1] + "…"
    return {
        "action": action,
        "from_version": from_version,
        "to_version": to_version,
        "at": datetime.now(timezone.utc).isoformat(),
        "by": actor or default_actor(),
        "reason": short,
    }


def default_actor() -> str:
    if os.environ.get("USER"):
        return os.environ["USER"]
    try:
        return getpass.getuser()
    except Exception:  # no login name and no passwd entry (some containers)
        return "unknown"


def describe_registered_model(client: MlflowClient, name: str) -> list[dict[str, Any]]:
    """Rewrite recops' sections of the registered model's description (how aliases move, the promotion history
    as a table) from its tags, keeping the rest; returns the history."""
    registered = client.get_registered_model(name)
    history = read_history(registered.tags or {})
    client.update_registered_model(name, description=descriptions.registered_model_description(
        name, history, registered.description))
    return history


def history_tags(model_tags: Mapping[str, str], entry: dict[str, Any]) -> dict[str, str]:
    """The registered-model tags to write: the history with ``entry`` appended, plus an archive tag if needed."""
    current = json.loads(model_tags[HISTORY_TAG]) if model_tags.get(HISTORY_TAG) else []
    kept = [*current, entry]
    archived: list[dict[str, Any]] = []
    while len(_dumps(kept)) > MAX_REGISTERED_MODEL_TAG_VALUE and len(kept) > 1:
        archived.append(kept.pop(0))
    if len(_dumps(kept)) > MAX_REGISTERED_MODEL_TAG_VALUE:  # cannot happen with _MAX_HISTORY_REASON
        raise RecopsError(f"a promotion history entry is longer than {MAX_REGISTERED_MODEL_TAG_VALUE} characters")
    tags = {HISTORY_TAG: _dumps(kept)}
    if archived:
        tags[f"{HISTORY_TAG}.{len(_archive_keys(model_tags)) + 1}"] = _dumps(archived)
    return tags


def read_history(model_tags: Mapping[str, str]) -> list[dict[str, Any]]:
    history: list[dict[str, Any]] = []
    for key in [*_archive_keys(model_tags), HISTORY_TAG]:
        if model_tags.get(key):
            try:
                history.extend(json.loads(model_tags[key]))
            except json.JSONDecodeError:
                raise RecopsError(
                    f"registered-model tag {key} is not valid JSON: it was edited by hand; restore it or delete it"
                ) from None
    return history


def _archive_keys(model_tags: Mapping[str, str]) -> list[str]:
    prefix = f"{HISTORY_TAG}."
    numbers = sorted(int(k[len(prefix):]) for k in model_tags if k.startswith(prefix) and k[len(prefix):].isdigit())
    return [f"{prefix}{n}" for n in numbers]


def _dumps(entries: list[dict[str, Any]]) -> str:
    return json.dumps(entries, separators=(",", ":"), ensure_ascii=False)
