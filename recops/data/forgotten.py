"""The list of forgotten users (``paths.forgotten``): salted SHA-256 hashes of the stored ids of users who asked to
be forgotten, which ingest, snapshot staging and the servers drop from any source.

This module owns the list's format: reading it, testing ids against it, adding to it. The forget request itself
(purging caches, rewriting sources, erasing registry artifacts) is :mod:`recops.forget`, which this data-layer
module must not import.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from typing import Any

import numpy as np
import pandas as pd

from recops.config import Settings
from recops.errors import RecopsError

_TOKEN_LABEL = b"recops forgotten user v1\0"


def _read_list(settings: Settings) -> dict[str, Any]:
    path = settings.path("forgotten")
    if not path.is_file():
        return {"salt": None, "tokens": []}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise RecopsError(f"{path}: the list of forgotten users is unreadable; restore it from DVC or git "
                          "(`dvc checkout`) before ingesting: without it forgotten users would come back") from None
    if not isinstance(data, dict) or not isinstance(data.get("tokens"), list):
        raise RecopsError(f"{path}: not a list of forgotten users (expected {{'salt', 'tokens'}})")
    return data


def _token(salt: str, stored: Any) -> str:
    return hashlib.sha256(_TOKEN_LABEL + salt.encode() + b"\0" + str(stored).encode()).hexdigest()


def plain_id(value: Any) -> Any:
    """A numpy scalar id as the Python value it holds (hashed and written to JSON the same way as a plain one)."""
    return value.item() if isinstance(value, np.generic) else value


def has_forgotten(settings: Settings) -> bool:
    return bool(_read_list(settings)["tokens"])


def forgotten_mask(settings: Settings, user_ids: pd.Series) -> np.ndarray | None:
    """Which rows belong to forgotten users (True: drop), hashing each distinct id once; None when nobody was
    forgotten."""
    data = _read_list(settings)
    if not data["tokens"] or not data.get("salt"):
        return None
    tokens = set(data["tokens"])
    codes, uniques = pd.factorize(user_ids, use_na_sentinel=True)
    hit = np.fromiter((_token(data["salt"], plain_id(v)) in tokens for v in uniques), dtype=bool,
                      count=len(uniques))
    return np.where(codes >= 0, hit[np.maximum(codes, 0)], False)


def add_forgotten(settings: Settings, stored: list[Any]) -> int:
    """Add the stored ids ``stored`` to the list (a salt is drawn for the first); the number of new entries."""
    data = _read_list(settings)
    salt = data.get("salt") or secrets.token_hex(16)
    tokens = set(data["tokens"])
    before = len(tokens)
    tokens.update(_token(salt, s) for s in stored)
    path = settings.path("forgotten")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"salt": salt, "tokens": sorted(tokens)}, indent=1) + "\n", encoding="utf-8")
    tmp.replace(path)
    return len(tokens) - before
