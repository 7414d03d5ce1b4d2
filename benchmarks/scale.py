"""The pipeline on synthetic logs of growing size: wall time and peak memory of every stage, and how they grow.

    .venv/bin/python -m benchmarks.scale --rows 1000000 5000000 20000000 [--work /tmp/recops-scale]
    .venv/bin/python -m benchmarks.scale --rows 5000000 --engine dask --work /tmp/recops-scale-dask

For each size: ``recops synth`` data (generated once per size and seed, then reused), a project directory whose
params.yaml is the repository's params.yaml with ``benchmarks/scale.yaml`` laid over it, and every stage of the
pipeline run as its own process (``recops stage NAME``, what ``dvc repro`` runs), timed, with the process's peak
resident memory from ``wait4``. Prints Markdown tables for BENCHMARKS.md: seconds and peak GB per stage and size,
the growth ratio between consecutive sizes (rows ratio alongside), and, per stage, the share of its time spent in
the core library calls (implicit fit, LightGBM training, candidate scoring) as the stages report them in their
metrics. Results also go to ``<work>/scale.json``, stage by stage (``--report`` prints its tables again; a
rerun of some stages or sizes replaces their entries and keeps the others).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
STAGES = ["ingest", "validate", "split", "candidates", "features", "train_ranker", "evaluate", "export", "bundle",
          "register"]


def merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def project(work: Path, rows: int, seed: int, overrides: dict) -> Path:
    """The project directory of one size: synthetic data (made once) and its params.yaml."""
    from recops.data.synth import generate

    folder = work / f"{rows}"
    data = folder / "synth"
    if not (data / "synth.json").is_file():
        started = time.perf_counter()
        generate(data, rows, seed=seed)
        print(f"synth {rows:,} rows: {time.perf_counter() - started:.1f} s", file=sys.stderr)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params = merge(params, overrides)
    params["data"].update({"source": "file", "interactions_path": str(data / "interactions"),
                           "users_path": str(data / "users.parquet"), "items_path": str(data / "items.parquet")})
    params["paths"]["cache_dir"] = str(folder / "cache")
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    expectations = folder / params["paths"]["expectations_dir"]
    if not expectations.exists():
        expectations.symlink_to(ROOT / params["paths"]["expectations_dir"])
    return folder


def run_stage(folder: Path, name: str) -> dict:
    """One stage as its own process: wall seconds, the process's peak RSS (GB, from wait4) and its metrics."""
    import tempfile

    command = [str(Path(sys.executable).with_name("recops")), "stage", name, "--params",
               str(folder / "params.yaml"), "--quiet"]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        process = subprocess.Popen(command, cwd=folder, stdout=out, stderr=err,
                                   env={**os.environ, "GX_ANALYTICS_ENABLED": "false"})
        _, status, usage = os.wait4(process.pid, 0)  # reaped here, with this child's own resource usage
        process.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        text, errors = out.read().decode(), err.read().decode()
    if process.returncode != 0:
        raise SystemExit(f"stage {name} failed in {folder}:\n{errors[-4000:]}")
    metrics = json.loads(text[text.index("{"):]) if "{" in text else {}
    return {"seconds": seconds, "peak_gb": usage.ru_maxrss / 2**20, "metrics": metrics}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 5_000_000, 20_000_000])
    parser.add_argument("--work", type=Path, default=Path("/tmp/recops-scale"))
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--stages", nargs="+", default=STAGES)
    parser.add_argument("--report", action="store_true", help="print the tables of <work>/scale.json and stop")
    parser.add_argument("--engine", choices=["local", "dask"], default="local",
                        help="compute.engine; dask: a LocalCluster of 2 single-threaded worker processes (use "
                             "another --work folder to keep the local results apart)")
    args = parser.parse_args()
    if args.report:
        saved = json.loads((args.work / "scale.json").read_text())
        report({int(size): stages for size, stages in saved.items()})
        return
    overrides = yaml.safe_load((ROOT / "benchmarks" / "scale.yaml").read_text())
    overrides["compute"] = {"engine": args.engine, "address": None, "n_workers": 2, "threads_per_worker": 1}
    saved = args.work / "scale.json"  # every stage's result is added as soon as it is measured (a long run that
    results: dict[int, dict[str, dict]] = {}  # stops keeps what it measured; a rerun stage replaces its entry)
    if saved.is_file():
        results = {int(size): stages for size, stages in json.loads(saved.read_text()).items()}
    for rows in args.rows:
        folder = project(args.work, rows, args.seed, overrides)
        for name in args.stages:
            r = results.setdefault(rows, {})[name] = run_stage(folder, name)
            saved.write_text(json.dumps({str(k): v for k, v in sorted(results.items())}, indent=1))
            print(f"{rows:>11,} {name:13s} {r['seconds']:8.1f} s {r['peak_gb']:6.2f} GB", file=sys.stderr)
    results = {size: results[size] for size in args.rows}
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"python {platform.python_version()}\n")
    report(results)


