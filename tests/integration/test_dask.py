"""The Dask compute engine against the local one, on a small trained project with a learnable signal.

- an in-process ``LocalCluster`` (2 worker processes, 1 thread each): the distributed ranker (``lightgbm.dask``)
  ranks the test candidates like the local ranker, within ``NDCG_TOLERANCE``; distributed feature gathering and
  batch scoring give exactly the local results;
- a separately started ``dask scheduler`` plus two ``dask worker`` processes on 127.0.0.1: the same ranker trains
  there, within the same tolerance;
- a worker killed (SIGKILL) in the middle of distributed LightGBM training: LightGBM's workers train together over
  sockets, so the survivor fails on its socket and Dask cannot resume the half-built model; the ranker reruns the
  training from the start on the workers present and completes (the killed worker's nanny restarts it). With
  ``retries=0`` the same kill is a RecopsError naming the worker that left.

The project (synthetic, 160 users x 150 items, each user drawn to one of six item "tastes") runs every stage up
to ``bundle`` in-process; validation, evaluation and registration are left out (nothing here reads them).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recops.columns import Columns
from recops.config import Settings
from recops.errors import RecopsError
from tests.conftest import BIN, PROJECT, set_params
from tests.data.cases import PARAMS, write_case
from recops.workspace import Workspace
from recops.data.matrices import interaction_matrix
from recops.ranking import ranked_lists

pytestmark = pytest.mark.integration

# Distributed LightGBM is not bit-identical to one process: each worker bins the features from a sample of its
# own rows, so thresholds and trees differ with how the rows are spread over the workers. Measured test NDCG@10
# minus the local ranker's: on this project (40 trees, 2 workers, 1-8 partitions) 0.000 with one partition,
# -0.012 to +0.001 otherwise; on MovieLens-100k (early-stopped then refitted, as the stage does) +0.003. Here the
# local ranker scores 0.218, one trained on permuted labels 0.070 and random scores 0.087: 0.03 is 2.5 times the
# largest deviation seen and far from what a broken distributed ranker gives.
NDCG_TOLERANCE = 0.03
N_USERS, N_ITEMS, PER_USER, TASTES = 160, 150, 30, 6
TREES = 40  # fixed-size models for the ranker comparisons (no early-stopping noise)
KILL_TREES = 200  # 10-20 ms a tree on two local workers: still training when one is killed


def taste_tables(seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Events where each user prefers the items of one taste (8x), plus attribute tables shaped like
    tests/data/cases.py's, so its ``PARAMS`` read them."""
    rng = np.random.default_rng(seed)
    taste = rng.integers(0, TASTES, N_USERS)
    item_taste = np.arange(N_ITEMS) % TASTES
    popularity = rng.pareto(1.5, N_ITEMS) + 1.0
    frames = []
    for user in range(N_USERS):
        weights = popularity * np.where(item_taste == taste[user], 8.0, 1.0)
        items = rng.choice(N_ITEMS, size=PER_USER, replace=False, p=weights / weights.sum())
        ts = np.sort(1_577_836_800 + rng.integers(0, 300 * 86_400, PER_USER))
        frames.append(pd.DataFrame({"uid": user + 1, "sku": items + 1, "ts": ts,
                                    "stars": rng.integers(1, 6, PER_USER)}))
    users = pd.DataFrame({"uid": np.arange(1, N_USERS + 1), "age": rng.integers(18, 70, N_USERS),
                          "country": rng.choice(["de", "fr", "us"], N_USERS)})
    items = pd.DataFrame({"sku": np.arange(1, N_ITEMS + 1), "price": rng.uniform(1, 50, N_ITEMS).round(2),
                          "tags": np.array(list("abcdef"))[item_taste]})
    return pd.concat(frames, ignore_index=True), users, items


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    from recops import steps
    from recops.config import load_settings

    root = tmp_path_factory.mktemp("dask-project")
    shutil.copy(PROJECT / "params.yaml", root / "params.yaml")
    set_params(root, **PARAMS)
    set_params(root, paths={"expectations_dir": str(PROJECT / "expectations"), "cache_dir": str(root / "cache")},
               ranker={"n_estimators": 120, "early_stopping_rounds": 20, "min_child_samples": 20,
                       "learning_rate": 0.1})
    events, users, items = taste_tables()
    write_case(root, {name: frame.to_csv(index=False).encode()
                      for name, frame in (("events.csv", events), ("users.csv", users), ("items.csv", items))})
    settings = load_settings(root / "params.yaml")
    for name, stage in steps.STAGES.items():
        if name not in ("validate", "evaluate", "register"):
            stage(settings)
    return settings


