"""Log a trained ranker to MLflow and register it as a new model version, with its lineage.

One call to :func:`log_and_register` makes one MLflow run holding everything needed to trust and reproduce the
model: every setting from ``params.yaml`` as params, the evaluation metrics, the report/model folders as
artifacts, the ONNX ranker as an MLflow 3 logged model, and lineage tags (git commit, data hashes, params hash)
on both the run and the new model version. Registration is the last step and happens only when everything else
was logged; a failure on the way marks the run ``FAILED`` and registers nothing, so a registry version always
has a complete run behind it.

What this module must not do:

- touch global MLflow state outside a call: the tracking URI is set for the duration of
  :func:`log_and_register` and restored afterwards, and nothing happens at import time (MLflow itself is
  imported lazily, so ``import recops.registry`` stays cheap for the CLI);
- use backend-specific calls: everything goes through ``MlflowClient``, so a ``postgresql://`` (or any other
  database / server) tracking URI works the same as the default SQLite file;
- set aliases: a new version is only a candidate; promotion (``champion`` / ``challenger``) is a separate,
  deliberate step.

MLflow metric names may not contain ``@``, while recops metrics are flat keys like ``test.ranker.ndcg@10``.
:func:`mlflow_metric_key` maps them deterministically (``@`` -> ``_at_``, any other disallowed character ->
``_``) and every run carries ``metric_keys.json`` with the original key -> logged key mapping.

What a user sees in the MLflow UI, and why it looks so:

- one run per training, named ``ranker-v<version>-<yyyymmdd-hhmm>`` (UTC start of the pipeline), spanning the
  pipeline: it starts when the first stage of the training started (``started_at``), not when registration did;
- MLflow groups metric charts into sections by the part of the key before the last ``/`` (sections in
  alphabetical order, the unprefixed keys last, under "Model metrics"). The headline numbers are logged a second
  time as ``headline/<key>`` so they come first; durations (each stage's ``timing/<stage>_s``, the pipeline's
  ``timing/pipeline_s`` and every ``*seconds`` key of the stages' metrics) are under ``timing/``;
- the inputs (prepared tables, split folds) as MLflow datasets, their digest the md5 DVC records for the file;
- descriptions on the run, the registered model and the version (:mod:`recops.registry.descriptions`);
- the experiment tagged as a model-training one (``mlflow.experimentKind``). MLflow 3.17's UI picks the view
  from its "GenAI / Model training" switch instead (remembered per browser, GenAI by default) or from the URL's
  ``workflowType`` parameter, so the links recops prints (:func:`experiment_page`) carry
  ``workflowType=machine_learning`` and open on the runs, not on the GenAI traces overview.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import math
import os
import posixpath
import re
import secrets
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recops.config import Settings
from recops.errors import RecopsError
from recops.registry import descriptions
from recops.registry.orphans import owner_tags

if TYPE_CHECKING:
    import numpy as np
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

logger = logging.getLogger(__name__)

MODEL_ARTIFACT_NAME = "ranker"
METRIC_KEYS_ARTIFACT = "metric_keys.json"
# version tag: sha256 of the serving bundle's manifest.json (recops.serving.bundle), checked before serving it
SERVING_MANIFEST_TAG = "recops.serving.manifest_sha256"
# version tag: the bundle's build id (the sha256 of its files as built, recops.serving.bundle.build_id), which a
# manifest edited after registration keeps: it names the version a changed local folder was built as
SERVING_BUILD_TAG = "recops.serving.build_id"

# The headline numbers of a version: logged again under HEADLINE_PREFIX so MLflow shows their charts first, and
# shown by `recops models` and the descriptions. Keys are recops metric keys; a missing one is left out.
HEADLINE_METRICS = ("test.ranker.ndcg@10", "test.ranker.recall@20", "test.ranker.coverage@10",
                    "test.ranker.novelty@10", "timeline.ranker.ndcg@10")
HEADLINE_PREFIX = "headline/"
TIMING_PREFIX = "timing/"
# MLflow 3's UI opens an experiment on the GenAI traces view unless this tag says it is a model-training one
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
RUN_DESCRIPTION_TAG = "mlflow.note.content"  # what the UI shows (and edits) as a run's description
# where `make ui` (mlflow ui) serves a local store
LOCAL_UI = "http://127.0.0.1:5000"

# MLflow: params / tags / metric names are at most 250 characters; param values at most 6000.
_MAX_KEY_LENGTH = 250
_MAX_PARAM_VALUE_LENGTH = 6000
_MAX_TAG_VALUE_LENGTH = 5000  # model version tags are the tightest limit of the backends
# MLflow allows alphanumerics, '_', '-', '.', ' ', '/' (and ':' except on Windows). Keep to the portable set.
_DISALLOWED_KEY_CHARS = re.compile(r"[^A-Za-z0-9_\-. /]")
# The registry serves the model with onnxruntime alone; these are what loading it back needs.
_MODEL_REQUIREMENTS = ("onnxruntime", "onnx", "numpy")
# Tracking URI schemes where the client writes runs to a database (or folder) itself; for those, artifacts go to
# the project's artifact folder. A tracking server (http, databricks, ...) decides artifact storage itself.
_LOCAL_STORE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql", "file")


@dataclass(frozen=True)
class InputDataset:
    """A table a training read, as MLflow's Datasets panel shows it.

    ``digest`` is the md5 of the file, the hash DVC records for it (in ``dvc.lock``, or in the ``.dir`` listing
    of a tracked folder); ``context`` says what the run used it for (``prepared``, ``train``, ``valid``,
    ``test``); ``columns`` are (name, Arrow type) pairs.
    """

    name: str
    context: str
    digest: str
    uri: str
    rows: int | None = None
    columns: tuple[tuple[str, str], ...] = ()


def mlflow_metric_key(key: str) -> str:
    """The MLflow metric name for a recops metric key (``"test.ranker.ndcg@10"`` -> ``"test.ranker.ndcg_at_10"``).

    Deterministic, so promotion and reports can find a metric again from its recops key.
    """
    return _DISALLOWED_KEY_CHARS.sub("_", key.replace("@", "_at_"))


def log_and_register(
    settings: Settings,
    *,
    onnx_path: Path,
    artifacts: Mapping[str, Path],
    metrics: Mapping[str, float],
    lineage: Mapping[str, str],
    input_example: np.ndarray | None = None,
    started_at: float | None = None,
    stage_seconds: Mapping[str, float] | None = None,
    datasets: Sequence[InputDataset] = (),
) -> dict[str, str]:
    """Log one training run to MLflow and register its ONNX ranker as a new version of the registry model.

    Args:
        settings: the project settings; all of ``settings.flat()`` is logged as params, and ``settings.registry``
            names the tracking URI, experiment and registered model.
        onnx_path: the exported ranker (``paths.onnx_model``).
        artifacts: artifact folder name -> file or directory to log under it (``{"reports": reports_dir}``).
        metrics: flat recops metric keys -> values; keys are mapped with :func:`mlflow_metric_key`.
        lineage: tags for the run and the model version (``git_commit``, ``data_md5.<table>``, ...);
            ``params_hash`` is added from ``settings`` when missing.
        input_example: optional float32 feature rows saved with the model as its input example.
        started_at: when the training began (seconds since the epoch, the first stage's start): the run's start
            time, so its duration is the pipeline's; default now.
        stage_seconds: stage name -> seconds, logged as ``timing/<stage>_s`` and shown in the run description.
        datasets: the tables the training read, logged as the run's MLflow dataset inputs.

    Returns:
        ``run_id``, ``experiment_id``, ``model_name``, ``model_version``, ``model_uri``
        (``models:/<name>/<version>``) and ``model_id`` (the MLflow 3 logged model).

    Raises:
        RecopsError: a missing input, an unusable metric / tag / artifact name, or an ONNX file that does not
            load. Input problems are found before anything is written to MLflow.
    """
    onnx_path = Path(onnx_path)
    artifact_paths = _checked_artifacts(onnx_path, artifacts)
    metric_values, metric_keys = _checked_metrics(metrics)
    tags = _checked_lineage(settings, lineage)
    params = _param_strings(settings.flat())
    uri = settings.tracking_uri()

    import mlflow
    import mlflow.onnx
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param, RunTag

    # MLflow's fluent log_model, and the SQL registry store when it resolves a ``models:/<model_id>`` source,
    # read the global tracking URI (see the TODO in mlflow's model_registry/sqlalchemy_store.py), so it is set
    # for the whole call and restored afterwards.
    stages = {str(stage): float(seconds) for stage, seconds in (stage_seconds or {}).items()}
    start_s = time.time() if started_at is None else min(float(started_at), time.time())
    stamp = datetime.fromtimestamp(start_s, tz=timezone.utc).strftime("%Y%m%d-%H%M")
    with _tracking_uri(uri):
        started = time.perf_counter()
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        experiment_id = _experiment_id(client, settings, uri)
        # owner tags: a run left RUNNING by a killed process is marked FAILED at the next start (registry.orphans).
        # The name gets the version number once there is one; until then (and if registration fails) a unique one.
        run = client.create_run(experiment_id, start_time=int(start_s * 1000),
                                run_name=f"{MODEL_ARTIFACT_NAME}-{stamp}-{secrets.token_hex(3)}",
                                tags={**tags, **owner_tags()})
        run_id = run.info.run_id
        version: ModelVersion | None = None
        try:
            now_ms = int(time.time() * 1000)
            shown = _presented_metrics(metric_values, stages)
            client.log_batch(
                run_id,
                metrics=[Metric(key, value, now_ms, 0) for key, value in shown.items()],
                params=[Param(key, value) for key, value in params.items()],
            )
            client.log_dict(run_id, {key: _timing_key(logged) for key, logged in metric_keys.items()},
                            METRIC_KEYS_ARTIFACT)
            if datasets:
                client.log_inputs(run_id, datasets=[_dataset_input(d) for d in datasets])
            for name, path in artifact_paths.items():
                if path.is_dir():
                    client.log_artifacts(run_id, str(path), artifact_path=name)
                else:
                    client.log_artifact(run_id, str(path), artifact_path=name)

            onnx_model = _load_onnx(onnx_path)
            # Created here rather than by log_model: given only a run_id (no active fluent run), log_model puts
            # the logged model in the Default experiment with artifacts under ./mlruns of the working directory.
            logged_model = client.create_logged_model(
                experiment_id, name=MODEL_ARTIFACT_NAME, source_run_id=run_id, tags=tags, params=params
            )
            model_info = mlflow.onnx.log_model(
                onnx_model,
                name=MODEL_ARTIFACT_NAME,
                run_id=run_id,
                model_id=logged_model.model_id,
                signature=_onnx_signature(onnx_model),
                input_example=input_example,
                pip_requirements=_pinned_requirements(),
                # A ranker is kilobytes to a few megabytes: keep it one self-contained file for serving.
                save_as_external_data=False,
                # Stored in MLmodel; the default also lists CUDA, which makes every CPU-only load warn.
                onnx_execution_providers=["CPUExecutionProvider"],
            )
            client.log_batch(run_id, tags=[RunTag("recops.model_id", model_info.model_id)])

            # Last: a version exists only for a run whose logging all succeeded.
            name = settings.registry.model_name
            _ensure_registered_model(client, name)
            previous = _newest_version_facts(client, name)
            version = client.create_model_version(
                name=name,
                source=model_info.model_uri,
                run_id=run_id,
                tags=tags,
                model_id=model_info.model_id,
            )
            number = str(version.version)
            run_name = f"{MODEL_ARTIFACT_NAME}-v{number}-{stamp}"
            total = time.time() - start_s
            timings = {f"{TIMING_PREFIX}registration_s": time.perf_counter() - started,
                       f"{TIMING_PREFIX}pipeline_s": total}
            client.log_batch(run_id, metrics=[Metric(k, v, int(time.time() * 1000), 0) for k, v in timings.items()],
                             tags=[RunTag(RUN_DESCRIPTION_TAG, descriptions.run_description(
                                 model_name=name, version=number, lineage=tags, metrics=metric_values,
                                 stage_seconds=stages, total_seconds=total,
                                 datasets=[vars(d) for d in datasets]))])
            client.update_model_version(name, number, description=descriptions.version_description(
                version=number, run_name=run_name, lineage=tags, metrics=metric_values, seconds=total,
                previous=previous, params=params))
            client.update_run(run_id, name=run_name)
            client.set_terminated(run_id, status="FINISHED")
        except BaseException:
            _undo_failed_run(client, run_id, version)
            raise

        logger.info(
            "registered %s version %s (run %s, experiment %s) in %.2f s",
            settings.registry.model_name,
            version.version,
            run_id,
            experiment_id,
            time.perf_counter() - started,
        )
        return {
            "run_id": run_id,
            "experiment_id": experiment_id,
            "model_name": settings.registry.model_name,
            "model_version": str(version.version),
            "model_uri": f"models:/{settings.registry.model_name}/{version.version}",
            "model_id": model_info.model_id,
        }


def experiment_page(settings: Settings, experiment_id: str) -> str:
    """The MLflow UI address of the project's experiment, opening on its runs (the model-training view): on the
    tracking server, or for a local store where ``make ui`` serves it."""
    uri = settings.tracking_uri()
    server = uri.rstrip("/") if uri.startswith(("http://", "https://")) else LOCAL_UI
    return f"{server}/#/experiments/{experiment_id}?workflowType=machine_learning"


def latest_version(settings: Settings) -> dict[str, Any] | None:
    """The newest registered version of ``settings.registry.model_name`` with its tags, or None if there is none."""
    versions = list_versions(settings)
    return versions[-1] if versions else None


def list_versions(settings: Settings) -> list[dict[str, Any]]:
    """All registered versions of ``settings.registry.model_name``, oldest first; empty if it is not registered.

    Each is ``{"name", "version", "run_id", "model_id", "source", "status", "tags", "aliases",
    "creation_timestamp" (ms since epoch), "created_at" (ISO 8601, UTC)}``.
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    uri = settings.tracking_uri()
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    name = settings.registry.model_name
    try:
        registered = client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return []
        raise
    version_aliases: dict[str, list[str]] = {}
    for alias, version in (registered.aliases or {}).items():
        version_aliases.setdefault(str(version), []).append(alias)

    quoted = name.replace("'", "\\'")
    found: list[ModelVersion] = []
    page_token = None
    while True:
        page = client.search_model_versions(f"name = '{quoted}'", page_token=page_token)
        found.extend(page)
        page_token = page.token
        if not page_token:
            break
    found.sort(key=lambda v: int(v.version))
    return [_version_record(v, sorted(version_aliases.get(str(v.version), []))) for v in found]


def download_version(settings: Settings, version: str | int, dst_dir: Path) -> Path:
    """Download registered version ``version`` of ``settings.registry.model_name`` into ``dst_dir``.

    Returns the model folder (``model.onnx``, ``MLmodel``, ``requirements.txt``). Use this rather than handing
    ``models:/<name>/<version>`` to MLflow directly: MLflow resolves such URIs with the *global* registry URI,
    whatever ``tracking_uri`` is passed alongside.
    """
    import mlflow.artifacts
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    uri = settings.tracking_uri()
    name = settings.registry.model_name
    with _tracking_uri(uri):
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        try:
            location = client.get_model_version_download_uri(name, str(version))
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            known = ", ".join(v["version"] for v in list_versions(settings)) or "none"
            raise RecopsError(
                f"model {name!r} has no version {version} in {uri} (registered versions: {known})"
            ) from None
        Path(dst_dir).mkdir(parents=True, exist_ok=True)
        local = mlflow.artifacts.download_artifacts(artifact_uri=location, dst_path=str(dst_dir), tracking_uri=uri)
        return Path(local)


def download_version_files(settings: Settings, version: str | int, dst_dir: Path) -> dict[str, Any]:
    """Everything needed to rebuild registered version ``version`` on any data snapshot, downloaded to ``dst_dir``.

    Returns ``{"version": record (see :func:`list_versions`), "onnx": path of model.onnx, "settings": the
    version's configuration (dict, from its run's ``config/settings.json``), "manifest": its ranker manifest
    (dict: feature names in input order, trees, params)}``. A version registered before its configuration was
    logged cannot be rebuilt, and says so.
    """
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException

    model_dir = download_version(settings, version, Path(dst_dir) / "model")
    record = next(v for v in list_versions(settings) if str(v["version"]) == str(version))
    onnx = next(Path(model_dir).rglob("*.onnx"), None)
    if onnx is None:
        raise RecopsError(f"version {version} of {settings.registry.model_name!r} has no ONNX file in {model_dir}")
    uri = settings.tracking_uri()
    out: dict[str, Any] = {"version": record, "onnx": onnx}
    with _tracking_uri(uri):
        for key, artifact in (("settings", "config/settings.json"),
                              ("manifest", "ranker_manifest/ranker_manifest.json")):
            try:
                local = mlflow.artifacts.download_artifacts(run_id=record["run_id"], artifact_path=artifact,
                                                            dst_path=str(Path(dst_dir) / key), tracking_uri=uri)
            except (MlflowException, OSError) as exc:
                raise RecopsError(
                    f"version {version} of {settings.registry.model_name!r} (run {record['run_id']}) has no "
                    f"{artifact} artifact, so it cannot be rebuilt on new data; register it again with this "
                    f"recops ({exc.__class__.__name__})") from None
            out[key] = json.loads(Path(local).read_text(encoding="utf-8"))
    return out


def _version_record(version: ModelVersion, aliases: list[str]) -> dict[str, Any]:
    created_ms = int(version.creation_timestamp or 0)
    return {
        "name": version.name,
        "version": str(version.version),
        "run_id": version.run_id,
        # The SQL registry does not return model_id; the source of a version logged by MLflow 3 is models:/<id>.
        "model_id": getattr(version, "model_id", None) or _logged_model_id(version.source),
        "source": version.source,
        "status": version.status,
        "tags": dict(version.tags or {}),
        "aliases": aliases,
        "creation_timestamp": created_ms,
        "created_at": datetime.fromtimestamp(created_ms / 1000, tz=timezone.utc).isoformat(),
    }


def _logged_model_id(source: str | None) -> str | None:
    prefix = "models:/"
    if source and source.startswith(prefix) and "/" not in source[len(prefix) :]:
        return source[len(prefix) :]
    return None


# --- checks done before anything is written to MLflow ---------------------------------------------------------


def _checked_artifacts(onnx_path: Path, artifacts: Mapping[str, Path]) -> dict[str, Path]:
    if not onnx_path.is_file():
        raise RecopsError(f"ONNX model not found: {onnx_path} (run the export stage first)")
    checked: dict[str, Path] = {}
    for name, value in artifacts.items():
        path = Path(value)
        if not path.exists():
            raise RecopsError(f"artifact {name!r} not found: {path} (run the stage that writes it first)")
        normalised = posixpath.normpath(name) if name else ""
        if not name or normalised != name or normalised.startswith(("..", "/")) or normalised == ".":
            raise RecopsError(
                f"artifact folder name {name!r} is not a plain relative path: "
                "use names like 'reports' or 'models/mf'"
            )
        checked[name] = path
    return checked


def _checked_metrics(metrics: Mapping[str, float]) -> tuple[dict[str, float], dict[str, str]]:
    values: dict[str, float] = {}
    keys: dict[str, str] = {}
    for key, value in metrics.items():
        logged = mlflow_metric_key(key)
        if not logged or len(logged) > _MAX_KEY_LENGTH or posixpath.normpath(logged) != logged:
            raise RecopsError(
                f"metric key {key!r} cannot be logged to MLflow as {logged!r}: use a non-empty name of at most "
                f"{_MAX_KEY_LENGTH} characters without empty or '.'/'..' path segments"
            )
        if logged in values:
            other = next(k for k, v in keys.items() if v == logged)
            raise RecopsError(f"metric keys {other!r} and {key!r} both map to MLflow metric {logged!r}: rename one")
        try:
            if isinstance(value, (str, bytes, bool)):
                raise TypeError
            number = float(value)  # also takes numpy scalars
        except (TypeError, ValueError):
            raise RecopsError(f"metric {key!r} is {value!r}, not a number: fix the stage that writes it") from None
        if not math.isfinite(number):
            logger.warning("metric %s is %s; logging it as is", key, number)
        values[logged] = number
        keys[key] = logged
    return values, keys


def _checked_lineage(settings: Settings, lineage: Mapping[str, str]) -> dict[str, str]:
    tags = {str(k): str(v) for k, v in lineage.items()}
    tags.setdefault("params_hash", settings.params_hash())
    for key, value in tags.items():
        if not key or _DISALLOWED_KEY_CHARS.search(key) or len(key) > _MAX_KEY_LENGTH:
            raise RecopsError(
                f"lineage tag {key!r} is not a valid MLflow tag name: use letters, digits, '_', '-', '.', '/' "
                f"(at most {_MAX_KEY_LENGTH} characters)"
            )
        if len(value) > _MAX_TAG_VALUE_LENGTH:
            raise RecopsError(
                f"lineage tag {key!r} is {len(value)} characters long; MLflow keeps at most {_MAX_TAG_VALUE_LENGTH}"
            )
    return tags


def _param_strings(flat: Mapping[str, Any]) -> dict[str, str]:
    params: dict[str, str] = {}
    for key, value in flat.items():
        text = str(value)
        if len(text) > _MAX_PARAM_VALUE_LENGTH:
            logger.warning(
                "param %s is %d characters; MLflow keeps the first %d", key, len(text), _MAX_PARAM_VALUE_LENGTH
            )
            text = text[:_MAX_PARAM_VALUE_LENGTH]
        params[key] = text
    return params


# --- what the MLflow UI shows -----------------------------------------------------------------------------------

_SECONDS_KEY = re.compile(r"(^|[._])seconds$")
# Arrow type (as str() prints it) -> MLflow column type, for the Datasets panel's schema
_ARROW_TO_MLFLOW = (("int64", "long"), ("uint64", "long"), ("int", "integer"), ("uint", "integer"),
                    ("double", "double"), ("float", "float"), ("bool", "boolean"), ("timestamp", "datetime"),
                    ("date", "datetime"), ("large_string", "string"), ("string", "string"), ("binary", "binary"))


def _timing_key(logged: str) -> str:
    """Durations of the stages' own metrics (``test.candidates.mf.fit_seconds``) go to the ``timing/`` section."""
    return TIMING_PREFIX + logged if _SECONDS_KEY.search(logged) else logged


def _presented_metrics(values: Mapping[str, float], stages: Mapping[str, float]) -> dict[str, float]:
    """What the run logs: every metric (durations under ``timing/``), the headline ones again under
    ``headline/``, and each stage's duration as ``timing/<stage>_s``."""
    shown = {_timing_key(key): value for key, value in values.items()}
    for key in HEADLINE_METRICS:
        logged = mlflow_metric_key(key)
        if logged in values:
            shown[HEADLINE_PREFIX + logged] = values[logged]
    for stage, seconds in stages.items():
        shown[f"{TIMING_PREFIX}{mlflow_metric_key(stage)}_s"] = seconds
    return shown


def _dataset_input(dataset: InputDataset) -> Any:
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    def mlflow_type(arrow: str) -> str:
        return next((kind for prefix, kind in _ARROW_TO_MLFLOW if arrow.startswith(prefix)), "string")

    schema = {"mlflow_colspec": [{"type": mlflow_type(kind), "name": column, "required": True}
                                 for column, kind in dataset.columns]}
    profile = {"num_rows": dataset.rows} if dataset.rows is not None else {}
    entity = Dataset(name=dataset.name, digest=dataset.digest, source_type="local",
                     source=json.dumps({"uri": dataset.uri}), schema=json.dumps(schema) if dataset.columns else None,
                     profile=json.dumps(profile) if profile else None)
    return DatasetInput(entity, tags=[InputTag(MLFLOW_DATASET_CONTEXT, dataset.context)])


def _newest_version_facts(client: MlflowClient, name: str) -> dict[str, Any] | None:
    """The newest registered version of ``name`` with its run's params and metrics (what a new version's
    description compares with); None when there is none. A run that is gone leaves params and metrics empty."""
    quoted = name.replace("'", "\\'")
    newest = client.search_model_versions(f"name = '{quoted}'", max_results=1, order_by=["version_number DESC"])
    if not newest:
        return None
    found = newest[0]
    facts: dict[str, Any] = {"version": str(found.version), "lineage": dict(found.tags or {}), "params": {},
                             "metrics": {}}
    if found.run_id:
        try:
            data = client.get_run(found.run_id).data
            facts["params"], facts["metrics"] = dict(data.params), dict(data.metrics)
        except Exception:  # noqa: BLE001 (a deleted run only makes the description say less)
            logger.warning("the run of version %s of %s is not readable: its description says less", found.version,
                           name)
    return facts


# --- MLflow plumbing ------------------------------------------------------------------------------------------


def _experiment_id(client: MlflowClient, settings: Settings, uri: str) -> str:
    from mlflow.exceptions import MlflowException

    name = settings.registry.experiment
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        location = None
        if uri.split(":", 1)[0].split("+", 1)[0] in _LOCAL_STORE_SCHEMES:
            location = settings.path("mlflow_artifacts").resolve().as_uri()
        try:
            return client.create_experiment(name, artifact_location=location,
                                            tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
        except MlflowException as exc:  # created meanwhile by a concurrent run
            if exc.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
                raise
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
    if experiment.lifecycle_stage != "active":
        raise RecopsError(
            f"MLflow experiment {name!r} is deleted: restore it (mlflow experiments restore --experiment-id "
            f"{experiment.experiment_id}) or set registry.experiment to a new name in params.yaml"
        )
    if EXPERIMENT_KIND_TAG not in (experiment.tags or {}):  # made by an older recops: open it on its runs too
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return experiment.experiment_id


def _ensure_registered_model(client: MlflowClient, name: str) -> None:
    """Register ``name`` (with its description) unless it is; give an existing one without a description one."""
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name, description=descriptions.registered_model_description(name, []))
    except MlflowException as exc:
        if exc.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise
        if not (client.get_registered_model(name).description or "").strip():  # an older recops registered it
            from recops.registry.history import describe_registered_model

            describe_registered_model(client, name)


def _undo_failed_run(client: MlflowClient, run_id: str, version: ModelVersion | None) -> None:
    """Leave no model version behind a run that did not complete, and mark the run FAILED."""
    if version is not None:
        try:
            client.delete_model_version(version.name, version.version)
        except Exception:
            logger.exception(
                "could not delete model version %s/%s of failed run %s", version.name, version.version, run_id
            )
    try:
        client.set_terminated(run_id, status="FAILED")
    except Exception:
        logger.exception("could not mark MLflow run %s as FAILED", run_id)


@contextmanager
def _tracking_uri(uri: str) -> Iterator[None]:
    """Point MLflow's fluent API (which ``log_model`` uses) at ``uri`` for the duration, then restore it."""
    import mlflow
    import mlflow.tracking

    previous = mlflow.get_tracking_uri() if mlflow.tracking.is_tracking_uri_set() else None
    previous_env = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)
        if previous_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous_env


