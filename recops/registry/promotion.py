"""Promote registered ranker versions with the MLflow aliases ``champion`` and ``challenger``, and roll back.

The lifecycle of a version of ``settings.registry.model_name``:

1. training registers it (:func:`recops.registry.log_and_register`) and points ``challenger`` at it
   (:func:`set_challenger`);
2. :func:`promote` points ``champion`` at it, but only on evidence: an A/B decision report that says ``ship`` for
   exactly this (champion, challenger) pair, or, for the very first model (no champion yet), absolute quality
   gates on the metrics of its MLflow run (:func:`first_model_gates`). A report read from a file
   (``reports/ab.json``, which anyone can edit) is evidence only when its bytes are the ones ``recops ab`` logged
   on the promoted version's run: their sha256 is the run tag ``recops.ab.report_sha256``;
3. :func:`rollback` points ``champion`` back at the champion before it.

Every move is decided first and written once: all checks run before the alias is set, the alias is set in one
call, and only then is the move recorded. What is recorded:

- on the version promoted: ``recops.promoted_at`` / ``_by`` / ``recops.promotion_reason``,
  ``recops.promoted_on`` (``ab_test`` or ``first_model_gates``) and the numbers it was promoted on
  (``recops.ab.<report key>`` or ``recops.gates.<metric>``); on the version rolled back from:
  ``recops.rolled_back_at`` / ``_by`` / ``recops.rollback_reason``;
- on the registered model: the promotion history (:mod:`recops.registry.history`).

The first model's quality gates are :mod:`recops.registry.gates`; this module is the alias moves and the evidence
they need.

If recording fails after the alias moved, the alias (and whatever was recorded) is put back, and the error says
so. A process killed mid-move (kill -9, power loss) cannot put anything back, so every move first writes its
intent to the registered-model tag ``recops.pending_move``; the alias move is the commit point. The next
``promote`` / ``rollback`` (or :func:`recover_interrupted_move`) finishes a move whose alias had moved (records it,
once) and forgets one whose alias had not; re-running the interrupted command then reports the finished move
instead of moving again. The champion alias only ever points at a registered version, and a version is only
registered after its files were logged, so it always names a complete, loadable model. MLflow has no
transactions across these calls, so two promotions of the same model at the same moment can still interleave;
run promotions from one place (the CLI or one flow).

What this module must not do: set a global MLflow tracking URI, import MLflow at import time, or register
versions (that is :mod:`recops.registry.mlflow_registry`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recops.config import Settings
from recops.errors import RecopsError
from recops.registry import descriptions
from recops.registry.client import alias_version, not_found, registered_model, registry_client
from recops.registry.gates import first_model_gates, metric_value, parse_gates
from recops.registry.history import (HISTORY_TAG, MAX_REGISTERED_MODEL_TAG_VALUE, champion_stack,
                                     describe_registered_model, history_entry, history_tags, read_history)
from recops.registry.mlflow_registry import HEADLINE_METRICS, list_versions, mlflow_metric_key

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion, RegisteredModel

logger = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
# Write-ahead record of a champion move in progress (see _move_champion / _recover_interrupted_move).
PENDING_TAG = "recops.pending_move"

PROMOTED_ON_AB_TEST = "ab_test"
PROMOTED_ON_GATES = "first_model_gates"
PROMOTED_ON_FORGET = "forget_request"  # retrained without forgotten users: on the first-model gates, no A/B wait
# version tag: the forget request that erased this version's user data (bundle, factors, reports): never served again
TAG_ERASED_BY_FORGET = "recops.forget.erased_by"

# Version tags written by promote / rollback.
TAG_PROMOTED_AT = "recops.promoted_at"
TAG_PROMOTED_BY = "recops.promoted_by"
TAG_PROMOTION_REASON = "recops.promotion_reason"
TAG_PROMOTED_ON = "recops.promoted_on"
TAG_ROLLED_BACK_AT = "recops.rolled_back_at"
TAG_ROLLED_BACK_BY = "recops.rolled_back_by"
TAG_ROLLBACK_REASON = "recops.rollback_reason"
AB_TAG_PREFIX = "recops.ab."
GATES_TAG_PREFIX = "recops.gates."
# Run tag on a challenger's run, set by `recops ab` (recops.evaluation.abtest): the sha256 of the exact bytes of the
# ab.json it wrote and logged. Also the version tag recording the report a promotion acted on.
AB_REPORT_SHA256_TAG = AB_TAG_PREFIX + "report_sha256"

_MAX_TAG_KEY_LENGTH = 250
# A/B report lists longer than this (per-user samples, curves) are not promotion evidence worth a tag.
_MAX_AB_LIST_ITEMS = 10


def set_challenger(settings: Settings, version: str | int) -> dict[str, Any]:
    """Point the ``challenger`` alias at ``version`` (the pipeline calls this right after registering it).

    Returns:
        ``{"model_name", "alias", "version", "previous_version"}`` (``previous_version`` None if there was none).

    Raises:
        RecopsError: the model is not registered or has no such version.
    """
    client = registry_client(settings)
    name = settings.registry.model_name
    registered = registered_model(client, settings)
    number = _existing_version(client, settings, version).version
    previous = alias_version(registered, CHALLENGER)
    client.set_registered_model_alias(name, CHALLENGER, str(number))
    logger.info("%s: challenger -> version %s (was %s)", name, number, previous or "unset")
    return {"model_name": name, "alias": CHALLENGER, "version": str(number), "previous_version": previous}


def current_aliases(settings: Settings) -> dict[str, str]:
    """The registered model's aliases as ``{alias: version}``; empty when the model is not registered yet."""
    client = registry_client(settings)
    try:
        registered = client.get_registered_model(settings.registry.model_name)
    except Exception as exc:
        if not_found(exc):
            return {}
        raise
    return {alias: str(version) for alias, version in registered.aliases.items()}


