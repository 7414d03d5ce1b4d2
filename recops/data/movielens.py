"""MovieLens-100k, the embedded default data set, taken from the files shipped in the ``recbole==1.2.1`` wheel.

The wheel is downloaded from the package registry with ``pip download --no-deps`` (recbole itself is never
installed or imported), its three data members are read from the zip and checked against known sha256 sums.
MovieLens' terms ask users not to redistribute the data, so it is fetched at run time and never committed.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pandas as pd

from recops.errors import RecopsError

log = logging.getLogger(__name__)

WHEEL_REQUIREMENT = "recbole==1.2.1"
WHEEL_NAME = "recbole-1.2.1-py3-none-any.whl"
MEMBER_PREFIX = "recbole/dataset_example/ml-100k/ml-100k."
SHA256 = {
    "inter": "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
    "item": "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532",
    "user": "4f670007d9cfbeb9807e757209af1555b9bcc186bde25e767f67cb67c6dd5972",
}


def download_wheel(cache_dir: Path) -> Path:
    """Path of the recbole wheel in ``cache_dir``, downloading it once with pip."""
    wheel = cache_dir / WHEEL_NAME
    if wheel.is_file() and zipfile.is_zipfile(wheel):
        return wheel
    cache_dir.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s to %s", WHEEL_REQUIREMENT, cache_dir)
    # into a private folder, then renamed into place: processes downloading at the same time never see (or
    # leave) a partial wheel
    with tempfile.TemporaryDirectory(prefix=".download-", dir=cache_dir) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
               "--disable-pip-version-check", WHEEL_REQUIREMENT, "-d", tmp]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        fetched = Path(tmp) / WHEEL_NAME
        if proc.returncode != 0 or not fetched.is_file():
            raise RecopsError(
                f"could not download {WHEEL_REQUIREMENT} (it carries MovieLens-100k) into {cache_dir}: "
                f"{proc.stderr.strip()[-500:] or 'pip produced no wheel'}"
            )
        os.replace(fetched, wheel)
    return wheel


def extract_raw_files(wheel: Path, raw_dir: Path) -> dict[str, Path]:
    """Write ``ml-100k.{inter,item,user}`` from the wheel to ``raw_dir`` after checking their sha256."""
    raw_dir.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    try:
        with zipfile.ZipFile(wheel) as zf:
            for kind, expected in SHA256.items():
                payload = zf.read(MEMBER_PREFIX + kind)
                actual = hashlib.sha256(payload).hexdigest()
                if actual != expected:
                    raise RecopsError(
                        f"{wheel}: member ml-100k.{kind} has sha256 {actual}, expected {expected}; "
                        f"delete the file so it is downloaded again"
                    )
                target = raw_dir / f"ml-100k.{kind}"
                target.write_bytes(payload)
                out[kind] = target
    except (zipfile.BadZipFile, KeyError) as exc:
        raise RecopsError(f"{wheel}: not the expected recbole wheel ({exc}); delete it to download again") from None
    return out


def read_atomic(path: Path) -> pd.DataFrame:
    """Read a RecBole atomic file: tab-separated, header of ``name:type`` fields, everything as text first."""
    text = path.read_text(encoding="utf-8")
    frame = pd.read_csv(io.StringIO(text), sep="\t", dtype=str, keep_default_na=False)
    frame.columns = [c.split(":", 1)[0] for c in frame.columns]
    return frame


def load_movielens(raw_files: dict[str, Path]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Interactions, users and items with recops' canonical column names and proper types."""
    inter = read_atomic(raw_files["inter"])
    interactions = pd.DataFrame({
        "user_id": inter["user_id"].astype("int64"),
        "item_id": inter["item_id"].astype("int64"),
        "timestamp": inter["timestamp"].astype("float64").astype("int64"),
        "rating": inter["rating"].astype("float64"),
    })
    user = read_atomic(raw_files["user"])
    users = pd.DataFrame({
        "user_id": user["user_id"].astype("int64"),
        "age": pd.to_numeric(user["age"], errors="coerce").astype("float64"),
        "gender": user["gender"],
        "occupation": user["occupation"],
        "zip_code": user["zip_code"],
    })
    item = read_atomic(raw_files["item"])
    items = pd.DataFrame({
        "item_id": item["item_id"].astype("int64"),
        "title": item["movie_title"],
        "release_year": pd.to_numeric(item["release_year"].replace("", None), errors="coerce").astype("float64"),
        "genres": item["class"],
    })
    return interactions, users, items
