"""The recommendation cache (``recops.serving.cache``): the in-process LRU and the real Redis at 127.0.0.1:6379.

Redis is never mocked: each Redis test writes under a key prefix of its own and deletes its keys afterwards.
Without a reachable server the Redis tests are skipped on a developer machine and fail under CI (CI=true).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterator

import pytest
import redis
from redis.backoff import NoBackoff
from redis.client import Pipeline
from redis.retry import Retry

from recops.config import CacheConfig
from recops.errors import RecopsError
from recops.serving.cache import CachedList, MemoryCache, RedisCache, make_cache, redact_url

REDIS_URL = "redis://127.0.0.1:6379/0"
MODEL = "ranker"


class FakeClock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def closed_port() -> int:
    """A local TCP port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def items(n: int, start: int = 0) -> tuple[list[str], list[float]]:
    return [f"i{start + j}" for j in range(n)], [float(n - j) for j in range(n)]


@pytest.fixture(scope="module")
def raw_redis() -> Iterator[redis.Redis]:
    """A plain client of the test server, to look behind the cache; skip (or fail under CI) when unreachable."""
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1, socket_timeout=2, retry=Retry(NoBackoff(), 0))
    try:
        client.ping()
    except redis.RedisError as exc:
        client.close()
        message = f"Redis not reachable at {REDIS_URL}: {exc}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    yield client
    client.close()


@pytest.fixture
def prefix(raw_redis: redis.Redis) -> Iterator[str]:
    """A key prefix no other test uses; its keys are deleted afterwards."""
    name = f"recops-test-{uuid.uuid4().hex[:12]}"
    yield name
    keys = list(raw_redis.scan_iter(match=f"{name}*", count=1000))
    if keys:
        raw_redis.unlink(*keys)


@pytest.fixture
def rcache(prefix: str) -> Iterator[RedisCache]:
    cache = RedisCache(REDIS_URL, ttl_seconds=60, key_prefix=prefix, model_name=MODEL)
    yield cache
    cache.close()


def own_keys(raw_redis: redis.Redis, prefix: str) -> set[str]:
    return {key.decode() for key in raw_redis.scan_iter(match=f"{prefix}:*", count=1000)}


# --- memory backend --------------------------------------------------------------------------------------------------


def test_memory_round_trip_cuts_to_k_and_keeps_scores_and_stamp() -> None:
    clock = FakeClock()
    cache = MemoryCache(ttl_seconds=60, max_entries=10, clock=clock)
    cache.put("1", "u1", ["a", "b", "c"], [3.0, 2.0, 1.0], source="batch")
    assert cache.get("1", "u1", 3) == CachedList(("a", "b", "c"), (3.0, 2.0, 1.0), clock.now, "batch")
    assert cache.get("1", "u1", 2) == CachedList(("a", "b"), (3.0, 2.0), clock.now, "batch")
    assert cache.get("1", "u2", 2) is None  # another user


def test_memory_list_shorter_than_k_is_a_miss() -> None:
    cache = MemoryCache(ttl_seconds=60, max_entries=10)
    cache.put("1", "u1", *items(10))
    assert cache.get("1", "u1", 20) is None
    assert cache.get("1", "u1", 10) is not None
    assert cache.get("1", "u1", 11) is None


def test_memory_ttl_expiry_on_the_injected_clock() -> None:
    clock = FakeClock()
    cache = MemoryCache(ttl_seconds=60, max_entries=10, clock=clock)
    cache.put("1", "u1", *items(5))
    clock.now += 59.5
    assert cache.get("1", "u1", 5) is not None
    clock.now += 0.5  # exactly ttl_seconds after writing: expired
    assert cache.get("1", "u1", 5) is None
    assert cache.stats()["entries"] == 0  # the expired entry was dropped, not just hidden


def test_memory_versions_are_isolated_and_clear_version_drops_only_its_own() -> None:
    cache = MemoryCache(ttl_seconds=60, max_entries=100)
    cache.put("1", "u1", ["a"], [1.0])
    cache.put("2", "u1", ["b"], [1.0])
    assert cache.put_many("1", {"u2": (["c"], [1.0]), "u3": (["d"], [1.0])}) == 2
    assert cache.get("1", "u1", 1).items == ("a",)
    assert cache.get("2", "u1", 1).items == ("b",)
    assert cache.get("2", "u2", 1) is None
    assert cache.clear_version("1") == 3
    assert [cache.get("1", user, 1) for user in ("u1", "u2", "u3")] == [None, None, None]
    assert cache.get("2", "u1", 1).items == ("b",)
    assert cache.stats()["entries"] == 1


