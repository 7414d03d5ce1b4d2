"""Where each stage's time goes: recops' own code against the libraries it calls.

    .venv/bin/python -m benchmarks.profile_stages /tmp/recops-scale/5000000 [--stages candidates features ...]

Runs each stage in this process under cProfile, in a project folder made by ``benchmarks.scale`` (its data and
params.yaml; run that first), and sums the profiler's own time (``tottime``) of every function by where the
function is defined: recops' modules, or a library (numpy, scipy, pandas, pyarrow, implicit, lightgbm, ...;
compiled functions such as ``numpy.ndarray.sort`` or scipy's sparse kernels count for their library), or
Python's standard library and builtins. A numpy expression written inline in a recops function (``a / b``)
runs without a function call, so it counts for recops: the recops share is an upper bound of recops' own
overhead. cProfile slows Python-level calls, so the shares, not the absolute times, are the result.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import re
import sys
import time
from collections import defaultdict
from pathlib import Path

from benchmarks.scale import STAGES

LIBRARIES = ("numpy", "scipy", "pandas", "pyarrow", "implicit", "lightgbm", "onnxruntime", "onnxmltools", "onnx",
             "great_expectations", "mlflow", "sqlalchemy", "dask", "distributed", "sklearn", "threadpoolctl",
             "yaml", "pydantic")


def owner(filename: str, function: str) -> str:
    """Who a profiled function belongs to: "recops", a library name, or "python"."""
    if filename == "~":  # a builtin or a compiled function: named by its module or type
        for library in LIBRARIES:
            if re.search(rf"\b{library}\b", function):
                return library
        return "python"
    path = Path(filename).as_posix()
    match = re.search(r"site-packages/([A-Za-z0-9_]+)", path)
    if match:
        return match.group(1)
    if "/recops/" in path:
        return "recops"
    return "python"


def profile_stage(settings, name: str) -> tuple[float, dict[str, float]]:
    from recops import steps

    profiler = cProfile.Profile()
    started = time.perf_counter()
    profiler.runcall(steps.STAGES[name], settings)
    wall = time.perf_counter() - started
    shares: dict[str, float] = defaultdict(float)
    for (filename, _, function), (_, _, tottime, _, _) in pstats.Stats(profiler).stats.items():
        shares[owner(filename, function)] += tottime
    return wall, dict(shares)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("project", type=Path,
                        help="a project folder of benchmarks.scale (e.g. /tmp/recops-scale/5000000)")
    parser.add_argument("--stages", nargs="+", default=STAGES)
    args = parser.parse_args()
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    os.chdir(args.project)
    from recops.config import load_settings

    settings = load_settings(args.project / "params.yaml")
    print("| stage | profiled s | recops' own code | libraries | largest libraries |")
    print("|---|---:|---:|---:|---|")
    for name in args.stages:
        wall, shares = profile_stage(settings, name)
        total = sum(shares.values()) or 1.0
        own = shares.get("recops", 0.0) / total
        libraries = sorted(((v, k) for k, v in shares.items() if k not in ("recops", "python")), reverse=True)
        library_share = sum(v for v, _ in libraries) / total
        top = ", ".join(f"{k} {v / total:.0%}" for v, k in libraries[:3])
        python = shares.get("python", 0.0) / total
        print(f"| {name} | {wall:.1f} | {own:.0%} | {library_share:.0%} | {top}; Python {python:.0%} |", flush=True)
        print(f"{name}: {wall:.1f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