def _load_onnx(path: Path) -> Any:
    import onnx

    try:
        return onnx.load(str(path))
    except Exception as exc:  # onnx raises DecodeError and friends for a truncated or foreign file
        raise RecopsError(f"{path} is not a readable ONNX model ({exc}): re-run the export stage") from exc


def _onnx_signature(model: Any) -> Any:
    """The model signature read from the ONNX graph itself (no inference run, so it costs nothing)."""
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec
    from onnx import helper

    def specs(values: Any) -> Schema:
        out = []
        for value in values:
            tensor = value.type.tensor_type
            dtype = helper.tensor_dtype_to_np_dtype(tensor.elem_type)
            shape = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim)
            out.append(TensorSpec(dtype, shape, value.name))
        return Schema(out)

    return ModelSignature(inputs=specs(model.graph.input), outputs=specs(model.graph.output))


def _pinned_requirements() -> list[str]:
    return [f"{name}=={importlib.metadata.version(name)}" for name in _MODEL_REQUIREMENTS]


def download_serving_bundle(settings: Settings, version: str | int, dst_dir: Path) -> tuple[Path, str, str]:
    """Download version ``version``'s ``serving`` artifact; return (folder, the sha256 the registry recorded, the
    version's run id)."""
    import mlflow.artifacts
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    uri = settings.tracking_uri()
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    name = settings.registry.model_name
    try:
        record = client.get_model_version(name, str(version))
    except MlflowException as exc:
        raise RecopsError(f"model {name!r} has no version {version}: {exc.message}") from None
    expected = (record.tags or {}).get(SERVING_MANIFEST_TAG)
    if not expected:
        raise RecopsError(f"version {version} of {name!r} has no serving bundle (tag {SERVING_MANIFEST_TAG}): it "
                          "was registered "
                          "before recops wrote one; train and register a new version to serve it")
    try:
        local = mlflow.artifacts.download_artifacts(run_id=record.run_id, artifact_path="serving",
                                                    dst_path=str(dst_dir), tracking_uri=uri)
    except (MlflowException, OSError) as exc:
        raise RecopsError(f"could not download the serving bundle of version {version} of {name!r}: {exc}") from None
    return Path(local), expected, record.run_id


