"""How a served version's LightGBM ranker is scored: the compiled forest (lleaves) or onnxruntime.

A request scores ~200 candidate rows once. For that shape a forest compiled to machine code by LLVM (lleaves) is
an order of magnitude faster than onnxruntime's tree-ensemble kernel, which is itself ~1.5x faster than native
LightGBM (BENCHMARKS.md, "Ranker runtimes"). The compiled forest also computes exactly what LightGBM computes:
it compares float64 feature values against LightGBM's float64 thresholds and sums leaf values in float64, so its
scores equal native ``Booster.predict`` to rounding (~1e-15), where ONNX's float32 sum differs by ~1e-6.

The ``bundle`` stage compiles ``ranker.txt`` once (:func:`compile_ranker`), checks it against native LightGBM on
the test candidates with the ONNX export's parity rules (largest |score difference|, every user's top-k order),
and stores the object code as ``ranker.lleaves.o`` with its digest in the manifest. The object is built for the
architecture's generic CPU (no host-specific instructions), so any machine of the same target triple loads it
in milliseconds. A server whose triple or llvmlite differs from the build's compiles ``ranker.txt`` itself at
load (seconds), and every load scores the bundle's reference rows (``drift_reference.parquet``: training rows with
LightGBM's scores) before answering: a compiled forest that disagrees is not used, onnxruntime serves instead,
and the reason is logged and shown by ``/ready``.

``serving.ranker_runtime: onnx`` keeps onnxruntime (the registered ONNX model, checked at export).
"""

from __future__ import annotations

import logging
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from recops.errors import RecopsError

log = logging.getLogger(__name__)

COMPILED_FILE = "ranker.lleaves.o"
# training rows with LightGBM's scores, in the bundle: the load check here, the drift reference of `recops drift`
DRIFT_REFERENCE = "drift_reference.parquet"
GENERIC_CPU = "generic"  # portable object code: no instruction the build machine has and a server may lack
RUNTIMES = ("lleaves", "onnx")
REFERENCE_ROWS = 512  # reference rows scored at every load
# float32 features, float64 thresholds and sums on both sides: any real disagreement is far above this
LOAD_TOLERANCE = 1e-5
# LLVM's small code model (32-bit offsets within the object: ~13 % faster per request here, BENCHMARKS.md) needs
# the object's code and constants within 2 GiB; lleaves warns that very large forests crash with it. A forest
# takes well under 1 KiB of object code per leaf, so up to this many leaves stays far inside the limit; larger
# forests are compiled with the large code model.
SMALL_CODE_MODEL_LEAVES = 1_000_000


class Scorer(Protocol):
    name: str

    def predict(self, features: np.ndarray) -> np.ndarray: ...


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def host_target() -> dict[str, Any]:
    """What a compiled object depends on: LLVM's process triple and the lleaves / llvmlite that built it."""
    import llvmlite.binding as llvm

    return {"triple": llvm.get_process_triple(), "lleaves": _version("lleaves"), "llvmlite": _version("llvmlite")}


