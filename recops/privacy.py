"""Pseudonymous user ids: a keyed HMAC-SHA256 of the raw id, made before anything is written under ``data/``.

With ``privacy.pseudonymize: true`` every user id recops stores (prepared tables, splits, candidates, features,
models, the serving bundle, reports, the event log, the cache) is a *pseudonym*: the first 63 bits of
HMAC-SHA256(key, raw id) as a non-negative integer (its decimal text when ``data.id_type`` is string). The key comes
from the environment variable named by ``privacy.key_env`` and nothing else; the mapping is never stored, so a
pseudonym can be computed from a raw id by whoever holds the key (the API does, at the edge) but not reversed.

- *The raw id's text*: integer ids are hashed as their decimal text without leading zeros (``13``, whether the file
  said 13, 013 or 13.0), string ids as given (UTF-8). The API applies the same rule to the ids it receives.
- *Collisions*: 63 bits make one unlikely below billions of users (about n^2 / 2^64); ingest checks that the
  pseudonyms are as many as the raw ids and stops if two collide (rotate the key).
- *Which files hold pseudonyms*: a source file recops writes itself (a snapshot staged with the serving events,
  a source rewritten by ``recops forget``) already holds pseudonyms; it is listed, with its sha256 and the key's
  fingerprint, in ``<folder>/.recops-pseudonymized.json`` beside it, and ingest reads it as it is. Any other
  source is read as raw and pseudonymised.
- *The key's fingerprint* (HMAC of a fixed label, 16 hex characters) names the key in manifests and messages
  without revealing it: a bundle trained under one key is refused by a server holding another (all its users
  would be unknown), and a pseudonymised source made under another key is refused by ingest.
- *Key rotation*: a new key makes new pseudonyms for everyone, and old ones cannot be converted (nothing maps
  them back). Rotate by setting the new key and ingesting a full raw export from the system of record as the
  next snapshot (docs/architecture.md, "Privacy").
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recops.errors import RecopsError

log = logging.getLogger(__name__)

MIN_KEY_BYTES = 32
_MASK = (1 << 63) - 1
_FINGERPRINT_LABEL = b"recops pseudonym key fingerprint v1"
MARKER = ".recops-pseudonymized.json"


def pseudonym_key(key_env: str) -> bytes:
    """The key in the environment variable ``key_env``; RecopsError (naming the variable, never the value) when
    it is unset or shorter than :data:`MIN_KEY_BYTES` bytes."""
    value = os.environ.get(key_env)
    if not value:
        raise RecopsError(f"privacy.pseudonymize is on but the environment variable {key_env} holds no key: set it "
                          f"to a secret of at least {MIN_KEY_BYTES} bytes (e.g. `openssl rand -hex 32`), the same "
                          "for training and serving, kept out of params.yaml and git")
    key = value.encode("utf-8")
    if len(key) < MIN_KEY_BYTES:
        raise RecopsError(f"the pseudonym key in {key_env} has {len(key)} bytes: at least {MIN_KEY_BYTES} are "
                          "needed (e.g. `openssl rand -hex 32`)")
    return key


def fingerprint(key: bytes) -> str:
    """16 hex characters that name the key (an HMAC of a fixed label under it) without revealing it."""
    return hmac.new(key, _FINGERPRINT_LABEL, hashlib.sha256).hexdigest()[:16]


def raw_text(value: Any, id_type: str) -> str | None:
    """The text a raw id is hashed as (module docstring); None for a value that is no id of that type."""
    if value is None or (isinstance(value, float) and not np.isfinite(value)) or value is pd.NA:
        return None
    if id_type == "integer":
        if isinstance(value, (bool, np.bool_)):
            return None
        if isinstance(value, (int, np.integer)):
            return str(int(value))
        if isinstance(value, (float, np.floating)):
            return str(int(value)) if float(value).is_integer() else None
        text = str(value).strip()
        try:
            return str(int(text))
        except ValueError:
            try:
                number = float(text)
            except ValueError:
                return None
            return str(int(number)) if number.is_integer() and abs(number) < 2.0**63 else None
    return str(value)


def pseudonym(key: bytes, text: str) -> int:
    """The pseudonym of a raw id's text: the first 63 bits of HMAC-SHA256(key, text) as an integer."""
    digest = hmac.new(key, text.encode("utf-8"), hashlib.sha256).digest()
    return int.from_bytes(digest[:8], "big") & _MASK


