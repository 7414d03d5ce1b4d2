"""The recommendation cache: each user's top-k list by one model version, written by batch scoring, read online.

Batch scoring writes every known user's list with :meth:`RecommendationCache.put_many`; ``recops serve`` answers
``GET /recommendations/{user_id}?k=..`` from :meth:`RecommendationCache.get` when the entry is fresh and scores
live otherwise (and may write the live list back with :meth:`RecommendationCache.put`). Entries are keyed by model
version, so promoting a new champion never serves the old version's lists; :meth:`RecommendationCache.clear_version`
drops a retired version's entries at once, :meth:`RecommendationCache.invalidate` one user's list after a live event
changed their history.

Two backends, chosen by ``cache.backend`` in params.yaml (:func:`make_cache`):

- ``memory`` (:class:`MemoryCache`, the embedded default): an in-process LRU of at most ``max_entries`` lists,
  thread-safe, with the TTL measured on an injectable clock;
- ``redis`` (:class:`RedisCache`): shared by every API worker. Keys are
  ``<key_prefix>:<model_name>:v<version>:u:<user_id>``, values compact JSON (``{"i": item ids, "s": scores,
  "t": created_at, "src": source}``, never pickle), written with ``EX=ttl_seconds``; ``created_at + ttl_seconds``
  is checked again on read, as a guard against entries written without (or with a longer) expiry.

A list answers a request for ``k`` items only if it holds at least ``k``: a cached top-10 cannot answer ``k=20``.

Failures: the request path never fails because of the cache. A Redis error during :meth:`~RedisCache.get` or
:meth:`~RedisCache.put` is counted (``errors`` in :meth:`~RecommendationCache.stats`), logged as a warning at most
once per 30 s, and the read is a miss; after a connection error Redis is left alone for a second, so an outage
costs at most one short timeout (0.5 s to connect, 0.5 s to read, no retries) per second rather than one per
request. Everything else (creating the cache, :meth:`~RedisCache.put_many`, :meth:`~RedisCache.invalidate`,
:meth:`~RedisCache.clear_version`) raises :class:`~recops.errors.RecopsError` naming the Redis URL: batch scoring
must fail loudly, and a lost invalidation would serve a stale list once Redis is back.
"""

from __future__ import annotations

import abc
import dataclasses
import json
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.retry import Retry

from recops.config import CacheConfig
from recops.errors import RecopsError

log = logging.getLogger(__name__)

Clock = Callable[[], float]


@dataclass(frozen=True)
class CachedList:
    """One user's cached recommendation list.

    Attributes:
        items: original item ids, best first.
        scores: the ranker's scores of ``items``, in the same order.
        created_at: unix seconds when the list was written.
        source: who wrote it, e.g. ``"batch"`` or ``"online"``.
    """

    items: tuple[str, ...]
    scores: tuple[float, ...]
    created_at: float
    source: str


