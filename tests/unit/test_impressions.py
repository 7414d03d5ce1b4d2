"""The impression log (``recops.serving.impressions``): batched durable appends, bounded memory, a reader that
survives torn and erased lines, whole batches across processes, and what a SIGKILL may cost."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from recops.serving.impressions import ImpressionLog, day_file, read_impressions, served_record


def record(i: int, *, user: str = "u1", items: list | None = None, when: float | None = None) -> dict:
    items = items if items is not None else [10 + i, 20 + i, 30 + i]
    return served_record(f"r{i}", user, "3", items, [1.0] * (len(items) - 1) + [0.25],
                         [False] * (len(items) - 1) + [True], False, None, when=when)


def test_a_flush_writes_whole_lines_that_read_back_one_row_per_shown_item(tmp_path: Path) -> None:
    log = ImpressionLog(tmp_path, flush_seconds=60)
    now = time.time()
    log.record(record(0, when=now))
    log.record(served_record("r1", "u2", "4", ["a", "b"], [1.0, None], [False, False], True, "unknown_user",
                             when=now))
    assert not day_file(tmp_path).exists()  # nothing is written on the request path
    assert log.flush() == 2 and log.pending() == 0 and log.flush() == 0
    lines = day_file(tmp_path).read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[0])["explored"] == [2]
    frame, skipped = read_impressions(tmp_path)
    assert skipped == 0 and len(frame) == 5
    first = frame[frame["impression_id"] == "r0"]
    # integer and text item ids in one window (two versions of different data): all read as text
    assert first["position"].tolist() == [0, 1, 2] and first["item_id"].tolist() == ["10", "20", "30"]
    assert first["propensity"].tolist() == [1.0, 1.0, 0.25] and first["explored"].tolist() == [False, False, True]
    second = frame[frame["impression_id"] == "r1"]
    assert second["cached"].all() and np.isnan(second["propensity"].iloc[1]) and set(second["fallback"]) == {
        "unknown_user"}
    assert set(frame["version"]) == {"3", "4"}


def test_the_reader_skips_a_torn_line_and_erased_blanks_and_keeps_the_window(tmp_path: Path) -> None:
    log = ImpressionLog(tmp_path, flush_seconds=60)
    now = time.time()
    for i in range(3):
        log.record(record(i, when=now - 100 + i * 50))
    log.flush()
    path = day_file(tmp_path)
    text = path.read_bytes()
    first_end = text.index(b"\n")
    path.write_bytes(b" " * first_end + text[first_end:] + b'{"impression_id":"r9","ti')  # forget + a torn tail
    frame, skipped = read_impressions(tmp_path)
    assert skipped == 1 and sorted(set(frame["impression_id"])) == ["r1", "r2"]
    window, _ = read_impressions(tmp_path, start=now - 60, end=now + 1)
    assert sorted(set(window["impression_id"])) == ["r1", "r2"]
    assert read_impressions(tmp_path, start=now + 10)[0].empty


def test_a_stalled_disk_drops_the_oldest_records_and_never_blocks(tmp_path: Path) -> None:
    blocked = tmp_path / "file-not-folder"
    blocked.write_text("")  # the log's folder cannot be created: every flush fails
    log = ImpressionLog(blocked, flush_seconds=60, max_buffer=5)
    for i in range(8):
        log.record(record(i))
    assert log.dropped == 3 and log.pending() == 5
    assert log.flush() == 0 and log.failed_flushes == 1 and log.pending() == 5  # kept to retry
    blocked.unlink()
    assert log.flush() == 5
    assert sorted(set(read_impressions(blocked)[0]["impression_id"])) == [f"r{i}" for i in range(3, 8)]


def test_close_writes_what_the_flusher_had_not_yet(tmp_path: Path) -> None:
    log = ImpressionLog(tmp_path, flush_seconds=0.05)
    log.start()
    for i in range(100):
        log.record(record(i))
    log.close()
    frame, _ = read_impressions(tmp_path)
    assert frame["impression_id"].nunique() == 100 and log.written == 100


WRITER = """
import sys
from pathlib import Path
from recops.serving.impressions import ImpressionLog, served_record

folder, worker, batches = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
log = ImpressionLog(folder, flush_seconds=60)
for b in range(batches):
    for i in range(50):
        log.record(served_record(f"w{worker}-{b}-{i}", f"u{worker}", "1", list(range(40)), [1.0] * 40,
                                 [False] * 40, False, None))
    assert log.flush() == 50, (log.failed_flushes, log.dropped)
"""


def test_workers_appending_at_once_never_interleave_their_lines(tmp_path: Path) -> None:
    # separate interpreters (not fork from a threaded test worker), their errors shown when one fails
    workers = [subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), str(w), "20"],
                                stderr=subprocess.PIPE, text=True) for w in range(3)]
    for worker in workers:
        _, err = worker.communicate(timeout=120)
        assert worker.returncode == 0, err[-2000:]
    frame, skipped = read_impressions(tmp_path)
    assert skipped == 0 and frame["impression_id"].nunique() == 3 * 20 * 50 and len(frame) == 3 * 20 * 50 * 40


KILLED = """
import sys, time
from pathlib import Path
from recops.serving.impressions import ImpressionLog, served_record

log = ImpressionLog(Path(sys.argv[1]), flush_seconds=float(sys.argv[2]))
log.start()
i = 0
while True:
    log.record(served_record(f"r{i}", "u", "1", [1, 2, 3], [1.0, 1.0, 1.0], [False] * 3, False, None))
    i += 1
    time.sleep(0.001)
"""


def test_a_sigkill_loses_no_written_batch_and_at_most_the_last_flush_interval(tmp_path: Path) -> None:
    flush = 0.2
    proc = subprocess.Popen([sys.executable, "-c", KILLED, str(tmp_path), str(flush)])
    time.sleep(2.5)
    os.kill(proc.pid, signal.SIGKILL)
    killed_at = time.time()
    proc.wait(10)
    frame, skipped = read_impressions(tmp_path)
    served = sorted(int(i[1:]) for i in frame["impression_id"].unique())
    assert skipped <= 1  # at most the batch the kill cut short
    assert served == list(range(len(served))) and len(served) > 100  # every written batch, whole and in order
    newest = frame["time"].max()
    # what the kill cost: the last flush interval (plus scheduling slack on a busy machine), nothing older
    assert killed_at - newest < flush + 1.0, (killed_at - newest, len(served))


@pytest.mark.parametrize("bad", [{"items": [1, 2], "propensities": [1.0]}, {"items": "x"}, [1, 2]])
def test_a_line_that_is_not_an_impression_is_skipped_and_counted(tmp_path: Path, bad) -> None:
    day_file(tmp_path).write_text(json.dumps(bad) + "\n" + json.dumps(record(2)) + "\n")
    frame, skipped = read_impressions(tmp_path)
    assert skipped == 1 and set(frame["impression_id"]) == {"r2"}
