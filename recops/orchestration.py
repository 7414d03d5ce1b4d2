"""The temporary Prefect server of a command that runs flows, owned so that it cannot outlive the command.

Without ``PREFECT_API_URL`` Prefect starts a "temporary server" (a uvicorn subprocess serving
``prefect.server.api.server:create_app`` on SQLite in the Prefect home) the first time a flow runs, and stops it
from an ``atexit`` hook. A ``recops run`` killed with SIGKILL runs no hook, so every such kill left the server
running (about 225 MB, its port open). Prefect gives no way to change how it starts that subprocess, so
:func:`ensure_prefect_api` starts the same server itself — the same command and environment Prefect uses
(``SubprocessASGIServer._run_uvicorn_command`` in Prefect 3.8) — and points ``PREFECT_API_URL`` at it; Prefect
then never starts its own. Two guards make it die with its command:

1. **Die with the parent** (Linux): the server is started through a tiny ``python -c`` launcher that sets
   ``PR_SET_PDEATHSIG`` (SIGKILL) and then ``exec``\\s uvicorn, so the kernel kills the server the moment the
   process that started it ends, however it ends. (A launcher rather than ``Popen(preexec_fn=...)``: preexec
   functions are unsafe once a process has threads.) The server is one process with no children, and its SQLite
   database survives a SIGKILL like any SQLite writer, so nothing is left half-done by the hard signal.
2. **Reaped at the next start** (everywhere): a record ``<PREFECT_HOME>/temporary-servers/<pid>.json`` names the
   server and its parent (pid plus start time, see :mod:`recops.processes`); the next :func:`ensure_prefect_api`
   stops every recorded server whose parent no longer runs. A server whose parent still runs belongs to a
   concurrent command and is left alone.

A normal exit (or Ctrl-C) stops the server from ``atexit`` as before and removes its record. Child processes of
the command (Dask workers of ``compute.engine: dask``) inherit ``PREFECT_API_URL`` and use this server too,
instead of each starting a temporary server of its own.

Called by the entry points that run flows (``recops run``, ``recops snapshot``), never at import. With
``PREFECT_API_URL`` set (``make server``, a deployment) or Prefect's ephemeral mode turned off it does nothing.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from recops.errors import RecopsError
from recops.processes import ProcessId

log = logging.getLogger(__name__)

RECORDS_DIR = "temporary-servers"
SERVER_APP = "prefect.server.api.server:create_app"
STOP_WAIT_S = 5.0
START_ATTEMPTS = 3

# argv: parent pid, then the command to exec. PR_SET_PDEATHSIG = 1. If the parent died before the signal was
# armed, the getppid() check sees it (the launcher was re-parented) and nothing starts.
_DIE_WITH_PARENT = (
    "import ctypes, os, signal, sys\n"
    "ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    sys.exit(0)\n"
    "os.execv(sys.executable, [sys.executable, *sys.argv[2:]])\n"
)


def ensure_prefect_api(timeout_s: float | None = None) -> str | None:
    """Give this process's flows a Prefect API that dies with it: the API URL of the server started, or None.

    Returns None at once when ``PREFECT_API_URL`` is set (env or profile; also by an earlier call) or Prefect's
    ephemeral mode is off (Prefect then says what to set). Otherwise stops the servers earlier commands left
    behind (:func:`reap_orphaned_servers`), starts a temporary server bound to 127.0.0.1, records it, waits until
    it answers ``/health`` (``timeout_s``, default ``PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS``) and sets
    ``PREFECT_API_URL`` for this process and its children.
    """
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    if settings.api.url or not settings.server.ephemeral.enabled:
        return None
    records = Path(settings.home).expanduser() / RECORDS_DIR
    reap_orphaned_servers(records)
    timeout = float(timeout_s or settings.server.ephemeral.startup_timeout_seconds)
    env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1",
           **settings.to_environment_variables(exclude_unset=True)}
    for attempt in range(1, START_ATTEMPTS + 1):
        port = _free_port()
        url = f"http://127.0.0.1:{port}/api"
        server = subprocess.Popen(_server_command(port), env=env, stdin=subprocess.DEVNULL)
        record = record_server(records, server.pid, url)
        if _wait_healthy(server, url, timeout):
            break
        exit_code = server.poll()  # None: still starting when the time was up
        _stop(server, record)
        if attempt == START_ATTEMPTS or exit_code is None:
            why = f"did not answer within {timeout:g} s" if exit_code is None else f"exited with code {exit_code}"
            raise RecopsError(
                f"the temporary Prefect server {why} (its messages are above): raise "
                "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, or run a server (`make server`) and set "
                "PREFECT_API_URL=http://127.0.0.1:4200/api")
        log.info("temporary Prefect server exited at start (port %d taken?): trying another port", port)
    atexit.register(_stop, server, record)
    os.environ["PREFECT_API_URL"] = url
    os.environ.setdefault("PREFECT_UI_URL", "")  # the server serves no UI: no "View at" links to a missing page
    import prefect.context

    prefect.context.refresh_global_settings_context()  # the settings read at import have no API URL
    log.info("temporary Prefect server on %s (pid %d; stops with this process)", url, server.pid)
    return url


def reap_orphaned_servers(records: Path) -> list[int]:
    """Stop every temporary server recorded under ``records`` whose parent process no longer runs; remove the
    records of servers that are gone. The pids stopped."""
    stopped = []
    for path in sorted(records.glob("*.json")) if records.is_dir() else []:
        try:
            data = json.loads(path.read_text())
            server, parent = ProcessId.from_dict(data["server"]), ProcessId.from_dict(data["parent"])
        except (OSError, ValueError, KeyError, TypeError):
            path.unlink(missing_ok=True)  # unreadable: written by a process killed mid-write
            continue
        if parent.is_running():
            continue  # a command still running (this one, or a concurrent one) owns it
        if server.is_running():
            log.warning("stopping the temporary Prefect server (pid %d) of a command that no longer runs (pid %d)",
                        server.pid, parent.pid)
            _end(server)
            stopped.append(server.pid)
        path.unlink(missing_ok=True)
    return stopped


def record_server(records: Path, server_pid: int, url: str = "", parent_pid: int | None = None) -> Path:
    """Write the record naming a temporary server (and its API URL) and its parent (this process by default):
    what :func:`reap_orphaned_servers` reads at the next start."""
    records.mkdir(parents=True, exist_ok=True)
    path = records / f"{server_pid}.json"
    data = {"server": ProcessId.of(server_pid).as_dict(),
            "parent": ProcessId.of(parent_pid or os.getpid()).as_dict(), "url": url}
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)
    return path


def _server_command(port: int) -> list[str]:
    import prefect

    uvicorn = ["-m", "uvicorn", "--app-dir", str(Path(prefect.__file__).resolve().parent.parent), "--factory",
               SERVER_APP, "--host", "127.0.0.1", "--port", str(port), "--log-level", "error", "--lifespan", "on"]
    # PR_SET_PDEATHSIG fires when the *thread* that started the child ends: only the main thread lives as long
    # as the process; from any other thread the record and atexit are the guards
    if sys.platform.startswith("linux") and threading.current_thread() is threading.main_thread():
        return [sys.executable, "-c", _DIE_WITH_PARENT, str(os.getpid()), *uvicorn]
    return [sys.executable, *uvicorn]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_healthy(server: subprocess.Popen, url: str, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.1)
    return False


def _stop(server: subprocess.Popen, record: Path) -> None:
    """Stop a server this process started (SIGTERM, then SIGKILL after STOP_WAIT_S) and remove its record."""
    if server.poll() is None:
        server.terminate()
        try:
            server.wait(timeout=STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    record.unlink(missing_ok=True)


def _end(process: ProcessId) -> None:
    """SIGTERM a process that is not our child, SIGKILL after STOP_WAIT_S; wait until it is gone."""
    for sig, wait_s in ((signal.SIGTERM, STOP_WAIT_S), (signal.SIGKILL, STOP_WAIT_S)):
        try:
            os.kill(process.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait_s
        while process.is_running() and time.monotonic() < deadline:
            time.sleep(0.05)
        if not process.is_running():
            return
