"""The served ranker's runtimes (``recops.serving.ranker_runtime``): the forest compiled by lleaves equals native
LightGBM, its object code is reused only where it was built for, and a compiled forest that disagrees with the
bundle's reference rows is refused for onnxruntime. Real LightGBM, lleaves and onnxruntime."""

from __future__ import annotations

import json
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest

from recops.errors import RecopsError
from recops.export import convert_ranker, parity_report
from recops.serving.ranker_runtime import (COMPILED_FILE, DRIFT_REFERENCE, CompiledScorer, OnnxScorer,
                                           compile_ranker, compiled_scorer, host_target, load_scorer)

NAMES = [f"f{j}" for j in range(8)]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> tuple[Path, dict, bytes, lgb.Booster, np.ndarray]:
    """A bundle-like folder: ranker.txt, its compiled object, reference rows with native scores, the ONNX bytes."""
    root = tmp_path_factory.mktemp("bundle")
    rng = np.random.default_rng(3)
    x = rng.normal(size=(4000, len(NAMES))).astype(np.float32)
    x[:, 3] = np.round(x[:, 3], 1)  # many values exactly on a split threshold
    y = (x[:, 0] + x[:, 3] > 0.5).astype(int) + (x[:, 1] > 1).astype(int)
    model = lgb.LGBMRanker(n_estimators=60, num_leaves=7, learning_rate=0.1, verbose=-1, n_jobs=1)
    model.fit(x, y, group=[40] * 100)
    booster = model.booster_
    booster.save_model(str(root / "ranker.txt"))
    info = compile_ranker(root / "ranker.txt", root / COMPILED_FILE)
    reference = pd.DataFrame(x[:600], columns=NAMES)
    reference["score"] = booster.predict(x[:600], num_threads=1).astype(np.float32)
    reference.to_parquet(root / DRIFT_REFERENCE, index=False)
    manifest = {"feature_names": NAMES, "compiled_ranker": info}
    onnx_bytes = convert_ranker(booster, len(NAMES), 15).SerializeToString()
    return root, manifest, onnx_bytes, booster, x


def test_the_compiled_forest_scores_exactly_what_lightgbm_scores(bundle) -> None:
    root, manifest, _, booster, x = bundle
    scorer, how = compiled_scorer(root, manifest)
    assert "object code of the bundle" in how  # built here: loaded, not compiled again
    native = booster.predict(x, num_threads=1)
    compiled = scorer.predict(x)
    assert compiled.dtype == np.float32 and np.abs(compiled - native).max() < 1e-6
    users = np.repeat(np.arange(100), 40)
    report = parity_report(users, native, compiled, k=10, max_abs_diff=1e-5, tie_tolerance=1e-9,
                           prefix="compiled.parity", what="compiled (lleaves)")
    assert report["compiled.parity.top10_mismatched_users"] == 0


def test_a_small_forest_uses_the_small_code_model_a_large_one_the_large_and_both_score_alike(bundle, tmp_path,
                                                                                             monkeypatch) -> None:
    from recops.serving import ranker_runtime

    root, manifest, _, booster, x = bundle
    assert manifest["compiled_ranker"]["code_model"] == "small"  # 60 trees of 7 leaves
    monkeypatch.setattr(ranker_runtime, "SMALL_CODE_MODEL_LEAVES", 0)
    large = tmp_path / "large"
    large.mkdir()
    (large / "ranker.txt").write_bytes((root / "ranker.txt").read_bytes())
    info = compile_ranker(large / "ranker.txt", large / COMPILED_FILE)
    assert info["code_model"] == "large"
    assert (large / COMPILED_FILE).read_bytes() != (root / COMPILED_FILE).read_bytes()
    small_scorer, _ = compiled_scorer(root, manifest)
    large_scorer, _ = compiled_scorer(large, {**manifest, "compiled_ranker": info})
    np.testing.assert_array_equal(small_scorer.predict(x), large_scorer.predict(x))


def test_object_code_built_elsewhere_is_not_loaded_the_forest_is_compiled_here(bundle) -> None:
    root, manifest, _, booster, x = bundle
    elsewhere = {**manifest, "compiled_ranker": {**manifest["compiled_ranker"], "triple": "aarch64-unknown-linux-gnu"}}
    scorer, how = compiled_scorer(root, elsewhere)
    assert "compiled at load" in how and "aarch64" in how and host_target()["triple"] in how
    assert np.abs(scorer.predict(x[:200]) - booster.predict(x[:200], num_threads=1)).max() < 1e-6
    older = {key: value for key, value in manifest.items() if key != "compiled_ranker"}  # a bundle from before
    assert "compiled at load" in compiled_scorer(root, older)[1]


def test_the_runtime_asked_for_is_used_and_checked_on_the_reference_rows(bundle) -> None:
    root, manifest, onnx_bytes, booster, x = bundle
    scorer, how = load_scorer(root, manifest, onnx_bytes, "lleaves")
    assert isinstance(scorer, CompiledScorer) and "reference rows" in how and how.startswith("lleaves")
    scorer, how = load_scorer(root, manifest, onnx_bytes, "onnx")
    assert isinstance(scorer, OnnxScorer) and how.startswith("onnxruntime")
    assert np.abs(scorer.predict(x[:200]) - booster.predict(x[:200], num_threads=1)).max() < 1e-4
    with pytest.raises(RecopsError, match="treelite"):
        load_scorer(root, manifest, onnx_bytes, "treelite")


def test_a_compiled_forest_that_disagrees_with_the_reference_is_refused_for_onnx(bundle, tmp_path) -> None:
    root, manifest, onnx_bytes, _, _ = bundle
    for name in ("ranker.txt", COMPILED_FILE):
        (tmp_path / name).write_bytes((root / name).read_bytes())
    reference = pd.read_parquet(root / DRIFT_REFERENCE)
    reference["score"] += np.float32(0.01)  # reference scores of another model
    reference.to_parquet(tmp_path / DRIFT_REFERENCE, index=False)
    scorer, how = load_scorer(tmp_path, manifest, onnx_bytes, "lleaves")
    assert isinstance(scorer, OnnxScorer) and "differs from LightGBM by 0.01" in how, how


def test_the_compile_facts_say_what_a_server_must_match_and_a_rebuild_gives_the_same_bytes(bundle, tmp_path) -> None:
    root, manifest, _, _, _ = bundle
    info = manifest["compiled_ranker"]
    assert info["file"] == COMPILED_FILE and info["cpu"] == "generic"
    assert {key: info[key] for key in ("triple", "lleaves", "llvmlite")} == host_target()
    json.dumps(info)  # goes into the manifest as is
    again = compile_ranker(root / "ranker.txt", tmp_path / COMPILED_FILE)
    assert again == info and (tmp_path / COMPILED_FILE).read_bytes() == (root / COMPILED_FILE).read_bytes()