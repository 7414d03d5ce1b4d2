"""ONNX conversion of the ranker and parity checks (sessions are opened by recops.onnx_runtime)."""

from recops.export.onnx_export import INPUT_NAME, convert_ranker, onnx_scores, parity_report

__all__ = ["INPUT_NAME", "convert_ranker", "onnx_scores", "parity_report"]
