"""`recops promote` acts on an A/B report file only when it is the report `recops ab` logged on the challenger's run.

Real MLflow (SQLite) as in test_promotion.py, whose fixtures this module reuses: the report is written and logged
by the A/B module's own logging function (what `recops ab` calls after writing reports/ab.json), then promoted
from the file as the CLI does.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from mlflow import MlflowClient

from recops.config import Settings
from recops.errors import RecopsError
from recops.registry.promotion import log_ab_decision
from recops.io import write_json
from recops.registry import promote
from recops.registry.promotion import AB_REPORT_SHA256_TAG
from tests.unit.test_promotion import Register, aliases, client, experiment_id, register, root, settings, ship

__all__ = ["client", "experiment_id", "register", "root", "settings"]  # fixtures used by name below


@pytest.fixture
def pair(settings: Settings, register: Register, tmp_path: Path) -> tuple[str, str, Path]:
    """Version 1 the champion (gates), version 2 the challenger with a logged `ship` report at tmp/ab.json."""
    first = register()
    promote(settings, ab_report=None)
    second = register()
    report = {**ship(first, second), "model_name": settings.registry.model_name}
    path = tmp_path / "ab.json"
    write_json(report, path)
    html = tmp_path / "ab.html"
    html.write_text("<html>SHIP</html>", encoding="utf-8")
    log_ab_decision(settings, second, report, [path, html])
    return first, second, path


def test_the_logged_report_file_promotes_and_its_digest_is_recorded(settings, client: MlflowClient, pair):
    first, second, path = pair
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    entry = promote(settings, ab_report=path)
    assert aliases(client, settings)["champion"] == second and entry["from_version"] == first
    tags = client.get_model_version(settings.registry.model_name, second).tags
    assert tags[AB_REPORT_SHA256_TAG] == digest and tags["recops.promoted_on"] == "ab_test"


def test_a_hand_edited_decision_is_refused_naming_both_digests_and_nothing_moves(settings, client, pair):
    first, second, path = pair
    logged = hashlib.sha256(path.read_bytes()).hexdigest()
    report = json.loads(path.read_text())
    report["delta"] = 0.5  # a number "improved" by hand, the decision still ship
    path.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    edited = hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(RecopsError) as refused:
        promote(settings, ab_report=path)
    message = str(refused.value)
    assert str(path) in message and logged in message and edited in message and "recops ab" in message
    assert aliases(client, settings)["champion"] == first
    assert "recops.promoted_at" not in client.get_model_version(settings.registry.model_name, second).tags


def test_a_report_file_with_no_logged_digest_is_refused(settings, client, register, tmp_path):
    first = register()
    promote(settings, ab_report=None)
    second = register()
    path = tmp_path / "ab.json"
    write_json(ship(first, second), path)  # written by hand: no `recops ab` logged it
    with pytest.raises(RecopsError, match=f"no logged A/B report digest.*{AB_REPORT_SHA256_TAG}.*recops ab"):
        promote(settings, ab_report=path)
    assert aliases(client, settings)["champion"] == first


def test_a_missing_report_file_asks_for_the_ab_test(settings, client, register, tmp_path):
    first = register()
    promote(settings, ab_report=None)
    register()
    with pytest.raises(RecopsError, match="needs an A/B decision report: run the A/B test"):
        promote(settings, ab_report=tmp_path / "absent.json")
    assert aliases(client, settings)["champion"] == first


def test_the_first_model_ignores_a_report_file_it_does_not_need(settings, client, register, tmp_path):
    register()
    path = tmp_path / "ab.json"
    path.write_text("not even JSON")
    assert promote(settings, ab_report=path)["promoted_on"] == "first_model_gates"
