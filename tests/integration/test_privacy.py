"""Privacy on a small own-data project (tests/data/cases.py) trained with `recops run`: pseudonymised user ids
everywhere recops writes, the key nowhere, the API taking raw ids, no run without the key, retention.

Two projects from the same files: one with ``privacy.pseudonymize: true`` and one without, so the two runs'
metrics can be compared. Real Prefect, MLflow, LightGBM and onnxruntime throughout.
"""

from __future__ import annotations

import json
import os
import subprocess

import numpy as np
import pandas as pd
import pytest

from tests.conftest import BIN, NO_GATES, replace_param, run_env, set_params
from tests.data.cases import PARAMS, clean_tables, write_clean_case
from tests.scan import files_under, tables_with_values

pytestmark = pytest.mark.integration

KEY_ENV = "RECOPS_PSEUDONYM_KEY"
KEY = "recops-test-key-" + "5f1c0e9a27b84d63" * 2  # 48 bytes
OTHER_KEY = "another-test-key-" + "00112233445566778899" * 2


def cli(ws, *args: str, key: str | None = KEY) -> subprocess.CompletedProcess:
    env = run_env(ws)
    env.pop(KEY_ENV, None)
    if key is not None:
        env[KEY_ENV] = key
    return subprocess.run([str(BIN / "recops"), *args], cwd=ws, env=env, capture_output=True, text=True, timeout=900)


def own_project(fresh_workspace, prefect_api, name: str, **privacy):
    ws = fresh_workspace(name, prefect_api)
    events = clean_tables()[0]
    write_clean_case(ws)
    set_params(ws, **PARAMS, privacy=privacy)
    # random synthetic data: no model beats popularity by the default gates' margin
    replace_param(ws, "registry.first_model_gates", NO_GATES)
    return ws, events


@pytest.fixture(scope="module")
def runs(fresh_workspace, prefect_api):
    """(pseudonymised workspace, its run, raw workspace, the raw events)."""
    ws, events = own_project(fresh_workspace, prefect_api, "privacy-on", pseudonymize=True)
    run = cli(ws, "run", "-q")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-6000:]
    raw_ws, _ = own_project(fresh_workspace, prefect_api, "privacy-off")
    raw_run = cli(raw_ws, "run", "-q", key=None)
    assert raw_run.returncode == 0, raw_run.stdout[-3000:] + raw_run.stderr[-6000:]
    return ws, run, raw_ws, events


def pseudonyms(ids) -> dict[int, int]:
    from recops.privacy import Pseudonymizer

    pseudo = Pseudonymizer(KEY.encode(), "integer")
    return {int(i): int(pseudo.one(int(i))) for i in ids}


def settings_of(ws):
    from recops.config import load_settings

    return load_settings(ws / "params.yaml")


def test_every_user_id_recops_wrote_is_a_pseudonym_and_the_key_is_nowhere(runs):
    ws, run, _, events = runs
    mapping = pseudonyms(np.unique(events["uid"]))
    expected = set(mapping.values())
    prepared = pd.read_parquet(ws / "data/prepared/interactions.parquet")
    assert set(prepared["user_id"]) == expected and not set(prepared["user_id"]) & set(mapping)
    assert set(pd.read_parquet(ws / "data/prepared/users.parquet")["user_id"]) == expected
    assert set(pd.read_parquet(ws / "models/serving/ids_users.parquet")["id"]) == expected
    assert set(pd.read_parquet(ws / "reports/recommendations_test.parquet")["user_id"]) <= expected
    # no copy of the input under data/raw: what was read from where, and under which key (its fingerprint)
    assert sorted(p.name for p in (ws / "data/raw").iterdir()) == ["ingest.json", "sources.json"]
    from recops.privacy import fingerprint

    record = json.loads((ws / "data/raw/ingest.json").read_text())
    assert record["pseudonymized"]["key_fingerprint"] == fingerprint(KEY.encode())
    manifest = json.loads((ws / "models/serving/manifest.json").read_text())
    assert manifest["pseudonym_key"] == fingerprint(KEY.encode())
    # the key in no file of the project (MLflow's database and artifacts, DVC's cache, logs, reports) and no output
    secret = KEY.encode()
    leaks = [str(p.relative_to(ws)) for p in ws.rglob("*") if p.is_file() and secret in p.read_bytes()]
    assert leaks == [] and KEY not in run.stdout + run.stderr


