"""Seeded synthetic interaction logs for scale tests: partitioned Parquet in recops' default column mapping.

``generate(out_dir, n_interactions)`` writes a MovieLens-shaped world at any size (1M, 20M, 100M rows):

    out_dir/interactions/part-00000.parquet ...   user_id, item_id, timestamp (epoch s), rating (1-5); int64
    out_dir/users.parquet                         user_id, age, gender, occupation
    out_dir/items.parquet                         item_id, title, release_year, genres (space-separated)
    out_dir/synth.json                            arguments, seed, row counts, sha256 of every file

The columns are those of the default ``data:`` section of params.yaml, so ``data.source: file`` and the three
paths are all a user sets (``recops synth`` prints the snippet). The same arguments give byte-identical files.

What a model can learn from it (and what makes personalisation beat popularity):

- *Popularity*: Zipf-like base popularity (exponent ``ZIPF_EXPONENT``) over a random order of the items, so a
  few items take a large share of the log (the head) and most items are rarely seen (the tail).
- *Time*: the log spans ``years`` from ``start``. ``BACK_CATALOGUE`` of the items exist before the log starts;
  the others are released during it. An item's weight is ``popularity * (floor + (1 - floor) * exp(-age /
  tau))``: new releases get a boost that fades in about a year, and nothing is chosen before its release.
  Each user is active in a window of the log (a join time and a heavy-tailed duration), as on a real site.
- *Genres*: items have 1-3 of ``n_genres`` genres (MovieLens' names; common genres are more common). Users have
  a sparse preference: 1-3 favourite genres get most of the mass (drawn per user, shifted by gender, age group
  and occupation, so demographics carry some signal), the rest is a floor over all genres. Each choice picks a
  genre from the preference (or, with probability ``EXPLORE``, any item by popularity), then an item of that
  genre by its current weight. Consecutive choices stay in the same genre with probability ``GENRE_STICKINESS``
  (sessions), so a user's last items say something about the next ones.
- *Ratings*: a latent score of how well the item's genres match the user's preference, item quality (a little
  higher for popular items), user bias and noise, cut at the quantiles that give MovieLens' rating shares
  (6%, 11%, 27%, 34%, 22% for 1-5).
- *Activity*: interactions per user are ``min_user_interactions`` plus a log-normal (sigma ``ACTIVITY_SIGMA``)
  scaled to the requested total, so every user has enough history for a per-user temporal split, the median
  user has about 60% of the mean and the heaviest users thousands (MovieLens-20M: min 20, median 68, mean 144,
  max 9254). A user's count is capped at half the back catalogue, which keeps sampling without repeats cheap.
- No (user_id, item_id) pair appears twice, as in MovieLens (items are drawn with replacement, repeats are
  dropped and the missing draws redrawn in a few rounds; the last rounds draw uniformly among released items).

Default sizes follow MovieLens: ML-1M has 6,040 users and 3,706 items, ML-20M 138,493 users and 26,744 items
(ML-100k: 943 and 1,682). Users and items grow more slowly than interactions (heavier histories, a catalogue
that saturates), so the defaults are power laws through (1M rows: 10k users, 5k items) and (20M: 140k users,
40k items): ``users = 10_000 * (rows / 1e6) ** 0.88``, ``items = 5_000 * (rows / 1e6) ** 0.69``; 575k users and
120k items at 100M. Items are raised where that is too few for the heaviest users to fit under the per-user cap
(at least 20x the mean history: 1.3k users and 1.5k items at 100k rows).

How it is built, and why it is fast and small: everything is vectorised numpy. Users are generated in chunks of
about ``rows_per_file`` interactions (one chunk = one Parquet part, each with its own random stream derived from
the seed), so memory is one chunk plus per-item tables whatever the total. An item is drawn with a single
``searchsorted`` into a table of cumulative weights per (month, genre) block, laid out so that block ``b`` owns
the interval (b, b + 1]: the query ``b + u`` for a uniform ``u`` lands in block ``b``. Rows of a part are
sorted by user, then time.

Measured with ``/usr/bin/time -v recops synth DIR --rows N`` (seed 42, default users and items) on the 2-core
development machine while other jobs shared it (load 2-7), so CPU time is the steadier figure:

    rows   users / items   files  on disk  wall (of which generating)  CPU user+sys  peak RSS
    1M     10k / 5k          1     7.8 MB  3.6-6.3 s (2.0-3.2 s)            3.7 s     0.32 GB
    20M    140k / 40k       10     161 MB  30-49 s (28-46 s)                 31 s     0.65 GB
    100M   575k / 120k      50     ~0.8 GB 254-268 s (251-263 s)           150-155 s  0.91 GB

(the rest of the 1M wall time is Python importing numpy, pyarrow and the CLI). The shape at 20M: per user min 6,
median 80, mean 143, max 7,901; the top 1% of items hold 24% of the interactions (12% at 1M); ratings 6/11/27/34/22%.

Does a model learn it? 1M rows, per-user temporal holdout (each user's last 10% by time; 10,000 test users),
recall@10 = hits in the top 10 (training items excluded) / min(10, test items), averaged over users:

    most popular (training counts)                 0.076
    most popular in the last 30 days of training   0.054
    implicit ALS, 64 factors, 15 iterations        0.144   (regularization 0.05, alpha 10)
    implicit ALS with params.yaml's MF settings    0.166   (28 factors, 27 iterations)

so MF is about twice as good as popularity, as on MovieLens (users' windows are spread over the whole log, so
recency alone does not help a model that ignores the user). recops' own pipeline on 200k synthetic rows (default
params.yaml, per-user split): test NDCG@10 popularity 0.108, item-kNN 0.174, EASE 0.210, MF 0.211, two-stage
ranker 0.279.

This module only generates data and writes the files named above; it knows nothing of params or the pipeline.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from recops.columns import DAY, Columns
from recops.errors import RecopsError
from recops.io import file_digest

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "synth.json"
INTERACTIONS_DIR = "interactions"
USERS_FILE = "users.parquet"
ITEMS_FILE = "items.parquet"

# MovieLens' 18 genres, most common first (so the genre prevalence below follows MovieLens roughly).
GENRE_NAMES = (
    "Drama", "Comedy", "Thriller", "Action", "Romance", "Adventure", "Crime", "Sci-Fi", "Horror", "Fantasy",
    "Children's", "Mystery", "Animation", "Documentary", "War", "Musical", "Western", "Film-Noir",
)
# MovieLens-100k's occupations and their approximate shares.
OCCUPATIONS = (
    "student", "other", "educator", "administrator", "engineer", "programmer", "librarian", "writer",
    "executive", "scientist", "artist", "technician", "marketing", "entertainment", "healthcare", "retired",
    "lawyer", "salesman", "none", "homemaker", "doctor",
)
_OCCUPATION_SHARES = np.array([196, 105, 95, 79, 67, 66, 51, 45, 32, 31, 28, 27, 26, 18, 16, 14, 12, 12, 9, 7, 7],
                              dtype=np.float64)
GENDERS = ("M", "F")
_MALE_SHARE = 0.71
_AGE_BUCKETS = np.array([25, 35, 45, 55])  # age groups <25, 25-34, 35-44, 45-54, 55+ shift genre preferences

ZIPF_EXPONENT = 0.9          # base popularity ~ rank ** -0.9
BACK_CATALOGUE = 0.4         # share of items released before the log starts
BACK_CATALOGUE_YEARS = 12.0  # their release dates: exponential before the start with this mean
FADE_FLOOR = 0.1             # an old item keeps this share of its launch weight
FADE_TAU_DAYS = 240.0        # the launch boost decays with this time constant
EXPLORE = 0.1                # share of choices made by popularity alone, outside the user's genres
PREFERENCE_FLOOR = 0.15      # share of a user's genre preference spread over all genres
GENRE_STICKINESS = 0.75      # chance that a choice keeps the genre of the user's previous one
DEMOGRAPHIC_SHIFT = 0.6      # std of the genre-logit shifts per gender / age group / occupation
ACTIVITY_SIGMA = 1.1         # log-normal sigma of interactions per user (above the minimum)
MAX_USER_SHARE = 0.5         # a user's interactions are at most this share of the back catalogue
WINDOW_MEDIAN_DAYS = 120.0   # median length of a user's active period (longer for heavier users)
WINDOW_SIGMA = 1.2
# Ratings: latent = match + quality + user bias + noise, cut at the quantiles that give MovieLens' shares of 1..5
# (cutting at quantiles of each part, not at fixed values, keeps the shares whatever the size and parameters).
RATING_MATCH, RATING_QUALITY, RATING_USER, RATING_NOISE = 1.6, 0.5, 0.4, 0.8
RATING_SHARES = np.array([0.06, 0.11, 0.27, 0.34, 0.22])

_MAX_ROUNDS = 40
_UNIFORM_AFTER = 6
_SECONDS_PER_DAY = int(DAY)  # integer seconds: the generator works on int64 timestamps
_STREAM_WORLD, _STREAM_CHUNK = 0, 1


def default_users(n_interactions: int) -> int:
    """MovieLens-like number of users for a log of ``n_interactions`` (see the module docstring)."""
    return max(1, round(10_000 * (n_interactions / 1e6) ** 0.88))


def default_items(n_interactions: int) -> int:
    return max(1, round(5_000 * (n_interactions / 1e6) ** 0.69))


def generate(
    out_dir: Path | str,
    n_interactions: int,
    seed: int = 42,
    n_users: int | None = None,
    n_items: int | None = None,
    n_genres: int = 18,
    *,
    start: str = "2015-01-01",
    years: float = 4.0,
    min_user_interactions: int = 5,
    rows_per_file: int = 2_000_000,
    row_group_size: int = 1_000_000,
) -> dict[str, Any]:
    """Write the synthetic world to ``out_dir``; return the manifest (also written as ``out_dir/synth.json``).

    ``out_dir`` is created if needed; it must be empty or hold an earlier ``generate`` output (which is replaced).
    Bad arguments raise RecopsError saying which to change.
    """
    started = time.perf_counter()
    out_dir = Path(out_dir)
    n_users = default_users(n_interactions) if n_users is None else n_users
    if n_items is None:
        # Raised where needed so that the heaviest users (a few times the mean) fit under the per-user cap.
        mean = n_interactions / max(n_users, 1)
        n_items = max(default_items(n_interactions), math.ceil(4 * mean / (MAX_USER_SHARE * BACK_CATALOGUE)), 20)
    arguments = {
        "n_interactions": n_interactions, "seed": seed, "n_users": n_users, "n_items": n_items,
        "n_genres": n_genres, "start": start, "years": years, "min_user_interactions": min_user_interactions,
        "rows_per_file": rows_per_file, "row_group_size": row_group_size,
    }
    _check_arguments(arguments)
    start_s = _epoch_seconds(start)
    end_s = start_s + round(years * 365.25 * _SECONDS_PER_DAY)
    if end_s > time.time():
        raise RecopsError(f"synth: start {start} + {years} years ends in the future; validation rejects future timestamps")
    world_rng = _rng(seed, _STREAM_WORLD, 0)
    world = _World.build(world_rng, n_users, n_items, n_genres, start_s, end_s)
    counts = _user_counts(world_rng, n_users, n_interactions, min_user_interactions, world.user_cap)
    join, window = _user_windows(world_rng, counts, start_s, end_s)
    users_table = world.users_table()
    items_table = world.items_table()

    _prepare_out_dir(out_dir)
    staging = Path(tempfile.mkdtemp(prefix=".synth.", dir=out_dir))
    try:
        parts_dir = staging / INTERACTIONS_DIR
        parts_dir.mkdir()
        boundaries = _chunk_boundaries(counts, rows_per_file)
        files: dict[str, dict[str, Any]] = {}
        for chunk, (first, last) in enumerate(itertools.pairwise(boundaries)):
            table = _interactions_chunk(
                _rng(seed, _STREAM_CHUNK, chunk), world, first, counts[first:last], join[first:last],
                window[first:last],
            )
            name = f"{INTERACTIONS_DIR}/part-{chunk:05d}.parquet"
            pq.write_table(table, staging / name, row_group_size=row_group_size)
            files[name] = {"rows": table.num_rows}
            log.info("synth: %s (%d rows, users %d-%d)", name, table.num_rows, first + 1, last)
        pq.write_table(users_table, staging / USERS_FILE)
        pq.write_table(items_table, staging / ITEMS_FILE)
        files[USERS_FILE] = {"rows": users_table.num_rows}
        files[ITEMS_FILE] = {"rows": items_table.num_rows}
        for name, entry in files.items():
            entry["sha256"] = file_digest(staging / name, "sha256")
        manifest = {
            "generator": "recops.data.synth",
            "format_version": FORMAT_VERSION,
            "arguments": arguments,
            "rows": {"interactions": int(counts.sum()), "users": n_users, "items": n_items},
            "time_span": {"start": start_s, "end": end_s},
            "files": files,
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        for name in (INTERACTIONS_DIR, USERS_FILE, ITEMS_FILE, MANIFEST):
            _replace(staging / name, out_dir / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("synth: %d interactions, %d users, %d items in %.1f s -> %s",
             n_interactions, n_users, n_items, time.perf_counter() - started, out_dir)
    return manifest


def _check_arguments(args: dict[str, Any]) -> None:
    for name in ("n_interactions", "n_users", "n_items", "n_genres", "min_user_interactions", "rows_per_file",
                 "row_group_size"):
        if not isinstance(args[name], int) or args[name] < 1:
            raise RecopsError(f"synth: {name} must be a positive integer, not {args[name]!r}")
    if not 0 < args["years"] <= 100:
        raise RecopsError(f"synth: years must be in (0, 100], not {args['years']!r}")
    n, users, k = args["n_interactions"], args["n_users"], args["min_user_interactions"]
    if users * k > n:
        raise RecopsError(f"synth: {users} users x at least {k} interactions each is more than {n} rows; "
                          f"use fewer users (--users) or more rows (--rows)")
    cap = _user_cap(args["n_items"], k)
    if k > _n_back(args["n_items"]):
        raise RecopsError(f"synth: {args['n_items']} items are too few for {k} distinct items per user; raise --items")
    if users * cap < n:
        raise RecopsError(f"synth: {n} rows need more items: a user has at most {cap} interactions with "
                          f"{args['n_items']} items; raise --items (or --users)")


def _user_cap(n_items: int, min_user_interactions: int) -> int:
    return max(min_user_interactions, int(MAX_USER_SHARE * _n_back(n_items)))


def _n_back(n_items: int) -> int:
    return max(1, round(BACK_CATALOGUE * n_items))


def _epoch_seconds(value: str) -> int:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise RecopsError(f"synth: start must be an ISO date such as 2015-01-01, not {value!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    seconds = int(moment.timestamp())
    if seconds < _epoch_seconds_1990():
        raise RecopsError(f"synth: start {value} is before 1990-01-01, which validation rejects")
    return seconds


def _epoch_seconds_1990() -> int:
    return int(datetime(1990, 1, 1, tzinfo=UTC).timestamp())


def _rng(seed: int, stream: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(stream, index)))


@dataclass
class _World:
    """Items, users' attributes and the per-(month, genre) item samplers: everything but the interactions."""

    n_users: int
    n_items: int
    n_genres: int
    start_s: int
    end_s: int
    genre_names: np.ndarray      # (n_genres,) str
    prevalence: np.ndarray       # (n_genres,) share of each genre among item labels (before the draw)
    item_genres: np.ndarray      # (n_items, 3) genre indices, padded with n_genres
    popularity: np.ndarray       # (n_items,) base weight (Zipf)
    quality: np.ndarray          # (n_items,) standardised, raises ratings
    release: np.ndarray          # (n_items,) epoch seconds
    male: np.ndarray             # (n_users,) bool
    age: np.ndarray              # (n_users,) int
    occupation: np.ndarray       # (n_users,) index into OCCUPATIONS
    shift_gender: np.ndarray     # (2, n_genres) genre-logit shifts
    shift_age: np.ndarray        # (age groups, n_genres)
    shift_occupation: np.ndarray  # (occupations, n_genres)
    # Filled by _build_samplers.
    n_months: int = field(init=False)
    month_seconds: float = field(init=False)
    sampler_cdf: np.ndarray = field(init=False)
    sampler_members: np.ndarray = field(init=False)
    sampler_valid: np.ndarray = field(init=False)
    by_release: np.ndarray = field(init=False)
    release_sorted: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self._build_samplers()

    @property
    def user_cap(self) -> int:
        return _user_cap(self.n_items, 1)

    @classmethod
    def build(cls, rng: np.random.Generator, n_users: int, n_items: int, n_genres: int,
              start_s: int, end_s: int) -> _World:
        names = np.array([GENRE_NAMES[g] if g < len(GENRE_NAMES) else f"Genre{g + 1}" for g in range(n_genres)])
        prevalence = (np.arange(n_genres) + 1.0) ** -0.8
        prevalence /= prevalence.sum()

        # Items: genres (Gumbel top-k over the prevalence), popularity, quality, release time.
        n_labels = rng.choice(3, size=n_items, p=[0.5, 0.35, 0.15]) + 1
        item_genres = _top_k_rows(rng, np.broadcast_to(np.log(prevalence), (n_items, n_genres)),
                                  np.minimum(n_labels, n_genres), pad=n_genres)
        popularity = (rng.permutation(n_items) + 1.0) ** -ZIPF_EXPONENT
        log_pop = np.log(popularity)
        quality = 0.5 * (log_pop - log_pop.mean()) / max(log_pop.std(), 1e-9) + rng.standard_normal(n_items)
        quality /= quality.std() if n_items > 1 else 1.0
        back = np.zeros(n_items, dtype=bool)
        back[rng.permutation(n_items)[:_n_back(n_items)]] = True
        back_age = rng.exponential(BACK_CATALOGUE_YEARS * 365.25 * _SECONDS_PER_DAY, n_items)
        back_age = np.minimum(back_age, start_s - _epoch_seconds_1990() + 60 * 365 * _SECONDS_PER_DAY)  # >= 1930
        release = np.where(back, start_s - 1 - back_age.astype(np.int64), rng.integers(start_s, end_s, n_items))

        # Users: demographics, and genre-logit shifts by them (so demographics carry some signal).
        male = rng.random(n_users) < _MALE_SHARE
        age = np.clip(np.round(rng.normal(33, 11, n_users)), 13, 75).astype(np.int64)
        occupation = rng.choice(len(OCCUPATIONS), size=n_users, p=_OCCUPATION_SHARES / _OCCUPATION_SHARES.sum())
        return cls(
            n_users=n_users, n_items=n_items, n_genres=n_genres, start_s=start_s, end_s=end_s, genre_names=names,
            prevalence=prevalence, item_genres=item_genres, popularity=popularity, quality=quality,
            release=release, male=male, age=age, occupation=occupation,
            shift_gender=rng.normal(0, DEMOGRAPHIC_SHIFT, (2, n_genres)),
            shift_age=rng.normal(0, DEMOGRAPHIC_SHIFT, (len(_AGE_BUCKETS) + 1, n_genres)),
            shift_occupation=rng.normal(0, DEMOGRAPHIC_SHIFT, (len(OCCUPATIONS), n_genres)),
        )

    def _build_samplers(self) -> None:
        """Cumulative weights of every (month, genre) block, flattened so block b holds the interval (b, b + 1].

        Blocks per month: one per genre (its items), then one of all items (popularity-only choices). A block
        with no released item is marked invalid; choices there fall back to the all-items block.
        """
        n_items, n_genres = self.n_items, self.n_genres
        span = self.end_s - self.start_s
        self.n_months = max(1, round(span / (30.44 * _SECONDS_PER_DAY)))
        self.month_seconds = span / self.n_months
        month_start = self.start_s + np.floor(np.arange(self.n_months) * self.month_seconds).astype(np.int64)

        item_idx, label_idx = np.nonzero(self.item_genres < n_genres)
        genres = self.item_genres[item_idx, label_idx]
        order = np.argsort(genres, kind="stable")
        members = np.concatenate([item_idx[order], np.arange(n_items)]).astype(np.int64)
        member_block = np.concatenate([genres[order], np.full(n_items, n_genres)]).astype(np.int64)
        n_blocks = n_genres + 1
        block_starts = np.searchsorted(member_block, np.arange(n_blocks))

        # weights[m, j]: weight of member j at the start of month m (0 before its release), computed in place (the
        # table is the largest array here: months x ~3 x items), then per block turned into cumulative shares in
        # [0, 1] plus the block's number.
        weights = np.subtract.outer(month_start.astype(np.float64), self.release[members].astype(np.float64))  # age
        released = weights >= 0
        np.maximum(weights, 0.0, out=weights)
        weights *= -1.0 / (FADE_TAU_DAYS * _SECONDS_PER_DAY)
        np.exp(weights, out=weights)
        weights *= 1 - FADE_FLOOR
        weights += FADE_FLOOR
        weights *= released
        del released
        weights *= self.popularity[members][None, :]
        valid = np.zeros((self.n_months, n_blocks), dtype=bool)
        bounds = np.append(block_starts, len(members))
        for block in range(n_blocks):
            part = weights[:, bounds[block]:bounds[block + 1]]  # a view: the edits below write into weights
            if part.shape[1] == 0:
                continue  # a genre no item has: never valid
            np.cumsum(part, axis=1, out=part)
            total = part[:, -1].copy()
            valid[:, block] = total > 0
            part /= np.where(valid[:, block], total, 1.0)[:, None]
            part[~valid[:, block]] = 1.0
            part[:, -1] = 1.0
            part += (np.arange(self.n_months) * n_blocks + block)[:, None]

        self.sampler_cdf = weights.ravel()
        self.sampler_members = members
        self.sampler_valid = valid
        self.by_release = np.argsort(self.release, kind="stable")
        self.release_sorted = self.release[self.by_release]

    def draw_items(self, rng: np.random.Generator, times: np.ndarray, genre: np.ndarray) -> np.ndarray:
        """One item per (time, genre) from that month's genre block (genre == n_genres: all items)."""
        month = np.minimum((times - self.start_s) // self.month_seconds, self.n_months - 1).astype(np.int64)
        genre = np.where(self.sampler_valid[month, genre], genre, self.n_genres)
        query = month * (self.n_genres + 1) + genre + np.minimum(rng.random(len(times)), 1 - 1e-9)
        # Sorted queries walk the table in order: about 8x faster than random ones once it outgrows the caches.
        order = np.argsort(query)
        position = np.empty(len(query), dtype=np.int64)
        position[order] = np.searchsorted(self.sampler_cdf, query[order], side="right")
        return self.sampler_members[position % len(self.sampler_members)]

    def draw_released_uniform(self, rng: np.random.Generator, times: np.ndarray) -> np.ndarray:
        """One item per time, uniformly among the items released by then (the fallback that always finds new ones)."""
        released = np.searchsorted(self.release_sorted, times, side="right")
        return self.by_release[(rng.random(len(times)) * released).astype(np.int64)]

    def genre_preferences(self, rng: np.random.Generator, users: np.ndarray) -> np.ndarray:
        """(users, n_genres + 1) choice probabilities: sparse favourites plus a floor; last column = EXPLORE."""
        n, n_genres = len(users), self.n_genres
        logits = (np.log(self.prevalence)[None, :] + self.shift_gender[(~self.male[users]).astype(np.int64)]
                  + self.shift_age[np.searchsorted(_AGE_BUCKETS, self.age[users], side="right")]
                  + self.shift_occupation[self.occupation[users]])
        n_favourites = np.minimum(rng.choice(3, size=n, p=[0.3, 0.45, 0.25]) + 1, n_genres)
        favourites = _top_k_rows(rng, logits, n_favourites, pad=n_genres)
        mass = np.where(favourites < n_genres, rng.gamma(1.0, size=favourites.shape), 0.0)
        preference = np.zeros((n, n_genres + 1))
        np.add.at(preference, (np.repeat(np.arange(n), favourites.shape[1]), favourites.ravel()), mass.ravel())
        preference = preference[:, :n_genres]
        preference /= preference.sum(axis=1, keepdims=True)
        preference = (1 - PREFERENCE_FLOOR) * preference + PREFERENCE_FLOOR * self.prevalence[None, :]
        return np.concatenate([(1 - EXPLORE) * preference, np.full((n, 1), EXPLORE)], axis=1)

    def users_table(self) -> pa.Table:
        return pa.table({
            Columns.USER_ID: pa.array(np.arange(1, self.n_users + 1, dtype=np.int64)),
            "age": pa.array(self.age),
            "gender": pa.array(np.where(self.male, GENDERS[0], GENDERS[1]).astype(object), pa.string()),
            "occupation": pa.array(np.array(OCCUPATIONS, dtype=object)[self.occupation], pa.string()),
        })

    def items_table(self) -> pa.Table:
        names = np.append(self.genre_names, "").astype(object)
        labels = names[self.item_genres]
        genres = labels[:, 0]
        for column in range(1, labels.shape[1]):
            genres = np.where(self.item_genres[:, column] < self.n_genres, genres + " " + labels[:, column], genres)
        year = self.release.astype("datetime64[s]").astype("datetime64[Y]").astype(np.int64) + 1970
        ids = np.arange(1, self.n_items + 1, dtype=np.int64)
        # a display name (data.item_attributes.title): "Drama #17 (2016)"
        title = pd.Series(labels[:, 0]) + " #" + pd.Series(ids).astype(str) + " (" + pd.Series(year).astype(str) + ")"
        return pa.table({
            Columns.ITEM_ID: pa.array(ids),
            "title": pa.array(title.to_numpy(dtype=object), pa.string()),
            "release_year": pa.array(year),
            "genres": pa.array(genres, pa.string()),
        })


def _top_k_rows(rng: np.random.Generator, logits: np.ndarray, k: np.ndarray, pad: int, width: int = 3) -> np.ndarray:
    """Per row, ``k`` distinct columns drawn without replacement with probabilities softmax(logits) (Gumbel
    top-k), as a (rows, width) array padded with ``pad``."""
    keys = logits + rng.gumbel(size=logits.shape)
    width = min(width, logits.shape[1])
    top = np.argsort(-keys, axis=1, kind="stable")[:, :width]
    return np.where(np.arange(width)[None, :] < k[:, None], top, pad).astype(np.int64)


def _user_counts(rng: np.random.Generator, n_users: int, total: int, minimum: int, cap: int) -> np.ndarray:
    """Interactions per user: ``minimum`` + log-normal, capped at ``cap``, summing exactly to ``total``."""
    spread = rng.lognormal(0.0, ACTIVITY_SIGMA, n_users)
    cap = max(cap, minimum)

    def filled(scale: float) -> np.ndarray:
        return np.minimum(minimum + scale * spread, cap)

    low, high = 0.0, (total + 1.0) / spread.min()
    for _ in range(100):  # bisection on the scale: sum(min(cap, minimum + scale * spread)) == total
        middle = (low + high) / 2
        if filled(middle).sum() <= total:
            low = middle
        else:
            high = middle
    wanted = filled(low)
    counts = np.floor(wanted).astype(np.int64)
    remainder = wanted - counts
    missing = total - int(counts.sum())
    while missing > 0:  # the rounding remainder, to the users closest to their next interaction
        order = np.argsort(-np.where(counts < cap, remainder, -1.0), kind="stable")
        chosen = order[: min(missing, int((counts < cap).sum()))]
        counts[chosen] += 1
        remainder[chosen] = 0.0
        missing -= len(chosen)
    return counts


def _user_windows(rng: np.random.Generator, counts: np.ndarray, start_s: int, end_s: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(join time, active seconds) per user; heavier users stay longer; the window ends before ``end_s``."""
    n = len(counts)
    join = rng.integers(start_s, end_s - _SECONDS_PER_DAY, n)
    heavier = (counts / np.median(counts)) ** 0.3
    days = rng.lognormal(np.log(WINDOW_MEDIAN_DAYS), WINDOW_SIGMA, n) * heavier
    window = np.minimum((days * _SECONDS_PER_DAY).astype(np.int64), end_s - 1 - join)
    return join, window


def _chunk_boundaries(counts: np.ndarray, rows_per_file: int) -> list[int]:
    """User indices where parts start: a new part when the rows before a user reach the next multiple."""
    before = np.concatenate([[0], np.cumsum(counts)[:-1]])
    chunk = before // rows_per_file
    starts = np.flatnonzero(np.diff(chunk, prepend=-1))
    return [*starts.tolist(), len(counts)]


def _interactions_chunk(rng: np.random.Generator, world: _World, first_user: int, counts: np.ndarray,
                        join: np.ndarray, window: np.ndarray) -> pa.Table:
    """The interactions of users ``first_user ..`` (len(counts) of them), sorted by user then time."""
    n_users = len(counts)
    preference = world.genre_preferences(rng, np.arange(first_user, first_user + n_users))
    cumulative = np.cumsum(preference, axis=1)
    cumulative[:, -1] = 1.0
    cumulative += np.arange(n_users)[:, None]
    cumulative = cumulative.ravel()
    n_choices = preference.shape[1]

    def draw_genres(owners: np.ndarray) -> np.ndarray:
        query = owners + np.minimum(rng.random(len(owners)), 1 - 1e-9)
        return np.searchsorted(cumulative, query, side="right") - owners * n_choices

    def draw_times(owners: np.ndarray) -> np.ndarray:
        return join[owners] + (rng.random(len(owners)) * (window[owners] + 1)).astype(np.int64)

    # Round 0: each user's choices in time order, in sessions that keep a genre.
    user = np.repeat(np.arange(n_users), counts)
    times = np.sort(user * (1 << 40) + (draw_times(user) - world.start_s)) - user * (1 << 40) + world.start_s
    new_session = rng.random(len(user)) >= GENRE_STICKINESS
    new_session[np.concatenate([[0], np.cumsum(counts)[:-1]])] = True
    session = np.cumsum(new_session) - 1
    genre = draw_genres(user[new_session])[session]
    item = world.draw_items(rng, times, genre)
    keep = _first_occurrences(user * world.n_items + item)
    user, times, item = user[keep], times[keep], item[keep]
    accepted = np.sort(user * world.n_items + item)

    # Later rounds: redraw what repeats removed, more generously each time; then uniformly among released items.
    for attempt in range(1, _MAX_ROUNDS + 1):
        missing = counts - np.bincount(user, minlength=n_users)
        if not missing.any():
            break
        draws = np.ceil(missing * min(2.0 ** attempt, 64.0)).astype(np.int64)
        owner = np.repeat(np.arange(n_users), draws)
        new_times = draw_times(owner)
        if attempt < _UNIFORM_AFTER:
            new_item = world.draw_items(rng, new_times, draw_genres(owner))
        else:
            new_item = world.draw_released_uniform(rng, new_times)
        key = owner * world.n_items + new_item
        fresh = _first_occurrences(key)
        fresh &= ~_is_in_sorted(key, accepted)
        owner, new_times, new_item, key = owner[fresh], new_times[fresh], new_item[fresh], key[fresh]
        rank = np.arange(len(owner)) - np.searchsorted(owner, owner, side="left")
        take = rank < missing[owner]
        user = np.concatenate([user, owner[take]])
        times = np.concatenate([times, new_times[take]])
        item = np.concatenate([item, new_item[take]])
        accepted = np.sort(np.concatenate([accepted, key[take]]), kind="stable")
    if (np.bincount(user, minlength=n_users) != counts).any():
        raise RuntimeError("synth: could not draw distinct items for every user (a bug: the cap should prevent it)")

    order = np.argsort(user * (1 << 40) + (times - world.start_s), kind="stable")
    user, times, item = user[order], times[order], item[order]
    rating = _ratings(rng, world, preference[:, :-1], first_user, user, item)
    return pa.table({
        Columns.USER_ID: pa.array(user + first_user + 1),
        Columns.ITEM_ID: pa.array(item + 1),
        Columns.TIMESTAMP: pa.array(times.astype(np.int64)),
        Columns.RATING: pa.array(rating),
    })


def _ratings(rng: np.random.Generator, world: _World, preference: np.ndarray, first_user: int,
             user: np.ndarray, item: np.ndarray) -> np.ndarray:
    """1..5 from how well the item's genres match the user's preference, its quality, a user bias and noise."""
    padded = np.concatenate([preference, np.zeros((len(preference), 1))], axis=1)
    best = padded[user[:, None], world.item_genres[item]].max(axis=1)
    match = best / preference.max(axis=1)[user]
    user_bias = rng.standard_normal(len(preference))
    latent = (RATING_MATCH * match + RATING_QUALITY * world.quality[item] + RATING_USER * user_bias[user]
              + RATING_NOISE * rng.standard_normal(len(user)))
    cuts = np.quantile(latent, np.cumsum(RATING_SHARES)[:-1])
    return (np.searchsorted(cuts, latent) + 1).astype(np.int64)


def _first_occurrences(keys: np.ndarray) -> np.ndarray:
    """Mask of the first occurrence of each value, in the array's order."""
    _, first = np.unique(keys, return_index=True)
    mask = np.zeros(len(keys), dtype=bool)
    mask[first] = True
    return mask


def _is_in_sorted(values: np.ndarray, sorted_values: np.ndarray) -> np.ndarray:
    if len(sorted_values) == 0:
        return np.zeros(len(values), dtype=bool)
    position = np.minimum(np.searchsorted(sorted_values, values), len(sorted_values) - 1)
    return sorted_values[position] == values


def _prepare_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise RecopsError(f"synth: {out_dir} is a file; give a folder to write into")
    if out_dir.is_dir():
        leftovers = [p.name for p in out_dir.iterdir() if not p.name.startswith(".synth.")]
        if leftovers and not (out_dir / MANIFEST).is_file():
            raise RecopsError(f"synth: {out_dir} is not empty and holds no {MANIFEST} (not a synth output); "
                              f"choose an empty or new folder")
    out_dir.mkdir(parents=True, exist_ok=True)


def _replace(source: Path, target: Path) -> None:
    if target.is_dir():
        shutil.rmtree(target)
    os.replace(source, target)


