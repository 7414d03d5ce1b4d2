"""``recops forget`` of one user against a full retrain (``recops run``), on a synthetic log.

    .venv/bin/python -m benchmarks.forget --rows 1000000 [--work /tmp/recops-forget]

The project is the scale benchmark's (``benchmarks.scale.project``: ``recops synth`` data, the repository's
params.yaml with ``benchmarks/scale.yaml`` laid over it), made a DVC project (``dvc init --no-scm``) so that the
training flow records its outputs as ``make run`` does. It is trained once (not timed: it builds the first
version), then, in the same conditions, timed: ``recops run`` (a full retrain: the baseline) and ``recops forget``
of one user (erasure + the same retrain + promotion + deletion of the earlier versions' artifacts + ``dvc gc``).
Prints a Markdown row for BENCHMARKS.md: both wall times and their ratio.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import yaml

from benchmarks.scale import ROOT, project

RECOPS = str(Path(sys.executable).with_name("recops"))


def timed(folder: Path, *args: str) -> float:
    started = time.perf_counter()
    proc = subprocess.run([RECOPS, *args, "--params", str(folder / "params.yaml"), "-q"], cwd=folder,
                          capture_output=True, text=True, env={**os.environ, "GX_ANALYTICS_ENABLED": "false"})
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"recops {' '.join(args)} failed in {folder}:\n{proc.stderr[-4000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--work", type=Path, default=Path("/tmp/recops-forget"))
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    overrides = yaml.safe_load((ROOT / "benchmarks" / "scale.yaml").read_text())
    overrides["registry"] = {"bootstrap_champion": True}
    folder = project(args.work, args.rows, args.seed, overrides)
    if not (folder / ".dvc").is_dir():
        subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=folder, check=True)
        (folder / "dvc.yaml").symlink_to(ROOT / "dvc.yaml")
    (folder / "data" / "external").mkdir(parents=True, exist_ok=True)  # a dependency of ingest in dvc.yaml
    for name in ("pipelines", "recops"):  # what dvc.yaml's stages name as dependencies
        if not (folder / name).exists():
            (folder / name).symlink_to(ROOT / name)
    user = str(pd.read_parquet(folder / "synth" / "interactions", columns=["user_id"])["user_id"].iloc[0])
    first = timed(folder, "run", "--no-push", "--no-backtest")
    retrain = timed(folder, "run", "--no-push", "--no-backtest")
    forget = timed(folder, "forget", user, "--no-push", "--reason", "benchmark")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"python {platform.python_version()}; first training {first:.1f} s (not compared)\n")
    print("| rows | full retrain (`recops run`) | `recops forget` of one user | forget / retrain |")
    print("|---:|---:|---:|---:|")
    print(f"| {args.rows:,} | {retrain:.1f} s | {forget:.1f} s | {forget / retrain:.2f}x |")


if __name__ == "__main__":
    main()
