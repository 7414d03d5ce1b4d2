"""A user's predefined global split against ``split.method: global_time`` on the same cut.

    .venv/bin/python -m benchmarks.predefined_split [--params params.yaml]

Runs in a scratch copy of the project (the prepared interactions get a ``split`` column there, nothing of the
project changes): the stages split -> evaluate, once with ``split.method: global_time``, once with
``predefined`` and the global-time labels written as the split column (what a user who cut the log by date
gives), and once more with ``predefined`` and ``ranker.holdout: per_user`` (how recops trained the ranker on a
predefined split before the holdout followed the split's time structure). Prints the test metrics of each.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

KEYS = ("test.ranker.ndcg@10", "test.ranker.recall@20", "test.ranker.users", "test.recent_popularity.ndcg@10",
        "ranker.label_folds")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    root = Path(args.params).resolve().parent
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=root, capture_output=True,
                           text=True, check=True).stdout.split()
    with tempfile.TemporaryDirectory(prefix="recops-predefined-") as scratch:
        for rel in files:
            if (root / rel).is_file():
                (Path(scratch) / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(root / rel, Path(scratch) / rel)
        code = f"from benchmarks.predefined_split import measure; measure({str(Path(scratch) / 'params.yaml')!r})"
        return subprocess.run([sys.executable, "-c", code], cwd=scratch).returncode


def measure(params_path: str) -> None:
    from recops import steps
    from recops.io import write_parquet
    from recops.workspace import read_parquet
    from recops.columns import Columns
    from recops.config import load_settings
    from recops.entry import configure_logging
    from recops.split import global_time_labels

    configure_logging(30)
    settings = load_settings(params_path)
    steps.ingest(settings)
    path = settings.path("interactions")
    frame = read_parquet(path)
    out = {}
    for name, method, holdout in (("global_time", "global_time", "auto"), ("predefined", "predefined", "auto"),
                                  ("predefined, per-user labels (before)", "predefined", "per_user")):
        if method == "predefined" and Columns.SPLIT not in frame.columns:
            frame[Columns.SPLIT] = global_time_labels(frame, settings.split.valid_fraction,
                                                      settings.split.test_fraction)
            write_parquet(frame, path)
        run = settings.model_copy(update={"split": settings.split.model_copy(update={"method": method}),
                                          "ranker": settings.ranker.model_copy(update={"holdout": holdout})})
        metrics: dict[str, float] = {}
        for stage in ("split", "candidates", "features", "train_ranker", "evaluate"):
            metrics.update(steps.STAGES[stage](run))
        out[name] = {key: metrics.get(key) for key in KEYS}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    sys.exit(main())
