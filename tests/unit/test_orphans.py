"""What a killed command leaves behind is recognised and cleaned up at the next start, and nothing that still has
a live owner is touched: process identity (recops.processes), temporary-server records (recops.orchestration),
MLflow runs left RUNNING (recops.registry.orphans). Real processes killed with SIGKILL, a real MLflow (SQLite).

The end-to-end checks (kill -9 of `recops run` with its temporary server up; `recops promote` failing a killed
command's run over a real tracking server) are in tests/integration/test_faults.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from recops.config import Settings
from recops.orchestration import reap_orphaned_servers, record_server
from recops.processes import ProcessId
from recops.registry.orphans import (ORPHANED_TAG, OWNER_HOST_TAG, OWNER_PID_TAG, fail_orphaned_runs, owner_tags,
                                     run_owner)

LINUX = sys.platform.startswith("linux")
SLEEPER = [sys.executable, "-c", "import time; time.sleep(120)"]


@pytest.fixture
def sleeper():
    """A live process (ended after the test)."""
    proc = subprocess.Popen(SLEEPER)
    yield proc
    proc.kill()
    proc.wait()


def test_a_live_process_is_running_and_a_killed_one_is_not_even_before_it_is_reaped(sleeper):
    process = ProcessId.of(sleeper.pid)
    assert process.is_running()
    sleeper.kill()
    deadline = time.monotonic() + 10
    while process.is_running():  # a zombie (killed, not yet waited for) is not running
        assert time.monotonic() < deadline
        time.sleep(0.05)
    sleeper.wait()
    assert not process.is_running()


@pytest.mark.skipif(not LINUX, reason="process start times come from /proc")
def test_a_reused_pid_is_not_the_process_that_was_recorded():
    me = ProcessId.current()
    assert me.is_running()
    assert not ProcessId(me.pid, str(int(me.start_time) + 1), me.host).is_running()


def test_a_process_of_another_host_is_never_judged_gone():
    assert ProcessId(2**22 + 12345, None, "another-host.invalid").is_running()


def orphaned_sleeper(records: Path) -> int:
    """A process recorded as a temporary server whose parent was then killed with SIGKILL: the pid."""
    parent = subprocess.Popen(
        [sys.executable, "-c",
         "import subprocess, sys, time; from pathlib import Path; from recops.orchestration import record_server\n"
         f"child = subprocess.Popen({SLEEPER!r}, start_new_session=True)\n"
         "record_server(Path(sys.argv[1]), child.pid)\n"
         "print(child.pid, flush=True)\n"
         "time.sleep(120)\n", str(records)],
        stdout=subprocess.PIPE, text=True)
    pid = int(parent.stdout.readline())
    parent.kill()
    parent.wait()
    return pid


def test_a_recorded_server_whose_parent_was_killed_is_stopped_at_the_next_start(tmp_path):
    pid = orphaned_sleeper(tmp_path)
    server = ProcessId.of(pid)
    assert server.is_running()  # nothing stopped it: its parent died without a word
    try:
        assert reap_orphaned_servers(tmp_path) == [pid]
        assert not server.is_running()
        assert list(tmp_path.iterdir()) == []  # the record went with it
    finally:
        if server.is_running():
            os.kill(pid, signal.SIGKILL)


def test_a_recorded_server_whose_parent_runs_is_left_alone(tmp_path, sleeper):
    record = record_server(tmp_path, sleeper.pid)  # its parent: this test's process
    assert reap_orphaned_servers(tmp_path) == []
    assert ProcessId.of(sleeper.pid).is_running() and record.is_file()


def test_the_record_of_a_server_that_is_gone_is_removed(tmp_path):
    pid = orphaned_sleeper(tmp_path)
    os.kill(pid, signal.SIGKILL)  # the server died too (its die-with-parent signal)
    deadline = time.monotonic() + 10
    while ProcessId.of(pid).is_running():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    (tmp_path / "123.json").write_text('{"server": {"pid": 12')  # a record cut short by a kill
    assert reap_orphaned_servers(tmp_path) == []
    assert list(tmp_path.iterdir()) == []


# --- MLflow runs left RUNNING -------------------------------------------------------------------------------------

OWNER = """
import sys, time
from mlflow import MlflowClient
from recops.registry.orphans import owner_tags
client = MlflowClient(tracking_uri=sys.argv[1])
experiment = client.get_experiment_by_name(sys.argv[2])
experiment_id = experiment.experiment_id if experiment else client.create_experiment(sys.argv[2])
run = client.create_run(experiment_id, run_name=sys.argv[3], tags=owner_tags())
print(run.info.run_id, flush=True)
time.sleep(120)
"""


def start_owner(settings: Settings, name: str) -> tuple[subprocess.Popen, str]:
    """A process that starts an MLflow run the way recops does (owner tags) and then keeps running."""
    proc = subprocess.Popen([sys.executable, "-c", OWNER, settings.tracking_uri(), settings.registry.experiment, name],
                            stdout=subprocess.PIPE, text=True)
    return proc, proc.stdout.readline().strip()


def test_runs_of_killed_owners_are_failed_and_runs_of_live_owners_untagged_or_remote_are_left(tmp_path):
    from mlflow import MlflowClient

    settings = Settings(root=tmp_path)
    client = MlflowClient(tracking_uri=settings.tracking_uri())
    killed, killed_run = start_owner(settings, "killed-mid-register")
    experiment = client.get_run(killed_run).info.experiment_id
    live, live_run = start_owner(settings, "still-registering")
    untagged = client.create_run(experiment, run_name="not-recops").info.run_id
    remote = client.create_run(experiment, run_name="other-host",
                               tags={OWNER_PID_TAG: "1", OWNER_HOST_TAG: "another-host.invalid"}).info.run_id
    try:
        killed.kill()
        killed.wait()
        assert fail_orphaned_runs(settings) == [killed_run]
        run = client.get_run(killed_run)
        assert run.info.status == "FAILED" and run.data.tags[ORPHANED_TAG] == str(killed.pid)
        for run_id in (live_run, untagged, remote):
            assert client.get_run(run_id).info.status == "RUNNING"
        assert fail_orphaned_runs(settings) == []  # nothing twice
    finally:
        live.kill()
        live.wait()


def test_owner_tags_name_this_process():
    assert run_owner(owner_tags()) == ProcessId.current()
    assert run_owner({"git_commit": "0123abc"}) is None


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_an_unreachable_tracking_server_is_a_warning_not_a_failed_command(tmp_path, caplog):
    settings = Settings(root=tmp_path, registry={"tracking_uri": f"http://127.0.0.1:{free_port()}"})  # nobody there
    started = time.monotonic()
    assert fail_orphaned_runs(settings) == []
    assert time.monotonic() - started < 15  # no MLflow retry loop (minutes by default)
    assert "could not check the MLflow runs" in caplog.text