class RecommendationCache(abc.ABC):
    """Top-k lists keyed by (model version, user id), with a time to live; the interface both backends share.

    Every :meth:`get` counts exactly one of ``hits`` (a fresh list of at least ``k`` items was returned),
    ``misses`` (no entry, an expired one, or one shorter than ``k``) and ``errors`` (the backend failed; Redis only).
    """

    backend: str

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._hits = 0
        self._misses = 0
        self._errors = 0

    @abc.abstractmethod
    def get(self, version: str, user_id: str, k: int) -> CachedList | None:
        """The first ``k`` items of a user's fresh cached list.

        Args:
            version: the model version the list was computed by (``"3"``; an int is accepted too).
            user_id: the user's original id.
            k: how many items are asked for, at least 1.

        Returns:
            The list cut to ``k`` items, or None when there is no entry, it has expired, it holds fewer than ``k``
            items, or (Redis) the backend failed: the caller then scores live.

        Raises:
            RecopsError: ``k`` is not a whole number of at least 1.
        """

    @abc.abstractmethod
    def put(self, version: str, user_id: str, items: Sequence[str], scores: Sequence[float],
            source: str = "online") -> None:
        """Cache one user's list (replacing any previous one), stamped with the current time.

        Args:
            version: the model version that computed the list.
            user_id: the user's original id.
            items: original item ids, best first.
            scores: their scores, as many as ``items``.
            source: who computed the list (``"online"``: live scoring writing back).

        Raises:
            RecopsError: ``items`` and ``scores`` differ in length. A Redis failure does not raise (see the module
                docstring): it is counted and logged.
        """

    @abc.abstractmethod
    def put_many(self, version: str, lists: Mapping[str, tuple[Sequence[str], Sequence[float]]],
                 source: str = "batch") -> int:
        """Cache many users' lists at once, all stamped with the same time; other users' entries are kept.

        Args:
            version: the model version that computed the lists.
            lists: user id -> (item ids best first, their scores).
            source: who computed the lists (``"batch"``: batch scoring).

        Returns:
            The number of lists written.

        Raises:
            RecopsError: a list's items and scores differ in length (checked before anything is written), or
                (Redis) the server failed; the message names the URL and how many lists were written before.
        """

    @abc.abstractmethod
    def invalidate(self, version: str, user_id: str) -> None:
        """Drop one user's entry of ``version`` (after a live event changed their history); no entry is fine.

        Raises:
            RecopsError: (Redis) the server failed; the message names the URL.
        """

    @abc.abstractmethod
    def clear_version(self, version: str) -> int:
        """Drop every entry of ``version`` and return how many there were; other versions are untouched.

        Raises:
            RecopsError: (Redis) the server failed; the message names the URL.
        """

    @abc.abstractmethod
    def forget_user(self, user_id: str) -> int:
        """Drop the user's entries of every version (recops forget) and return how many there were.

        Raises:
            RecopsError: (Redis) the server failed; the message names the URL.
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Release the backend's resources (Redis connections); calling it twice is fine."""

    def _entry_count(self) -> int:
        """Entries currently held, or -1 where the backend does not count them."""
        return -1

    def stats(self) -> dict[str, float]:
        """Counters since creation: ``hits``, ``misses``, ``errors`` and ``entries`` (-1 for Redis, uncounted)."""
        with self._lock:
            counts = {"hits": float(self._hits), "misses": float(self._misses), "errors": float(self._errors)}
        counts["entries"] = float(self._entry_count())
        return counts

    def __enter__(self) -> RecommendationCache:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class MemoryCache(RecommendationCache):
    """In-process LRU cache, the embedded default: one process, no server.

    Reads and writes hold one lock, so API worker threads can share it. A hit makes the entry the most recently
    used one; writing beyond ``max_entries`` evicts the least recently used entries. Expired entries are dropped
    when read (or evicted like any other).

    Args:
        ttl_seconds: how long a list is served after it was written (at least 1).
        max_entries: how many lists are kept at most (at least 1).
        clock: unix time now; tests pass a fake one.
    """

    backend = "memory"

    def __init__(self, ttl_seconds: int, max_entries: int, clock: Clock = time.time) -> None:
        super().__init__()
        _check_ttl(ttl_seconds)
        if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 1:
            raise RecopsError(f"cache.max_entries must be a whole number of at least 1, got {max_entries!r}")
        self.ttl_seconds = ttl_seconds
        self.max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[tuple[str, str], CachedList] = OrderedDict()

    def get(self, version: str, user_id: str, k: int) -> CachedList | None:
        _check_k(k)
        key = (str(version), str(user_id))
        now = self._clock()
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and not _fresh(entry, self.ttl_seconds, now):
                del self._entries[key]
                entry = None
            if entry is None or len(entry.items) < k:
                self._misses += 1
                return None
            self._entries.move_to_end(key)
            self._hits += 1
        return _first(entry, k)

    def put(self, version: str, user_id: str, items: Sequence[str], scores: Sequence[float],
            source: str = "online") -> None:
        entry = CachedList(*_normalise(items, scores, user_id), created_at=self._clock(), source=str(source))
        with self._lock:
            self._store((str(version), str(user_id)), entry)

    def put_many(self, version: str, lists: Mapping[str, tuple[Sequence[str], Sequence[float]]],
                 source: str = "batch") -> int:
        now = self._clock()
        entries = [((str(version), str(user_id)), CachedList(*_normalise(items, scores, user_id), now, str(source)))
                   for user_id, (items, scores) in lists.items()]
        with self._lock:
            for key, entry in entries:
                self._store(key, entry)
        return len(entries)

    def invalidate(self, version: str, user_id: str) -> None:
        with self._lock:
            self._entries.pop((str(version), str(user_id)), None)

    def _drop(self, position: int, value: str) -> int:
        """Drop the entries whose key (version, user) holds ``value`` at ``position``; how many there were."""
        with self._lock:
            doomed = [key for key in self._entries if key[position] == value]
            for key in doomed:
                del self._entries[key]
        return len(doomed)

    def forget_user(self, user_id: str) -> int:
        return self._drop(1, str(user_id))

    def clear_version(self, version: str) -> int:
        return self._drop(0, str(version))

    def close(self) -> None:
        with self._lock:
            self._entries.clear()

    def _entry_count(self) -> int:
        with self._lock:
            return len(self._entries)

    def _store(self, key: tuple[str, str], entry: CachedList) -> None:
        """Insert as the most recently used entry and evict beyond ``max_entries``; the caller holds the lock."""
        self._entries[key] = entry
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)


