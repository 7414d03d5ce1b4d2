"""ONNX conversion of the ranker and parity checks (the only place besides serving that uses onnx/onnxruntime)."""

from recops.export.onnx_export import INPUT_NAME, convert_ranker, inference_session, onnx_scores, parity_report

__all__ = ["INPUT_NAME", "convert_ranker", "inference_session", "onnx_scores", "parity_report"]