def test_a_pseudonymised_run_scores_as_the_raw_run_does(runs):
    ws, _, raw_ws, _ = runs
    on = json.loads((ws / "reports/metrics.json").read_text())
    off = json.loads((raw_ws / "reports/metrics.json").read_text())
    keys = [k for k in off if k.startswith(("test.", "valid.", "candidates."))]
    assert any(k.startswith("test.ranker.ndcg@10") for k in keys) and set(keys) <= set(on)
    # the same rows, split and seeds, and users numbered by their first interaction, not by their ids: every
    # source, the ranker's queries and so every metric come out exactly as on raw ids
    assert {k: on[k] for k in keys} == {k: off[k] for k in keys}


def test_without_the_key_nothing_runs_and_nothing_is_lost(runs):
    ws = runs[0]
    before = {name: (ws / name).read_bytes() for name in ("data/prepared/interactions.parquet", "dvc.lock",
                                                          "models/serving/manifest.json")}
    for key, words in ((None, f"{KEY_ENV} holds no key"), ("too-short", "at least 32")):
        proc = cli(ws, "run", "-q", key=key)
        assert proc.returncode == 1 and words in proc.stderr, proc.stderr[-3000:]
        assert "Traceback" not in proc.stderr and "too-short" not in proc.stdout + proc.stderr
    assert before == {name: (ws / name).read_bytes() for name in before}


def test_the_api_takes_raw_ids_keeps_pseudonyms_and_refuses_another_key(runs, monkeypatch):
    from fastapi.testclient import TestClient

    from recops.errors import RecopsError
    from recops.serving.api import create_app

    ws, _, _, events = runs
    settings = settings_of(ws)
    local = settings.model_copy(update={"serving": settings.serving.model_copy(update={
        "reload_poll_seconds": 0, "cache": settings.serving.cache.model_copy(update={"backend": "memory"})})})
    monkeypatch.setenv(KEY_ENV, KEY)
    raw_user = int(events["uid"].iloc[0])
    item = int(events["sku"].iloc[0])
    with TestClient(create_app(local, bundle_dir=ws / "models/serving"), raise_server_exceptions=False) as client:
        known = client.get(f"/recommendations/{raw_user}", params={"k": 5}).json()
        assert known["user_id"] == raw_user and known["fallback"] is None and len(known["items"]) == 5
        again = client.get(f"/recommendations/{raw_user}", params={"k": 5}).json()
        assert again["cached"] is True and again["user_id"] == raw_user
        pseudonym = pseudonyms([raw_user])[raw_user]
        # a pseudonym sent as if it were a raw id is just an unknown user
        assert client.get(f"/recommendations/{pseudonym}", params={"k": 5}).json()["fallback"] is not None
        posted = client.post("/events", json={"user_id": raw_user, "item_id": item,
                                              "timestamp": float(events["ts"].max() - 60)})
        assert posted.status_code == 202 and posted.json()["events"][0]["user_id"] == raw_user
    logged = [json.loads(line) for f in sorted((ws / "data/events").glob("*.jsonl"))
              for line in f.read_text().splitlines()]
    assert logged and {r["user_id"] for r in logged} == {str(pseudonym)}
    shown = cli(ws, "pseudonym", str(raw_user), "-q")  # to join batch scores back to one's users
    assert shown.returncode == 0 and shown.stdout.split() == [str(raw_user), str(pseudonym)], shown.stderr
    monkeypatch.setenv(KEY_ENV, OTHER_KEY)
    with pytest.raises(RecopsError, match="pseudonymised under key .* fingerprint"):
        create_app(local, bundle_dir=ws / "models/serving")
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(RecopsError, match=f"{KEY_ENV} holds no key"):
        create_app(local, bundle_dir=ws / "models/serving")