class RedisCache(RecommendationCache):
    """Redis-backed cache, shared by every API worker and written by batch scoring.

    Two clients share the URL: the request path's (``get``, ``put``, ``invalidate``) with 0.5 s connect and read
    timeouts and no retries, and the bulk path's (``put_many``, ``clear_version``) with a longer read timeout and two
    quick retries, since a pipeline of 1000 lists or a SCAN is legitimately slower than one GET.

    Args:
        url: ``redis://[[user]:[password]@]host:port/db`` (or ``rediss://``, ``unix://``).
        ttl_seconds: expiry of written entries (Redis ``EX``) and the freshness guard on read (at least 1).
        key_prefix: first part of every key, so several deployments can share one server.
        model_name: the registered model's name, second part of every key.
        clock: unix time now, for ``created_at`` and the freshness guard; tests pass a fake one.

    Raises:
        RecopsError: the URL is not a Redis URL, or the server does not answer a PING; the message names the URL
            (its password masked).
    """

    backend = "redis"

    CHUNK = 1000  # keys per pipeline round trip in put_many, and per UNLINK in clear_version
    CONNECT_TIMEOUT_S = 0.5
    READ_TIMEOUT_S = 0.5
    BULK_READ_TIMEOUT_S = 10.0
    COOL_DOWN_S = 1.0  # after a connection error, request-path calls skip Redis this long
    WARN_EVERY_S = 30.0  # request-path failures are logged at most this often

    def __init__(self, url: str, ttl_seconds: int, key_prefix: str, model_name: str, *,
                 clock: Clock = time.time) -> None:
        super().__init__()
        _check_ttl(ttl_seconds)
        if not key_prefix or not model_name:
            raise RecopsError(f"the Redis cache needs a key prefix and a model name, got {key_prefix!r} and "
                              f"{model_name!r}")
        self.url = url
        self.ttl_seconds = ttl_seconds
        self.key_prefix = key_prefix
        self.model_name = model_name
        self._clock = clock
        self._shown_url = redact_url(url)
        self._down_until = 0.0
        self._last_warning = -math.inf
        self._suppressed = 0
        try:
            self._client = redis.Redis.from_url(url, socket_connect_timeout=self.CONNECT_TIMEOUT_S,
                                                socket_timeout=self.READ_TIMEOUT_S, retry=Retry(NoBackoff(), 0))
            self._bulk = redis.Redis.from_url(url, socket_connect_timeout=self.CONNECT_TIMEOUT_S,
                                              socket_timeout=self.BULK_READ_TIMEOUT_S,
                                              retry=Retry(ExponentialBackoff(cap=1.0, base=0.1), 2))
        except ValueError as exc:
            raise RecopsError(f"cache.redis_url {self._shown_url!r} is not a Redis URL: {exc}") from exc
        try:
            self._client.ping()
        except redis.RedisError as exc:
            self.close()
            raise RecopsError(f"the Redis cache at {self._shown_url} is not reachable ({exc}); start the server, fix "
                              f"cache.redis_url in params.yaml, or set cache.backend: memory") from exc

    def key(self, version: str, user_id: str) -> str:
        """The Redis key of a user's list by ``version``: ``<key_prefix>:<model_name>:v<version>:u:<user_id>``."""
        return f"{self.key_prefix}:{self.model_name}:v{version}:u:{user_id}"

    def get(self, version: str, user_id: str, k: int) -> CachedList | None:
        _check_k(k)
        if time.monotonic() < self._down_until:
            self._failed("get", "skipped: Redis failed less than a second ago")
            return None
        key = self.key(version, user_id)
        try:
            raw = self._client.get(key)
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            self._down_until = time.monotonic() + self.COOL_DOWN_S
            self._failed("get", exc)
            return None
        except redis.RedisError as exc:
            self._failed("get", exc)
            return None
        if raw is None:
            return self._miss()
        try:
            entry = _decode(raw)
        except (ValueError, TypeError, KeyError) as exc:
            self._failed(f"decoding {key}", exc)
            return None
        if not _fresh(entry, self.ttl_seconds, self._clock()) or len(entry.items) < k:
            return self._miss()
        with self._lock:
            self._hits += 1
        return _first(entry, k)

    def put(self, version: str, user_id: str, items: Sequence[str], scores: Sequence[float],
            source: str = "online") -> None:
        value = _encode(*_normalise(items, scores, user_id), self._clock(), source)
        if time.monotonic() < self._down_until:
            self._failed("put", "skipped: Redis failed less than a second ago")
            return
        try:
            self._client.set(self.key(version, user_id), value, ex=self.ttl_seconds)
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            self._down_until = time.monotonic() + self.COOL_DOWN_S
            self._failed("put", exc)
        except redis.RedisError as exc:
            self._failed("put", exc)

    def put_many(self, version: str, lists: Mapping[str, tuple[Sequence[str], Sequence[float]]],
                 source: str = "batch") -> int:
        for user_id, (items, scores) in lists.items():
            _check_lengths(items, scores, user_id)
        now = self._clock()
        written = 0
        try:
            for chunk in _chunks(lists.items(), self.CHUNK):
                pipe = self._bulk.pipeline(transaction=False)
                for user_id, (items, scores) in chunk:
                    pipe.set(self.key(version, user_id), _encode(items, scores, now, source), ex=self.ttl_seconds)
                pipe.execute()
                written += len(chunk)
        except redis.RedisError as exc:
            raise RecopsError(f"writing the cached lists of version {version} to Redis at {self._shown_url} failed "
                              f"after {written} of {len(lists)} lists: {exc}") from exc
        return written

    def invalidate(self, version: str, user_id: str) -> None:
        try:
            self._client.unlink(self.key(version, user_id))
        except redis.RedisError as exc:
            raise RecopsError(f"dropping the cached list of user {user_id!r} (version {version}) from Redis at "
                              f"{self._shown_url} failed: {exc}") from exc

    def forget_user(self, user_id: str) -> int:
        """Delete the user's cached lists of every version (recops forget); the number of keys removed."""
        pattern = (_glob_escape(f"{self.key_prefix}:{self.model_name}:v") + "*"
                   + _glob_escape(f":u:{user_id}"))
        try:
            keys = list(self._bulk.scan_iter(match=pattern, count=self.CHUNK))
            return int(self._client.unlink(*keys)) if keys else 0
        except redis.RedisError as exc:
            raise RecopsError(f"deleting the cached lists of a forgotten user from Redis at {self._shown_url} "
                              f"failed: {exc}") from exc

    def clear_version(self, version: str) -> int:
        pattern = _glob_escape(self.key(version, "")) + "*"
        removed = 0
        try:
            for chunk in _chunks(self._bulk.scan_iter(match=pattern, count=self.CHUNK), self.CHUNK):
                removed += int(self._bulk.unlink(*chunk))
        except redis.RedisError as exc:
            raise RecopsError(f"clearing the cached lists of version {version} from Redis at {self._shown_url} "
                              f"failed after {removed} keys: {exc}") from exc
        return removed

    def close(self) -> None:
        for client in (getattr(self, "_client", None), getattr(self, "_bulk", None)):
            if client is not None:
                client.close()

    def _miss(self) -> None:
        with self._lock:
            self._misses += 1

    def _failed(self, what: str, exc: object) -> None:
        """Count a request-path failure and log it, at most once per ``WARN_EVERY_S`` (with what was suppressed)."""
        now = time.monotonic()
        with self._lock:
            self._errors += 1
            if now - self._last_warning < self.WARN_EVERY_S:
                self._suppressed += 1
                return
            suppressed, self._suppressed, self._last_warning = self._suppressed, 0, now
        more = f" ({suppressed} more failures since the last warning)" if suppressed else ""
        log.warning("Redis cache at %s: %s failed (%s); scoring live instead%s", self._shown_url, what, exc, more)