def promote(
    settings: Settings,
    *,
    ab_report: Mapping[str, Any] | Path | None,
    version: str | int | None = None,
    actor: str | None = None,
    reason: str | None = None,
    gates: Mapping[str, Any] | None = None,
    forget_request: str | None = None,
) -> dict[str, Any]:
    """Point ``champion`` at the challenger (or ``version``) when the evidence allows it, and record the move.

    ``forget_request``: the version was retrained without users who asked to be forgotten (recops.forget): it is
    promoted on the first-model gates even over a champion, since erasure does not wait for an A/B "ship".

    With a champion in place, ``ab_report`` must be an A/B decision report (``decision``, ``champion_version``,
    ``challenger_version``, optionally ``reasons`` and any numbers) for exactly (current champion, the version
    promoted), with decision ``ship``. Without a champion (the first model) the report is not used: the version
    must pass :func:`first_model_gates` on the metrics of its MLflow run.

    A report given as a file must be byte for byte the one ``recops ab`` logged on the promoted version's run (its
    sha256 against the run tag ``recops.ab.report_sha256``): the file is the user's to edit, the run is the record.
    A dict is taken as given: the caller made it in-process (the evaluate-and-promote flow passes what
    :func:`recops.evaluation.abtest.run_ab` returned, which logged it).

    Args:
        settings: names the tracking URI and the registered model.
        ab_report: the A/B decision report: a path to the ``ab.json`` written by ``recops ab`` (checked against
            the digest logged on the version's run; a missing file is a missing report), a dict as ``run_ab``
            returns it, or None.
        version: the version to promote; default: the one the ``challenger`` alias points at. Pass it to promote
            the version an A/B test was run on after a newer training run has moved the challenger on.
        actor: who promotes (recorded); default ``$USER`` / the login name.
        reason: why (recorded); default a sentence naming the evidence.
        gates: first-model quality gates (fields of :class:`FirstModelGates`); default
            :data:`DEFAULT_FIRST_MODEL_GATES`.

    Returns:
        The history entry (``action``, ``from_version``, ``to_version``, ``at``, ``by``, ``reason``) plus
        ``model_name``, ``promoted_on`` and ``evidence`` (the numbers recorded on the version).

    Raises:
        RecopsError: no challenger alias (and no ``version``), an unknown version, a version that already is the
            champion, a missing report / a report file other than the one logged on the version's run / a report
            for another pair / a decision other than ``ship``, failed quality gates, or a failure while recording
            the move (the alias is then restored). Nothing is changed in the registry when it is raised, except as
            the message says.
    """
    client = registry_client(settings)
    name = settings.registry.model_name
    registered = registered_model(client, settings)
    resumed = _recover_interrupted_move(client, registered)
    if resumed is not None:
        registered = registered_model(client, settings)
    champion = alias_version(registered, CHAMPION)
    if version is None:
        challenger = alias_version(registered, CHALLENGER)
        if challenger is None:
            raise RecopsError(
                f"model {name!r} has no {CHALLENGER!r} alias: register a new version (recops run) or pass the "
                "version to promote"
            )
        version = challenger
    target = _existing_version(client, settings, version)
    to_version = str(target.version)
    if (target.tags or {}).get(TAG_ERASED_BY_FORGET):
        raise RecopsError(
            f"version {to_version} of {name!r} was trained on users who have since been forgotten (request "
            f"{target.tags[TAG_ERASED_BY_FORGET]}): its user data is erased and it is never served again")
    if to_version == champion:
        if resumed is not None and resumed["action"] == "promote" and resumed["to_version"] == to_version:
            promoted_on = client.get_model_version(name, to_version).tags.get(TAG_PROMOTED_ON)
            return {"model_name": name, **resumed, "promoted_on": promoted_on, "evidence": {}, "resumed": True}
        raise RecopsError(
            f"version {to_version} of {name!r} already is the champion: train and register a new version to "
            "challenge it"
        )

    if champion is None or forget_request is not None:
        if champion is None and (isinstance(ab_report, Mapping)
                                 or (isinstance(ab_report, Path) and ab_report.is_file())):
            logger.info("%s has no champion yet: the first model is promoted on quality gates, not the A/B report",
                        name)
        metrics = _run_metrics(client, target)
        failed = first_model_gates(metrics, gates)
        if failed:
            raise RecopsError(
                f"version {to_version} of {name!r} would be the first champion but fails the quality gates: "
                + "; ".join(failed)
                + ". Improve the model (or, deliberately, the gates) and try again"
            )
        config = parse_gates(gates)
        primary = config.key(config.model)
        evidence: dict[str, Any] = {
            key: value
            for key in [primary, *(config.key(baseline) for baseline in config.min_lift_over)]
            if (value := metric_value(metrics, key)) is not None
        }
        promoted_on = PROMOTED_ON_GATES if forget_request is None else PROMOTED_ON_FORGET
        evidence_tags = {GATES_TAG_PREFIX + mlflow_metric_key(k): _tag_text(v) for k, v in evidence.items()}
        default_reason = (f"first model: passed the quality gates ({primary} = {evidence[primary]:.4f})"
                          if forget_request is None else
                          f"forget request {forget_request}: retrained without the forgotten users, passed the "
                          f"quality gates ({primary} = {evidence[primary]:.4f})")
    else:
        report, report_sha256 = (_logged_ab_report(client, name, target, ab_report) if isinstance(ab_report, Path)
                                 else (ab_report, None))
        evidence = _flat_report(_shipping_report(report, name, champion, to_version))
        if report_sha256 is not None:  # recorded on the version: the report this promotion acted on
            evidence[AB_REPORT_SHA256_TAG[len(AB_TAG_PREFIX):]] = report_sha256
        promoted_on = PROMOTED_ON_AB_TEST
        evidence_tags = {AB_TAG_PREFIX + key: _tag_text(v) for key, v in evidence.items()
                         if len(AB_TAG_PREFIX + key) <= _MAX_TAG_KEY_LENGTH}
        default_reason = f"A/B decision ship: challenger {to_version} vs champion {champion}"

    why = reason or default_reason
    entry = history_entry("promote", champion, to_version, actor, why)
    version_tags = {
        TAG_PROMOTED_AT: entry["at"],
        TAG_PROMOTED_BY: entry["by"],
        TAG_PROMOTION_REASON: why,
        TAG_PROMOTED_ON: promoted_on,
        **evidence_tags,
    }
    _move_champion(client, registered, champion, entry, {to_version: version_tags})
    logger.info("%s: champion %s -> %s (%s, by %s)", name, champion or "unset", to_version, promoted_on, entry["by"])
    return {"model_name": name, **entry, "promoted_on": promoted_on, "evidence": evidence}


