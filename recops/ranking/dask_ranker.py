"""The ranker trained across Dask workers with ``lightgbm.dask.DaskLGBMRanker`` (distributed LambdaRank).

Same contract as :func:`recops.ranking.lambdarank.train_lambdarank` /
:func:`~recops.ranking.lambdarank.refit_lambdarank` (same parameters, same dropping of users without a positive,
same query = one user of one fold) and the same result type: a plain ``lightgbm.Booster``, so the text model, the
ONNX export and MLflow logging do not change.

Data layout. A LambdaRank query must not straddle two workers, so the rows are partitioned by user: every user's
rows (of every fold) are in one partition, and the ``group`` sizes are computed per partition. A pandas frame is
cut at user boundaries into row-balanced partitions; a Dask DataFrame or a Parquet directory (``dd.read_parquet``)
is shuffled on the user column, each row keeping its original position so that a query's rows keep the order
they have in the table (LambdaRank's gradients depend on it when scores tie, e.g. at the first iteration).

Number of trees. ``lightgbm.dask`` 4.7 takes eval sets but not early stopping: its documentation says
"DaskLGBMRanker does not support eval_class_weight or early stopping", and with the ``early_stopping`` callback
each worker decides on the part of the eval set it holds, so workers stop at different iterations and the others
hang or fail on the socket (LightGBM issues #4493, #6197, #6351). So the fit trains ``ranker.n_estimators``
trees (the upper bound) and a validation pass chooses the number: NDCG@10 of the validation queries after each
tree, computed from the booster's per-tree outputs with LightGBM's own definition (label gain 2^l - 1, stable
sort by score), and the same rule as ``lightgbm.early_stopping`` (the first best iteration, stopping
``early_stopping_rounds`` trees without improvement). ``best_iteration`` is set on the returned booster as
``lgb.train`` sets it, so the stage saves and predicts with that many trees. The cost is the trees after the
stopping point: set ``n_estimators`` near the expected count when training on Dask.

Distributed LightGBM is not bit-identical to one process: each worker builds the feature histograms' bin
boundaries from a sample of its own rows, so splits (and the chosen trees) differ slightly; the integration test
states the tolerance.

A worker lost during training: LightGBM's workers train together over sockets, so the survivors fail on their
socket, and the lost worker's training task is pinned to it: Dask cannot resume or move a half-built model. The
fit is rerun from the start on the workers present (up to ``retries`` times; Dask recomputes the lost partitions
from their source), after closing the LightGBM network that the failed fit leaves open in the survivors
(LightGBM keeps it in thread-local state; the next training in that thread would talk to the dead peer). Past
``retries`` it is a RecopsError naming the worker. The stage writes nothing before the booster is returned.
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightgbm as lgb
import numpy as np
import pandas as pd

from recops.columns import Columns
from recops.config import RankerConfig
from recops.errors import RecopsError
from recops.ranking.lambdarank import _groups, _params, _require_signal

if TYPE_CHECKING:
    from typing import TypeAlias

    import dask.dataframe as dd
    from distributed import Client

    # a pandas frame, a Dask DataFrame, or a Parquet file / directory of the feature stage's columns
    TrainingData: TypeAlias = pd.DataFrame | dd.DataFrame | str | Path

log = logging.getLogger(__name__)

FOLD = "_recops_fold"    # which table of a refit a row comes from: queries are (fold, user)
ORDER = "_recops_order"  # a row's position in its source, to keep each query's row order through a shuffle
# lambdarank._params uses LightGBM's names; the scikit-learn wrapper that lightgbm.dask builds on has its own
# names for these, and would otherwise also pass its defaults for them (LightGBM then warns and picks one).
_SKLEARN_NAMES = {"min_data_in_leaf": "min_child_samples", "feature_fraction": "colsample_bytree",
                  "bagging_fraction": "subsample", "bagging_freq": "subsample_freq", "seed": "random_state"}
# num_threads: lightgbm.dask uses each worker's thread count; eval_at is an argument of fit there
_NOT_ON_WORKERS = ("num_threads", "eval_at")


# ------------------------------------------------------------------------------------------------- partitions
def _query_rows(part: pd.DataFrame, require_positive: bool) -> pd.DataFrame:
    """A partition's rows ordered by query (fold, user), each query's rows in source order; queries without a
    positive dropped when ``require_positive``."""
    part = part.sort_values([FOLD, Columns.USER, ORDER], kind="stable")
    if require_positive and len(part):
        best = part.groupby([FOLD, Columns.USER], sort=False)[Columns.LABEL].transform("max")
        part = part[best.to_numpy() > 0]
    return part.reset_index(drop=True)


def _group_sizes(part: pd.DataFrame) -> pd.Series:
    """Sizes of the consecutive queries of a partition already ordered by :func:`_query_rows`."""
    if not len(part):
        return pd.Series([], dtype=np.int64)
    fold = part[FOLD].to_numpy()
    user = part[Columns.USER].to_numpy()
    starts = np.flatnonzero(np.r_[True, (fold[1:] != fold[:-1]) | (user[1:] != user[:-1])])
    return pd.Series(np.diff(np.r_[starts, len(part)]), dtype=np.int64)


def _with_order(part: pd.DataFrame, partition_info: dict[str, Any] | None = None) -> pd.DataFrame:
    number = 0 if partition_info is None else int(partition_info["number"])
    part = part.copy()
    part[ORDER] = (np.int64(number) << 32) + np.arange(len(part), dtype=np.int64)
    return part


def _piece(piece: pd.DataFrame) -> pd.DataFrame:
    return piece


def _user_cuts(users: np.ndarray, npartitions: int) -> list[int]:
    """Row positions (into ``users``, sorted) where row-balanced partitions start; only at user boundaries."""
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]]) if len(users) else np.array([0])
    targets = np.linspace(0, len(users), npartitions + 1)[1:-1]
    cuts = np.unique(starts[np.minimum(np.searchsorted(starts, targets), len(starts) - 1)])
    return [0, *[int(c) for c in cuts if 0 < c < len(users)], len(users)]


def user_partitions(data: TrainingData | list[TrainingData], features: list[str], npartitions: int,
                    require_positive: bool = True) -> dd.DataFrame:
    """A Dask DataFrame of the LambdaRank rows (user, fold, label, features), every user's rows in one partition,
    each partition ordered by query. ``data`` is one table, or several (folds stacked for a refit: a user is one
    query per fold); each a pandas frame, a Dask DataFrame or a Parquet file/directory."""
    import dask.dataframe as dd

    tables = data if isinstance(data, list) else [data]
    columns = [Columns.USER, Columns.LABEL, *features]
    if all(isinstance(table, pd.DataFrame) for table in tables):
        frames = []
        for fold, table in enumerate(tables):
            missing = sorted(set(columns) - set(table.columns))
            if missing:
                raise RecopsError(f"the ranker's training table lacks columns {missing[:5]}: rerun the features stage")
            frame = table[columns].copy()
            frame[FOLD] = np.int8(fold)
            frame[ORDER] = np.arange(len(frame), dtype=np.int64)
            frames.append(frame)
        stacked = pd.concat(frames, ignore_index=True).sort_values([Columns.USER, FOLD, ORDER], kind="stable")
        stacked = stacked.reset_index(drop=True)
        cuts = _user_cuts(stacked[Columns.USER].to_numpy(), npartitions)
        pieces = [stacked.iloc[a:b] for a, b in zip(cuts[:-1], cuts[1:])] or [stacked]
        ddf = dd.from_map(_piece, pieces, meta=stacked.iloc[:0], enforce_metadata=False)
    else:
        parts = []
        for fold, table in enumerate(tables):
            if isinstance(table, (str, Path)):
                if not Path(table).exists():
                    raise RecopsError(f"{table} not found: run the features stage first")
                table = dd.read_parquet(str(table), columns=columns)
            elif isinstance(table, pd.DataFrame):
                table = dd.from_pandas(table[columns], npartitions=1, sort=False)
            ddf_fold = table[columns].map_partitions(_with_order)
            ddf_fold[FOLD] = np.int8(fold)
            parts.append(ddf_fold)
        ddf = dd.concat(parts) if len(parts) > 1 else parts[0]
        ddf = ddf.shuffle(on=Columns.USER, npartitions=npartitions)
    meta = _query_rows(ddf._meta, require_positive)
    return ddf.map_partitions(_query_rows, require_positive, meta=meta)


# ------------------------------------------------------------------------------------------------------ training
def _sklearn_params(config: RankerConfig, seed: int) -> dict[str, Any]:
    params = {_SKLEARN_NAMES.get(key, key): value for key, value in _params(config, seed, 1).items()
              if key not in _NOT_ON_WORKERS}
    return params


def _nonempty(client: Client, parts: dd.DataFrame) -> dd.DataFrame:
    parts = client.persist(parts)
    lengths = client.compute(parts.map_partitions(len, meta=(None, np.int64))).result()
    keep = [i for i, n in enumerate(np.asarray(lengths)) if n > 0]
    _require_signal(np.array(keep))
    return parts.partitions[keep]


def _fit_once(client: Client, parts: dd.DataFrame, features: list[str], config: RankerConfig, seed: int,
              n_trees: int) -> lgb.Booster:
    parts = _nonempty(client, parts)
    group = parts.map_partitions(_group_sizes, meta=pd.Series([], dtype=np.int64))
    model = lgb.DaskLGBMRanker(client=client, n_estimators=int(n_trees), **_sklearn_params(config, seed))
    with warnings.catch_warnings():
        # the scikit-learn wrapper always carries n_jobs (None); lightgbm.dask drops it, with a warning
        warnings.filterwarnings("ignore", message="Parameter n_jobs will be ignored", category=UserWarning)
        model.fit(parts[features], parts[Columns.LABEL], group=group, eval_at=(10,))
    return without_network(model.booster_)


# The cluster's network settings that lightgbm.dask writes into a model's parameters: the workers' addresses and
# random ports. They say nothing about the model and would make every run's model file differ (DVC would see a
# new model each time); a booster that is saved or predicts locally never uses them.
_NETWORK_PARAMETERS = ("machines", "local_listen_port", "num_machines", "machine_list_filename", "time_out")


def without_network(booster: lgb.Booster) -> lgb.Booster:
    """The same trees, without the cluster's network settings in the model's parameters."""
    lines = booster.model_to_string().split("\n")
    kept = [line for line in lines if not any(line.startswith(f"[{name}: ") for name in _NETWORK_PARAMETERS)]
    rebuilt = lgb.Booster(model_str="\n".join(kept))
    rebuilt.best_iteration = booster.best_iteration  # one read from text says -1 (unknown): keep the trained one's
    return rebuilt


def _fit(client: Client, parts: dd.DataFrame, features: list[str], config: RankerConfig, seed: int,
         n_trees: int, retries: int) -> lgb.Booster:
    """Train on the cluster; rerun from the start when a worker was lost during training (see module doc)."""
    from distributed import KilledWorker
    from distributed.comm.core import CommClosedError

    from recops.compute import worker_addresses

    attempt = 0
    while True:
        before = set(worker_addresses(client))
        started = time.perf_counter()
        try:
            booster = _fit_once(client, parts, features, config, seed, n_trees)
        except (lgb.basic.LightGBMError, KilledWorker, CommClosedError, OSError) as exc:
            lost = _lost_workers(client, before)
            retry = bool(lost or isinstance(exc, KilledWorker)) and attempt < retries
            if retry:
                log.warning("distributed ranker training failed after %.1f s: %s during training (%s: %s); "
                            "retrying from the start on the workers present (attempt %d of %d)",
                            time.perf_counter() - started, _what(lost), type(exc).__name__, exc, attempt + 1,
                            retries)
            # the survivors' LightGBM networks are still open: close them, or the next training there (this
            # retry, or the stage run again) talks to the old peers
            _reset_workers(client, len(before) if retry else 0)
            if retry:
                attempt += 1
                continue
            if not lost and not isinstance(exc, KilledWorker):
                raise
            what = _what(lost)
            raise RecopsError(
                f"distributed ranker training failed: {what} during LightGBM's collective training "
                f"({type(exc).__name__}: {exc}), after {retries} retr{'y' if retries == 1 else 'ies'}. "
                "lightgbm.dask cannot resume a model when a worker goes away; nothing was written: check the "
                "workers (memory, restarts) and rerun the stage") from exc
        log.info("distributed ranker: %d trees on %d worker(s) in %.1f s", booster.num_trees(),
                 len(before), time.perf_counter() - started)
        return booster


def _what(lost: list[str]) -> str:
    return f"worker(s) {', '.join(lost)} left" if lost else "workers died"


def _lost_workers(client: Client, before: set[str], wait_s: float = 3.0) -> list[str]:
    """Workers of ``before`` that left the cluster. The survivors' socket error can reach us a moment before the
    scheduler has removed the dead worker, so an empty answer is rechecked for ``wait_s``."""
    from recops.compute import worker_addresses

    deadline = time.monotonic() + wait_s
    while True:
        lost = sorted(before - set(worker_addresses(client)))
        if lost or time.monotonic() > deadline:
            return lost
        time.sleep(0.1)


def _free_network(hold_s: float) -> None:
    """Close this thread's LightGBM network (runs on a worker). A training that failed mid-way leaves it open
    (lightgbm.dask frees it only after a successful fit) and the next training in that thread would talk to the
    old peers' sockets. LightGBM keeps the network in thread-local state, so this runs as a task (in the
    worker's task threads, where training ran, not on its event loop as ``client.run`` would); holding the thread
    for ``hold_s`` makes a worker's simultaneous calls land on distinct threads."""
    lgb.basic._safe_call(lgb.basic._LIB.LGBM_NetworkFree())
    time.sleep(hold_s)


