"""Throughput of `recops serve` under an independent load generator (wrk), live scoring forced, by worker count.

    .venv/bin/python -m benchmarks.serving_load [--params params.yaml] [--seconds 30] [--connections 8]
                                                [--workers 1 2]

Run after `make run` (it serves the local bundle, models/serving). For each worker count it starts
`recops serve --bundle models/serving --workers N` on a free loopback port and runs, in the same run:

1. ``/health`` (a trivial endpoint of the same app: the HTTP stack's own ceiling on this machine), then
2. ``GET /recommendations/<user>?k=10&request_id=...`` for users drawn round-robin from the bundle, each request with
   a fresh request id, so that no answer comes from the cache (retrieval, features, ONNX ranker, rules, reasons
   every time),

each for ``--seconds`` with ``--connections`` connections (wrk, 2 threads, on the same 2 cores as the server), and
prints a Markdown table for BENCHMARKS.md: requests/s, p50 / p99 (wrk's), errors, the live / trivial ratio, and
the server's memory (RSS and PSS summed over its processes: PSS counts the shared bundle pages once).
Needs Debian's ``wrk`` (apt-get install -y wrk).

``--projects A B [--rounds 3]`` compares two (or more) project folders instead: each folder's own recops code
(the server runs with the folder as its working directory, so ``A/recops`` is imported: a ``git worktree`` of the
baseline commit, with ``models``, ``mlflow.db`` and ``mlartifacts`` linked from a trained project) serving its own
``models/serving``, in alternating order round by round (A B, B A, ...), the live row only, ``--workers`` (the
first count) workers each; a table of every round and the ratio of each folder's requests/s to the first's.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil

LUA = Path(__file__).with_name("wrk_recommendations.lua")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def memory_mb(pid: int) -> tuple[float, float]:
    """(RSS, PSS) in MB summed over a process and its children."""
    procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    rss = pss = 0.0
    for proc in procs:
        try:
            info = proc.memory_full_info()
        except psutil.Error:
            continue
        rss += info.rss / 2**20
        pss += getattr(info, "pss", info.rss) / 2**20
    return rss, pss


def wrk(url: str, seconds: float, connections: int, script: Path | None, users: Path) -> dict:
    cmd = ["wrk", "-t2", f"-c{connections}", f"-d{seconds:.0f}s", "--latency"]
    if script is not None:
        cmd += ["-s", str(script)]
    else:  # the same done() report for the trivial endpoint
        cmd += ["-s", str(LUA.with_name("wrk_report.lua"))]
    out = subprocess.run(cmd + [url], capture_output=True, text=True, env={**os.environ, "WRK_USERS": str(users)},
                         check=True).stdout
    line = next(x for x in out.splitlines() if x.startswith("JSON "))
    return json.loads(line[5:])


def serve(params: Path, workers: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "recops_cli", "serve", "--params", str(params), "--bundle",
                             "models/serving", "--port", str(port), "--workers", str(workers), "-q"],
                            cwd=params.parent, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                            start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        try:
            if httpx.get(f"{base}/ready", timeout=2).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("recops serve did not become ready")
        time.sleep(0.3)


@contextlib.contextmanager
def serving(params: Path, workers: int) -> Iterator[tuple[subprocess.Popen, str]]:
    """:func:`serve`, stopped on exit (SIGINT to its process group, SIGKILL after 30 s)."""
    proc, base = serve(params, workers)
    try:
        yield proc, base
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def errors(row: dict) -> int:
    """wrk's failed requests of a row: bad status, connect, timeout and read errors."""
    return sum(v for k, v in row.items() if k.startswith("errors"))


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its children so far."""
    total = 0.0
    for proc in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
        try:
            times = proc.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


def compare(projects: list[Path], rounds: int, seconds: float, connections: int, workers: int) -> None:
    """Live requests/s, latency and the server's CPU time per request of each project folder's server, in
    alternating order round by round. The CPU time per request is what a request costs the server whatever else
    runs on the machine; requests/s and latency also move with the machine's other load."""
    import pandas as pd

    projects = [p.resolve() for p in projects]
    ids = pd.read_parquet(projects[0] / "models" / "serving" / "ids_users.parquet")["id"].astype(str)
    rates: dict[Path, list[float]] = {p: [] for p in projects}
    costs: dict[Path, list[float]] = {p: [] for p in projects}
    with tempfile.TemporaryDirectory() as tmp:
        users = Path(tmp) / "users.txt"
        users.write_text("\n".join(ids) + "\n", encoding="utf-8")
        print(f"machine: {os.cpu_count()} cores; wrk -t2 -c{connections}, {seconds:.0f} s per round, {workers} "
              f"workers, on the same cores as the server; live scoring (a request id per request)\n")
        print("| round | project | requests/s | p50 ms | p99 ms | errors | server CPU ms / request |\n"
              "|---:|---|---:|---:|---:|---:|---:|")
        for round_ in range(rounds):
            for project in projects if round_ % 2 == 0 else projects[::-1]:
                with serving(project / "params.yaml", workers) as (proc, base):
                    wrk(f"{base}/recommendations/1", 3, connections, LUA, users)  # warm-up
                    before = cpu_seconds(proc.pid)
                    row = wrk(base, seconds, connections, LUA, users)
                    cost = (cpu_seconds(proc.pid) - before) * 1000 / max(row["requests"], 1)
                rate = row["requests"] / row["seconds"]
                rates[project].append(rate)
                costs[project].append(cost)
                print(f"| {round_ + 1} | {project} | {rate:.0f} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} | "
                      f"{errors(row)} | {cost:.3f} |", flush=True)
    first, first_cost = sum(rates[projects[0]]) / rounds, sum(costs[projects[0]]) / rounds
    for project in projects[1:]:
        print(f"\n{project} / {projects[0]} (means over {rounds} rounds): {sum(rates[project]) / rounds / first:.3f} "
              f"x the requests/s, {sum(costs[project]) / rounds / first_cost:.3f} x the server CPU per request")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--projects", type=Path, nargs="+", help="project folders to compare, round by round")
    parser.add_argument("--rounds", type=int, default=3, help="with --projects: rounds of each folder")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install -y wrk")
    if args.projects:
        compare(args.projects, args.rounds, args.seconds, args.connections, args.workers[0])
        return
    params = Path(args.params).resolve()
    import pandas as pd

    ids = pd.read_parquet(params.parent / "models" / "serving" / "ids_users.parquet")["id"].astype(str)
    with tempfile.TemporaryDirectory() as tmp:
        users = Path(tmp) / "users.txt"
        users.write_text("\n".join(ids) + "\n", encoding="utf-8")
        print(f"machine: {os.cpu_count()} cores; wrk -t2 -c{args.connections}, {args.seconds:.0f} s per row, on "
              f"the same cores as the server; {len(ids)} users, k=10, live scoring (a request id per request)\n")
        print("| workers | endpoint | requests/s | p50 ms | p99 ms | errors | live / trivial | RSS MB | PSS MB |")
        print("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
        for workers in args.workers:
            with serving(params, workers) as (proc, base):
                wrk(f"{base}/recommendations/1", 3, args.connections, LUA, users)  # warm-up
                trivial = wrk(f"{base}/health", args.seconds, args.connections, None, users)
                live = wrk(base, args.seconds, args.connections, LUA, users)
                rss, pss = memory_mb(proc.pid)
                for name, row in (("/health (trivial)", trivial), ("/recommendations (live)", live)):
                    rate = row["requests"] / row["seconds"]
                    ratio = f"{live['requests'] / trivial['requests']:.2f}" if row is live else ""
                    print(f"| {workers} | {name} | {rate:.0f} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} | "
                          f"{errors(row)} | {ratio} | {rss:.0f} | {pss:.0f} |")


if __name__ == "__main__":
    main()