def rollback(settings: Settings, *, actor: str | None = None, reason: str | None = None) -> dict[str, Any]:
    """Point ``champion`` back at the champion it replaced, and record the move.

    "Previous" follows the promotion history as a stack: after promotions 1 -> 2 -> 3, rollbacks go to 2, then
    to 1, then refuse.

    Returns:
        The history entry (``action`` ``"rollback"``, ``from_version``, ``to_version``, ``at``, ``by``,
        ``reason``) plus ``model_name``.

    Raises:
        RecopsError: no champion, no previous champion, a champion alias that was moved outside recops (it no
            longer matches the history), a previous champion whose version was deleted, or a failure while
            recording the move (the alias is then restored).
    """
    client = registry_client(settings)
    name = settings.registry.model_name
    registered = registered_model(client, settings)
    resumed = _recover_interrupted_move(client, registered)
    if resumed is not None and resumed["action"] == "rollback":
        return {"model_name": name, **resumed, "resumed": True}  # the interrupted rollback is now complete
    if resumed is not None:
        registered = registered_model(client, settings)
    champion = alias_version(registered, CHAMPION)
    if champion is None:
        raise RecopsError(f"model {name!r} has no champion to roll back: promote a version first")
    stack = champion_stack(read_history(registered.tags or {}))
    if not stack or stack[-1] != champion:
        recorded = stack[-1] if stack else "none"
        raise RecopsError(
            f"the {CHAMPION!r} alias of {name!r} points at version {champion} but the promotion history ends at "
            f"{recorded}: the alias was moved outside recops, so there is no recorded previous champion. Set the "
            "alias back (MlflowClient.set_registered_model_alias) or promote the version you want"
        )
    if len(stack) < 2:
        raise RecopsError(
            f"version {champion} is the first champion of {name!r}: there is no previous champion to roll back to"
        )
    found = _existing_version(client, settings, stack[-2], what="previous champion")
    erased = (found.tags or {}).get(TAG_ERASED_BY_FORGET)
    if erased:
        raise RecopsError(
            f"the previous champion, version {found.version} of {name!r}, was trained on users who have since been "
            f"forgotten (request {erased}): its user data is erased and it is never served again. Promote a later "
            "version instead")
    previous = found.version
    why = reason or f"rollback of version {champion} to version {previous}"
    entry = history_entry("rollback", champion, str(previous), actor, why)
    version_tags = {TAG_ROLLED_BACK_AT: entry["at"], TAG_ROLLED_BACK_BY: entry["by"], TAG_ROLLBACK_REASON: why}
    _move_champion(client, registered, champion, entry, {champion: version_tags})
    logger.info("%s: champion %s rolled back to %s (by %s)", name, champion, previous, entry["by"])
    return {"model_name": name, **entry}