def make_cache(config: CacheConfig, model_name: str, clock: Clock = time.time) -> RecommendationCache:
    """The cache ``config`` (params.yaml's ``cache`` section) asks for.

    Args:
        config: backend, Redis URL, TTL, key prefix and the memory backend's size.
        model_name: the registered model's name (part of every Redis key; the memory cache holds one model).
        clock: unix time now; tests pass a fake one.

    Returns:
        A :class:`MemoryCache` or a connected :class:`RedisCache`.

    Raises:
        RecopsError: the Redis URL is not valid or the server does not answer; the message names the URL.
    """
    if config.backend == "redis":
        return RedisCache(config.redis_url, config.ttl_seconds, config.key_prefix, model_name, clock=clock)
    return MemoryCache(config.ttl_seconds, config.max_entries, clock=clock)


def redact_url(url: str) -> str:
    """``url`` with its password (if any) replaced by ``***``, fit for messages and logs."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        netloc = f"{parts.username or ''}:***@{parts.hostname or ''}"
        if parts.port is not None:
            netloc += f":{parts.port}"
        return urlunsplit(parts._replace(netloc=netloc))
    except ValueError:
        return "<unparseable URL>"


def _check_k(k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise RecopsError(f"k must be a whole number of at least 1 (the length of the list asked for), got {k!r}")


def _check_ttl(ttl_seconds: int) -> None:
    if isinstance(ttl_seconds, bool) or not isinstance(ttl_seconds, int) or ttl_seconds < 1:
        raise RecopsError(f"cache.ttl_seconds must be a whole number of at least 1, got {ttl_seconds!r}")


def _check_lengths(items: Sequence[Any], scores: Sequence[Any], user_id: object) -> None:
    if len(items) != len(scores):
        raise RecopsError(f"the list of user {user_id!r} has {len(items)} items but {len(scores)} scores")


def _normalise(items: Sequence[Any], scores: Sequence[Any], user_id: object) -> tuple[tuple[str, ...],
                                                                                      tuple[float, ...]]:
    """Items as strings and scores as Python floats (numpy scalars included), checked to match in length."""
    _check_lengths(items, scores, user_id)
    return tuple(str(item) for item in items), tuple(float(score) for score in scores)


def _fresh(entry: CachedList, ttl_seconds: int, now: float) -> bool:
    return now < entry.created_at + ttl_seconds


def _first(entry: CachedList, k: int) -> CachedList:
    if len(entry.items) == k:
        return entry
    return dataclasses.replace(entry, items=entry.items[:k], scores=entry.scores[:k])


def _encode(items: Iterable[Any], scores: Iterable[Any], created_at: float, source: str) -> str:
    return json.dumps({"i": [str(item) for item in items], "s": [float(score) for score in scores],
                       "t": float(created_at), "src": str(source)}, separators=(",", ":"))


def _decode(raw: bytes | str) -> CachedList:
    data = json.loads(raw)
    items = tuple(str(item) for item in data["i"])
    scores = tuple(float(score) for score in data["s"])
    if len(items) != len(scores):
        raise ValueError(f"{len(items)} items but {len(scores)} scores")
    return CachedList(items, scores, float(data["t"]), str(data["src"]))


def _glob_escape(text: str) -> str:
    """``text`` with Redis glob metacharacters escaped, to match literally in a SCAN pattern."""
    return "".join("\\" + char if char in "\\*?[]" else char for char in text)


def _chunks(iterable: Iterable[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for element in iterable:
        chunk.append(element)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
