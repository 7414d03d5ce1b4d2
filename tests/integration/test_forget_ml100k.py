"""Forgetting users of MovieLens-100k, verified the way an auditor would: ``recops forget`` of 3 users on a
pseudonymised project that pushes its data to a DVC remote and caches lists in Redis, with a server running
through the request. Afterwards a scan of the project folder (MLflow's database and artifact store, DVC's cache,
the event logs), the DVC remote and Redis finds neither their pseudonyms nor any row of theirs; the server answers
them as unknown users; and every other user's top-10 is what a project that never saw them recommends (an
independent retrain from the same tables without their rows, on raw ``source: file`` input).

Real DVC, MLflow, Prefect, LightGBM, onnxruntime and Redis throughout. The smaller own-data tests of forgetting
(an interrupted request, one killed after its promotion, unknown users) are in test_privacy.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import time

import numpy as np
import pandas as pd
import pytest

from tests.conftest import BIN, FAST_RANKER, run_dvc, run_env, set_params
from tests.scan import files_under, files_with_text, tables_with_values

pytestmark = pytest.mark.integration

KEY_ENV = "RECOPS_PSEUDONYM_KEY"
KEY = "recops-forget-test-" + "9d2b7c41e06a5f83" * 2
TARGETS = [13, 250, 751]  # raw MovieLens ids: 636, 179 and 34 ratings


def cli(ws, *args: str, key: str | None = KEY) -> subprocess.CompletedProcess:
    env = run_env(ws)
    env.pop(KEY_ENV, None)
    if key is not None:
        env[KEY_ENV] = key
    return subprocess.run([str(BIN / "recops"), *args], cwd=ws, env=env, capture_output=True, text=True, timeout=900)


def pseudonym(raw: int) -> int:
    from recops.privacy import Pseudonymizer

    return int(Pseudonymizer(KEY.encode(), "integer").one(raw))


def load(ws):
    from recops.config import load_settings

    return load_settings(ws / "params.yaml")


@pytest.fixture(scope="module")
def project(fresh_workspace, prefect_api, tmp_path_factory):
    """The pseudonymised ML-100k project after `recops run`, its DVC remote, and the tables it was trained on."""
    ws = fresh_workspace("forget-ml100k", prefect_api)
    remote = tmp_path_factory.mktemp("dvc-remote")
    added = run_dvc(ws, "remote", "add", "-d", "store", str(remote))
    assert added.returncode == 0, added.stderr
    prefix = f"recops-test-forget-ml100k-{os.getpid()}"
    set_params(ws, privacy={"pseudonymize": True}, serving={"cache": {"backend": "redis", "key_prefix": prefix}},
               **FAST_RANKER)  # three ML-100k runs in this module (the run, forget's retrain, the independent one)
    run = cli(ws, "run", "-q")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-6000:]
    tables = {name: pd.read_parquet(ws / f"data/prepared/{name}.parquet") for name in ("interactions", "users",
                                                                                       "items")}
    return ws, remote, prefix, tables


def their_rows(tables, gone: set[int]) -> tuple[pd.DataFrame, set[int]]:
    """The users' interactions, and the timestamps that only their rows have (a surviving row of theirs, under
    any id, would carry one)."""
    log = tables["interactions"]
    mine = log["user_id"].isin(list(gone))
    stamps = log["timestamp"].astype(np.int64)
    return log[mine], set(stamps[mine]) - set(stamps[~mine])


def test_forgotten_users_are_nowhere_and_everyone_else_is_served_as_by_a_model_that_never_saw_them(
        project, fresh_workspace, prefect_api):
    import redis
    from fastapi.testclient import TestClient

    from recops.serving.api import create_app

    ws, remote, prefix, tables = project
    gone = {pseudonym(t) for t in TARGETS}
    rows, only_theirs = their_rows(tables, gone)
    assert set(rows["user_id"]) == gone and len(only_theirs) > 100
    texts = [str(g) for g in gone]
    # the checks see them before: in the project's and the remote's tables, as text somewhere, in Redis
    assert tables_with_values(files_under(remote), gone) and tables_with_values(files_under(ws), only_theirs)
    settings = load(ws)
    store = redis.Redis.from_url(settings.serving.cache.redis_url)
    os.environ[KEY_ENV] = KEY
    local = settings.model_copy(update={"serving": settings.serving.model_copy(update={"reload_poll_seconds": 0})})
    running = TestClient(create_app(local), raise_server_exceptions=False)
    running.__enter__()
    try:
        item = int(tables["items"]["item_id"].iloc[0])
        newest = float(tables["interactions"]["timestamp"].max())
        for raw in TARGETS:  # an event of theirs in the live log and in the server's memory, then a cached list
            assert running.post("/events", json={"user_id": raw, "item_id": item,
                                                 "timestamp": newest + 60}).status_code == 202
            assert running.get(f"/recommendations/{raw}", params={"k": 10}).json()["fallback"] is None
        assert any(t in key.decode() for key in store.scan_iter(match=f"{prefix}:*") for t in texts)
        assert files_with_text(files_under(ws / "data/events"), texts)
        running.app.state.impressions.flush()  # the lists shown to them, in the impression log
        assert files_with_text(files_under(ws / "data/events/impressions"), texts)

        started = time.perf_counter()
        proc = cli(ws, "forget", *map(str, TARGETS), "--reason", "verification", "-q")
        seconds = time.perf_counter() - started
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
        print(f"recops forget of {len(TARGETS)} ML-100k users: {seconds:.0f} s")
        # Redis: no key and no value names them
        assert [key for key in store.scan_iter(match=f"{prefix}:*")
                if any(t.encode() in key or t.encode() in (store.dump(key) or b"") for t in texts)] == []
        holder = running.app.state.holder
        assert holder.reload()["changed"]  # its poll: the new champion, their events out of its memory
        assert not [e for e in holder._events if int(e["user_id"]) in gone]
        # it knows them no more (asked here: a request of theirs now would be a new visit, logged as such)
        assert all(holder.current.user_index(str(g)) is None for g in gone)
    finally:
        running.__exit__(None, None, None)
        os.environ.pop(KEY_ENV, None)
        for key in store.scan_iter(match=f"{prefix}:*"):
            store.unlink(key)

    # the project folder (MLflow database and artifacts, DVC cache, event logs, reports) and the DVC remote
    everywhere = files_under(ws, remote)
    assert files_with_text(everywhere, texts + [KEY]) == []
    assert tables_with_values(everywhere, gone) == []
    assert tables_with_values(everywhere, only_theirs) == []  # no row of theirs under any id
    logged = [json.loads(line) for p in files_under(ws / "data/events") if p.suffix == ".jsonl"
              for line in p.read_text().splitlines() if line.strip()]
    assert not [r for r in logged if float(r["timestamp"]) in only_theirs or int(r["user_id"]) in gone]
    audit = [json.loads(p.read_text()) for p in (ws / "reports/privacy").glob("forget-*.json")]
    assert len(audit) == 1 and audit[0]["users"] == 3 and audit[0]["reason"] == "verification"
    assert audit[0]["counts"]["interactions_dropped_at_ingest"] == len(rows)
    # their events and the lists shown to them
    assert audit[0]["counts"]["dvc_cache_objects"] > 0 and audit[0]["counts"]["event_lines"] == 2 * len(TARGETS)
    # a server started now answers them as unknown users
    os.environ[KEY_ENV] = KEY
    try:
        quiet = settings.model_copy(update={"serving": settings.serving.model_copy(update={
            "reload_poll_seconds": 0, "cache": settings.serving.cache.model_copy(update={"backend": "memory"}),
            "impressions": settings.serving.impressions.model_copy(update={"enabled": False})})})
        with TestClient(create_app(quiet), raise_server_exceptions=False) as fresh:
            for raw in TARGETS:
                answer = fresh.get(f"/recommendations/{raw}", params={"k": 10}).json()
                assert answer["fallback"] == "unknown_user", answer
    finally:
        os.environ.pop(KEY_ENV, None)

    # an independent retrain: a second project given the same tables without their rows, as raw file input
    other = fresh_workspace("never-saw-them", prefect_api)
    external = other / "data/external"
    external.mkdir(parents=True, exist_ok=True)
    tables["interactions"][~tables["interactions"]["user_id"].isin(list(gone))].to_parquet(
        external / "interactions.parquet", index=False)
    tables["users"][~tables["users"]["user_id"].isin(list(gone))].to_parquet(external / "users.parquet", index=False)
    tables["items"].to_parquet(external / "items.parquet", index=False)
    spec = load(ws).data
    set_params(other, data={
        "source": "file", "interactions_path": "data/external/interactions.parquet",
        "users_path": "data/external/users.parquet", "items_path": "data/external/items.parquet",
        "columns": {"user": "user_id", "item": "item_id", "timestamp": "timestamp", "rating": "rating",
                    "weight": None, "split": None},
        "user_attributes": spec.user_attributes.model_dump(), "item_attributes": spec.item_attributes.model_dump(),
    }, **FAST_RANKER)  # the same ranker settings as the project's
    independent = cli(other, "run", "-q", key=None)
    assert independent.returncode == 0, independent.stdout[-3000:] + independent.stderr[-6000:]
    after = json.loads((ws / "reports/metrics.json").read_text())
    never = json.loads((other / "reports/metrics.json").read_text())
    # the same tables, split and seeds, users numbered by first interaction: the very same model, every metric
    judged = [k for k in never if k.startswith(("test.", "valid."))]
    assert "test.ranker.ndcg@10" in judged and {k: after[k] for k in judged} == {k: never[k] for k in judged}
    lists = {name: pd.read_parquet(root / "reports/recommendations_test.parquet")
             for name, root in (("forgot", ws), ("never", other))}
    assert not lists["forgot"]["user_id"].isin(list(gone)).any()
    top = {name: frame[frame["rank"] <= 10].groupby("user_id")["item_id"].apply(frozenset)
           for name, frame in lists.items()}
    common = top["forgot"].index.intersection(top["never"].index)
    assert len(common) >= 0.95 * len(top["never"])
    overlap = np.mean([len(top["forgot"][u] & top["never"][u]) / 10 for u in common])
    print(f"top-10 overlap with a retrain that never saw them: {overlap:.4f} over {len(common)} users")
    assert overlap >= 0.9
