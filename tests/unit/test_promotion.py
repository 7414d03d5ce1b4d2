"""recops.registry.promotion against a real MLflow registry (SQLite in a temporary project), no mocks except one
injected write failure.

Every test gets its own registered model in one module-wide database. Versions are registered the way
``log_and_register`` leaves them (a FINISHED run holding the metrics under their MLflow keys, a READY version
with lineage tags), without logging an ONNX model: promotion reads only aliases, tags and run metrics.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException

from recops.config import RegistryConfig, Settings
from recops.errors import RecopsError
from recops.registry import (
    CHALLENGER,
    CHAMPION,
    first_model_gates,
    list_models,
    mlflow_metric_key,
    promote,
    promotion_history,
    rollback,
    set_challenger,
)

GOOD = {"test.ranker.ndcg@10": 0.18, "test.popularity.ndcg@10": 0.10}  # +80% over popularity
WEAK = {"test.ranker.ndcg@10": 0.102, "test.popularity.ndcg@10": 0.10}  # +2%: below the default 5% margin
_names = itertools.count()


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("promotion")


@pytest.fixture(scope="module")
def experiment_id(root: Path) -> str:
    uri = Settings(root=root).tracking_uri()
    return MlflowClient(tracking_uri=uri).create_experiment("promotion-tests", (root / "mlartifacts").as_uri())


@pytest.fixture
def settings(root: Path) -> Settings:
    """A registered model of its own for each test, in the module's database."""
    return Settings(root=root, registry=RegistryConfig(model_name=f"ranker-{next(_names)}"))


@pytest.fixture
def client(settings: Settings) -> MlflowClient:
    return MlflowClient(tracking_uri=settings.tracking_uri(), registry_uri=settings.tracking_uri())


Register = Callable[..., str]


@pytest.fixture
def register(settings: Settings, client: MlflowClient, experiment_id: str) -> Register:
    """Register a new version whose run logged ``metrics`` (and make it the challenger); returns its number."""

    def make(metrics: dict[str, float] = GOOD, git_commit: str = "0123abc", challenger: bool = True) -> str:
        run = client.create_run(experiment_id)
        client.log_batch(run.info.run_id, metrics=[Metric(mlflow_metric_key(k), v, 0, 0) for k, v in metrics.items()])
        client.set_terminated(run.info.run_id, "FINISHED")
        try:
            client.create_registered_model(settings.registry.model_name)
        except MlflowException:
            pass  # already registered by an earlier call
        lineage = {"git_commit": git_commit, "params_hash": "feedbeef", "data_md5.interactions": "d41d8cd9"}
        version = client.create_model_version(
            settings.registry.model_name, source=f"runs:/{run.info.run_id}/ranker", run_id=run.info.run_id,
            tags=lineage,
        )
        if challenger:
            set_challenger(settings, version.version)
        return str(version.version)

    return make


def ship(champion: str | int, challenger: str | int) -> dict[str, object]:
    """An A/B decision report that says ship for this pair."""
    return {"decision": "ship", "champion_version": champion, "challenger_version": challenger, "reasons": [],
            "delta": 0.012, "p_value": 0.003}


def aliases(client: MlflowClient, settings: Settings) -> dict[str, str]:
    registered = client.get_registered_model(settings.registry.model_name)
    return {alias: str(version) for alias, version in registered.aliases.items()}  # MLflow gives int versions


@pytest.fixture
def two_champions(settings: Settings, register: Register) -> tuple[str, str]:
    """Version 1 promoted on the gates, then version 2 shipped over it."""
    first = register()
    promote(settings, ab_report=None)
    second = register()
    promote(settings, ab_report=ship(first, second))
    return first, second


# --- first_model_gates ----------------------------------------------------------------------------------------


def test_gates_pass_when_the_ranker_beats_popularity_by_the_margin() -> None:
    assert first_model_gates(GOOD, None) == []


