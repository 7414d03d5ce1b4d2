"""Typed settings loaded once from ``params.yaml`` and passed down as one object.

Every section is a strict pydantic model (unknown keys are errors, so a typo in params.yaml is caught before any
work starts). Paths are written once, in ``params.yaml`` under ``paths``; ``Settings.path()`` resolves them
against the project root (the folder holding params.yaml). ``flat()`` gives ``a.b.c`` keys for tracking.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator, PositiveFloat, PositiveInt

from recops.errors import RecopsError


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Paths(Strict):
    """Every file and folder a stage reads or writes, relative to the project root."""

    cache_dir: str = "~/.cache/recops"
    external_dir: str = "data/external"
    raw_dir: str = "data/raw"
    interactions: str = "data/prepared/interactions.parquet"
    users: str = "data/prepared/users.parquet"
    items: str = "data/prepared/items.parquet"
    expectations_dir: str = "expectations"
    validation_dir: str = "reports/validation"
    split_dir: str = "data/split"
    candidates_dir: str = "data/candidates"
    features_dir: str = "data/features"
    mf_dir: str = "models/mf"
    ranker_model: str = "models/ranker.txt"
    ranker_manifest: str = "models/ranker_manifest.json"
    onnx_model: str = "models/ranker.onnx"
    onnx_manifest: str = "models/ranker_onnx.json"
    serving_bundle: str = "models/serving"  # what recops serve loads (see recops.serving.bundle)
    reports_dir: str = "reports"
    candidates_metrics: str = "reports/candidates_metrics.json"
    ranker_metrics: str = "reports/ranker_metrics.json"
    metrics: str = "reports/metrics.json"
    export_metrics: str = "reports/export_metrics.json"
    plots_dir: str = "reports/plots"
    headline_dir: str = "reports/headline"  # dvc metrics show: a few metrics per protocol and model (git-tracked)
    timings_dir: str = "reports/timings"  # seconds per stage and step: never in a DVC-tracked file
    monitoring_dir: str = "reports/monitoring"  # online metrics, drift and off-policy reports (recops monitor)
    recommendations: str = "reports/recommendations_test.parquet"
    registry_report: str = "reports/registry.json"
    backtest_report: str = "reports/backtest.json"
    backtest_html: str = "reports/backtest.html"
    ab_report: str = "reports/ab.json"  # recops ab: the champion / challenger comparison
    ab_html: str = "reports/ab.html"
    tuning_report: str = "reports/tuning.json"  # recops tune: best values and every trial
    batch_dir: str = "reports/batch"  # recops batch-score: one file of lists per version
    snapshots_dir: str = "data/snapshots"  # recops replay: the weekly snapshots cut from a log
    mlflow_db: str = "mlflow.db"
    mlflow_artifacts: str = "mlartifacts"
    stage_timings: str = ".recops/stage_timings.json"  # local state: when each stage last ran (MLflow run times)
    # users who asked to be forgotten (recops forget): salted hashes ingest drops, in the external dir DVC watches
    forgotten: str = "data/external/.recops-forgotten.json"
    privacy_dir: str = "reports/privacy"  # the audit records of forget requests (no ids)


class AttributeColumns(Strict):
    """How to read an attribute table: its id column and which columns feed the ranker, by kind."""

    id: str
    numeric: list[str] = []
    categorical: list[str] = []
    multi_label: list[str] = []
    separator: str = "|"
    # items: a display name (e.g. a product or film title), not a feature: the API answers with it and its
    # reasons name items by it ("because you watched Star Wars (1977)")
    title: str | None = None


class ColumnMapping(Strict):
    """Names of the interaction log's columns; rating, weight and split are optional."""

    user: str = "user_id"
    item: str = "item_id"
    timestamp: str = "timestamp"
    rating: str | None = None
    weight: str | None = None
    split: str | None = None


