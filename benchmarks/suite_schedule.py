"""Where `make test`'s wall time goes: each module's seconds, its worker, and when it started and ended.

    PYTHONPATH=$PWD PYTEST_ADDOPTS="-p benchmarks.suite_schedule" make test    # or: CI=true bash .ci/run
    .venv/bin/python -m benchmarks.suite_schedule

As a pytest plugin (``-p benchmarks.suite_schedule``), every worker appends one JSON line per test (its id, the
worker, start and end) to ``$RECOPS_SCHEDULE_DIR/schedule-<worker>.jsonl`` (default: the system's temporary
folder). Run as a module, it prints each worker's busy time and end, and the modules in the order they started, for
BENCHMARKS.md ("The test suite's schedule"). Remove the old files before a new run.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import pytest

FOLDER = Path(os.environ.get("RECOPS_SCHEDULE_DIR", tempfile.gettempdir()))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    started = time.time()
    yield
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    with open(FOLDER / f"schedule-{worker}.jsonl", "a", encoding="utf-8") as out:
        out.write(json.dumps({"id": item.nodeid, "worker": worker, "start": started, "end": time.time()}) + "\n")


def main() -> None:
    rows = [json.loads(line) for path in sorted(FOLDER.glob("schedule-*.jsonl")) for line in path.open()]
    if not rows:
        raise SystemExit(f"no schedule-*.jsonl in {FOLDER}: run the tests with -p benchmarks.suite_schedule first")
    origin = min(r["start"] for r in rows)
    modules: dict[str, dict] = defaultdict(lambda: {"seconds": 0.0, "start": float("inf"), "end": 0.0, "tests": 0})
    for r in rows:
        m = modules[r["id"].split("::")[0]]
        m["seconds"] += r["end"] - r["start"]
        m["start"], m["end"] = min(m["start"], r["start"] - origin), max(m["end"], r["end"] - origin)
        m["worker"], m["tests"] = r["worker"], m["tests"] + 1
    for worker in sorted({r["worker"] for r in rows}):
        mine = [r for r in rows if r["worker"] == worker]
        print(f"{worker}: busy {sum(r['end'] - r['start'] for r in mine):.0f} s, "
              f"last test ended {max(r['end'] for r in mine) - origin:.0f} s in")
    print(f"all tests: {sum(r['end'] - r['start'] for r in rows):.0f} s\n")
    print("| module | worker | tests | seconds | started s | ended s |\n|---|---|---:|---:|---:|---:|")
    for name, m in sorted(modules.items(), key=lambda kv: kv[1]["start"]):
        print(f"| {name} | {m['worker']} | {m['tests']} | {m['seconds']:.1f} | {m['start']:.0f} | {m['end']:.0f} |")


if __name__ == "__main__":
    main()
