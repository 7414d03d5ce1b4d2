"""What the ``sequence`` source costs as the log grows: training time per epoch, encoding, ONNX export and one
live re-encode, on synthetic logs of 1M and 5M interactions, for the settings that bound the cost.

    .venv/bin/python -m benchmarks.sequence_scale --rows 1000000 5000000 [--work /tmp/recops-scale] [--epochs 1]
                                                  [--variants sampled full no-dropout last-window]

Needs the extra (`make install-sequence`). For each size the ``recops synth`` log (``<work>/<rows>/synth``, the
same data ``benchmarks.scale`` makes and reuses) is the history of one fold; each variant runs as its own process
on one thread, with its peak resident memory from ``wait4``:

- ``sampled``: params.yaml's model (length 50, embedding 64, 2 heads, 2 layers, dropout 0.2) with a sampled
  softmax over 256 shared negatives, every interaction a target (``sequence_max_windows`` null);
- ``full``: the same with the full softmax over the catalogue (params.yaml's default on ML-100k);
- ``no-dropout``: ``sampled`` with dropout 0 (what the dropout masks cost);
- ``last-window``: ``sampled`` with ``sequence_max_windows: 1`` (each user's most recent window only).

``--epochs`` epochs are trained and timed (per epoch = total / epochs; a run of ``sequence_epochs`` epochs takes
that many times one epoch, the windows being the same every epoch). Then every user is encoded with PyTorch,
the encoder is exported to ONNX and every user encoded again with onnxruntime (the bundle's parity check), and
one user's live re-encode (one row through onnxruntime) is timed 2,000 times. Prints a Markdown table for
BENCHMARKS.md ("The sequence source at scale").
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

VARIANTS = {
    "sampled": {"sequence_negatives": 256},
    "full": {"sequence_negatives": None},
    "no-dropout": {"sequence_negatives": 256, "sequence_dropout": 0.0},
    "last-window": {"sequence_negatives": 256, "sequence_max_windows": 1},
}


def synth_folder(work: Path, rows: int, seed: int) -> Path:
    from recops.data.synth import generate

    data = work / f"{rows}" / "synth"
    if not (data / "synth.json").is_file():
        started = time.perf_counter()
        generate(data, rows, seed=seed)
        print(f"synth {rows:,} rows: {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return data


def reencode_ms(session, rows: np.ndarray) -> tuple[float, float]:
    """p50 and p99 (ms) of one live re-encode: each row of ``rows`` (a user's last item codes) run alone through
    the ONNX encoder ``session``, as ``add_event`` does."""
    times = np.empty(len(rows))
    for i, row in enumerate(rows):
        started = time.perf_counter()
        session.run(["encoding"], {"codes": row[None]})
        times[i] = time.perf_counter() - started
    p50, p99 = (float(np.percentile(times, q) * 1000) for q in (50, 99))
    return p50, p99


def one(data: Path, variant: str, epochs: int, seed: int) -> dict:
    """One variant on one log, in this process (run by ``main`` as a child)."""
    import pandas as pd
    from threadpoolctl import threadpool_limits

    from recops.candidates import sequence_model
    from recops.candidates.sequence import chronological, last_codes
    from recops.columns import Columns
    from recops.config import load_settings
    from recops.onnx_runtime import inference_session

    settings = load_settings(Path(__file__).resolve().parent.parent / "params.yaml")
    config = settings.candidates.model_copy(update={**VARIANTS[variant], "sequence_epochs": epochs})
    started = time.perf_counter()
    frame = pd.read_parquet(data / "interactions", columns=[Columns.USER_ID, Columns.ITEM_ID, Columns.TIMESTAMP])
    users, user_ids = pd.factorize(frame[Columns.USER_ID])
    items, item_ids = pd.factorize(frame[Columns.ITEM_ID])
    frame = pd.DataFrame({Columns.USER: users.astype(np.int32), Columns.ITEM: items.astype(np.int32),
                          Columns.TIMESTAMP: frame[Columns.TIMESTAMP].to_numpy()})
    n_users, n_items = len(user_ids), len(item_ids)
    indptr, sequences = chronological(frame, n_users)
    read_seconds = time.perf_counter() - started
    out = {"rows": len(frame), "users": n_users, "items": n_items, "variant": variant, "epochs": epochs,
           "read_s": read_seconds}
    with threadpool_limits(limits=1):
        trained = sequence_model.train(indptr, sequences, n_items, config, seed, threads=1)
        out.update(windows=trained.windows, train_s=trained.seconds, epoch_s=trained.seconds / epochs,
                   loss=trained.final_loss)
        codes = last_codes(indptr, sequences, config.sequence_length)
        started = time.perf_counter()
        native = sequence_model.encode(trained.model, codes, threads=1)
        out["encode_torch_s"] = time.perf_counter() - started
        started = time.perf_counter()
        exported = sequence_model.export_onnx(trained.model, config.sequence_length)
        out["export_s"] = time.perf_counter() - started
        session = inference_session(exported, 1)
        started = time.perf_counter()
        converted = np.concatenate([session.run(["encoding"], {"codes": codes[s:s + 1024]})[0]
                                    for s in range(0, len(codes), 1024)])
        out["encode_onnx_s"] = time.perf_counter() - started
        out["parity"] = float(np.abs(converted - native).max())
        out["reencode_p50_ms"], out["reencode_p99_ms"] = reencode_ms(
            session, codes[np.random.default_rng(seed).integers(0, n_users, 2000)])
        out["encoder_kb"] = len(exported) / 1024
    return out


def run_child(data: Path, variant: str, epochs: int, seed: int) -> dict:
    command = [sys.executable, "-m", "benchmarks.sequence_scale", "--child", str(data), variant, str(epochs),
               str(seed)]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        process = subprocess.Popen(command, cwd=Path(__file__).resolve().parent.parent, stdout=out, stderr=err)
        _, status, usage = os.wait4(process.pid, 0)
        out.seek(0)
        err.seek(0)
        text, errors = out.read().decode(), err.read().decode()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{variant} on {data} failed:\n{errors[-4000:]}")
    result = json.loads(text.strip().splitlines()[-1])
    result["peak_gb"] = usage.ru_maxrss / 2**20
    return result


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        data, variant, epochs, seed = sys.argv[2:6]
        print(json.dumps(one(Path(data), variant, int(epochs), int(seed))))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 5_000_000])
    parser.add_argument("--work", type=Path, default=Path("/tmp/recops-scale"))
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    results = []
    for rows in args.rows:
        data = synth_folder(args.work, rows, args.seed)
        for variant in args.variants:
            result = run_child(data, variant, args.epochs, args.seed)
            print(json.dumps(result), file=sys.stderr)
            results.append(result)
    (args.work / "sequence_scale.json").write_text(json.dumps(results, indent=1))
    print(f"{platform.machine()}, {os.cpu_count()} cores, one thread per process; {args.epochs} epoch(s) timed\n")
    print("| rows | users | items | variant | windows | s per epoch | 30 epochs (min) | encode all, torch s | "
          "export s | encode all, onnx s | re-encode p50 / p99 ms | peak GB |")
    print("|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---|---:|")
    for r in results:
        print(f"| {r['rows']:,} | {r['users']:,} | {r['items']:,} | {r['variant']} | {r['windows']:,} | "
              f"{r['epoch_s']:.1f} | {r['epoch_s'] * 30 / 60:.0f} | {r['encode_torch_s']:.1f} | {r['export_s']:.1f} | "
              f"{r['encode_onnx_s']:.1f} | {r['reencode_p50_ms']:.2f} / {r['reencode_p99_ms']:.2f} | "
              f"{r['peak_gb']:.2f} |")


if __name__ == "__main__":
    main()