class DataConfig(Strict):
    source: Literal["movielens100k", "file"] = "movielens100k"
    interactions_path: str | None = None
    users_path: str | None = None
    items_path: str | None = None
    columns: ColumnMapping = ColumnMapping()
    timestamp_unit: Literal["s", "ms", "us", "ns", "datetime"] = "s"
    id_type: Literal["integer", "string"] = "integer"
    csv_separator: str = ","
    user_attributes: AttributeColumns | None = None
    item_attributes: AttributeColumns | None = None

    @model_validator(mode="after")
    def _file_source_has_path(self) -> DataConfig:
        if self.source == "file" and not self.interactions_path:
            raise ValueError("data.source is 'file' but data.interactions_path is not set")
        if self.users_path and self.user_attributes is None:
            raise ValueError("data.users_path is set: also set data.user_attributes (at least its 'id' column)")
        if self.items_path and self.item_attributes is None:
            raise ValueError("data.items_path is set: also set data.item_attributes (at least its 'id' column)")
        return self


class PrivacyConfig(Strict):
    """Personal data in the interaction log (recops.privacy, docs/architecture.md "Privacy")."""

    # user ids replaced by a keyed HMAC-SHA256 of the raw id before anything is written under data/
    pseudonymize: bool = False
    key_env: str = "RECOPS_PSEUDONYM_KEY"  # the environment variable holding the key (never params or git)
    # interactions older than this many days before the newest one are dropped at ingest (None: all kept)
    retention_days: float | None = Field(None, gt=0)
    # user attribute columns allowed although they look like direct identifiers (validation refuses them otherwise)
    allow_identifier_columns: list[str] = []
    # a user attribute whose distinct values cover more than this share of the users singles them out
    max_attribute_unique_share: float = Field(0.5, gt=0, le=1)


class ValidationConfig(Strict):
    min_rows: int = 1000
    min_users: int = 10
    min_items: int = 10
    rating_min: float = 1.0
    rating_max: float = 5.0
    earliest_timestamp: str = "1990-01-01"
    offending_examples: int = 5

    def earliest_epoch_seconds(self) -> int:
        ts = datetime.fromisoformat(self.earliest_timestamp)
        if ts.tzinfo is None:
            ts = ts.replace(tzinfo=timezone.utc)
        return int(ts.timestamp())


class SplitConfig(Strict):
    method: Literal["per_user_temporal", "global_time", "predefined"] = "per_user_temporal"
    valid_fraction: float = Field(0.1, gt=0, lt=0.5)
    test_fraction: float = Field(0.1, gt=0, lt=0.5)


SourceName = Literal["mf", "ease", "itemknn", "popularity", "recent_popularity", "decayed_popularity",
                          "recent_itemknn", "sequence"]