def test_a_snapshot_is_pseudonymised_when_staged_and_retention_drops_old_rows(runs, monkeypatch, tmp_path):
    from recops import steps
    from recops.data.events import stage_snapshot
    from recops.privacy import pseudonymized_with

    ws, _, _, events = runs
    monkeypatch.setenv(KEY_ENV, KEY)
    settings = settings_of(ws)
    source = tmp_path / "snapshot.csv"
    events.to_csv(source, index=False)
    target = ws / "data/external/events.csv"
    staging = target.with_name(f".{target.name}.incoming")
    stage_snapshot(settings, source, staging, include_events=True)  # with the event the API logged above
    staging.replace(target)
    staged = pd.read_csv(target)
    mapping = pseudonyms(np.unique(events["uid"]))
    assert set(staged["uid"]) == set(mapping.values())  # no raw id written under data/
    assert pseudonymized_with(target) is not None and len(staged) == len(events) + 1
    steps.ingest(settings)  # read as it is: the pseudonyms are not hashed again
    assert set(pd.read_parquet(ws / "data/prepared/interactions.parquet")["user_id"]) == set(mapping.values())

    days = 100
    old = ws / "data/events/ingested/events-20190101.jsonl"  # a day wholly before the kept period
    old.parent.mkdir(parents=True, exist_ok=True)
    old.write_text('{"user_id":"1","item_id":"2","timestamp":1546300800.0,"weight":1.0}\n')
    kept = settings.model_copy(update={"privacy": settings.privacy.model_copy(update={"retention_days": days})})
    steps.ingest(kept)
    newest = staged["ts"].max()
    prepared = pd.read_parquet(ws / "data/prepared/interactions.parquet")
    assert len(prepared) == int((staged["ts"] >= newest - days * 86_400).sum()) < len(staged)
    record = json.loads((ws / "data/raw/ingest.json").read_text())
    assert record["retention"] == {"days": days, "rows_dropped": int(len(staged) - len(prepared)),
                                   "event_files_deleted": 1}
    assert not old.exists() and list((ws / "data/events").glob("events-*.jsonl"))  # today's file stays
    assert set(pd.read_parquet(ws / "data/prepared/users.parquet")["user_id"]) == set(prepared["user_id"])


def project_files(ws):
    return files_under(ws)


def ids_in_tables(ws, wanted: set[int]) -> list[str]:
    """Parquet tables of the project (DVC's cache and MLflow's artifacts included) holding one of ``wanted``."""
    return tables_with_values(project_files(ws), wanted)