def test_memory_invalidate_drops_one_user_only() -> None:
    cache = MemoryCache(ttl_seconds=60, max_entries=10)
    cache.put_many("1", {"u1": items(3), "u2": items(3)})
    cache.invalidate("1", "u1")
    cache.invalidate("1", "nobody")  # no entry: fine
    assert cache.get("1", "u1", 3) is None
    assert cache.get("1", "u2", 3) is not None


def test_memory_lru_evicts_the_least_recently_used_beyond_max_entries() -> None:
    cache = MemoryCache(ttl_seconds=60, max_entries=3)
    for user in ("u1", "u2", "u3"):
        cache.put("1", user, ["a"], [1.0])
    assert cache.get("1", "u1", 1) is not None  # u1 is now the most recently used: u2 is the oldest
    cache.put("1", "u4", ["a"], [1.0])
    assert cache.stats()["entries"] == 3
    assert cache.get("1", "u2", 1) is None
    assert all(cache.get("1", user, 1) is not None for user in ("u1", "u3", "u4"))
    cache.put_many("1", {f"x{j}": (["a"], [1.0]) for j in range(5)})  # a batch larger than the cache
    assert cache.stats()["entries"] == 3
    assert [cache.get("1", f"x{j}", 1) is not None for j in range(5)] == [False, False, True, True, True]


def test_memory_stats_count_hits_and_misses() -> None:
    cache = MemoryCache(ttl_seconds=60, max_entries=10)
    cache.put("1", "u1", *items(5))
    cache.get("1", "u1", 5)
    cache.get("1", "u1", 3)
    cache.get("1", "u1", 6)  # too short
    cache.get("1", "u9", 1)  # missing
    cache.get("2", "u1", 1)  # other version
    assert cache.stats() == {"hits": 2.0, "misses": 3.0, "errors": 0.0, "entries": 1.0}


def test_bad_inputs_are_recops_errors() -> None:
    cache = MemoryCache(ttl_seconds=60, max_entries=10)
    with pytest.raises(RecopsError, match="2 items but 1 scores"):
        cache.put("1", "u1", ["a", "b"], [1.0])
    with pytest.raises(RecopsError, match="u2"):
        cache.put_many("1", {"u1": (["a"], [1.0]), "u2": (["a"], [])})
    assert cache.stats()["entries"] == 0  # nothing of the bad batch was written
    for k in (0, -1, 1.5, True):
        with pytest.raises(RecopsError, match="k must be"):
            cache.get("1", "u1", k)


# --- redis backend ---------------------------------------------------------------------------------------------------


def test_redis_round_trip_key_layout_and_json_value(rcache: RedisCache, raw_redis: redis.Redis,
                                                    prefix: str) -> None:
    before = time.time()
    rcache.put("1", "u1", ["a", "b", "c"], [3.0, 2.0, 1.5], source="online")
    got = rcache.get("1", "u1", 2)
    assert got is not None
    assert (got.items, got.scores, got.source) == (("a", "b"), (3.0, 2.0), "online")
    assert before <= got.created_at <= time.time()
    assert rcache.get("1", "u1", 3).items == ("a", "b", "c")

    key = f"{prefix}:{MODEL}:v1:u:u1"
    assert rcache.key("1", "u1") == key
    assert own_keys(raw_redis, prefix) == {key}
    value = json.loads(raw_redis.get(key))  # plain JSON, not pickle
    assert value == {"i": ["a", "b", "c"], "s": [3.0, 2.0, 1.5], "t": got.created_at, "src": "online"}
    assert 0 < raw_redis.ttl(key) <= 60  # written with EX


def test_redis_list_shorter_than_k_is_a_miss(rcache: RedisCache) -> None:
    rcache.put("1", "u1", *items(10))
    assert rcache.get("1", "u1", 20) is None
    assert rcache.get("1", "u1", 10) is not None


def test_redis_ttl_expiry(prefix: str, raw_redis: redis.Redis) -> None:
    with RedisCache(REDIS_URL, ttl_seconds=1, key_prefix=prefix, model_name=MODEL) as cache:
        cache.put("1", "u1", *items(3))
        assert cache.get("1", "u1", 3) is not None
        time.sleep(1.1)
        assert cache.get("1", "u1", 3) is None
    assert raw_redis.exists(f"{prefix}:{MODEL}:v1:u:u1") == 0  # gone from Redis itself, not only hidden