def test_gates_fail_below_the_relative_margin_and_say_by_how_much() -> None:
    [failure] = first_model_gates(WEAK, {"min_lift_over": {"popularity": 0.05}})
    assert "test.popularity.ndcg@10" in failure and "5.0%" in failure and "+2.0%" in failure


def test_gates_fail_when_a_metric_is_missing() -> None:
    [failure] = first_model_gates({"test.ranker.ndcg@10": 0.2}, None)
    assert "test.popularity.ndcg@10 is missing" in failure


def test_gates_check_the_absolute_floor() -> None:
    [failure] = first_model_gates(GOOD, {"min_value": 0.25})
    assert "below the required minimum 0.2500" in failure


def test_timeline_gates_read_the_backtests_pooled_metrics_and_lift_interval_bounds() -> None:
    from recops.evaluation.backtest import timeline_metrics

    report = {"pooled": {"metrics": {"recops": {"ndcg@10": 0.21}, "recent_popularity": {"ndcg@10": 0.18},
                                     "als": {"ndcg@10": 0.15}}},
              "lift": {"ndcg@10": {"over": {"recent_popularity": {"low_pct": 4.0}, "als": {"low_pct": 30.0}}}}}
    metrics = timeline_metrics(report)
    assert metrics["timeline.ranker.ndcg@10"] == 0.21 and metrics["timeline.mf.ndcg@10"] == 0.15
    assert metrics["timeline.lift_low_pct.recent_popularity.ndcg@10"] == 4.0
    gates = {"fold": "timeline", "min_lift_over": {"recent_popularity": 0.1},
             "min_ci_low_over": {"recent_popularity": 0}}
    assert first_model_gates(metrics, gates) == []
    [failure] = first_model_gates(metrics, {**gates, "min_ci_low_over": {"recent_popularity": 5.0}})
    assert "+4.0%" in failure and "below the required +5.0%" in failure
    [failure] = first_model_gates(metrics, {**gates, "min_lift_over": {"recent_popularity": 0.2}})
    assert "timeline.recent_popularity.ndcg@10" in failure
    [failure] = first_model_gates({"test.ranker.ndcg@10": 0.3}, {**gates, "min_lift_over": {}})
    assert "timeline.ranker.ndcg@10 is missing" in failure


def test_gates_read_metrics_under_their_mlflow_keys() -> None:
    logged = {mlflow_metric_key(k): v for k, v in WEAK.items()}
    assert first_model_gates(logged, {"min_lift_over": {"popularity": 0.01}}) == []
    assert len(first_model_gates(logged, None)) == 1


def test_unknown_gate_is_a_config_error_naming_it() -> None:
    with pytest.raises(RecopsError, match="min_lift"):
        first_model_gates(GOOD, {"min_lift": 0.05})


# --- set_challenger -------------------------------------------------------------------------------------------


def test_set_challenger_points_the_alias_at_the_new_version(
    settings: Settings, client: MlflowClient, register: Register
) -> None:
    first = register()
    second = register(challenger=False)
    result = set_challenger(settings, second)
    assert result["previous_version"] == first
    assert aliases(client, settings) == {CHALLENGER: second}


def test_set_challenger_refuses_an_unknown_version(settings: Settings, register: Register) -> None:
    register()
    with pytest.raises(RecopsError, match="no version 7 .*registered versions: 1"):
        set_challenger(settings, 7)


# --- promote: the first model ---------------------------------------------------------------------------------


def test_first_model_is_promoted_on_the_quality_gates(
    settings: Settings, client: MlflowClient, register: Register
) -> None:
    version = register(GOOD)
    result = promote(settings, ab_report=None, actor="alice")
    assert (result["from_version"], result["to_version"], result["promoted_on"]) == (None, version, "first_model_gates")
    assert aliases(client, settings)[CHAMPION] == version
    tags = client.get_model_version(settings.registry.model_name, version).tags
    assert tags["recops.promoted_by"] == "alice"
    assert tags["recops.promoted_on"] == "first_model_gates"
    assert float(tags["recops.gates.test.ranker.ndcg_at_10"]) == pytest.approx(0.18)
    [entry] = promotion_history(settings)
    assert entry["action"] == "promote" and entry["from_version"] is None and entry["to_version"] == version