def test_forget_erases_users_everywhere_retrains_and_promotes(runs):
    from mlflow.tracking import MlflowClient

    ws, _, _, events = runs
    targets = [int(u) for u in np.unique(events["uid"])[:3]]
    gone = set(pseudonyms(targets).values())
    assert ids_in_tables(ws, gone)  # the check sees them before
    settings = settings_of(ws)
    client = MlflowClient(tracking_uri=settings.tracking_uri(), registry_uri=settings.tracking_uri())
    before = {str(v.version) for v in client.search_model_versions(f"name='{settings.registry.model_name}'")}
    # a training whose registration failed, since deleted in the UI: its run still holds their lists
    experiment = client.get_experiment_by_name(settings.registry.experiment).experiment_id
    failed = client.create_run(experiment).info.run_id
    planted = ws / ".recops/recommendations_test.parquet"
    pd.DataFrame({"user_id": sorted(gone), "item_id": 1}).to_parquet(planted, index=False)
    client.log_artifact(failed, str(planted), artifact_path="reports")
    planted.unlink()
    client.delete_run(failed)
    # a server running through the request, told of one of them live (its memory holds their event)
    from fastapi.testclient import TestClient

    from recops.serving.api import create_app

    # ... with its lists cached in Redis (the project's params say so, so that forget clears them there)
    import redis

    prefix = f"recops-test-forget-{os.getpid()}"
    set_params(ws, serving={"cache": {"backend": "redis", "key_prefix": prefix}})
    settings = settings_of(ws)
    os.environ[KEY_ENV] = KEY
    local = settings.model_copy(update={"serving": settings.serving.model_copy(update={"reload_poll_seconds": 0})})
    running = TestClient(create_app(local), raise_server_exceptions=False)
    running.__enter__()
    store = redis.Redis.from_url(settings.serving.cache.redis_url)
    try:
        told = running.post("/events", json={"user_id": targets[0], "item_id": int(events["sku"].iloc[-1]),
                                             "timestamp": float(events["ts"].max() - 30)})
        assert told.status_code == 202
        assert running.get(f"/recommendations/{targets[1]}", params={"k": 5}).json()["fallback"] is None
        cached = [k.decode() for k in store.scan_iter(match=f"{prefix}:*")]
        assert any(k.endswith(f":u:{g}") for k in cached for g in gone)
        proc = cli(ws, "forget", *map(str, targets), "--reason", "asked to be forgotten", "-q")
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
        assert "forgot 3 user(s)" in proc.stdout
        assert not [k for k in store.scan_iter(match=f"{prefix}:*") if any(str(g) in k.decode() for g in gone)]
        holder = running.app.state.holder
        assert holder.reload()["changed"]  # what its poll does: the new champion, without their events
        assert not [e for e in holder._events if int(e["user_id"]) in gone]
        # the model it serves knows them no more (asked here, not by a request: a request of theirs after the
        # forget is a new visit, which the impression log records like any other)
        assert all(holder.current.user_index(str(g)) is None for g in gone)
    finally:
        running.__exit__(None, None, None)
        os.environ.pop(KEY_ENV, None)
        for key in store.scan_iter(match=f"{prefix}:*"):
            store.unlink(key)
        set_params(ws, serving={"cache": {"backend": "memory"}})
        settings = settings_of(ws)
    # nowhere in the project: tables (prepared, split, candidates, features, bundle, reports), DVC's cache,
    # MLflow's artifacts; nor as text in any file (MLflow's database, JSON, logs)
    assert ids_in_tables(ws, gone) == []
    texts = [str(g).encode() for g in gone]
    assert [str(p.relative_to(ws)) for p in project_files(ws) if any(t in p.read_bytes() for t in texts)] == []
    staged = pd.read_csv(ws / "data/external/events.csv")
    assert not staged["uid"].isin(list(gone)).any() and len(staged) > 0
    # the new version is the champion; the earlier ones are erased and never served again
    model = client.get_registered_model(settings.registry.model_name)
    new = str(model.aliases["champion"])
    assert new not in before
    for version in before:
        assert client.get_model_version(settings.registry.model_name, version).tags["recops.forget.erased_by"]
    refused = cli(ws, "promote", "--version", sorted(before)[-1], "-q")
    assert refused.returncode == 1 and "forgotten" in refused.stderr
    audit_files = list((ws / "reports/privacy").glob("forget-*.json"))
    assert len(audit_files) == 1
    audit = json.loads(audit_files[0].read_text())
    assert audit["users"] == 3 and audit["new_version"] == new and audit["counts"]["source_rows"] > 0
    assert audit["reason"] == "asked to be forgotten" and audit["counts"]["artifact_files"] > 0
    assert audit["counts"]["cache_entries"] >= 1 and audit["counts"]["event_lines"] >= 1
    assert not (ws / ".recops/forget-pending.json").exists()
    # the champion's server knows them no more: the unknown-user fallback, as for anyone never seen
    from fastapi.testclient import TestClient

    from recops.serving.api import create_app

    os.environ[KEY_ENV] = KEY
    try:
        local = settings.model_copy(update={"serving": settings.serving.model_copy(update={
            "reload_poll_seconds": 0, "cache": settings.serving.cache.model_copy(update={"backend": "memory"}),
            "impressions": settings.serving.impressions.model_copy(update={"enabled": False})})})
        with TestClient(create_app(local), raise_server_exceptions=False) as served:
            for user in targets:
                answer = served.get(f"/recommendations/{user}", params={"k": 5}).json()
                assert answer["fallback"] is not None and answer["model_version"] == new, answer
    finally:
        os.environ.pop(KEY_ENV, None)
    # again, or someone unknown: nothing to do, nothing changed
    for ids in (map(str, targets), ["999999"]):
        again = cli(ws, "forget", *ids, "-q")
        assert again.returncode == 0 and "nothing to forget" in again.stdout, again.stderr[-2000:]
    assert str(client.get_registered_model(settings.registry.model_name).aliases["champion"]) == new