def report(results: dict[int, dict[str, dict]]) -> None:
    sizes = sorted(results)
    print("| stage | " + " | ".join(f"{s / 1e6:g}M s | {s / 1e6:g}M GB" for s in sizes) + " |")
    print("|---|" + "---:|---:|" * len(sizes))
    stages = [name for name in STAGES if all(name in results[size] for size in sizes)]
    for name in stages:
        print(f"| {name} | " + " | ".join(f"{results[s][name]['seconds']:.1f} | {results[s][name]['peak_gb']:.2f}"
                                          for s in sizes) + " |")
    totals = {s: sum(results[s][name]["seconds"] for name in stages) for s in sizes}
    peaks = {s: max(results[s][name]["peak_gb"] for name in stages) for s in sizes}
    print("| **all** | " + " | ".join(f"**{totals[s]:.1f}** | **{peaks[s]:.2f}**" for s in sizes) + " |")
    print("\n| size | MF fits (implicit) / candidates | item-kNN fits / candidates | LightGBM / train_ranker |")
    print("|---|---:|---:|---:|")
    for size in sizes:
        cand = results[size].get("candidates")
        rank = results[size].get("train_ranker")
        cells = []
        for source in ("mf", "itemknn"):
            if cand:
                fits = sum(v for k, v in cand["metrics"].items() if k.endswith(f".{source}.fit_seconds"))
                cells.append(f"{fits:.1f} s ({fits / cand['seconds']:.0%})")
            else:
                cells.append("")
        if rank and "ranker.lightgbm_seconds" in rank["metrics"]:
            lgb = rank["metrics"]["ranker.lightgbm_seconds"]
            cells.append(f"{lgb:.1f} s ({lgb / rank['seconds']:.0%})")
        else:
            cells.append("")
        print(f"| {size / 1e6:g}M | " + " | ".join(cells) + " |")
    if len(sizes) > 1:
        print("\n| stage | " + " | ".join(f"{b / 1e6:g}M / {a / 1e6:g}M time | memory"
                                          for a, b in zip(sizes, sizes[1:])) + " |")
        print("|---|" + "---:|---:|" * (len(sizes) - 1))
        for name in [*stages, None]:
            cells = []
            for a, b in zip(sizes, sizes[1:]):
                ta = totals[a] if name is None else results[a][name]["seconds"]
                tb = totals[b] if name is None else results[b][name]["seconds"]
                ma = peaks[a] if name is None else results[a][name]["peak_gb"]
                mb = peaks[b] if name is None else results[b][name]["peak_gb"]
                cells.append(f"{tb / ta:.1f}x | {mb / ma:.1f}x")
            print(f"| {name or '**all** (rows ' + ' / '.join(f'{b / a:g}x' for a, b in zip(sizes, sizes[1:])) + ')'}"
                  f" | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
