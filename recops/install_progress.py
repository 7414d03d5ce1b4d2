"""``pip install`` with a progress line: what `make install` runs, so the ~2 minutes of a fresh install are not silent.

Run by path with the virtual environment's interpreter before recops or anything else is installed, so it uses the
standard library only::

    .venv/bin/python recops/install_progress.py -r requirements.lock

It runs ``python -m pip install ARGS`` and turns pip's log into one line per step: ``[37/244] collecting lightgbm``
while pip resolves and downloads (the count of the pinned requirements is the total when ``-r FILE`` is given),
then ``installing 244 packages`` with the elapsed seconds every 15 s while pip unpacks them (its longest silence).
On a terminal the line is rewritten in place; elsewhere (CI logs, ``make run > log``) a line is printed at most
every 15 s. pip's errors and warnings are passed through, except the ``WARNING: Location '...' is ignored`` lines
a machine's pip configuration can print for every package; when pip fails, the last 60 lines of its log follow,
and the exit status is pip's.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

EVERY_S = 15.0
# a requirement pip starts on: from an index ("Collecting name==1.0") or a local wheel ("Processing /x/name-1.0-...whl")
_COLLECTING = re.compile(r"^(?:Collecting (\S+)|Processing \S*?([^/\s]+?)-\d\S*\.whl)")
_NOISE = re.compile(r"^WARNING: Location '.*' is ignored")


def pinned_count(args: list[str]) -> int | None:
    """The number of requirement lines in the ``-r FILE`` arguments (comments, blanks and options left out)."""
    total, found = 0, False
    for flag, value in zip(args, args[1:]):
        if flag in ("-r", "--requirement"):
            found = True
            for line in Path(value).read_text(encoding="utf-8").splitlines():
                line = line.split("#", 1)[0].strip()
                if line and not line.startswith("-"):
                    total += 1
    return total if found else None


class Reporter:
    """Prints the current step: in place on a terminal, else at most every :data:`EVERY_S` seconds."""

    def __init__(self, stream, total: int | None, tty: bool) -> None:
        self.stream, self.total, self.tty = stream, total, tty
        self.started = time.monotonic()
        self.last_print = float("-inf")
        self.collected = 0
        self.seen: set[str] = set()
        self.state = "pip starting"
        self.lock = threading.Lock()

    def _line(self) -> str:
        elapsed = time.monotonic() - self.started
        return f"  {self.state} ({elapsed:.0f} s)"

    def show(self, force: bool = False) -> None:
        with self.lock:
            now = time.monotonic()
            if self.tty:
                self.stream.write("\r\033[K" + self._line())
                self.stream.flush()
            elif force or now - self.last_print >= EVERY_S:
                self.stream.write(self._line() + "\n")
                self.stream.flush()
                self.last_print = now

    def feed(self, line: str) -> str | None:
        """Update the state from one line of pip's log; return the line when it must be shown as it is."""
        line = line.rstrip("\n")
        match = _COLLECTING.match(line)
        if match:
            token = match.group(1) or match.group(2)
            name = re.split(r"[\[<>=!~;]", token, maxsplit=1)[0].lower().replace("_", "-")
            if name not in self.seen:  # pip names a package again for an extra ("sqlalchemy[asyncio]")
                self.seen.add(name)
                self.collected += 1
            total = f"/{self.total}" if self.total else ""
            self.state = f"[{self.collected}{total}] collecting {token}"
        elif line.startswith("Installing collected packages"):
            self.state = f"installing {len(line.split(':', 1)[1].split(','))} packages"
        elif line.startswith("Building wheel for"):
            self.state = line.split(" (", 1)[0].lower()
        elif line.startswith(("ERROR", "WARNING")) and not _NOISE.match(line):
            return line
        return None

    def passthrough(self, line: str) -> None:
        with self.lock:
            if self.tty:
                self.stream.write("\r\033[K")
            self.stream.write(line + "\n")
            self.stream.flush()


def main(args: list[str]) -> int:
    total = pinned_count(args)
    out = sys.stdout
    reporter = Reporter(out, total, out.isatty() and os.environ.get("TERM") != "dumb")
    what = f"{total} pinned packages" if total else " ".join(args)
    estimate = " (about 2 min on a fresh machine)" if total and total > 50 else ""
    out.write(f"pip install {what} into {sys.prefix}{estimate}\n")
    out.flush()
    proc = subprocess.Popen([sys.executable, "-m", "pip", "install", "--disable-pip-version-check",
                             "--progress-bar", "off", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, bufsize=1)
    tail: list[str] = []
    done = threading.Event()

    def beat() -> None:
        while not done.wait(1.0 if reporter.tty else EVERY_S):
            reporter.show()

    ticker = threading.Thread(target=beat, daemon=True)
    ticker.start()
    assert proc.stdout is not None
    for line in proc.stdout:
        if not _NOISE.match(line):
            tail = (tail + [line.rstrip("\n")])[-60:]
        shown = reporter.feed(line)
        if shown is not None:
            reporter.passthrough(shown)
        else:
            reporter.show()
    code = proc.wait()
    done.set()
    ticker.join()
    if reporter.tty:
        out.write("\r\033[K")
    if code:
        out.write(f"pip failed (exit {code}); the end of its log:\n" + "\n".join(tail) + "\n")
    else:
        done_line = f"{reporter.collected} packages collected" if reporter.collected else "nothing to install"
        out.write(f"  done: {done_line} in {time.monotonic() - reporter.started:.0f} s\n")
    out.flush()
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
