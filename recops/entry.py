"""What every entry point (CLI, DVC stage scripts, Prefect flows) does before running stages.

Kept out of the library modules on purpose: configuring logging and turning user errors into a clean exit are
the job of entry points, never of code that runs at import.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

# Tools we call phone home by default; a pipeline run on someone's data must not.
QUIET_ENV = {
    "GX_ANALYTICS_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "1",
    "DVC_NO_ANALYTICS": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",  # progress bars in logs of non-interactive runs
}


# The same numbers on every x86-64 machine: OpenBLAS and NumPy pick their kernels for the CPU they find
# (AVX-512 here, AVX2 on the next machine), and the kernels round and break sort ties differently, so the MF
# factors, the candidate lists and everything after them differed in the last bits between two machines — and a
# fresh clone's `make run` rewrote the committed dvc.lock. Pinned to the x86-64-v3 (AVX2) kernels, which every
# x86-64 server of the last ten years has, a run gives byte-identical outputs on all of them (measured:
# SkylakeX vs Haswell OpenBLAS kernels, or NumPy with vs without AVX-512, each changed all 8 candidate files).
# Set here, at import, because it only works before NumPy is first imported; every entry point (the CLI,
# pipelines/*.py) imports this module before NumPy. RECOPS_NATIVE_KERNELS=1 keeps the CPU's own kernels.
# The optional sequence source's PyTorch picks its kernels the same way (its own dispatch, and MKL for products):
# both pinned to AVX2 as well (ATEN_CPU_CAPABILITY, MKL's conditional numerical reproducibility).
REPRODUCIBLE_KERNELS = {
    "OPENBLAS_CORETYPE": "Haswell",
    "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR",
    "ATEN_CPU_CAPABILITY": "avx2",
    "MKL_CBWR": "AVX2",
}


def pin_numeric_kernels() -> None:
    """Set :data:`REPRODUCIBLE_KERNELS` (x86-64 only; an explicit setting of the caller wins)."""
    import platform

    if os.environ.get("RECOPS_NATIVE_KERNELS") == "1" or platform.machine().lower() not in ("x86_64", "amd64"):
        return
    if not _has_avx2():  # an older CPU: Haswell kernels would stop the process with an illegal instruction
        return
    if "numpy" in sys.modules:  # too late for this process; its children still get the setting
        logging.getLogger(__name__).debug("numpy already imported: kernels pinned for child processes only")
    for key, value in REPRODUCIBLE_KERNELS.items():
        os.environ.setdefault(key, value)


def _has_avx2() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.startswith("flags"):
                    flags = line.split(":", 1)[1].split()
                    return "avx2" in flags and "fma" in flags
    except OSError:
        pass
    return False


pin_numeric_kernels()


def prepare_environment(project_root: Path | None = None) -> None:
    """Environment defaults for a run: no telemetry, Prefect's home inside the project (SQLite there)."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    root = (project_root or Path.cwd()).resolve()
    os.environ.setdefault("PREFECT_HOME", str(root / ".prefect"))
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")


def configure_logging(level: int = logging.INFO) -> None:
    from recops.redaction import install_log_redaction

    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    install_log_redaction()  # URI passwords never reach a log line
    for noisy in ("alembic", "mlflow", "urllib3", "great_expectations", "numexpr", "matplotlib", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def fail(message: str, prefix: str = "recops") -> None:
    from recops.redaction import redact

    print(f"{prefix}: error: {redact(message)}", file=sys.stderr)
    raise SystemExit(1)