def list_models(settings: Settings) -> list[dict[str, Any]]:
    """Every version of the registered model with what ``recops models`` shows, oldest first.

    Each is ``{"version", "aliases", "status", "created_at", "run_id", "lineage"`` (the tags training wrote:
    ``git_commit``, ``params_hash``, ``data_md5.<table>``, ``data_source``, ...), ``"promoted_at",
    "promoted_by", "promotion_reason", "promoted_on", "promotion_metrics"`` (the numbers it was promoted on, by
    report / metric key), ``"rolled_back_at", "rolled_back_by", "rollback_reason"}``; fields of a version never
    promoted or rolled back are None (``promotion_metrics``: empty); ``"metrics"``: the :data:`HEADLINE_METRICS`
    its training run logged; ``"alias_warning"``: on the version the champion alias names when that alias was
    moved outside recops (:func:`champion_alias_check`), else None.
    """
    models = []
    client = registry_client(settings)
    alias_check = champion_alias_check(settings)
    for record in list_versions(settings):
        tags: dict[str, str] = record["tags"]
        try:  # the headline numbers of the version's training run (the test split, and the timeline if logged)
            logged = client.get_run(record["run_id"]).data.metrics if record["run_id"] else {}
        except Exception:  # noqa: BLE001 (a deleted run must not hide the other versions)
            logged = {}
        headline = {key: value for key in HEADLINE_METRICS if (value := metric_value(logged, key)) is not None}
        evidence = {
            key[len(prefix):]: value
            for key, value in sorted(tags.items())
            for prefix in (AB_TAG_PREFIX, GATES_TAG_PREFIX)
            if key.startswith(prefix)
        }
        models.append({
            "version": record["version"],
            "aliases": record["aliases"],
            "status": record["status"],
            "created_at": record["created_at"],
            "run_id": record["run_id"],
            "lineage": {k: v for k, v in sorted(tags.items()) if not k.startswith(("recops.", "mlflow."))},
            "promoted_at": tags.get(TAG_PROMOTED_AT),
            "promoted_by": tags.get(TAG_PROMOTED_BY),
            "promotion_reason": tags.get(TAG_PROMOTION_REASON),
            "promoted_on": tags.get(TAG_PROMOTED_ON),
            "promotion_metrics": evidence,
            "rolled_back_at": tags.get(TAG_ROLLED_BACK_AT),
            "rolled_back_by": tags.get(TAG_ROLLED_BACK_BY),
            "rollback_reason": tags.get(TAG_ROLLBACK_REASON),
            "metrics": headline,
            # set on the version the champion alias names when recops did not put it there
            "alias_warning": (alias_check["warning"] if alias_check["moved_outside_recops"]
                              and alias_check["champion"] == record["version"] else None),
        })
    return models