class CandidatesConfig(Strict):
    # Sources merged into each user's candidate list (round-robin by rank, duplicates removed); every source's
    # score and rank of every candidate become ranker features. Users without history get popularity only.
    sources: list[SourceName] = ["mf", "ease", "itemknn", "popularity", "recent_popularity"]
    n_candidates: int = Field(200, ge=1)
    # mf: implicit ALS / BPR
    algorithm: Literal["als", "bpr"] = "als"
    factors: int = Field(28, ge=2)
    iterations: int = Field(27, ge=1)
    regularization: float = 0.00474
    alpha: float = 0.7173
    learning_rate: float = 0.05
    confidence: Literal["binary", "rating", "weight"] = "binary"
    # Warm start: a fit on a history that extends an earlier one (the valid fold's after the fit fold's, the test
    # fold's after the valid fold's, the serving bundle's after the test fold's) starts from the earlier fit's
    # factors and runs this many iterations instead of `iterations` from random factors (null: never). ALS from
    # a near solution needs few iterations: large logs save most of the MF time (BENCHMARKS.md, "Scale").
    warm_start_iterations: int | None = Field(None, ge=1)
    # ease: closed-form item-item model; refuses catalogues above ease_max_items (n_items^2 memory)
    ease_l2: float = Field(88.21, gt=0)
    ease_max_items: int = Field(30_000, ge=1)
    # itemknn: cosine item-item similarity with shrinkage, k nearest neighbours per item
    knn_neighbours: int = Field(525, ge=1)
    knn_shrinkage: float = Field(3.646, ge=0)
    # co-occurrences counted over each user's most recent knn_max_history items (null: all). The co-occurrence
    # product costs the sum of squared history lengths, which heavy users make grow faster than the log; the cap
    # makes it linear in users.
    knn_max_history: int | None = Field(None, ge=2)
    # popularity: interaction counts, exponentially decayed with this half-life (null: plain counts)
    popularity_half_life_days: float | None = Field(None, gt=0)
    # time-aware sources, as of the history's end (a fold's cut): recent_popularity counts the interactions of
    # the last recent_popularity_days; decayed_popularity weighs each by 2^(-age / half-life);
    # recent_itemknn is item-kNN over the co-occurrences of the last recent_cooccurrence_days only
    recent_popularity_days: float = Field(30.0, gt=0)
    decayed_popularity_half_life_days: float = Field(14.0, gt=0)
    recent_cooccurrence_days: float = Field(60.0, gt=0)
    # sequence: a self-attentive sequential model (SASRec-style: item and position embeddings, causal
    # self-attention over each user's last sequence_length items), trained on the fold's history with PyTorch (the
    # optional extra: pip install -e '.[sequence]') and served through ONNX; a user's score of an item is the
    # dot product of the user's encoding and the item's embedding
    sequence_length: int = Field(50, ge=1)
    sequence_embedding: int = Field(64, ge=2)
    sequence_heads: int = Field(2, ge=1)
    sequence_layers: int = Field(2, ge=1, le=8)
    sequence_dropout: float = Field(0.2, ge=0, lt=1)
    sequence_epochs: int = Field(30, ge=1)
    sequence_batch_size: int = Field(128, ge=1)
    sequence_learning_rate: float = Field(0.001, gt=0)
    # sampled softmax over this many uniform negatives shared by a batch (null: full softmax over the catalogue)
    sequence_negatives: int | None = Field(None, ge=1)
    # training windows of sequence_length + 1 items per user, most recent first (null: every interaction is a
    # target once); a cap on the work per epoch for very active users
    sequence_max_windows: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _sequence_heads_divide(self) -> CandidatesConfig:
        if self.sequence_embedding % self.sequence_heads:
            raise ValueError(f"candidates.sequence_embedding ({self.sequence_embedding}) must be divisible by "
                             f"candidates.sequence_heads ({self.sequence_heads}): each attention head gets "
                             "sequence_embedding / sequence_heads dimensions")
        return self

    @field_validator("sources")
    @classmethod
    def _sources_unique(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one candidate source is needed")
        if len(set(value)) != len(value):
            raise ValueError(f"candidate sources listed twice: {value}")
        return value


class FeaturesConfig(Strict):
    recency_half_life_days: float = Field(30.0, gt=0)
    sequence_length: int = Field(5, ge=1)       # the user's last items compared with each candidate
    similarity_neighbours: int = Field(200, ge=1)
    similarity_shrinkage: float = Field(10.0, ge=0)
    similarity_max_history: int | None = Field(None, ge=2)  # as candidates.knn_max_history
    # trending features: item counts over each of these windows before the cut, and their velocity
    trend_windows_days: list[PositiveFloat] = Field([7.0, 14.0], max_length=6)
    recent_window_days: float = Field(30.0, gt=0)
    chunk_rows: int = Field(2_000_000, ge=10_000)


class RankerConfig(Strict):
    holdout_fraction: float = Field(0.2, gt=0, lt=0.5)
    # How the ranker's label fold is cut from the training period: per_user (each user's most recent
    # holdout_fraction), global_time (one cut for everybody: the last label_days, or the most recent
    # holdout_fraction of the rows), auto (global_time when the split is global in time, else per_user)
    holdout: Literal["auto", "per_user", "global_time"] = "auto"
    label_days: float | None = Field(14.0, gt=0)
    # global_time: this many label windows of the same length stacked as ranker queries (the most recent one,
    # then earlier ones, each with only the interactions before it as history); the j-th earlier window's
    # queries weigh label_window_decay ** j
    label_windows: int = Field(4, ge=1, le=12)
    label_window_decay: float = Field(1.0, gt=0, le=1)
    # After early stopping on the valid fold, refit with the chosen number of trees on the fit and valid folds
    # together (the test fold's ranker then has seen the most recent labels before test).
    refit_on_valid: bool = True
    n_estimators: int = Field(1000, ge=1)
    learning_rate: float = 0.02637
    num_leaves: int = 13
    min_child_samples: int = 227
    feature_fraction: float = 0.9195
    bagging_fraction: float = 0.6663
    lambdarank_truncation_level: int = 36
    early_stopping_rounds: int = 50
    # Users whose candidates train the ranker (fit fold) and drive its early stopping (valid fold): a seeded
    # sample of each fold's target users when there are more; null = all. The ranker's cost grows with
    # users x n_candidates rows; tens of thousands of users are plenty of queries for LambdaRank.
    max_users: int | None = Field(None, ge=10)


class EvaluationConfig(Strict):
    ks: list[int] = [10, 20]
    # single-stage models evaluated next to the ranker (each is also a candidate source; one that is not among
    # candidates.sources is fitted for this alone); an empty list reports popularity only
    baselines: list[SourceName] = ["popularity", "recent_popularity", "decayed_popularity", "mf", "ease",
                                        "itemknn"]
    top_n_report: int = Field(100, ge=1)
    # Test users evaluated: a seeded sample when there are more (reported as test.candidates.users and
    # test.candidates.users_total); null = all.
    max_users: int | None = Field(None, ge=10)


class StorageConfig(Strict):
    """How the serving bundle stores the retrieval arrays (``recops.candidates.storage``; the measured cost of each
    choice in BENCHMARKS.md "Compressed retrieval")."""

    mf_factors: Literal["float32", "float16", "int8"] = "float32"  # int8: a float32 scale per row
    # EASE weights, item-kNN and similarity-feature cosines (int8: a float32 scale per row)
    item_item: Literal["float32", "float16", "int8"] = "float32"
    ease_top_k: PositiveInt | None = None  # keep each EASE row's k largest weights (sparse); null: all


class ExportConfig(Strict):
    target_opset: int = 15
    # The export rounds split thresholds so branch decisions match native LightGBM exactly on float32 features;
    # what remains is ONNX summing leaf values in float32: relative error ~6e-8 per tree, i.e. about 1e-5 for a
    # few hundred trees and scores of order 1. 1e-3 leaves two orders of margin and still fails on any wrong
    # branch (one leaf value, typically 1e-2 or more).
    max_abs_diff: float = 1e-3
    # Native scores closer than this are ties: float32 summation may swap them, so their order is not checked.
    tie_tolerance: float = 1e-4
    storage: StorageConfig = Field(default_factory=StorageConfig)


class TuningConfig(Strict):
    time_budget_s: float = Field(900.0, gt=0)   # the whole search (sources, then the ranker)
    source_share: float = Field(0.4, gt=0, le=1)  # of the budget, split evenly between the tuned sources
    max_trials: int = Field(200, ge=1)          # per search
    sources: list[SourceName] = ["mf", "ease", "itemknn", "recent_popularity", "decayed_popularity",
                                      "recent_itemknn"]
    ranker: bool = True
    log_to_mlflow: bool = True                   # a `tune` run with one nested run per trial


BacktestPeer = Literal["popularity", "recent_popularity", "decayed_popularity", "itemknn", "ease", "als", "bpr"]


class BacktestConfig(Strict):
    """``recops backtest``: rolling-origin evaluation on the global timeline. Window w (0 = oldest) has its cut at
    ``end - test_days - (windows - 1 - w) * step_days`` (``end``: the log's last timestamp); everything is fitted
    on the interactions before the cut (peers' parameters, ranker labels and number of trees chosen on the
    ``valid_days`` before it) and judged on the ``test_days`` after it, for the users seen before the cut."""

    windows: int = Field(4, ge=1, le=52)
    test_days: float = Field(21.0, gt=0)
    valid_days: float | None = Field(None, gt=0)   # null: test_days
    step_days: float | None = Field(None, gt=0)    # null: test_days (windows side by side)
    min_train_days: float = Field(28.0, ge=0)      # history needed before the first window's validation period
    min_users: int = Field(20, ge=1)               # warm users needed in every validation and test window
    k: int = Field(20, ge=10)
    seeds: int = Field(1, ge=1, le=10)             # refits of the stochastic models (settings.seed + 0..n-1)
    peers: list[BacktestPeer] = ["popularity", "recent_popularity", "decayed_popularity", "itemknn", "ease", "als"]
    quick: bool = False                            # 2-3 grid points per peer instead of the full grids
    bootstrap_resamples: int = Field(2000, ge=100)
    confidence: float = Field(0.95, gt=0.5, lt=1)
    log_to_mlflow: bool = True                     # a parent run with one nested run per window
    with_run: bool = True                          # `recops run` ends with a backtest (both protocols reported)

    @property
    def valid(self) -> float:
        return self.valid_days or self.test_days

    @property
    def step(self) -> float:
        return self.step_days or self.test_days


class GuardrailsConfig(Strict):
    max_coverage_drop: float = Field(0.10, ge=0)   # relative drop of coverage@10 allowed (challenger vs champion)
    max_novelty_drop: float = Field(0.10, ge=0)    # relative drop of novelty@10 allowed
    max_p99_latency_ms: float = Field(5.0, gt=0)   # ONNX ranker scoring of one request (200 candidates), p99


class ABConfig(Strict):
    primary_metric: str = "ndcg@10"
    alpha: float = Field(0.05, gt=0, lt=0.5)       # significance level (two-sided)
    power: float = Field(0.8, gt=0, lt=1)          # for the minimum detectable effect
    min_lift: float = Field(0.0, ge=0)             # relative lift of the primary metric needed to ship
    bootstrap_samples: int = Field(2000, ge=100)
    k: int = Field(10, ge=1)                       # list length shown in the simulated online test / interleaving
    split: float = Field(0.5, gt=0, lt=1)          # share of users in the challenger arm
    salt: str = "recops-ab"                        # hash salt of the arm assignment
    srm_p_value: float = Field(0.001, gt=0, lt=1)  # sample-ratio-mismatch alarm threshold
    # also judge both versions' configurations on the rolling-timeline backtest (refitted before each cut, paired
    # per window and user); ship only if the challenger is better there too. Costs two two-stage backtests.
    timeline: bool = False
    # CUPED: narrow the between-arm intervals of the simulated online test with each user's value of a covariate
    # in the pre-period (the validation fold, right before the test period). activity: the user's number of
    # interactions there (free; the best single covariate measured on ML-100k); champion_metric: primary_metric of
    # the champion's list there, the champion rebuilt on the training fold (one more rebuild)
    cuped: bool = True
    cuped_covariate: Literal["activity", "champion_metric"] = "activity"
    guardrails: GuardrailsConfig = GuardrailsConfig()


class OrchestrationConfig(Strict):
    # Prefect retries of the tasks that talk to something outside the process (package index, tracking server);
    # a RecopsError (bad data or parameters) is never retried
    retries: int = Field(2, ge=0)
    retry_delay_seconds: float = Field(10.0, ge=0)


class ComputeConfig(Strict):
    # Where the heavy stages run. local: in the stage's process. dask: feature building (dask.dataframe over the
    # candidate partitions), the ranker (lightgbm.dask, distributed LambdaRank) and batch scoring on a Dask
    # cluster, and the training flow on Prefect's DaskTaskRunner; MF stays on one process (implicit).
    engine: Literal["local", "dask"] = "local"
    address: str | None = None          # a running scheduler (tcp://host:8786); null: a LocalCluster per stage
    n_workers: int = Field(2, ge=1)     # the LocalCluster's worker processes (address null)
    threads_per_worker: int = Field(1, ge=1)
    ranker_retries: int = Field(1, ge=0)  # refits of the distributed ranker after a worker is lost


class DriftConfig(Strict):
    """``recops drift`` (recops.monitoring.drift): the current snapshot against the champion's training data."""

    # what a drifted snapshot does in evaluate-and-promote: block the promotion, retrain first, or only warn
    action: Literal["block", "retrain", "warn"] = "warn"
    max_drifted_share: float = Field(0.5, gt=0.0, le=1.0)  # dataset drift: this share of the checks drifted
    # checks that act alone (the recommender-level ones: each needs an absolute change and 3 standard errors)
    decisive_checks: list[str] = ["popularity_gini", "top_items_share", "new_item_share", "cold_user_share"]
    # features that move with the clock whatever users do (ages, recencies): reported, never counted for the gate
    ignore_features: list[str] = ["item_age_days", "item_days_since_last", "user_days_since_last",
                                  "item_age_at_user_days"]
    # "current": the interactions after the champion's history ended; fewer than min_rows -> the last window_days
    min_rows: int = Field(200, ge=1)
    window_days: float = Field(30.0, gt=0.0)
    sample_rows: int = Field(5000, ge=100)  # feature rows compared per side (seeded sample)


class MonitoringConfig(Strict):
    """Watching production (recops.monitoring): online metrics from the impression and event logs, drift."""

    online_days: int = Field(7, ge=1)  # the online metrics cover the served lists of the last this many days
    ks: list[int] = [5, 10]  # list depths of CTR@k, coverage@k and novelty@k
    drift: DriftConfig = DriftConfig()


class DeploymentsConfig(Strict):
    # Schedules of the Prefect deployments served by `recops deploy` (cron in the server's time zone, UTC)
    training_cron: str = "0 3 * * *"
    monitoring_cron: str = "30 2 * * *"  # online metrics of the day before
    promotion_cron: str = "0 5 * * *"
    backtest_cron: str = "0 4 * * 0"
    batch_interval_minutes: float = Field(60.0, gt=0)
    batch_k: int = Field(100, ge=1)
    timezone: str = "UTC"


class RegistryConfig(Strict):
    tracking_uri: str | None = None  # default: sqlite database at paths.mlflow_db
    experiment: str = "recops"
    model_name: str = "recops-ranker"
    # The first model (no champion to A/B-test against) is promoted only past these gates; checked by
    # recops.registry.promotion.FirstModelGates (metric, fold, model, min_value, min_lift_over).
    first_model_gates: dict[str, Any] = {"metric": "ndcg@10", "min_lift_over": {"popularity": 0.05}}
    # With no champion yet, training promotes the version it registers when it passes first_model_gates (the
    # same check `recops promote` makes for a first model); false leaves the first promotion to `recops promote`.
    bootstrap_champion: bool = True


class ExplorationConfig(Strict):
    """Explore/exploit: some list positions may show an under-exposed item instead of the ranker's choice."""

    policy: Literal["none", "epsilon_greedy", "thompson"] = "none"
    slots: int = Field(1, ge=0)  # how many positions (the last ones of the list) may explore
    epsilon: float = Field(0.1, ge=0.0, le=1.0)  # epsilon_greedy: probability that a slot explores
    # items whose exposure (interaction count) is below this quantile of all items form the exploration pool
    underexposed_quantile: float = Field(0.5, gt=0.0, le=1.0)
    seed: int = 0


class CacheConfig(Strict):
    """Where recommendation lists are cached: ``memory`` (in-process, the embedded default) or ``redis``."""

    backend: Literal["memory", "redis"] = "memory"
    redis_url: str = "redis://127.0.0.1:6379/0"
    ttl_seconds: int = Field(3600, ge=1)  # a cached list older than this is not served
    key_prefix: str = "recops"
    max_entries: int = Field(100_000, ge=1)  # memory backend: least recently used entries are evicted beyond this


class ImpressionsConfig(Strict):
    """The impression log (recops.serving.impressions): every served list, for online metrics and off-policy
    evaluation."""

    enabled: bool = True
    flush_seconds: float = Field(1.0, gt=0.0, le=60.0)  # a SIGKILL loses at most this long of impressions
    max_buffer: int = Field(100_000, ge=1)  # records held in memory when the disk stalls; the oldest go beyond
    # an event of the user within this many minutes after an impression that showed its item is a click on it
    attribution_minutes: float = Field(30.0, gt=0.0)


class ServingConfig(Strict):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    default_k: int = Field(10, ge=1)
    max_k: int = Field(1000, ge=1)
    threads: int = Field(1, ge=1)  # onnxruntime / BLAS threads per request (1 is fastest on small machines)
    # lleaves: the forest compiled to machine code at the bundle stage (exactly LightGBM's scores, ~10x faster than
    # onnxruntime per request, BENCHMARKS.md "Ranker runtimes"); onnx: onnxruntime over the registered ONNX model
    ranker_runtime: Literal["lleaves", "onnx"] = "lleaves"
    blocked_items: list[str] = []  # item ids never recommended (original ids, as text)
    # at most this many items sharing a value of ``cap_attribute`` (an item multi-label or categorical attribute,
    # e.g. genres) in one list; null: no cap
    category_cap: int | None = Field(None, ge=1)
    cap_attribute: str | None = None
    exploration: ExplorationConfig = ExplorationConfig()
    cache: CacheConfig = CacheConfig()
    reload_poll_seconds: float = Field(30.0, ge=0.0)  # how often to look for a moved champion alias; 0: never
    admin_token_env: str = "RECOPS_ADMIN_TOKEN"  # admin endpoints are off unless this variable holds a token
    # POST /events needs "Authorization: Bearer <token>" when this variable holds one (a warning at start
    # otherwise: anyone who reaches the port can then write events)
    events_token_env: str = "RECOPS_EVENTS_TOKEN"
    # GET /recommendations needs "Authorization: Bearer <token>" when this variable holds one (a warning at start
    # otherwise: anyone who reaches the port can then read any user's list, and its reasons name their history)
    read_token_env: str = "RECOPS_READ_TOKEN"
    # a reason per listed item ("because you interacted with X"); false: no reason (nor explain's feature
    # contributions) in any answer, live or cached
    reasons: bool = True
    # a reason names history item X for item Y only when at least this many *other* users interacted with both
    # (k-anonymity: a pair behind one or two people says what they did); 0: no such check
    min_reason_support: int = Field(5, ge=0)
    max_body_bytes: int = Field(65_536, ge=1)
    event_log_dir: str = "data/events"  # durable log of POST /events (JSON lines) for the next snapshot
    impressions: ImpressionsConfig = ImpressionsConfig()  # logged under <event_log_dir>/impressions
    # worker processes of recops serve (one port, one event log, one memory-mapped bundle); null: one per core
    workers: int | None = Field(None, ge=1)


# The sections of params.yaml that decide what a training run produces (its data, split, sources, features,
# ranker and exported bundle); the others say where files go, how it is evaluated, tuned, scheduled, served.
MODEL_SECTIONS = ("seed", "data", "privacy", "validation", "split", "candidates", "features", "ranker", "export")


class Settings(Strict):
    seed: int = 42
    threads: int = Field(1, ge=1)
    paths: Paths = Paths()
    data: DataConfig = DataConfig()
    privacy: PrivacyConfig = PrivacyConfig()
    validation: ValidationConfig = ValidationConfig()
    split: SplitConfig = SplitConfig()
    candidates: CandidatesConfig = CandidatesConfig()
    features: FeaturesConfig = FeaturesConfig()
    ranker: RankerConfig = RankerConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    export: ExportConfig = ExportConfig()
    tuning: TuningConfig = TuningConfig()
    backtest: BacktestConfig = BacktestConfig()
    ab: ABConfig = ABConfig()
    orchestration: OrchestrationConfig = OrchestrationConfig()
    compute: ComputeConfig = ComputeConfig()
    monitoring: MonitoringConfig = MonitoringConfig()
    deployments: DeploymentsConfig = DeploymentsConfig()
    registry: RegistryConfig = RegistryConfig()
    serving: ServingConfig = ServingConfig()

    # Not from params.yaml: the folder holding it, against which relative paths resolve.
    root: Path = Field(default_factory=Path.cwd, exclude=True)

    def path(self, name: str) -> Path:
        """Absolute path of ``paths.<name>`` (``~`` expanded, relative to the project root)."""
        value = getattr(self.paths, name)
        p = Path(value).expanduser()
        return p if p.is_absolute() else self.root / p

    def resolve(self, value: str) -> Path:
        p = Path(value).expanduser()
        return p if p.is_absolute() else self.root / p

    def tracking_uri(self) -> str:
        return self.registry.tracking_uri or f"sqlite:///{self.path('mlflow_db')}"

    def flat(self) -> dict[str, Any]:
        """``{"candidates.factors": 64, ...}`` for experiment tracking (URI passwords masked)."""
        from recops.redaction import redacted

        return redacted(flatten(self.model_dump(mode="json", exclude={"root"})))

    def params_hash(self) -> str:
        """A model's lineage: the hash of the sections that decide what is trained (:data:`MODEL_SECTIONS`), so
        that serving a version on another port, scheduling it differently or A/B-testing it with another
        threshold does not change the identity of the model."""
        payload = json.dumps(self.model_dump(mode="json", include=set(MODEL_SECTIONS)), sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def load_settings(params_path: str | Path = "params.yaml") -> Settings:
    """Read and validate params.yaml; a bad file raises RecopsError naming the key to fix."""
    path = Path(params_path).resolve()
    if not path.is_file():
        raise RecopsError(f"params file not found: {path} (run from the project root or pass --params)")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise RecopsError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise RecopsError(f"{path}: expected a mapping of sections at the top level")
    try:
        return Settings(**raw, root=path.parent)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg']}" for err in exc.errors()
        )
        raise RecopsError(f"{path}: invalid params: {problems}") from None