def table(settings: Settings, fold: str) -> pd.DataFrame:
    return pd.read_parquet(settings.path("features_dir") / f"{fold}.parquet")


def names(settings: Settings) -> list[str]:

    return Workspace(settings).feature_names()


def ndcg_at_10(settings: Settings, booster) -> float:
    """Test-fold NDCG@10 of a booster's lists: the metric code evaluate uses."""
    from recops.evaluation.metrics import ranking_metrics

    test = table(settings, "test")
    index = Workspace(settings).index()
    _, target = Workspace(settings).fold("test")
    users, ranked, _ = ranked_lists(test, booster.predict(test[names(settings)].to_numpy(np.float32)), 10)
    truth = interaction_matrix(target, index.n_users, index.n_items, "binary")
    return ranking_metrics(users, ranked, truth, [10])["ndcg@10"]




@pytest.fixture(scope="module")
def local_ndcg(settings: Settings) -> float:
    from recops.ranking import refit_lambdarank

    booster = refit_lambdarank([table(settings, "fit"), table(settings, "valid")], names(settings), settings.ranker,
                           settings.seed, 1, TREES)
    return ndcg_at_10(settings, booster)


@pytest.fixture(scope="module")
def client(settings: Settings) -> Iterator:
    from recops.compute import dask_client

    with dask_client(None, n_workers=2, threads_per_worker=1) as client:
        yield client


# ------------------------------------------------------------------------------------------------- the ranker
def test_the_validation_pass_picks_the_iteration_lightgbm_early_stopping_picks(settings: Settings):
    """lightgbm.dask cannot early-stop; the validation pass reproduces lgb.train's valid NDCG@10 curve exactly
    and the early-stopping rule on it."""
    import lightgbm as lgb

    from recops.ranking import train_lambdarank
    from recops.ranking.dask_ranker import best_iteration, ndcg_curve
    from recops.ranking.lambdarank import _groups, _params

    fit, valid, features, config = table(settings, "fit"), table(settings, "valid"), names(settings), settings.ranker
    rows, groups = _groups(fit, require_positive=True)
    valid_rows, valid_groups = _groups(valid, require_positive=True)
    train_set = lgb.Dataset(rows[features].to_numpy(np.float32), label=rows[Columns.LABEL], group=groups)
    valid_set = lgb.Dataset(valid_rows[features].to_numpy(np.float32), label=valid_rows[Columns.LABEL],
                            group=valid_groups, reference=train_set)
    recorded: dict = {}
    booster = lgb.train(_params(config, settings.seed, 1), train_set, num_boost_round=config.n_estimators,
                        valid_sets=[valid_set], valid_names=["valid"], callbacks=[lgb.record_evaluation(recorded)])
    curve = ndcg_curve(booster, valid, features, k=10)
    np.testing.assert_allclose(curve, recorded["valid"]["ndcg@10"], rtol=0, atol=1e-12)
    stopped = train_lambdarank(fit, valid, features, config, settings.seed, 1)
    assert best_iteration(curve, config.early_stopping_rounds) == stopped.best_iteration


def test_the_dask_ranker_ranks_like_the_local_ranker(settings: Settings, client, local_ndcg: float):
    from recops.ranking.dask_ranker import refit_lambdarank_dask

    booster = refit_lambdarank_dask(client, [table(settings, "fit"), table(settings, "valid")], names(settings),
                                settings.ranker, settings.seed, 1, TREES)
    assert booster.num_trees() == TREES
    assert booster.feature_name() == names(settings)
    assert abs(ndcg_at_10(settings, booster) - local_ndcg) <= NDCG_TOLERANCE