# --- checks ---------------------------------------------------------------------------------------------------


def _shipping_report(
    report: Mapping[str, Any] | None, name: str, champion: str, challenger: str
) -> Mapping[str, Any]:
    """``report`` if it says ship for exactly (champion, challenger); otherwise a RecopsError saying why not."""
    pair = f"champion {champion} vs challenger {challenger}"
    if report is None:
        raise RecopsError(
            f"promoting version {challenger} of {name!r} over champion {champion} needs an A/B decision report: "
            "run the A/B test (recops ab) for this pair first"
        )
    missing = [k for k in ("decision", "champion_version", "challenger_version") if k not in report]
    if missing:
        raise RecopsError(f"the A/B report lacks {', '.join(missing)}: re-run the A/B test (recops ab) for {pair}")
    reported = (_version_text(report["champion_version"]), _version_text(report["challenger_version"]))
    if reported != (champion, challenger):
        raise RecopsError(
            f"the A/B report is for champion {reported[0]} vs challenger {reported[1]}, but promoting now means "
            f"{pair}: run the A/B test for this pair (or pass the version the report is about)"
        )
    decision = str(report["decision"]).strip().lower()
    if decision == "hold":
        reasons = report.get("reasons") or []
        listed = [reasons] if isinstance(reasons, str) else [str(r) for r in reasons]
        raise RecopsError(
            f"the A/B decision for {pair} is hold, not ship: "
            + ("; ".join(listed) if listed else "the report gives no reasons")
            + ". Keep the champion, or train a better challenger and test it again"
        )
    if decision != "ship":
        raise RecopsError(f"the A/B report for {pair} has decision {report['decision']!r}; only 'ship' promotes")
    return report


def _logged_ab_report(
    client: MlflowClient, name: str, target: ModelVersion, path: Path
) -> tuple[Mapping[str, Any] | None, str | None]:
    """The report in ``path`` and its sha256 when its bytes are the report ``recops ab`` logged on ``target``'s run
    (run tag :data:`AB_REPORT_SHA256_TAG`); (None, None) when there is no such file (:func:`_shipping_report` then
    says a report is needed); otherwise a RecopsError naming the file and both digests."""
    if not path.is_file():
        return None, None
    data = path.read_bytes()
    actual = hashlib.sha256(data).hexdigest()
    logged = client.get_run(target.run_id).data.tags.get(AB_REPORT_SHA256_TAG) if target.run_id else None
    where = f"the run of version {target.version} of {name!r}"
    if not logged:
        raise RecopsError(
            f"{path} (sha256 {actual}) is not evidence: {where} has no logged A/B report digest (run tag "
            f"{AB_REPORT_SHA256_TAG}; logged sha256: none), so no `recops ab` logged a report for this version. "
            "Re-run the A/B test (recops ab) and promote again; nothing was changed"
        )
    if logged != actual:
        raise RecopsError(
            f"{path} has sha256 {actual}, but the A/B report `recops ab` logged on {where} has sha256 {logged}: "
            "the file was edited after the A/B test, or is another A/B test's report. Re-run the A/B test "
            "(recops ab) and promote again; nothing was changed"
        )
    try:
        report = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError):
        report = None
    if not isinstance(report, Mapping):  # logged as it is: recops ab did not write it
        raise RecopsError(f"{path} is not a JSON A/B report: re-run the A/B test (recops ab) and promote again")
    return report, actual


def _existing_version(
    client: MlflowClient, settings: Settings, version: str | int, what: str = "version"
) -> ModelVersion:
    name = settings.registry.model_name
    text = str(version).strip()
    if not text.isdigit() or int(text) < 1:
        raise RecopsError(f"{what} {version!r} is not a model version number (1, 2, ...)")
    try:
        found = client.get_model_version(name, str(int(text)))
    except Exception as exc:
        if not not_found(exc):
            raise
        known = ", ".join(v["version"] for v in list_versions(settings)) or "none"
        raise RecopsError(
            f"model {name!r} has no {what} {text} in {settings.tracking_uri()} (registered versions: {known})"
        ) from None
    if found.status != "READY":
        raise RecopsError(f"version {found.version} of {name!r} is {found.status}, not READY: register it again")
    return found


def _run_metrics(client: MlflowClient, version: ModelVersion) -> dict[str, float]:
    if not version.run_id:
        return {}
    return dict(client.get_run(version.run_id).data.metrics)


# --- recording ------------------------------------------------------------------------------------------------