def test_redis_created_at_guard_hides_entries_older_than_ttl(prefix: str, raw_redis: redis.Redis) -> None:
    clock = FakeClock(time.time())
    with RedisCache(REDIS_URL, ttl_seconds=30, key_prefix=prefix, model_name=MODEL, clock=clock) as cache:
        cache.put("1", "u1", *items(3))
        clock.now += 29
        assert cache.get("1", "u1", 3) is not None
        clock.now += 1
        assert raw_redis.exists(cache.key("1", "u1")) == 1  # Redis still holds it ...
        assert cache.get("1", "u1", 3) is None  # ... but it is too old to serve
        assert cache.stats()["misses"] == 1


def test_redis_versions_are_isolated_and_clear_version_drops_only_its_own(rcache: RedisCache,
                                                                          raw_redis: redis.Redis,
                                                                          prefix: str) -> None:
    rcache.put_many("1", {f"u{j}": items(3, start=j) for j in range(5)})
    rcache.put_many("2", {f"u{j}": items(3, start=100 + j) for j in range(5)})
    rcache.put("10", "u0", *items(3))  # v10 must not match a v1 pattern
    with RedisCache(REDIS_URL, ttl_seconds=60, key_prefix=prefix, model_name="other") as other:
        other.put("1", "u0", *items(3))  # another model, same prefix and version
        assert rcache.get("1", "u1", 3).items == ("i1", "i2", "i3")
        assert rcache.get("2", "u1", 3).items == ("i101", "i102", "i103")
        assert rcache.clear_version("1") == 5
        assert rcache.clear_version("1") == 0
        assert all(rcache.get("1", f"u{j}", 1) is None for j in range(5))
        assert rcache.get("2", "u1", 3).items == ("i101", "i102", "i103")
        assert rcache.get("10", "u0", 3) is not None
        assert other.get("1", "u0", 3) is not None
    assert len(own_keys(raw_redis, prefix)) == 7


def test_redis_clear_version_matches_glob_characters_literally(raw_redis: redis.Redis, prefix: str) -> None:
    with RedisCache(REDIS_URL, ttl_seconds=60, key_prefix=prefix + "[x]*", model_name=MODEL) as cache:
        cache.put("1", "u1", *items(2))
        raw_redis.set(f"{prefix}x:{MODEL}:v1:u:u1", "not ours", ex=60)  # matched by the unescaped pattern
        assert cache.clear_version("1") == 1
        assert raw_redis.get(f"{prefix}x:{MODEL}:v1:u:u1") == b"not ours"


def test_redis_invalidate_drops_one_user_only(rcache: RedisCache) -> None:
    rcache.put_many("1", {"u1": items(3), "u2": items(3)})
    rcache.put("2", "u1", *items(3))
    rcache.invalidate("1", "u1")
    rcache.invalidate("1", "nobody")
    assert rcache.get("1", "u1", 3) is None
    assert rcache.get("1", "u2", 3) is not None
    assert rcache.get("2", "u1", 3) is not None