def test_the_dask_ranker_sets_the_best_iteration_of_its_validation_pass(settings: Settings, client, tmp_path):
    """the train_ranker stage's contract: a Booster whose best_iteration the stage saves; trained here from a Parquet
    directory of several files (users spread over them), as dd.read_parquet gives it."""
    from recops.ranking.dask_ranker import best_iteration, ndcg_curve, train_lambdarank_dask

    fit, valid = table(settings, "fit"), table(settings, "valid")
    folder = tmp_path / "fit"
    folder.mkdir()
    shuffled = fit.sample(frac=1.0, random_state=0)
    for i, rows in enumerate(np.array_split(np.arange(len(shuffled)), 3)):
        shuffled.iloc[rows].to_parquet(folder / f"part.{i}.parquet", index=False)
    config = settings.ranker.model_copy(update={"n_estimators": 40})
    booster = train_lambdarank_dask(client, folder, valid, names(settings), config, settings.seed, 1)
    assert booster.num_trees() == 40
    text = booster.model_to_string()  # the cluster's addresses and ports stay out of the model file
    assert "[machines: " not in text and "[local_listen_port: " not in text and "[num_leaves: " in text
    curve = ndcg_curve(booster, valid, names(settings), k=10)
    assert booster.best_iteration == best_iteration(curve, config.early_stopping_rounds) >= 1


# ------------------------------------------------------------------------------------- features and batch lists
def test_distributed_features_equal_the_local_ones(settings: Settings, client, tmp_path):
    from recops.features import build_features, history_statistics
    from recops.features.distributed import build_features_distributed, read_feature_parts

    index = Workspace(settings).index()
    users_attr, items_attr = Workspace(settings).attributes(index)
    history, target = Workspace(settings).fold("valid")
    candidates = pd.read_parquet(settings.path("candidates_dir") / "valid.parquet")
    factors = np.load(settings.path("candidates_dir") / "valid_item_factors.npy", allow_pickle=False)
    cfg = settings.features
    local = build_features(candidates, history, index.n_users, index.n_items, cfg, users_attr, items_attr,
                           target=target, item_factors=factors)
    stats = history_statistics(history, index.n_users, index.n_items, cfg, users_attr, items_attr, factors)
    from_frame = build_features_distributed(client, candidates, stats, index.n_items, cfg.chunk_rows, target,
                                            npartitions=5)
    pd.testing.assert_frame_equal(from_frame, local)
    parts = build_features_distributed(client, settings.path("candidates_dir") / "valid.parquet", stats,
                                       index.n_items, cfg.chunk_rows, target, out_dir=tmp_path / "features")
    assert parts and all(p.is_file() for p in parts)
    pd.testing.assert_frame_equal(read_feature_parts(tmp_path / "features"), local)


def test_distributed_batch_scoring_gives_the_local_lists_loading_the_bundle_once_per_worker(settings, client,
                                                                                           tmp_path):
    from recops.serving.bundle import load_bundle
    from recops.serving.distributed_batch import recommendation_frame, score_users_distributed
    from recops.serving.engine import Recommender

    folder = settings.path("serving_bundle")
    model = Recommender(load_bundle(folder, None), settings.serving, "1", settings.registry.model_name)
    users = np.arange(model.n_users, dtype=np.int32)
    lists, scores, _ = model.recommend_users(users, 10)
    local = recommendation_frame(model.user_ids, model.item_ids, users, lists, np.nan_to_num(scores, nan=0.0))
    result = score_users_distributed(client, folder, None, settings.serving, "1", 10, tmp_path / "batch",
                                     model_name=settings.registry.model_name, users_per_task=25)
    assert len(result.parts) == int(np.ceil(model.n_users / 25)) and result.users == model.n_users
    pd.testing.assert_frame_equal(result.read(), local)
    assert set(result.bundle_loads.values()) == {1}  # each worker process loaded it once for its 3-4 blocks


def refit_inside_a_task(tables: list[pd.DataFrame], features: list[str], config, seed: int) -> int:
    """Runs on a worker (as a Prefect task does on a DaskTaskRunner): the stage opens its client there."""
    from recops.compute import dask_client
    from recops.ranking.dask_ranker import refit_lambdarank_dask

    with dask_client(None) as client:
        return refit_lambdarank_dask(client, tables, features, config, seed, 1, 5).num_trees()


def test_a_stage_running_in_a_dask_task_trains_on_its_own_cluster(settings: Settings, client):
    """As a Prefect task on a DaskTaskRunner does: a worker process cannot start a LocalCluster (its processes are
    daemonic), so inside a task ``dask_client(None)`` is the worker's own client, seceded from the thread the task
    holds (one per worker here) so that the training can use that worker too."""
    tables = [table(settings, "fit"), table(settings, "valid")]
    future = client.submit(refit_inside_a_task, tables, names(settings), settings.ranker, settings.seed)
    assert future.result(timeout=120) == 5