def _move_champion(
    client: MlflowClient,
    registered: RegisteredModel,
    champion: str | None,
    entry: dict[str, Any],
    version_tags: dict[str, dict[str, str]],
) -> None:
    """Write the intent, set the alias once (the commit point), then record and clear the intent; on a recording
    failure put everything back and say what happened. A kill at any point is repaired by
    :func:`_recover_interrupted_move`."""
    name = registered.name
    old_model_tags = dict(registered.tags or {})
    model_tags = history_tags(old_model_tags, entry)  # computed (and size-checked) before anything is written
    old_version_tags = {v: dict(client.get_model_version(name, v).tags or {}) for v in version_tags}
    undo: list[tuple[str, Callable[[], None]]] = []

    try:
        client.set_registered_model_tag(name, PENDING_TAG, _pending_record(entry, version_tags))
        undo.append(("pending-move record", lambda: client.delete_registered_model_tag(name, PENDING_TAG)))
        client.set_registered_model_alias(name, CHAMPION, entry["to_version"])
        # Each write registers its undo once it succeeded: a write that failed changed nothing to put back.
        if champion is None:
            undo.append(("champion alias", lambda: client.delete_registered_model_alias(name, CHAMPION)))
        else:
            undo.append(("champion alias", lambda: client.set_registered_model_alias(name, CHAMPION, champion)))
        _record_move(client, name, old_model_tags, model_tags, version_tags, old_version_tags, undo)
        client.delete_registered_model_tag(name, PENDING_TAG)
    except Exception as exc:
        failed_undo = []
        for what, action in reversed(undo):
            try:
                action()
            except Exception:
                logger.exception("could not restore %s of %s", what, name)
                failed_undo.append(what)
        moved = f"{entry['from_version'] or 'unset'} -> {entry['to_version']}"
        if failed_undo:
            raise RecopsError(
                f"the champion of {name!r} moved ({moved}) but recording it failed ({exc}), and restoring "
                f"{', '.join(failed_undo)} failed too: check the registry; the next recops promote / rollback "
                f"finishes or forgets the move from its {PENDING_TAG} record"
            ) from exc
        raise RecopsError(
            f"recording the champion move {moved} of {name!r} failed ({exc}); the champion alias was restored to "
            f"{champion or 'unset'} and nothing was recorded. Fix the registry connection and try again"
        ) from exc
    _describe_move(client, name, entry)


def _record_move(
    client: MlflowClient,
    name: str,
    old_model_tags: Mapping[str, str],
    model_tags: Mapping[str, str],
    version_tags: Mapping[str, Mapping[str, str]],
    old_version_tags: Mapping[str, Mapping[str, str]] | None,
    undo: list[tuple[str, Callable[[], None]]] | None = None,
) -> None:
    """Write the version tags and the history tags of a move (registering an undo for each when asked)."""
    for number, tags in version_tags.items():
        for key, value in tags.items():
            client.set_model_version_tag(name, number, key, value)
            if undo is not None and old_version_tags is not None:
                undo.append((f"tag {key} of version {number}",
                             _restore_version_tag(client, name, number, key, old_version_tags[number].get(key))))
    # Archives first: if writing the main tag fails, the entries are still only in the old main tag.
    for key, value in sorted(model_tags.items(), key=lambda kv: kv[0] == HISTORY_TAG):
        client.set_registered_model_tag(name, key, value)
        if undo is not None:
            undo.append((f"tag {key}", _restore_model_tag(client, name, key, old_model_tags.get(key))))


def _pending_record(entry: dict[str, Any], version_tags: dict[str, dict[str, str]]) -> str:
    """The intent of a move as one tag value: the history entry and the version tags to write. Evidence tags that
    would not fit in a registered-model tag are left out of the record (a recovered move then lacks them)."""
    record = _dumps_obj({"entry": entry, "version_tags": version_tags})
    if len(record) <= MAX_REGISTERED_MODEL_TAG_VALUE:
        return record
    core = {TAG_PROMOTED_AT, TAG_PROMOTED_BY, TAG_PROMOTION_REASON, TAG_PROMOTED_ON, TAG_ROLLED_BACK_AT,
            TAG_ROLLED_BACK_BY, TAG_ROLLBACK_REASON}
    slim = {v: {k: t for k, t in tags.items() if k in core} for v, tags in version_tags.items()}
    return _dumps_obj({"entry": entry, "version_tags": slim})