def registered_serving_bundles(settings: Settings) -> list[dict[str, Any]]:
    """The registered versions that have a serving bundle, newest first, each ``{"version", "run_id",
    "manifest_sha256", "build_id", "creation_timestamp"}``: the sha256 of its ``manifest.json`` and the bundle's
    build id the registry recorded at registration (None for versions registered before recops recorded it), and
    when the version was created (ms since epoch).

    Empty when the model is not registered, or when the tracking URI is the default SQLite file and that file does
    not exist (asking would create an empty store). Raises what MLflow raises when the registry cannot be reached.
    """
    if settings.registry.tracking_uri is None and not settings.path("mlflow_db").is_file():
        return []
    return [{"version": record["version"], "run_id": record["run_id"],
             "manifest_sha256": record["tags"][SERVING_MANIFEST_TAG],
             "build_id": record["tags"].get(SERVING_BUILD_TAG),
             "creation_timestamp": record["creation_timestamp"]}
            for record in reversed(list_versions(settings)) if record["tags"].get(SERVING_MANIFEST_TAG)]


def download_serving_file(settings: Settings, run_id: str, name: str, dst_dir: Path) -> Path:
    """Download one file of the ``serving`` artifact a run logged (e.g. its ``manifest.json``); return its path."""
    import mlflow.artifacts

    local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=f"serving/{name}", dst_path=str(dst_dir),
                                                tracking_uri=settings.tracking_uri())
    return Path(local)


def resolve_version(settings: Settings, alias_or_version: str) -> str:
    """A version number from an alias (``champion``, ``challenger``) or a version number as given."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from recops.redaction import redact

    if str(alias_or_version).isdigit():
        return str(alias_or_version)
    uri = settings.tracking_uri()
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    try:
        return str(client.get_model_version_by_alias(settings.registry.model_name, alias_or_version).version)
    except MlflowException as exc:
        if exc.error_code not in ("INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST"):
            # the registry did not answer (or failed): not the same thing as an alias that is not there
            raise RecopsError(f"the model registry at {redact(uri)} could not be reached or failed "
                              f"({exc.error_code}): {redact(str(exc))[:300]}") from None
        raise RecopsError(
            f"model {settings.registry.model_name!r} has no {alias_or_version!r} alias in {redact(uri)}: "
            + ("train one (recops run) and promote it first (recops promote)" if alias_or_version == "champion"
               else "train a new version first (recops run)")) from None