def typed(value: int, id_type: str) -> int | str:
    """A pseudonym in the data's id type (decimal text for string ids)."""
    return value if id_type == "integer" else str(value)


class Pseudonymizer:
    """The key and the rule, for the API's edge and for tables."""

    def __init__(self, key: bytes, id_type: str) -> None:
        self.key, self.id_type = key, id_type
        self.fingerprint = fingerprint(key)

    @classmethod
    def from_settings(cls, settings) -> Pseudonymizer | None:
        """None when ``privacy.pseudonymize`` is off; RecopsError when it is on and the key is missing."""
        if not settings.privacy.pseudonymize:
            return None
        return cls(pseudonym_key(settings.privacy.key_env), settings.data.id_type)

    def one(self, raw: Any) -> int | str | None:
        """The pseudonym of one raw id (in the data's id type), None when it is no id of that type."""
        text = raw_text(raw, self.id_type)
        return None if text is None else typed(pseudonym(self.key, text), self.id_type)

    def column(self, values: pd.Series, where: str) -> pd.Series:
        """A column of raw ids as pseudonyms, hashing each distinct id once. Nulls stay null (validation reports
        them); an id that is not of the data's type raises RecopsError naming ``where``; two raw ids with one
        pseudonym raise RecopsError."""
        codes, uniques = pd.factorize(values, use_na_sentinel=True)
        texts = [raw_text(v, self.id_type) for v in uniques]
        bad = [str(v) for v, t in zip(uniques, texts) if t is None]
        if bad:
            raise RecopsError(f"{where}: {len(bad)} user id(s) are not {self.id_type} ids and cannot be "
                              f"pseudonymised, e.g. {', '.join(repr(b[:40]) for b in bad[:5])}")
        # raw ids that read as the same text (13 and 13.0) are one user; distinct texts must give distinct values
        numbers = np.fromiter((pseudonym(self.key, t) for t in texts), dtype=np.int64, count=len(texts))
        if len(np.unique(numbers)) != len(set(texts)):
            raise RecopsError(f"{where}: two user ids have the same pseudonym under this key (a 63-bit "
                              f"collision among {len(set(texts))} users): set a new key in "
                              "privacy.key_env and ingest again")
        if self.id_type == "integer":
            out = np.where(codes >= 0, numbers[np.maximum(codes, 0)], 0)
            series = pd.Series(out, index=values.index, dtype="int64")
            return series.astype("Int64").where(codes >= 0) if (codes < 0).any() else series
        strings = np.array([str(n) for n in numbers], dtype=object)
        return pd.Series(np.where(codes >= 0, strings[np.maximum(codes, 0)], None), index=values.index,
                         dtype="string")


# --- files recops wrote with pseudonyms ---------------------------------------------------------------------------


def _marker(folder: Path) -> dict[str, Any]:
    path = folder / MARKER
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise RecopsError(f"{path}: unreadable; delete it only if no file beside it holds pseudonyms") from None
    files = data.get("files") if isinstance(data, dict) else None
    return files if isinstance(files, dict) else {}


def mark_pseudonymized(path: Path, key_fingerprint: str) -> None:
    """Record that ``path`` (a file recops just wrote) holds pseudonyms made under the key ``key_fingerprint``.

    Entries are keyed by the file's sha256, so a previous file put back (a refused snapshot restores the one
    before it) is still recognised."""
    from recops.io import file_digest

    path = Path(path)
    entries = _marker(path.parent)
    entries[file_digest(path, "sha256")] = {"name": path.name, "key": key_fingerprint}
    tmp = path.parent / (MARKER + ".tmp")
    tmp.write_text(json.dumps({"files": entries}, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(path.parent / MARKER)


def pseudonymized_with(path: Path) -> str | None:
    """The key fingerprint ``path`` was pseudonymised under, when recops wrote it so (its sha256 is listed in the
    marker beside it); None for a file recops did not mark, which is read as raw."""
    from recops.io import file_digest

    path = Path(path)
    if not path.is_file() or not (path.parent / MARKER).is_file():
        return None
    entry = _marker(path.parent).get(file_digest(path, "sha256"))
    return entry.get("key") if isinstance(entry, dict) and isinstance(entry.get("key"), str) else None