def test_an_interrupted_forget_is_finished_by_running_the_same_command(runs):
    from recops import forget

    ws, _, _, events = runs
    targets = [str(int(u)) for u in np.unique(events["uid"])[3:5]]
    os.environ[KEY_ENV] = KEY
    try:
        request = forget.start(settings_of(ws), targets, reason="interrupted")  # then the process was killed
    finally:
        os.environ.pop(KEY_ENV, None)
    assert (ws / ".recops/forget-pending.json").is_file()
    other = cli(ws, "forget", "7", "-q")
    assert other.returncode == 1 and "did not finish" in other.stderr and request["request_id"] in other.stderr
    done = cli(ws, "forget", *targets, "-q")
    assert done.returncode == 0 and "forgot 2 user(s)" in done.stdout, done.stdout[-2000:] + done.stderr[-4000:]
    assert (ws / f"reports/privacy/forget-{request['request_id']}.json").is_file()
    assert not (ws / ".recops/forget-pending.json").exists()
    gone = set(pseudonyms([int(t) for t in targets]).values())
    assert not set(pd.read_parquet(ws / "data/prepared/interactions.parquet")["user_id"]) & gone


class Killed(BaseException):
    """What SIGKILL leaves behind, at a chosen point: everything durable so far, nothing after."""


def test_a_forget_killed_after_its_promotion_leaves_a_serving_champion_and_a_rerun_only_finishes(runs, monkeypatch):
    from fastapi.testclient import TestClient
    from mlflow.tracking import MlflowClient

    from recops import forget
    from recops.registry import erasure
    from recops.registry.promotion import TAG_ERASED_BY_FORGET
    from recops.serving.api import create_app

    ws, _, _, events = runs
    targets = [str(int(u)) for u in np.unique(events["uid"])[5:7]]
    monkeypatch.setenv(KEY_ENV, KEY)
    settings = settings_of(ws)
    client = MlflowClient(tracking_uri=settings.tracking_uri(), registry_uri=settings.tracking_uri())
    name = settings.registry.model_name
    request = forget.start(settings, targets, reason="killed after promotion")
    retrain = cli(ws, "run", "-q")  # what the command runs between start and finish
    assert retrain.returncode == 0, retrain.stderr[-4000:]
    version = json.loads((ws / "reports/registry.json").read_text())["model_version"]
    before = {str(v.version) for v in client.search_model_versions(f"name='{name}'")}

    def killed(*args, **kwargs):
        raise Killed

    monkeypatch.setattr(erasure, "erase_versions", killed)
    with pytest.raises(Killed):
        forget.finish(settings, request, str(version))
    monkeypatch.undo()
    monkeypatch.setenv(KEY_ENV, KEY)
    # the champion moved first: it is the retrained version, complete, and a server loads and serves it
    assert str(client.get_registered_model(name).aliases["champion"]) == str(version)
    assert json.loads((ws / ".recops/forget-pending.json").read_text())["version"] == str(version)
    unerased = [v for v in before - {str(version)}
                if not client.get_model_version(name, v).tags.get(TAG_ERASED_BY_FORGET)]
    assert unerased  # the earlier versions still wait for their erasure
    local = settings.model_copy(update={"serving": settings.serving.model_copy(update={
        "reload_poll_seconds": 0, "cache": settings.serving.cache.model_copy(update={"backend": "memory"})})})
    other = int(np.unique(events["uid"])[-1])
    with TestClient(create_app(local), raise_server_exceptions=False) as served:
        answer = served.get(f"/recommendations/{other}", params={"k": 5}).json()
        assert answer["model_version"] == str(version) and answer["fallback"] is None, answer
        for user in targets:
            assert served.get(f"/recommendations/{user}", params={"k": 5}).json()["fallback"] is not None
    # the same command finishes it without training again: no new version, the earlier ones erased
    done = cli(ws, "forget", *targets, "-q")
    assert done.returncode == 0 and f"retrained as version {version} before it was interrupted" in done.stdout, \
        done.stdout[-2000:] + done.stderr[-4000:]
    assert {str(v.version) for v in client.search_model_versions(f"name='{name}'")} == before
    assert all(client.get_model_version(name, v).tags.get(TAG_ERASED_BY_FORGET) for v in unerased)
    assert str(client.get_registered_model(name).aliases["champion"]) == str(version)
    assert not (ws / ".recops/forget-pending.json").exists()
    assert (ws / f"reports/privacy/forget-{request['request_id']}.json").is_file()
