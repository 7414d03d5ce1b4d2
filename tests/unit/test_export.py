"""ONNX export of a LambdaRank booster: conversion, exact branch parity on float32 inputs, failure detection."""

import lightgbm as lgb
import numpy as np
import pytest

from recops.errors import RecopsError
from recops.export import convert_ranker, onnx_scores, parity_report
from recops.onnx_runtime import inference_session


def adjacent_float32_ranker(seed=0, n_groups=60, group=20):
    """Feature 0 takes consecutive float32 values, so LightGBM's float64 mid-point thresholds sit exactly
    half-way between two float32 numbers: the case where rounding to nearest flips branch decisions."""
    rng = np.random.default_rng(seed)
    n = n_groups * group
    steps = rng.integers(0, 200, size=n)
    ladder = [np.float32(1.0)]
    for _ in range(199):
        ladder.append(np.nextafter(ladder[-1], np.float32(2.0)))
    f0 = np.array(ladder, dtype=np.float32)[steps]
    features = np.column_stack([f0, rng.normal(size=(n, 3)).astype(np.float32)])
    label = (steps > 120).astype(int) + (features[:, 1] > 0.5)
    data = lgb.Dataset(features, label=label, group=[group] * n_groups)
    params = {"objective": "lambdarank", "num_leaves": 15, "min_data_in_leaf": 5, "verbose": -1, "seed": seed,
              "num_threads": 1, "max_bin": 255}
    booster = lgb.train(params, data, num_boost_round=40)
    return booster, features, np.repeat(np.arange(n_groups), group)


def test_exported_model_scores_like_native_lightgbm():
    booster, features, users = adjacent_float32_ranker()
    model = convert_ranker(booster, features.shape[1], target_opset=15)
    converted = onnx_scores(inference_session(model.SerializeToString()), features)
    native = booster.predict(features)
    report = parity_report(users, native, converted, k=10, max_abs_diff=1e-4, tie_tolerance=1e-5)
    assert report["export.parity.max_abs_diff"] < 1e-5
    assert report["export.parity.top10_mismatched_users"] == 0


def test_plain_nearest_rounding_would_break_parity_on_the_same_model():
    # Guards the reason for round_thresholds_down: without it, some rows take another branch.
    from onnxmltools import convert_lightgbm
    from onnxmltools.convert.common.data_types import FloatTensorType

    booster, features, users = adjacent_float32_ranker()
    plain = convert_lightgbm(booster, target_opset=15, initial_types=[("features", FloatTensorType([None, 4]))])
    converted = onnx_scores(inference_session(plain.SerializeToString()), features)
    assert np.abs(converted - booster.predict(features)).max() > 1e-4


def test_parity_failure_is_an_error_naming_the_difference():
    users = np.repeat([0, 1], 3)
    native = np.array([3.0, 2.0, 1.0, 3.0, 2.0, 1.0])
    broken = native.copy()
    broken[0] = 0.0  # user 0's best item falls to the bottom
    with pytest.raises(RecopsError, match="top-10 order differs for 1 of 2 users"):
        parity_report(users, native, broken, k=10, max_abs_diff=10.0, tie_tolerance=1e-6)
    with pytest.raises(RecopsError, match="max \\|score difference\\|"):
        parity_report(users, native, broken, k=10, max_abs_diff=0.1, tie_tolerance=1e-6)


def test_swaps_between_tied_items_are_not_parity_failures():
    users = np.zeros(3, dtype=int)
    native = np.array([1.0, 1.0 + 1e-9, 0.5])
    converted = np.array([1.0 + 1e-9, 1.0, 0.5])
    report = parity_report(users, native, converted, k=10, max_abs_diff=1e-3, tie_tolerance=1e-6)
    assert report["export.parity.top10_mismatched_users"] == 0


def test_the_same_booster_converts_to_the_same_bytes_in_every_process(tmp_path):
    """onnxmltools orders the opset domains as a Python set does, which string hashing randomises per process: a
    `recops run` on a fresh clone wrote another ranker.onnx (and dvc.lock) from the same ranker.txt."""
    import hashlib
    import os
    import subprocess
    import sys

    booster, _, _ = adjacent_float32_ranker()
    booster.save_model(str(tmp_path / "ranker.txt"))
    code = ("import hashlib, sys, lightgbm as lgb; from recops.export import convert_ranker; "
            "from onnxmltools import convert_lightgbm; "
            "from onnxmltools.convert.common.data_types import FloatTensorType as F; "
            "b = lgb.Booster(model_file=sys.argv[1]); "
            "raw = convert_lightgbm(b, target_opset=15, initial_types=[('features', F([None, 4]))]); "
            "print(','.join(o.domain for o in raw.opset_import), "
            "hashlib.sha256(convert_ranker(b, 4, 15).SerializeToString()).hexdigest())")
    # hash seeds under which CPython 3.11 puts ("ai.onnx.ml", 1) before or after ("", 8) in a small set
    runs = [subprocess.run([sys.executable, "-c", code, str(tmp_path / "ranker.txt")], check=True, text=True,
                           capture_output=True, env={**os.environ, "PYTHONHASHSEED": str(seed)}).stdout.split()
            for seed in (3, 4, 20, 21)]
    assert len({order for order, _ in runs}) == 2, runs  # the seeds do give onnxmltools both orders
    here = convert_ranker(lgb.Booster(model_file=str(tmp_path / "ranker.txt")), 4, 15)
    assert {digest for _, digest in runs} == {hashlib.sha256(here.SerializeToString()).hexdigest()}
    assert [opset.domain for opset in here.opset_import] == sorted(opset.domain for opset in here.opset_import)