# ------------------------------------------------------------------------------------------------ the helpers
def test_the_stages_on_the_dask_engine_give_the_local_features_and_a_ranker_within_tolerance(settings, client,
                                                                                             tmp_path):
    """``compute.engine: dask`` through the stages themselves (what `recops run` and `dvc repro` run): the features
    stage writes exactly the local tables; train_ranker trains with lightgbm.dask and the final model's test
    NDCG@10 is within NDCG_TOLERANCE of the local stage's model."""
    import lightgbm as lgb

    from recops import steps
    from recops.config import load_settings
    from tests.conftest import set_params

    root = tmp_path / "project"
    shutil.copytree(settings.root, root)
    set_params(root, compute={"engine": "dask", "address": client.scheduler.address})
    on_dask = load_settings(root / "params.yaml")
    steps.features(on_dask)
    for fold in ("fit", "valid", "test"):
        pd.testing.assert_frame_equal(table(on_dask, fold), table(settings, fold))
    metrics = steps.train_ranker(on_dask)
    assert metrics["ranker.trees"] >= 1
    local = ndcg_at_10(settings, lgb.Booster(model_file=str(settings.path("ranker_model"))))
    distributed = ndcg_at_10(on_dask, lgb.Booster(model_file=str(on_dask.path("ranker_model"))))
    assert abs(distributed - local) <= NDCG_TOLERANCE, (local, distributed)


