"""Wall time of each pipeline stage on the configured data (default MovieLens-100k), in one process.

    .venv/bin/python -m benchmarks.stages [--params params.yaml] [--repeat 1]

Runs recops.steps.<stage> in order (what `make run` runs inside its Prefect tasks), prints a Markdown table with
each stage's wall time and share of the total, and the orchestration overheads measured in the same process:
the Prefect flow around the same stages and `dvc commit`. Paste the table into BENCHMARKS.md with the command.
"""

from __future__ import annotations

import argparse
import logging
import platform
import subprocess
import sys
import time
from pathlib import Path

from recops.entry import configure_logging, prepare_environment


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--repeat", type=int, default=1, help="runs of the stage sequence; the best is kept")
    args = parser.parse_args()
    prepare_environment(Path(args.params).resolve().parent)
    configure_logging(logging.WARNING)
    from recops import steps
    from recops.config import load_settings

    settings = load_settings(args.params)
    best: dict[str, float] = {}
    for _ in range(args.repeat):
        for name, stage in steps.STAGES.items():
            started = time.perf_counter()
            stage(settings)
            elapsed = time.perf_counter() - started
            best[name] = min(elapsed, best.get(name, float("inf")))
    total = sum(best.values())

    from flows.training import training_flow

    started = time.perf_counter()
    training_flow(params_path=str(Path(args.params).resolve()), dvc=False)
    flow_total = time.perf_counter() - started
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "dvc", "commit", "--force", "--quiet"], cwd=settings.root, check=True)
    dvc_commit = time.perf_counter() - started

    print(f"machine: {platform.processor() or platform.machine()}, threads={settings.threads}, "
          f"python {platform.python_version()}\n")
    print("| stage | wall time (s) | share |\n|---|---:|---:|")
    for name, seconds in best.items():
        print(f"| {name} | {seconds:.2f} | {seconds / total:.0%} |")
    print(f"| **all stages, plain calls** | **{total:.2f}** | 100% |")
    print(f"| Prefect flow, same stages (first run in process, includes server start) | {flow_total:.2f} "
          f"| {flow_total / total:.2f}x |")
    print(f"| dvc commit of all outputs | {dvc_commit:.2f} | |")


if __name__ == "__main__":
    main()