def test_first_model_failing_the_gates_is_refused_and_no_champion_is_set(
    settings: Settings, client: MlflowClient, register: Register
) -> None:
    register(WEAK)
    with pytest.raises(RecopsError, match="fails the quality gates: .*does not beat test.popularity.ndcg@10"):
        promote(settings, ab_report=None)
    assert CHAMPION not in aliases(client, settings)
    assert promotion_history(settings) == []


def test_gates_come_from_the_argument(settings: Settings, client: MlflowClient, register: Register) -> None:
    version = register(WEAK)
    promote(settings, ab_report=None, gates={"min_lift_over": {"popularity": 0.01}})
    assert aliases(client, settings)[CHAMPION] == version


# --- promote: a challenger over the champion ------------------------------------------------------------------


def test_ship_moves_the_champion_and_records_tags_and_history(
    settings: Settings, client: MlflowClient, two_champions: tuple[str, str]
) -> None:
    first, second = two_champions
    assert aliases(client, settings) == {CHAMPION: second, CHALLENGER: second}
    tags = client.get_model_version(settings.registry.model_name, second).tags
    assert tags["recops.promoted_on"] == "ab_test"
    assert float(tags["recops.ab.delta"]) == pytest.approx(0.012)
    assert float(tags["recops.ab.p_value"]) == pytest.approx(0.003)
    assert tags["recops.promotion_reason"] == f"A/B decision ship: challenger {second} vs champion {first}"
    assert "T" in tags["recops.promoted_at"] and tags["recops.promoted_at"].endswith("+00:00")
    history = promotion_history(settings)
    assert [(e["action"], e["from_version"], e["to_version"]) for e in history] == [
        ("promote", None, first), ("promote", first, second)
    ]
    assert set(history[1]) == {"action", "from_version", "to_version", "at", "by", "reason"}


def test_ab_evidence_is_the_reports_top_two_levels(
    settings: Settings, client: MlflowClient, register: Register
) -> None:
    first = register()
    promote(settings, ab_report=None)
    second = register()
    report = {**ship(first, second), "reasons": ["for: lift +4%"], "online": {"p_value": 0.01, "srm": False},
              "segments": {"activity": {"light": {"delta": 0.002}}}, "per_user": list(range(500))}
    evidence = promote(settings, ab_report=report)["evidence"]
    assert evidence["online.p_value"] == 0.01 and evidence["reasons"] == ["for: lift +4%"]
    assert not any(key.startswith(("segments", "per_user")) for key in evidence)
    tags = client.get_model_version(settings.registry.model_name, second).tags
    assert (tags["recops.ab.online.srm"], tags["recops.ab.reasons"]) == ("false", '["for: lift +4%"]')


