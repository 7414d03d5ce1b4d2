"""One way to open an ONNX model for inference: onnxruntime on the CPU, a given number of intra-op threads, one
inter-op thread, warnings only. The ranker's export check, the served ranker, the A/B rebuild and the sequence
source's encoder all open their sessions here (a module of the lowest layer, so that every layer can)."""

from __future__ import annotations


def inference_session(model_bytes: bytes, threads: int = 1):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(model_bytes, sess_options=options, providers=["CPUExecutionProvider"])
