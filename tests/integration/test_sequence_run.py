"""The sequence source through the whole system on a small own-data project: `recops run` with `sequence` among
the candidate sources trains it in every fold, reports its candidate recall, ranks with its score and rank as
features, registers a version whose serving bundle holds the ONNX encoder; the engine serves from that bundle
without PyTorch, a live event re-encodes the user at once, and batch scoring lists every user."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import run_cli, set_params
from tests.data.cases import PARAMS, write_clean_case

pytestmark = pytest.mark.integration
pytest.importorskip("torch", reason="the sequence source's extra (make install-sequence) is not installed")

SEQUENCE = {"sources": ["mf", "itemknn", "popularity", "sequence"], "sequence_length": 8, "sequence_embedding": 16,
            "sequence_heads": 2, "sequence_layers": 1, "sequence_epochs": 3, "sequence_batch_size": 64}


@pytest.fixture(scope="module")
def project(fresh_workspace, prefect_api):
    ws = fresh_workspace("sequence-run", prefect_api)
    write_clean_case(ws)
    set_params(ws, **PARAMS)
    set_params(ws, candidates=SEQUENCE)
    proc = run_cli(ws, "run", "-q")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return ws


def test_a_run_trains_the_source_and_ranks_with_it(project):
    metrics = json.loads((project / "reports" / "candidates_metrics.json").read_text())
    recall = [key for key in metrics if key.startswith("test.candidates.sequence.recall")]
    assert recall and 0.0 <= metrics[recall[0]] <= 1.0, sorted(metrics)[:40]
    names = json.loads((project / "data" / "features" / "feature_names.json").read_text())["features"]
    assert "sequence_score" in names and "sequence_rank" in names
    manifest = json.loads((project / "models" / "serving" / "manifest.json").read_text())
    assert "sequence" in json.dumps(manifest)


def test_the_served_version_answers_and_follows_live_events_without_pytorch(project):
    script = textwrap.dedent(f"""
        import sys
        import numpy as np
        from recops.config import load_settings
        from recops.serving.bundle import load_bundle
        from recops.serving.engine import Recommender

        settings = load_settings({str(project / "params.yaml")!r})
        model = Recommender(load_bundle(settings.path("serving_bundle"), None), settings.serving, "local")
        sequence = model.sources["sequence"]
        user_id = model.user_ids[np.flatnonzero(sequence.has_history_)[0]]
        user = model.user_index(user_id)
        before = model.recommend(user_id, 10)
        vector = sequence.user_vectors_[user].copy()
        item_id = before.items[0]
        model.add_event(user_id, item_id)
        after = model.recommend(user_id, 10)
        assert not np.allclose(vector, sequence.user_vectors_[user]), "the event did not re-encode the user"
        assert item_id not in list(after.items), "the item just consumed is still recommended"
        assert "torch" not in sys.modules, sorted(m for m in sys.modules if m.startswith("torch"))
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          cwd=project)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stdout[-2000:] + done.stderr[-4000:]


def test_batch_scoring_lists_every_user_with_the_source(project):
    proc = run_cli(project, "batch-score", "--k", "5")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert list((project / "reports" / "batch").rglob("*.parquet")), "no batch output"