def test_the_training_flow_runs_every_stage_on_a_dask_task_runner(settings, tmp_path, prefect_api, monkeypatch):
    """``recops run`` with ``compute.engine: dask``: the training flow gets a DaskTaskRunner (its own LocalCluster
    here), every stage is a task on a worker, and the stages inside use that worker's cluster; the run ends with
    a registered version and the export's parity checked. The workers report to a real Prefect server (else
    each would start a temporary one)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.training import training_flow_for
    from recops.config import load_settings
    from tests.conftest import set_params

    root = tmp_path / "flow-project"
    shutil.copytree(settings.root, root)
    set_params(root, compute={"engine": "dask", "address": None, "n_workers": 2})
    monkeypatch.setenv("PREFECT_API_URL", prefect_api)  # inherited by the runner's worker processes
    params = str(root / "params.yaml")
    with temporary_settings({PREFECT_API_URL: prefect_api}):
        flow = training_flow_for(params)
        assert type(flow.task_runner).__name__ == "DaskTaskRunner"
        metrics = flow(params_path=params, dvc=False, push=False)
    assert metrics["registry.model_version"] >= 1
    assert metrics["export.parity.max_abs_diff"] <= load_settings(params).export.max_abs_diff
    assert load_settings(params).path("serving_bundle").joinpath("manifest.json").is_file()


def test_an_unreachable_scheduler_is_an_error_naming_its_address():
    from recops.compute import dask_client

    address = f"tcp://127.0.0.1:{free_port()}"
    with pytest.raises(RecopsError, match=address):
        with dask_client(address, connect_timeout_s=1):
            pass


def test_the_flows_task_runner_follows_the_engine():
    from prefect_dask import DaskTaskRunner

    from flows.training import task_runner

    assert task_runner("local", None) is None
    runner = task_runner("dask", "tcp://127.0.0.1:8786")
    assert isinstance(runner, DaskTaskRunner) and runner.address == "tcp://127.0.0.1:8786"
    assert task_runner("dask", None, n_workers=3).cluster_kwargs["n_workers"] == 3
    with pytest.raises(RecopsError, match="compute.engine"):
        task_runner("ray", None)


# ------------------------------------------------------------------------ a separately started Dask cluster
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module", autouse=True)
def cluster_processes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, list, Path]]:
    """``dask scheduler`` and two ``dask worker`` processes (nanny, 1 thread each) on 127.0.0.1, started with the
    module (autouse) so that their start and their imports of LightGBM and dask.dataframe (``--preload``) overlap
    with the first tests; stopped (process groups, SIGTERM then SIGKILL) after the module."""
    logs = tmp_path_factory.mktemp("dask-cluster")
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    commands = [[str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"]]
    commands += [[str(BIN / "dask"), "worker", address, "--host", "127.0.0.1", "--nthreads", "1", "--nworkers",
                  "1", "--no-dashboard", "--name", f"worker-{i}", "--preload", "dask.dataframe", "--preload",
                  "recops.ranking.dask_ranker"] for i in range(2)]
    processes: list[subprocess.Popen] = []
    try:
        for i, command in enumerate(commands):
            with open(logs / f"process-{i}.log", "wb") as out:
                processes.append(subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env,
                                                  start_new_session=True))
        yield address, processes, logs
    finally:
        for process in reversed(processes):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=15)


@pytest.fixture(scope="module")
def scheduler_address(cluster_processes: tuple[str, list, Path]) -> str:
    """The address of the separately started cluster, once it has its two workers."""
    from recops.compute import connect

    address, processes, logs = cluster_processes
    deadline = time.monotonic() + 90
    while True:  # the scheduler takes a moment to listen, the workers to import
        try:
            connect(address, connect_timeout_s=5, min_workers=2).close()
            return address
        except RecopsError:
            if time.monotonic() > deadline or any(p.poll() is not None for p in processes):
                raise RuntimeError("the Dask cluster did not start: " + " | ".join(
                    (logs / f"process-{i}.log").read_text()[-1500:] for i in range(len(processes)))) from None
            time.sleep(0.5)


@pytest.fixture
def external(scheduler_address: str) -> Iterator:
    from recops.compute import dask_client

    with dask_client(scheduler_address) as client:
        client.wait_for_workers(2, timeout=60)  # a worker killed by an earlier test is back (its nanny)
        yield client


def test_the_ranker_trains_on_a_separately_started_cluster(settings: Settings, external, local_ndcg: float):
    from recops.compute import worker_addresses
    from recops.ranking.dask_ranker import refit_lambdarank_dask

    assert len(worker_addresses(external)) == 2
    booster = refit_lambdarank_dask(external, [table(settings, "fit"), table(settings, "valid")], names(settings),
                                settings.ranker, settings.seed, 1, TREES)
    assert booster.num_trees() == TREES
    assert abs(ndcg_at_10(settings, booster) - local_ndcg) <= NDCG_TOLERANCE


def kill_a_worker_while_lightgbm_trains(client, train, retries: int) -> tuple[object, str]:
    """Start distributed training (long enough: KILL_TREES trees) in a thread, SIGKILL one worker process once
    both workers run LightGBM's training task; return (booster or exception, the killed worker's address)."""
    from recops.compute import worker_pids
    from recops.ranking.dask_ranker import refit_lambdarank_dask

    settings, features = train
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["result"] = refit_lambdarank_dask(client, [table(settings, "fit")], features, settings.ranker,
                                                  settings.seed, 1, KILL_TREES, retries=retries)
        except Exception as exc:  # noqa: BLE001 (handed to the test)
            outcome["result"] = exc

    pids = worker_pids(client)
    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 60
    training: list[str] = []
    while len(training) < 2 and time.monotonic() < deadline and thread.is_alive():
        training = [worker for worker, keys in client.processing().items()
                    if any(str(key).startswith("_train_part") for key in keys)]
        time.sleep(0.02)
    assert len(training) == 2, "LightGBM's training tasks never ran on both workers"
    time.sleep(0.3)  # a few trees in
    victim = sorted(training)[0]
    os.kill(pids[victim], signal.SIGKILL)
    thread.join(timeout=120)
    assert not thread.is_alive(), "training hung after a worker was killed"
    return outcome["result"], victim


def test_a_worker_killed_during_distributed_training_is_retried_and_completes(settings, external, caplog):
    """Why a retry and not Dask's own: LightGBM's per-worker tasks train together over sockets and are pinned to
    their workers, so the survivor fails on its socket and the killed worker's task cannot move; the ranker reruns
    the whole fit on the workers present (Dask recomputes the lost partition), and the result is complete."""
    caplog.set_level(logging.WARNING, logger="recops.ranking.dask_ranker")
    booster, victim = kill_a_worker_while_lightgbm_trains(external, (settings, names(settings)), retries=1)
    assert not isinstance(booster, Exception), booster
    assert booster.num_trees() == KILL_TREES
    assert f"worker(s) {victim} left during training" in caplog.text and "retrying from the start" in caplog.text


def test_without_retries_a_killed_worker_is_an_error_naming_it(settings, external):
    error, victim = kill_a_worker_while_lightgbm_trains(external, (settings, names(settings)), retries=0)
    assert isinstance(error, RecopsError), error
    assert victim in str(error) and "nothing was written" in str(error)