def test_actor_defaults_to_the_user(
    settings: Settings, register: Register, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("USER", "release-bot")
    register()
    assert promote(settings, ab_report=None)["by"] == "release-bot"


def test_hold_is_refused_with_its_reasons_and_the_champion_stays(
    settings: Settings, client: MlflowClient, register: Register
) -> None:
    first = register()
    promote(settings, ab_report=None)
    second = register()
    report = {**ship(first, second), "decision": "hold",
              "reasons": ["lift not significant (p = 0.21)", "coverage@10 dropped 14%"]}
    with pytest.raises(RecopsError, match="hold, not ship: lift not significant .*; coverage@10 dropped 14%"):
        promote(settings, ab_report=report)
    assert aliases(client, settings)[CHAMPION] == first
    assert len(promotion_history(settings)) == 1


def test_report_for_another_pair_is_refused_naming_both_pairs(
    settings: Settings, client: MlflowClient, register: Register
) -> None:
    first = register()
    promote(settings, ab_report=None)
    second = register()
    register()  # a newer training run moved the challenger on to version 3
    expected = f"champion {first} vs challenger {second}, .*champion {first} vs challenger 3"
    with pytest.raises(RecopsError, match=expected):
        promote(settings, ab_report=ship(first, second))
    assert aliases(client, settings)[CHAMPION] == first


def test_explicit_version_promotes_the_pair_the_report_is_about(
    settings: Settings, client: MlflowClient, register: Register
) -> None:
    first = register()
    promote(settings, ab_report=None)
    second = register()
    register()
    result = promote(settings, ab_report=ship(first, int(second)), version=second)
    assert result["to_version"] == second
    assert aliases(client, settings) == {CHAMPION: second, CHALLENGER: "3"}


def test_missing_report_is_refused_once_there_is_a_champion(
    settings: Settings, client: MlflowClient, register: Register
) -> None:
    first = register()
    promote(settings, ab_report=None)
    register()
    with pytest.raises(RecopsError, match="needs an A/B decision report"):
        promote(settings, ab_report=None)
    assert aliases(client, settings)[CHAMPION] == first


def test_no_challenger_alias_is_refused(settings: Settings, client: MlflowClient, register: Register) -> None:
    register(challenger=False)
    with pytest.raises(RecopsError, match="no 'challenger' alias"):
        promote(settings, ab_report=None)
    assert aliases(client, settings) == {}


def test_unknown_version_is_refused(settings: Settings, client: MlflowClient, register: Register) -> None:
    register()
    promote(settings, ab_report=None)
    with pytest.raises(RecopsError, match="no version 42"):
        promote(settings, ab_report=ship("1", "42"), version=42)
    assert aliases(client, settings)[CHAMPION] == "1"


def test_challenger_that_already_is_champion_is_refused(
    settings: Settings, register: Register, two_champions: tuple[str, str]
) -> None:
    _, second = two_champions
    with pytest.raises(RecopsError, match=f"version {second} .*already is the champion"):
        promote(settings, ab_report=ship(second, second))


def test_unregistered_model_is_refused(settings: Settings) -> None:
    with pytest.raises(RecopsError, match="is not registered"):
        promote(settings, ab_report=None)


def test_failed_recording_restores_the_champion_alias(
    settings: Settings, client: MlflowClient, register: Register, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = register()
    promote(settings, ab_report=None)
    second = register()

    original = MlflowClient.set_registered_model_tag

    def unavailable(self: MlflowClient, name: str, key: str, value: str) -> None:
        if key == "recops.promotion_history":  # after the alias moved and the version tags were written
            raise MlflowException("database is locked")
        original(self, name, key, value)

    monkeypatch.setattr(MlflowClient, "set_registered_model_tag", unavailable)
    with pytest.raises(RecopsError, match="database is locked.*champion alias was restored to " + first):
        promote(settings, ab_report=ship(first, second))
    monkeypatch.undo()
    assert aliases(client, settings)[CHAMPION] == first
    assert "recops.promoted_at" not in client.get_model_version(settings.registry.model_name, second).tags
    assert len(promotion_history(settings)) == 1
    assert "recops.pending_move" not in client.get_registered_model(settings.registry.model_name).tags


# --- rollback -------------------------------------------------------------------------------------------------


def test_rollback_restores_the_previous_champion_and_records_it(
    settings: Settings, client: MlflowClient, two_champions: tuple[str, str]
) -> None:
    first, second = two_champions
    result = rollback(settings, actor="bob", reason="p99 latency alarm")
    assert (result["action"], result["from_version"], result["to_version"]) == ("rollback", second, first)
    assert aliases(client, settings)[CHAMPION] == first
    tags = client.get_model_version(settings.registry.model_name, second).tags
    assert (tags["recops.rolled_back_by"], tags["recops.rollback_reason"]) == ("bob", "p99 latency alarm")
    last = promotion_history(settings)[-1]
    assert (last["action"], last["from_version"], last["to_version"], last["by"]) == ("rollback", second, first, "bob")


def test_rollbacks_walk_back_through_the_champions_then_refuse(
    settings: Settings, client: MlflowClient, register: Register, two_champions: tuple[str, str]
) -> None:
    first, second = two_champions
    third = register()
    promote(settings, ab_report=ship(second, third))
    assert rollback(settings)["to_version"] == second
    assert rollback(settings)["to_version"] == first
    with pytest.raises(RecopsError, match="no previous champion"):
        rollback(settings)
    assert aliases(client, settings)[CHAMPION] == first


def test_rollback_of_the_first_champion_is_refused(
    settings: Settings, client: MlflowClient, register: Register
) -> None:
    first = register()
    promote(settings, ab_report=None)
    with pytest.raises(RecopsError, match=f"version {first} is the first champion .*no previous champion"):
        rollback(settings)
    assert aliases(client, settings)[CHAMPION] == first


def test_rollback_without_a_champion_is_refused(settings: Settings, register: Register) -> None:
    register()
    with pytest.raises(RecopsError, match="no champion to roll back"):
        rollback(settings)


def test_rollback_refuses_a_champion_alias_moved_outside_recops(
    settings: Settings, client: MlflowClient, two_champions: tuple[str, str]
) -> None:
    first, _ = two_champions
    client.set_registered_model_alias(settings.registry.model_name, CHAMPION, first)
    with pytest.raises(RecopsError, match="moved outside recops"):
        rollback(settings)


def test_long_history_is_archived_without_losing_entries(
    settings: Settings, client: MlflowClient, two_champions: tuple[str, str]
) -> None:
    first, second = two_champions
    for _ in range(6):  # 12 entries with 900-character reasons: well over one 5000-character tag
        rollback(settings, reason="r" * 900)
        promote(settings, ab_report=ship(first, second), reason="p" * 900)
    history = promotion_history(settings)
    assert len(history) == 2 + 12
    assert [e["action"] for e in history[2:]] == ["rollback", "promote"] * 6
    tags = client.get_registered_model(settings.registry.model_name).tags
    assert all(len(v) <= 5000 for k, v in tags.items() if k.startswith("recops.promotion_history"))
    assert "recops.promotion_history.1" in tags
    assert rollback(settings)["to_version"] == first  # the stack survives archiving


def test_a_champion_alias_moved_by_hand_is_reported_until_recops_moves_it(
    settings: Settings, client: MlflowClient, register: Register, two_champions: tuple[str, str]
) -> None:
    from recops.registry.promotion import champion_alias_check

    first, second = two_champions
    assert champion_alias_check(settings)["moved_outside_recops"] is False
    third = register()
    client.set_registered_model_alias(settings.registry.model_name, CHAMPION, third)  # the UI's alias button
    check = champion_alias_check(settings)
    assert check["moved_outside_recops"] and (check["champion"], check["recorded"]) == (third, second)
    assert f"version {third}" in check["warning"] and "outside recops" in check["warning"]
    models = {m["version"]: m for m in list_models(settings)}
    assert models[third]["alias_warning"] == check["warning"] and models[second]["alias_warning"] is None
    client.set_registered_model_alias(settings.registry.model_name, CHAMPION, second)  # set back
    assert champion_alias_check(settings)["warning"] is None


def test_a_champion_set_by_hand_before_any_promotion_is_reported(
    settings: Settings, client: MlflowClient, register: Register
) -> None:
    from recops.registry.promotion import champion_alias_check

    client.set_registered_model_alias(settings.registry.model_name, CHAMPION, register())
    assert champion_alias_check(settings)["moved_outside_recops"] is True


def test_descriptions_show_the_promotion_history_and_each_versions_moves(
    settings: Settings, client: MlflowClient, two_champions: tuple[str, str]
) -> None:
    first, second = two_champions
    rollback(settings, reason="alarm in production")
    name = settings.registry.model_name
    model = client.get_registered_model(name).description
    assert "### Promotion history" in model and "recops promote" in model
    table = [line for line in model.splitlines() if line.startswith("| 20")]  # rows start with the date
    assert [row.split("|")[2].strip() for row in table] == ["rollback", "promote", "promote"]  # newest first
    assert "alarm in production" in table[0]
    assert "promoted to champion" in client.get_model_version(name, second).description
    assert "rolled back" in client.get_model_version(name, second).description
    assert "made champion again" in client.get_model_version(name, first).description


def test_a_users_own_section_of_the_model_description_is_kept(
    settings: Settings, client: MlflowClient, register: Register
) -> None:
    name = settings.registry.model_name
    register()
    client.update_registered_model(name, description="Owned by the search team.\n\n### Runbook\n\nPage #recs.\n")
    promote(settings, ab_report=None)
    description = client.get_registered_model(name).description
    assert description.startswith("Owned by the search team.") and "### Runbook\n\nPage #recs." in description
    assert "### Promotion history" in description


def test_the_ab_decision_is_written_into_the_challengers_description(
    settings: Settings, client: MlflowClient, register: Register
) -> None:
    from recops.registry.promotion import record_ab_decision

    first, second = register(), register()
    name = settings.registry.model_name
    client.update_model_version(name, second, description="### A/B decision\n\nNot tested yet.\n")
    record_ab_decision(settings, second, {**ship(first, second), "reasons": ["for: ndcg@10 up"]})
    description = client.get_model_version(name, second).description
    assert "**SHIP** against champion version " + first in description and "for: ndcg@10 up" in description
    assert "Not tested yet" not in description


# --- list_models ----------------------------------------------------------------------------------------------


def test_list_models_shows_aliases_lineage_and_promotion(
    settings: Settings, register: Register, two_champions: tuple[str, str]
) -> None:
    first, second = two_champions
    third = register(git_commit="fedcba9")
    models = {m["version"]: m for m in list_models(settings)}
    assert list(models) == [first, second, third]
    assert models[second]["aliases"] == [CHAMPION]
    assert models[third]["aliases"] == [CHALLENGER]
    assert models[first]["aliases"] == []
    assert models[third]["lineage"] == {"git_commit": "fedcba9", "params_hash": "feedbeef",
                                        "data_md5.interactions": "d41d8cd9"}
    assert models[second]["promoted_on"] == "ab_test"
    assert models[second]["promotion_metrics"]["delta"] == "0.012"
    assert "test.ranker.ndcg_at_10" in models[first]["promotion_metrics"]
    assert models[third]["promoted_at"] is None and models[third]["promotion_metrics"] == {}
    assert models[third]["status"] == "READY" and models[third]["created_at"]
    json.dumps(list(models.values()))  # plain data for `recops models --json`


# ---------------------------------------------------------------------------------- a process killed mid-move
# The promoting process dies (os._exit, as under kill -9: no finally, no undo) at a chosen write; another process
# then looks at the registry. A fork of this test process does the move, so the registry is the real one.
KILL_POINTS = {
    "before the intent": ("set_registered_model_tag", "before", "recops.pending_move"),
    "before the alias": ("set_registered_model_alias", "before", None),
    "right after the alias": ("set_registered_model_alias", "after", None),
    "before the history": ("set_registered_model_tag", "before", "recops.promotion_history"),
    "before clearing the intent": ("delete_registered_model_tag", "before", "recops.pending_move"),
}


def _die_during(settings: Settings, action: Callable[[], object], point: str) -> int:
    import multiprocessing
    import os

    method, when, key = KILL_POINTS[point]

    def child() -> None:
        original = getattr(MlflowClient, method)

        def dying(self, *args, **kwargs):
            hit = key is None or key in args
            if hit and when == "before":
                os._exit(137)
            result = original(self, *args, **kwargs)
            if hit:
                os._exit(137)
            return result

        setattr(MlflowClient, method, dying)
        action()
        os._exit(0)

    process = multiprocessing.get_context("fork").Process(target=child)
    process.start()
    process.join(60)
    return process.exitcode


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_a_promotion_killed_anywhere_leaves_a_consistent_registry_and_a_rerun_finishes_it(
    settings: Settings, client: MlflowClient, register: Register, point: str
) -> None:
    first = register()
    promote(settings, ab_report=None)
    second = register()
    report = ship(first, second)
    assert _die_during(settings, lambda: promote(settings, ab_report=report, reason="ship it"), point) == 137
    # the champion names a registered version whatever the point: the old one, or the new one
    moved = aliases(client, settings)[CHAMPION]
    assert moved == (first if point in ("before the intent", "before the alias") else second)
    # the rerun of the same command finishes the job: one promotion recorded, tags on the version
    entry = promote(settings, ab_report=report, reason="ship it")
    assert (entry["from_version"], entry["to_version"]) == (first, second)
    assert aliases(client, settings)[CHAMPION] == second
    history = promotion_history(settings)
    assert [(e["action"], e["from_version"], e["to_version"]) for e in history] == [
        ("promote", None, first), ("promote", first, second)]
    tags = client.get_model_version(settings.registry.model_name, second).tags
    assert tags["recops.promotion_reason"] == "ship it" and tags["recops.promoted_on"] == "ab_test"
    assert "recops.pending_move" not in client.get_registered_model(settings.registry.model_name).tags
    # and the history still supports a rollback to the first champion
    assert rollback(settings)["to_version"] == first


@pytest.mark.parametrize("point", ["before the alias", "right after the alias", "before the history"])
def test_a_rollback_killed_mid_way_is_finished_or_forgotten_by_the_rerun(
    settings: Settings, client: MlflowClient, register: Register, point: str
) -> None:
    first = register()
    promote(settings, ab_report=None)
    second = register()
    promote(settings, ab_report=ship(first, second))
    assert _die_during(settings, lambda: rollback(settings, reason="alarm"), point) == 137
    entry = rollback(settings, reason="alarm")  # the rerun: rolls back once, never twice
    assert (entry["action"], entry["from_version"], entry["to_version"]) == ("rollback", second, first)
    assert aliases(client, settings)[CHAMPION] == first
    assert [e["action"] for e in promotion_history(settings)] == ["promote", "promote", "rollback"]


# --- what recops ab compares -------------------------------------------------------------------------------------


def test_ab_refuses_versions_trained_on_different_data_sources_before_rebuilding_anything(
        settings: Settings, register: Register, client: MlflowClient) -> None:
    from recops.evaluation.abtest import run_ab

    first, second = register(), register()
    name = settings.registry.model_name
    client.set_model_version_tag(name, first, "data_source", "movielens100k")
    client.set_model_version_tag(name, second, "data_source", "file")
    with pytest.raises(RecopsError, match="'movielens100k' and version .* on 'file'.*--allow-other-data"):
        run_ab(settings, first, second)
    with pytest.raises(RecopsError, match="same version .*recops run"):
        run_ab(settings, first, first)


def test_the_ab_report_lists_the_configuration_keys_that_differ() -> None:
    from recops.evaluation.abtest import param_diff

    champion = {"candidates": {"factors": 64, "sources": ["mf"]}, "paths": {"x": "a"}, "seed": 42}
    challenger = {"candidates": {"factors": 128, "sources": ["mf", "ease"]}, "paths": {"x": "b"}, "seed": 42,
                  "ab": {"timeline": True}}
    assert param_diff(champion, challenger) == [
        {"key": "ab.timeline", "champion": None, "challenger": True},
        {"key": "candidates.factors", "champion": 64, "challenger": 128},
        {"key": "candidates.sources", "champion": ["mf"], "challenger": ["mf", "ease"]}]
