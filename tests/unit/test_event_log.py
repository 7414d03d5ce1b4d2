"""The serving event log shared by worker processes: durable appends, whole lines, every worker sees every event."""

from __future__ import annotations

import json
import multiprocessing
import time

from recops.serving.event_log import SharedEventLog, day_file


def event(user: int, item: int, ts: float) -> dict:
    return {"user_id": str(user), "item_id": str(item), "timestamp": ts, "weight": 1.0, "received_at": ts}


def _append_many(folder: str, worker: int, n: int) -> None:
    log = SharedEventLog(folder)
    for i in range(n):
        log.append([event(worker, i, 1.6e9 + i), event(worker, i + 1, 1.6e9 + i)])


def test_a_worker_reads_what_the_others_appended_and_not_its_own_lines(tmp_path):
    mine, other = SharedEventLog(tmp_path), SharedEventLog(tmp_path)
    mine.start_tailing()
    other.start_tailing()
    mine.append([event(1, 10, 1.6e9)])
    other.append([event(2, 20, 1.6e9), event(3, 30, 1.6e9)])
    assert mine.has_news()
    assert [e["user_id"] for e in mine.read_new()] == ["2", "3"]
    assert not mine.has_news() and mine.read_new() == []
    assert [e["user_id"] for e in other.read_new()] == ["1"]
    mine.append([event(4, 40, 1.6e9)])
    assert other.has_news() and [e["user_id"] for e in other.read_new()] == ["4"]
    assert mine.read_new() == []  # its own line, passed


def test_a_started_worker_replays_every_line_already_in_the_log(tmp_path):
    SharedEventLog(tmp_path).append([event(u, u, 1.6e9) for u in range(5)])
    late = SharedEventLog(tmp_path)
    late.start_tailing()
    assert [e["user_id"] for e in late.read_new()] == [str(u) for u in range(5)]


def test_concurrent_appends_from_processes_are_whole_lines_and_none_is_lost(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_append_many, args=(str(tmp_path), w, 200)) for w in range(3)]
    reader = SharedEventLog(tmp_path)
    reader.start_tailing()
    for proc in procs:
        proc.start()
    seen = []
    while any(p.is_alive() for p in procs):
        seen += reader.read_new()
        time.sleep(0.001)
    for proc in procs:
        proc.join()
        assert proc.exitcode == 0
    seen += reader.read_new()
    lines = day_file(tmp_path).read_text().splitlines()
    assert len(lines) == 3 * 200 * 2 and all(json.loads(line) for line in lines)
    assert len(seen) == len(lines) and reader.unreadable == 0
    for worker in range(3):  # each writer's order is kept
        items = [int(e["item_id"]) for e in seen if e["user_id"] == str(worker)]
        assert items == [i + d for i in range(200) for d in (0, 1)]


def test_a_line_being_written_is_read_only_once_whole(tmp_path):
    reader = SharedEventLog(tmp_path)
    reader.start_tailing()
    path = day_file(tmp_path)
    line = json.dumps(event(1, 2, 1.6e9)) + "\n"
    path.write_text(line[:10])
    assert reader.read_new() == []
    with path.open("a") as fh:
        fh.write(line[10:])
    assert [e["item_id"] for e in reader.read_new()] == ["2"]


def test_an_unreadable_line_is_skipped_and_counted_and_the_rest_applied(tmp_path):
    path = day_file(tmp_path)
    tmp_path.mkdir(exist_ok=True)
    path.write_text('{"user_id": 1, "item_id": 2, "timestamp": Infinity}\n[[[\n' + json.dumps(event(3, 4, 1.6e9))
                    + "\n")
    reader = SharedEventLog(tmp_path)
    reader.start_tailing()
    assert [e["user_id"] for e in reader.read_new()] == ["3"] and reader.unreadable == 2


def test_a_file_taken_in_by_a_snapshot_and_started_again_is_read_from_its_start(tmp_path):
    log, reader = SharedEventLog(tmp_path), SharedEventLog(tmp_path)
    reader.start_tailing()
    log.append([event(1, 1, 1.6e9), event(2, 2, 1.6e9)])
    assert len(reader.read_new()) == 2
    path = day_file(tmp_path)
    (tmp_path / "ingested").mkdir()
    path.rename(tmp_path / "ingested" / path.name)  # what a snapshot does
    assert reader.read_new() == []
    log.append([event(3, 3, 1.6e9)])  # a new file of the same name
    assert [e["user_id"] for e in reader.read_new()] == ["3"]


def test_a_writer_does_not_skip_another_workers_line_at_an_offset_it_wrote_in_a_file_since_taken_in(tmp_path):
    mine, other = SharedEventLog(tmp_path), SharedEventLog(tmp_path)
    mine.append([event(1, 1, 1.6e9)])
    path = day_file(tmp_path)
    (tmp_path / "ingested").mkdir()
    path.rename(tmp_path / "ingested" / path.name)
    other.append([event(2, 2, 1.6e9)])  # offset 0 of the new file: where `mine` once wrote
    mine.append([event(3, 3, 1.6e9)])
    assert [e["user_id"] for e in mine.read_new()] == ["2"]


def test_a_worker_that_read_a_file_before_writing_to_it_appends_and_skips_its_own_lines(tmp_path):
    other, mine = SharedEventLog(tmp_path), SharedEventLog(tmp_path)
    other.append([event(1, 1, 1.6e9)])
    mine.start_tailing()
    assert len(mine.read_new()) == 1
    mine.append([event(2, 2, 1.6e9)])
    other.append([event(3, 3, 1.6e9)])
    assert [e["user_id"] for e in mine.read_new()] == ["3"]