def _recover_interrupted_move(client: MlflowClient, registered: RegisteredModel) -> dict[str, Any] | None:
    """Finish or forget a champion move whose process died; return the history entry of a finished one.

    The alias is the commit point: if it points at the move's target, the move happened and is recorded now
    (version tags and history entry, the entry once); otherwise nothing happened and the record is dropped.
    """
    name = registered.name
    tags = dict(registered.tags or {})
    raw = tags.get(PENDING_TAG)
    if not raw:
        return None
    try:
        pending = json.loads(raw)
        entry, version_tags = dict(pending["entry"]), dict(pending.get("version_tags") or {})
        target = str(entry["to_version"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        logger.warning("%s: unreadable %s tag dropped: %r", name, PENDING_TAG, raw[:200])
        client.delete_registered_model_tag(name, PENDING_TAG)
        return None
    if alias_version(registered, CHAMPION) != target:
        logger.warning("%s: an interrupted %s (%s -> %s, at %s) never moved the champion: forgotten", name,
                       entry.get("action"), entry.get("from_version") or "unset", target, entry.get("at"))
        client.delete_registered_model_tag(name, PENDING_TAG)
        return None
    history = read_history(tags)
    model_tags = {} if entry in history[-1:] else history_tags(tags, entry)
    _record_move(client, name, tags, model_tags, version_tags, None)
    client.delete_registered_model_tag(name, PENDING_TAG)
    _describe_move(client, name, entry)
    logger.warning("%s: finished recording an interrupted %s (%s -> %s, at %s)", name, entry.get("action"),
                   entry.get("from_version") or "unset", target, entry.get("at"))
    return entry


def _describe_move(client: MlflowClient, name: str, entry: Mapping[str, Any]) -> None:
    """Show a recorded move where people look: the registered model's promotion history table and the promotion
    section of the two versions' descriptions. The tags are the record; a failure here only logs a warning."""
    try:
        history = describe_registered_model(client, name)
        for number in {str(v) for v in (entry.get("from_version"), entry.get("to_version")) if v is not None}:
            current = client.get_model_version(name, number).description
            client.update_model_version(name, number, description=descriptions.fit(descriptions.replace_section(
                current, descriptions.PROMOTION_HEADING, descriptions.promotion_section(history, number))))
    except Exception:  # noqa: BLE001 (the move itself is complete and recorded)
        logger.warning("%s: the move is recorded, but updating the descriptions failed", name, exc_info=True)


def record_ab_decision(settings: Settings, version: str | int, summary: Mapping[str, Any]) -> None:
    """Write an A/B decision (``recops ab``'s summary) into the A/B section of the challenger version's
    description; a failure only logs a warning (the run's tags and artifacts are the record)."""
    client = registry_client(settings)
    name = settings.registry.model_name
    try:
        current = client.get_model_version(name, str(version)).description
        client.update_model_version(name, str(version), description=descriptions.fit(descriptions.replace_section(
            current, descriptions.AB_HEADING, descriptions.ab_section(summary))))
    except Exception:  # noqa: BLE001
        logger.warning("could not write the A/B decision into the description of version %s of %s", version, name,
                       exc_info=True)


def champion_alias_check(settings: Settings, registered: RegisteredModel | None = None) -> dict[str, Any]:
    """Whether the ``champion`` alias is where recops' promotion history says it is.

    Returns ``{"champion": <version or None>, "recorded": <the champion the history ends at, or None>,
    "moved_outside_recops": bool, "warning": <a sentence, or None>}``. An alias that names another version than
    the history (moved with the registry UI's alias buttons or the MLflow API), or a champion without any recorded
    promotion, was moved outside recops: it skipped the A/B gate. A move in progress (its write-ahead record names
    that version) is not.
    """
    if registered is None:
        client = registry_client(settings)
        try:
            registered = client.get_registered_model(settings.registry.model_name)
        except Exception as exc:
            if not_found(exc):
                return {"champion": None, "recorded": None, "moved_outside_recops": False, "warning": None}
            raise
    tags = registered.tags or {}
    champion = alias_version(registered, CHAMPION)
    try:
        stack = champion_stack(read_history(tags))
    except RecopsError as exc:  # a hand-edited history tag
        return {"champion": champion, "recorded": None, "moved_outside_recops": champion is not None,
                "warning": str(exc)}
    recorded = stack[-1] if stack else None
    pending = None
    if tags.get(PENDING_TAG):
        try:
            pending = str(json.loads(tags[PENDING_TAG])["entry"]["to_version"])
        except (json.JSONDecodeError, KeyError, TypeError):
            pending = None
    moved = champion is not None and champion != recorded and champion != pending
    warning = None
    if moved:
        warning = (f"the champion alias of {registered.name!r} points at version {champion}, but recops' promotion "
                   f"history ends at {recorded or 'no champion'}: it was moved outside recops (e.g. the registry "
                   "UI's alias buttons), without the A/B gate. Move it with `recops promote` / `recops rollback`, "
                   f"or set it back to {recorded}" if recorded else
                   f"the champion alias of {registered.name!r} points at version {champion}, but recops never "
                   "promoted a version: it was set outside recops (e.g. the registry UI's alias buttons), without "
                   "the quality gates. Promote with `recops promote`")
    return {"champion": champion, "recorded": recorded, "moved_outside_recops": moved, "warning": warning}


def recover_interrupted_move(settings: Settings) -> dict[str, Any] | None:
    """Finish or forget a champion move interrupted by a killed process (see the module docstring).

    Returns the history entry of a move that was finished now, None when there was nothing to do or the move
    had not happened.
    """
    client = registry_client(settings)
    try:
        registered = client.get_registered_model(settings.registry.model_name)
    except Exception as exc:
        if not_found(exc):
            return None
        raise
    return _recover_interrupted_move(client, registered)


def _restore_version_tag(
    client: MlflowClient, name: str, version: str, key: str, old: str | None
) -> Callable[[], None]:
    if old is None:
        return lambda: client.delete_model_version_tag(name, version, key)
    return lambda: client.set_model_version_tag(name, version, key, old)


def _restore_model_tag(client: MlflowClient, name: str, key: str, old: str | None) -> Callable[[], None]:
    if old is None:
        return lambda: client.delete_registered_model_tag(name, key)
    return lambda: client.set_registered_model_tag(name, key, old)


def _dumps_obj(value: Mapping[str, Any]) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _flat_report(report: Mapping[str, Any], prefix: str = "", depth: int = 2) -> dict[str, Any]:
    """The numbers, strings and short lists of an A/B report's top two levels, under MLflow-safe keys
    (``delta``, ``p_value``, ``online.p_value``). Deeper parts (per-segment lifts) and long lists are
    diagnostics, not the decision's basis, and would cost a tag each."""
    flat: dict[str, Any] = {}
    for key, value in report.items():
        name = prefix + mlflow_metric_key(str(key))
        if isinstance(value, Mapping):
            if depth > 1:
                flat.update(_flat_report(value, f"{name}.", depth - 1))
        elif isinstance(value, (list, tuple)):
            if len(value) <= _MAX_AB_LIST_ITEMS and all(_is_scalar(v) for v in value):
                flat[name] = list(value)
        elif _is_scalar(value):
            flat[name] = value
    return flat


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def _tag_text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text[:MAX_REGISTERED_MODEL_TAG_VALUE]


def _version_text(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return str(int(text)) if text.isdigit() else text


# --- MLflow plumbing ------------------------------------------------------------------------------------------


def log_ab_decision(settings: Settings, version: str, summary: Mapping[str, Any], files: list[Path]) -> None:
    """Log an A/B report on the challenger's run: its headline numbers as metrics, the decision as tags, the files
    (``files[0]`` is ab.json) as artifacts, and last the sha256 of ab.json, which makes the file promotion evidence
    (:data:`AB_REPORT_SHA256_TAG`); then the decision goes into the version's description."""
    from recops.io import file_digest

    client = registry_client(settings)
    run_id = client.get_model_version(settings.registry.model_name, version).run_id
    for key in ("delta", "ci_low", "ci_high", "p_value", "lift", "mde"):
        value = summary.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value):
            # step 0 like every metric of the run (a later A/B test of the same version is a later point at step
            # 0, and MLflow shows the latest); a timestamp as the step made MLflow plot it on a 1.7e9-wide axis
            client.log_metric(run_id, mlflow_metric_key(f"ab.{key}"), float(value), step=0)
    width_ratio = (summary.get("online_metric") or {}).get("ci_width_ratio")
    if isinstance(width_ratio, (int, float)) and math.isfinite(width_ratio):  # CUPED's interval over the plain one
        client.log_metric(run_id, mlflow_metric_key("ab.cuped_ci_width_ratio"), float(width_ratio), step=0)
    client.set_tag(run_id, "recops.ab.decision", summary["decision"])
    client.set_tag(run_id, "recops.ab.champion_version", summary["champion_version"])
    for path in files:
        client.log_artifact(run_id, str(path), artifact_path="ab")
    # last: the digest vouches for a report that is logged in full (files[0] is ab.json)
    client.set_tag(run_id, AB_REPORT_SHA256_TAG, file_digest(files[0], "sha256"))
    record_ab_decision(settings, version, summary)  # the decision in the version's description
