"""ONNX export of the LightGBM ranker and the parity check against native LightGBM.

The converted model takes one float32 input ``features`` (rows x features, in the manifest's order) and returns
one score per row. Parity is checked on real candidate rows: the largest absolute score difference must stay
within ``export.max_abs_diff`` and every user's top-k order must be identical, except for swaps between items
whose native scores tie (closer than ``export.tie_tolerance``). A broken parity is an error: a model whose
served scores differ from the evaluated ones must not be registered.
"""

from __future__ import annotations

import logging

import numpy as np

from recops.errors import RecopsError
from recops.ranking.lists import top_k_lists

log = logging.getLogger(__name__)

INPUT_NAME = "features"


def convert_ranker(booster, n_features: int, target_opset: int):
    """ONNX ModelProto of a LightGBM Booster (lambdarank), via onnxmltools, with float32-exact thresholds."""
    from onnxmltools import convert_lightgbm
    from onnxmltools.convert.common.data_types import FloatTensorType

    try:
        model = convert_lightgbm(booster, name="recops_ranker", target_opset=target_opset,
                                 initial_types=[(INPUT_NAME, FloatTensorType([None, n_features]))])
    except Exception as exc:  # onnxmltools raises bare RuntimeError/ValueError for unsupported opsets or models
        raise RecopsError(f"ONNX conversion of the ranker failed at target_opset={target_opset}: {exc} "
                          "(export.target_opset in params.yaml; 15 is known to work)") from None
    round_thresholds_down(model, booster)
    # onnxmltools lists the opset domains in the order of a Python set, which string hashing randomises per
    # process: sorted, the same booster gives the same bytes in every process (and dvc.lock does not change)
    imports = sorted(model.opset_import, key=lambda opset: (opset.domain, opset.version))
    del model.opset_import[:]
    model.opset_import.extend(imports)
    return model


def _split_thresholds(booster) -> dict[tuple[int, int], list[float]]:
    """(tree, feature) -> the float64 thresholds of that tree's numerical splits on that feature."""
    out: dict[tuple[int, int], list[float]] = {}
    for tree in booster.dump_model()["tree_info"]:
        stack = [tree["tree_structure"]]
        while stack:
            node = stack.pop()
            if "split_feature" not in node:
                continue
            if node.get("decision_type") == "<=":
                out.setdefault((tree["tree_index"], node["split_feature"]), []).append(float(node["threshold"]))
            stack.extend((node["left_child"], node["right_child"]))
    return out


def round_thresholds_down(model, booster) -> int:
    """Make every ``x <= t`` split exact for float32 inputs; returns how many thresholds changed.

    LightGBM compares against float64 thresholds, ONNX TreeEnsemble against float32 ones. onnxmltools rounds to
    nearest, so when float32(t) lands above t a float32 feature value equal to float32(t) goes left in ONNX and
    right natively. For float32 x, ``x <= t`` is the same test as ``x <= the largest float32 not above t``, so
    rounding each threshold down instead makes the branch decisions identical; only the float32 sum of leaf
    values remains (differences of order 1e-6).
    """
    node = next((n for n in model.graph.node if n.op_type.startswith("TreeEnsemble")), None)
    if node is None:
        return 0
    attrs = {a.name: a for a in node.attribute}
    thresholds = _split_thresholds(booster)
    values = np.asarray(attrs["nodes_values"].floats, dtype=np.float32)
    changed = 0
    for pos, (tree, feature, mode) in enumerate(zip(attrs["nodes_treeids"].ints, attrs["nodes_featureids"].ints,
                                                    attrs["nodes_modes"].strings)):
        if mode != b"BRANCH_LEQ":
            continue
        originals = {t for t in thresholds.get((tree, feature), []) if np.float32(t) == values[pos]}
        if len(originals) != 1:
            continue  # leaf, or ambiguous (two thresholds share one float32): left as converted; parity checks it
        original = originals.pop()
        if float(values[pos]) > original:
            values[pos] = np.nextafter(values[pos], np.float32(-np.inf))
            changed += 1
    del attrs["nodes_values"].floats[:]
    attrs["nodes_values"].floats.extend(values.tolist())
    return changed


def onnx_scores(session, features: np.ndarray, batch_rows: int = 1_000_000) -> np.ndarray:
    out = np.empty(len(features), dtype=np.float32)
    for start in range(0, len(features), batch_rows):
        chunk = np.ascontiguousarray(features[start:start + batch_rows], dtype=np.float32)
        out[start:start + len(chunk)] = session.run(None, {INPUT_NAME: chunk})[0].reshape(-1)
    return out


def parity_report(users: np.ndarray, native: np.ndarray, converted: np.ndarray, k: int,
                  max_abs_diff: float, tie_tolerance: float, prefix: str = "export.parity",
                  what: str = "ONNX") -> dict[str, float]:
    """Parity metrics (keys under ``prefix``); raises RecopsError when the scores or any user's top-k order
    disagree. ``what`` names the converted model in the error (the ONNX export, the compiled forest)."""
    diff = np.abs(native.astype(np.float64) - converted.astype(np.float64))
    rows = np.arange(len(native))
    _, by_native, _ = top_k_lists(users, rows, native, k)
    _, by_onnx, _ = top_k_lists(users, rows, converted, k)
    padded_native = np.where(by_native >= 0, native[np.maximum(by_native, 0)], -np.inf)
    padded_onnx = np.where(by_onnx >= 0, native[np.maximum(by_onnx, 0)], -np.inf)
    same_rows = (by_native == by_onnx).all(axis=1)
    # Positions may differ only where the native scores at that position tie.
    with np.errstate(invalid="ignore"):  # -inf - -inf on padded slots; those compare equal below
        tie_only = (np.abs(padded_native - padded_onnx) <= tie_tolerance) | (padded_native == padded_onnx)
    order_ok = same_rows | tie_only.all(axis=1)
    report = {
        f"{prefix}.rows": float(len(native)),
        f"{prefix}.users": float(len(by_native)),
        f"{prefix}.max_abs_diff": float(diff.max(initial=0.0)),
        f"{prefix}.mean_abs_diff": float(diff.mean()) if len(diff) else 0.0,
        f"{prefix}.top{k}_identical_users_share": float(order_ok.mean()) if len(order_ok) else 1.0,
        f"{prefix}.top{k}_mismatched_users": float((~order_ok).sum()),
    }
    problems = []
    if report[f"{prefix}.max_abs_diff"] > max_abs_diff:
        problems.append(f"max |score difference| {report[f'{prefix}.max_abs_diff']:.3g} > {max_abs_diff}")
    if (~order_ok).any():
        problems.append(f"top-{k} order differs for {int((~order_ok).sum())} of {len(order_ok)} users")
    if problems:
        raise RecopsError(f"{what} parity check failed: " + "; ".join(problems) +
                          f" — the {what} model would not serve what was evaluated; nothing is registered")
    return report
