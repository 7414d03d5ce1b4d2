"""Which process owns something, and whether that process still runs: the test behind "left behind by a process
that no longer exists" (a temporary Prefect server whose ``recops run`` was killed, an MLflow run left RUNNING).

A pid alone is not an identity: pids are reused. On Linux a process is ``(pid, start time)`` — the start time in
clock ticks since boot from ``/proc/<pid>/stat`` — so a new process that got an old pid is told apart from the
one that died. Elsewhere only the pid is known and a reused pid reads as "still running" (the safe side: nothing
that might be alive is touched).

Standard library only; no MLflow, no Prefect.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path


def _proc_stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (field 3, the state, first), or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rfind(")") + 2:].split()  # the command name may hold spaces and parentheses


def _start_time(pid: int) -> str | None:
    fields = _proc_stat(pid)
    return fields[19] if fields is not None and len(fields) > 19 else None  # field 22: starttime


@dataclass(frozen=True)
class ProcessId:
    """A process on a host: ``pid`` plus its start time where the platform tells it (Linux), else None."""

    pid: int
    start_time: str | None
    host: str

    @classmethod
    def of(cls, pid: int) -> ProcessId:
        return cls(pid, _start_time(pid), socket.gethostname())

    @classmethod
    def current(cls) -> ProcessId:
        return cls.of(os.getpid())

    def on_this_host(self) -> bool:
        return self.host == socket.gethostname()

    def is_running(self) -> bool:
        """True while this very process runs; a zombie (dead, not yet reaped) or a reused pid is not it.

        A process of another host cannot be checked and reads as running: it is never ours to end.
        """
        if not self.on_this_host():
            return True
        if Path("/proc/self/stat").exists():
            fields = _proc_stat(self.pid)
            if fields is None or fields[0] in ("Z", "X"):
                return False
            return self.start_time is None or fields[19] == self.start_time
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True  # exists, owned by someone else
        return True

    def as_dict(self) -> dict[str, str | int | None]:
        return {"pid": self.pid, "start_time": self.start_time, "host": self.host}

    @classmethod
    def from_dict(cls, data: dict) -> ProcessId:
        start = data.get("start_time")
        return cls(int(data["pid"]), None if start in (None, "") else str(start), str(data["host"]))