def test_redis_put_many_of_5000_lists_is_pipelined(rcache: RedisCache, raw_redis: redis.Redis, prefix: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    lists = {f"user{j}": ([f"item{j}_{r}" for r in range(20)], [1.0 - r / 20 for r in range(20)])
             for j in range(5000)}
    round_trips = []
    real_execute = Pipeline.execute

    def counted_execute(pipe: Pipeline, *args, **kwargs):  # counts, then runs the real pipeline
        round_trips.append(len(pipe.command_stack))
        return real_execute(pipe, *args, **kwargs)

    monkeypatch.setattr(Pipeline, "execute", counted_execute)
    started = time.perf_counter()
    assert rcache.put_many("7", lists) == 5000
    elapsed = time.perf_counter() - started
    assert elapsed < 1.0, f"put_many of 5000 lists took {elapsed:.2f} s"
    assert round_trips == [1000] * 5
    assert len(own_keys(raw_redis, prefix)) == 5000
    for j in (0, 999, 1000, 4999):
        got = rcache.get("7", f"user{j}", 5)
        assert got is not None and got.source == "batch"
        assert got.items == tuple(f"item{j}_{r}" for r in range(5))
    assert 0 < raw_redis.ttl(rcache.key("7", "user4999")) <= 60


def test_redis_stats_count_hits_and_misses(rcache: RedisCache) -> None:
    rcache.put("1", "u1", *items(5))
    rcache.get("1", "u1", 5)
    rcache.get("1", "u1", 1)
    rcache.get("1", "u1", 6)
    rcache.get("1", "nobody", 1)
    assert rcache.stats() == {"hits": 2.0, "misses": 2.0, "errors": 0.0, "entries": -1.0}


def test_redis_outage_during_get_is_a_counted_error_not_an_exception(rcache: RedisCache,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    rcache.COOL_DOWN_S = 0.2
    rcache.put("1", "u1", *items(3))
    assert rcache.get("1", "u1", 3) is not None
    live = rcache._client
    # The server goes away: point the request-path client at a port nothing listens on.
    dead = redis.Redis(host="127.0.0.1", port=closed_port(), socket_connect_timeout=0.5, socket_timeout=0.5,
                       retry=Retry(NoBackoff(), 0))
    with caplog.at_level(logging.WARNING, logger="recops.serving.cache"):
        rcache._client = dead
        started = time.perf_counter()
        assert rcache.get("1", "u1", 3) is None
        assert time.perf_counter() - started < 0.5
        rcache._client = live  # the server is back, but within the cool-down it is not asked
        assert rcache.get("1", "u1", 3) is None
        rcache.put("1", "u2", *items(3))  # skipped too
        time.sleep(0.25)
        assert rcache.get("1", "u1", 3) is not None  # after the cool-down: served from Redis again
        assert rcache.get("1", "u2", 3) is None
        rcache._client = dead
        rcache.put("1", "u3", *items(3))  # the online write-back does not raise either
    rcache._client = live
    dead.close()
    assert rcache.stats() == {"hits": 2.0, "misses": 1.0, "errors": 4.0, "entries": -1.0}
    warnings = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1  # rate-limited
    assert "redis://127.0.0.1:6379/0" in warnings[0].getMessage()


def test_redis_bulk_operations_fail_loudly_naming_the_url(prefix: str) -> None:
    port = closed_port()
    cache = RedisCache(REDIS_URL, ttl_seconds=60, key_prefix=prefix, model_name=MODEL)
    cache.close()
    dead = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.5, socket_timeout=0.5,
                       retry=Retry(NoBackoff(), 0))
    cache._client = cache._bulk = dead
    with pytest.raises(RecopsError, match=r"redis://127\.0\.0\.1:6379/0.*after 0 of 1 lists"):
        cache.put_many("1", {"u1": items(2)})
    with pytest.raises(RecopsError, match=r"127\.0\.0\.1:6379"):
        cache.clear_version("1")
    with pytest.raises(RecopsError, match=r"127\.0\.0\.1:6379"):
        cache.invalidate("1", "u1")
    dead.close()


def test_make_cache_picks_the_backend(prefix: str) -> None:
    memory = make_cache(CacheConfig(ttl_seconds=5, max_entries=7), MODEL)
    assert isinstance(memory, MemoryCache)
    assert (memory.backend, memory.ttl_seconds, memory.max_entries) == ("memory", 5, 7)
    with make_cache(CacheConfig(backend="redis", redis_url=REDIS_URL, key_prefix=prefix, ttl_seconds=9),
                    MODEL) as cache:
        assert isinstance(cache, RedisCache)
        assert (cache.backend, cache.ttl_seconds) == ("redis", 9)
        assert cache.key("3", "u") == f"{prefix}:{MODEL}:v3:u:u"


def test_make_cache_with_unreachable_redis_raises_naming_the_url() -> None:
    url = f"redis://127.0.0.1:{closed_port()}/0"
    started = time.perf_counter()
    with pytest.raises(RecopsError, match=f"{url}.*not reachable"):
        make_cache(CacheConfig(backend="redis", redis_url=url), MODEL)
    assert time.perf_counter() - started < 2.0
    with pytest.raises(RecopsError, match="http://127.0.0.1:6379.*not a Redis URL"):
        make_cache(CacheConfig(backend="redis", redis_url="http://127.0.0.1:6379"), MODEL)


def test_error_messages_mask_the_redis_password() -> None:
    assert redact_url("redis://:s3cret@host:6380/1") == "redis://:***@host:6380/1"
    assert redact_url("redis://me:s3cret@host/0") == "redis://me:***@host/0"
    assert redact_url(REDIS_URL) == REDIS_URL
    url = f"redis://:s3cret@127.0.0.1:{closed_port()}/0"
    with pytest.raises(RecopsError) as caught:
        RedisCache(url, ttl_seconds=60, key_prefix="p", model_name=MODEL)
    assert "s3cret" not in str(caught.value) and "***" in str(caught.value)