def _reset_workers(client: Client, expected: int, wait_s: float = 5.0) -> None:
    """After a failed fit: wait (up to ``wait_s``) for ``expected`` workers (a restarted one coming back before a
    retry), then close the LightGBM network in every task thread of every worker. Best effort: a worker that
    goes away meanwhile is not an error of its own."""
    from distributed.comm.core import CommClosedError

    from recops.compute import worker_addresses

    deadline = time.monotonic() + wait_s
    while len(worker_addresses(client)) < expected and time.monotonic() < deadline:
        time.sleep(0.25)
    futures = [client.submit(_free_network, 0.2, workers=[address], allow_other_workers=False, pure=False)
               for address, n in client.nthreads().items() for _ in range(n)]
    try:
        client.gather(futures)
    except (lgb.basic.LightGBMError, CommClosedError, OSError) as exc:
        log.warning("could not close LightGBM's network on every worker (%s: %s)", type(exc).__name__, exc)


def _partitions(client: Client, npartitions: int | None) -> int:
    from recops.compute import worker_addresses

    return max(int(npartitions or len(worker_addresses(client))), 1)


def train_lambdarank_dask(client: Client, train: TrainingData, valid: pd.DataFrame | str | Path | None,
                      features: list[str], config: RankerConfig, seed: int, threads: int, *,
                      npartitions: int | None = None, retries: int = 1) -> lgb.Booster:
    """:func:`recops.ranking.lambdarank.train_lambdarank` on a Dask cluster: LambdaRank on ``train`` (users without a
    positive dropped), ``ranker.n_estimators`` trees, then the number of trees chosen on ``valid`` by the
    validation pass (module doc) and set as ``best_iteration``. ``threads``: for the validation pass in this
    process (the workers use their own thread counts). ``npartitions``: default one per worker."""
    parts = user_partitions(train, features, _partitions(client, npartitions))
    booster = _fit(client, parts, features, config, seed, config.n_estimators, retries)
    if valid is not None:
        valid = pd.read_parquet(valid) if isinstance(valid, (str, Path)) else valid
        curve = ndcg_curve(booster, valid, features, k=10, threads=threads,
                           patience=config.early_stopping_rounds)
        if len(curve):
            booster.best_iteration = best_iteration(curve, config.early_stopping_rounds)
    log.info("ranker (dask): %d trees (best iteration %s)", booster.num_trees(), booster.best_iteration)
    return booster