class OnnxScorer:
    """onnxruntime over the registered ONNX model (float32 thresholds rounded down at export)."""

    name = "onnx"

    def __init__(self, onnx_bytes: bytes, threads: int = 1) -> None:
        from recops.export import INPUT_NAME
        from recops.onnx_runtime import inference_session

        self.session = inference_session(onnx_bytes, threads=threads)
        self._input = self.session.get_inputs()[0].name or INPUT_NAME

    def predict(self, features: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(features, dtype=np.float32)
        return self.session.run(None, {self._input: x})[0].reshape(-1).astype(np.float32, copy=False)


class CompiledScorer:
    """The forest compiled by lleaves: float64 in, float64 sums, one thread per call (a request is one block)."""

    name = "lleaves"

    def __init__(self, model, threads: int = 1) -> None:
        self.model = model
        self.threads = max(1, int(threads))

    def predict(self, features: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(features, dtype=np.float64)
        # lleaves threads split the rows: worth it only for large blocks (batch scoring)
        jobs = self.threads if len(x) >= 20_000 else 1
        return self.model.predict(x, n_jobs=jobs).astype(np.float32)


def _lleaves_model(model_txt: Path, cache: Path | None):
    try:
        import lleaves
    except ImportError as exc:  # a core dependency; only a broken environment lacks it
        raise RecopsError(f"the compiled ranker needs lleaves ({exc}): reinstall recops (make install), or set "
                          "serving.ranker_runtime: onnx") from None
    model = lleaves.Model(model_file=str(model_txt))
    model.compile(cache=None if cache is None else str(cache), fcodemodel=code_model(model_txt),
                  target_cpu=GENERIC_CPU, target_cpu_features="")
    return model


def code_model(model_txt: Path) -> str:
    """``small`` for a forest of at most :data:`SMALL_CODE_MODEL_LEAVES` leaves (LightGBM's text model), else
    ``large``."""
    leaves = 0
    with open(model_txt, encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("num_leaves="):
                leaves += int(line.split("=", 1)[1])
    return "small" if leaves <= SMALL_CODE_MODEL_LEAVES else "large"


def compile_ranker(model_txt: Path, out: Path) -> dict[str, Any]:
    """Compile LightGBM's text model to ``out`` (object code for the generic CPU of this triple); the facts a
    server needs to decide whether it can load it. The same model gives the same bytes (no build time in them)."""
    out = Path(out)
    out.unlink(missing_ok=True)  # lleaves loads an existing cache file without looking at it
    started = time.perf_counter()
    _lleaves_model(model_txt, out)
    if not out.is_file():
        raise RecopsError(f"lleaves compiled {model_txt} but wrote no object code to {out}")
    log.info("ranker compiled by lleaves in %.1f s (%d KB of object code)", time.perf_counter() - started,
             out.stat().st_size // 1024)
    return {"file": out.name, "cpu": GENERIC_CPU, "code_model": code_model(model_txt), **host_target()}


def compiled_scorer(root: Path, manifest: dict[str, Any], threads: int = 1) -> tuple[CompiledScorer, str]:
    """The bundle's compiled forest: its object code when this machine can load it, else compiled from
    ``ranker.txt`` now; with how it was obtained (for the log and ``/ready``)."""
    info = manifest.get("compiled_ranker") or {}
    here = host_target()
    obj = root / info.get("file", COMPILED_FILE)
    same = info and obj.is_file() and all(info.get(key) == here[key] for key in ("triple", "lleaves", "llvmlite"))
    started = time.perf_counter()
    if same:
        model = _lleaves_model(root / "ranker.txt", obj)  # digest checked with the bundle's other files
        how = f"object code of the bundle ({info['triple']})"
    else:
        model = _lleaves_model(root / "ranker.txt", None)
        built = ", ".join(f"{k} {info.get(k)}" for k in ("triple", "lleaves", "llvmlite")) if info else "none"
        how = (f"compiled at load in {time.perf_counter() - started:.1f} s (the bundle's object code was built "
               f"for {built}; this machine: {here['triple']}, lleaves {here['lleaves']}, llvmlite {here['llvmlite']})")
    return CompiledScorer(model, threads), how


def reference_rows(root: Path, feature_names: list[str],
                   rows: int = REFERENCE_ROWS) -> tuple[np.ndarray, np.ndarray] | None:
    """The first ``rows`` reference rows of the bundle (features, native LightGBM score), or None."""
    import pyarrow.parquet as pq

    path = root / DRIFT_REFERENCE
    if not path.is_file():
        return None
    table = pq.ParquetFile(path).read_row_group(0, columns=[*feature_names, "score"]).slice(0, rows).to_pandas()
    return table[feature_names].to_numpy(np.float32), table["score"].to_numpy(np.float64)


def load_scorer(root: Path, manifest: dict[str, Any], onnx_bytes: bytes, runtime: str,
                threads: int = 1) -> tuple[Scorer, str]:
    """The scorer ``serving.ranker_runtime`` asks for, checked on the bundle's reference rows; onnxruntime when the
    compiled forest cannot be had or disagrees (logged). Returns the scorer and a line on how it was chosen."""
    if runtime not in RUNTIMES:
        raise RecopsError(f"serving.ranker_runtime {runtime!r} is not one of {', '.join(RUNTIMES)}")
    if runtime == "onnx":
        return OnnxScorer(onnx_bytes, threads), "onnxruntime (serving.ranker_runtime: onnx)"
    try:
        scorer, how = compiled_scorer(root, manifest, threads)
        reference = reference_rows(root, list(manifest["feature_names"]))
        if reference is not None:
            features, native = reference
            diff = float(np.abs(scorer.predict(features).astype(np.float64) - native).max(initial=0.0))
            if not diff <= LOAD_TOLERANCE:
                raise RecopsError(f"the compiled forest differs from LightGBM by {diff:.3g} on the bundle's "
                                  f"{len(native)} reference rows (tolerance {LOAD_TOLERANCE})")
            how += f"; max |score - LightGBM| {diff:.2g} on {len(native)} reference rows"
        return scorer, "lleaves: " + how
    except Exception as exc:  # noqa: BLE001 - any failure of the optional fast path falls back to the checked ONNX
        log.error("compiled ranker unavailable, serving with onnxruntime: %s", exc)
        return OnnxScorer(onnx_bytes, threads), f"onnxruntime (the compiled forest was refused: {exc})"