def refit_lambdarank_dask(client: Client, tables: list[TrainingData], features: list[str], config: RankerConfig,
                      seed: int, threads: int, n_trees: int, *, npartitions: int | None = None,
                      retries: int = 1) -> lgb.Booster:
    """:func:`recops.ranking.lambdarank.refit_lambdarank` on a Dask cluster: ``n_trees`` trees on several folds
    stacked (a user is one query per fold). ``threads`` is unused (workers use their own thread counts); kept
    for the same signature."""
    parts = user_partitions(list(tables), features, _partitions(client, npartitions))
    booster = _fit(client, parts, features, config, seed, max(int(n_trees), 1), retries)
    log.info("ranker refit (dask) on %d folds: %d trees", len(tables), booster.num_trees())
    return booster


# ----------------------------------------------------------------------------------------- the validation pass
def ndcg_curve(booster: lgb.Booster, valid: pd.DataFrame, features: list[str], k: int = 10, threads: int = 1,
               patience: int | None = None) -> np.ndarray:
    """Mean NDCG@k of ``valid``'s queries (users with a positive) after each tree of ``booster``: what
    ``lgb.train`` records for a valid set with ``metric: ndcg, eval_at: [k]``. With ``patience``, stops once that
    many trees passed without improvement (the rest of the curve is not needed to pick the best iteration)."""
    table, groups = _groups(valid, require_positive=True)
    if not len(groups):
        return np.array([], dtype=np.float64)
    x = table[features].to_numpy(np.float32)
    labels = table[Columns.LABEL].to_numpy()
    n_groups, width = len(groups), int(groups.max())
    starts = np.r_[0, np.cumsum(groups)[:-1]]
    row = np.repeat(np.arange(n_groups), groups)
    col = np.arange(len(table)) - np.repeat(starts, groups)
    gain = np.zeros((n_groups, width))
    gain[row, col] = np.power(2.0, labels) - 1.0
    discount = 1.0 / np.log2(np.arange(2, min(k, width) + 2, dtype=np.float64))
    ideal = (-np.sort(-gain, axis=1))[:, :len(discount)] @ discount
    score = np.full((n_groups, width), -np.inf)
    score[row, col] = 0.0
    curve: list[float] = []
    best, best_at = -np.inf, 0
    for tree in range(booster.num_trees()):
        score[row, col] += booster.predict(x, start_iteration=tree, num_iteration=1, raw_score=True,
                                           num_threads=threads)
        order = np.argsort(-score, axis=1, kind="stable")[:, :len(discount)]
        dcg = np.take_along_axis(gain, order, axis=1) @ discount
        value = float(np.mean(np.where(ideal > 0, dcg / np.where(ideal > 0, ideal, 1.0), 1.0)))
        curve.append(value)
        if value > best:
            best, best_at = value, tree
        elif patience is not None and tree - best_at >= patience:
            break
    return np.asarray(curve)


def best_iteration(curve: np.ndarray, patience: int) -> int:
    """The iteration (1-based, as ``Booster.best_iteration``) ``lightgbm.early_stopping(patience)`` would pick on
    ``curve``: the first maximum, scanning until ``patience`` trees pass without improvement."""
    best, best_at = -np.inf, 0
    for tree, value in enumerate(curve):
        if value > best:
            best, best_at = value, tree
        elif tree - best_at >= patience:
            break
    return best_at + 1
