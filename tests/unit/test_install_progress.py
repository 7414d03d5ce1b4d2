"""`make install`'s pip wrapper: a progress line instead of two silent minutes, pip's failures shown whole."""

import io
import subprocess
import sys
from pathlib import Path

from recops.install_progress import Reporter, pinned_count

SCRIPT = Path(__file__).resolve().parents[2] / "recops" / "install_progress.py"


def test_the_total_is_the_pinned_requirement_lines(tmp_path):
    req = tmp_path / "req.txt"
    req.write_text("# pinned\nnumpy==2.0.0\n\n--index-url x\nscipy==1.14.0  # why\n")
    assert pinned_count(["-r", str(req)]) == 2
    assert pinned_count(["--no-deps", "-e", "."]) is None


def test_pip_lines_become_steps_and_the_configuration_noise_is_dropped():
    out = io.StringIO()
    reporter = Reporter(out, 3, tty=False)
    assert reporter.feed("Collecting lightgbm==4.6.0 (from -r requirements.lock (line 9))\n") is None
    assert reporter.state == "[1/3] collecting lightgbm==4.6.0"
    assert reporter.feed("WARNING: Location 'file:///opt/pypi/simple/zict/' is ignored: it is neither a file") is None
    assert reporter.feed("Installing collected packages: a, b, c\n") is None
    assert reporter.state == "installing 3 packages"
    assert reporter.feed("ERROR: No matching distribution found for nope") == \
        "ERROR: No matching distribution found for nope"
    reporter.show(force=True)
    reporter.show()  # within 15 s of the last line: nothing more off a terminal
    assert out.getvalue().count("\n") == 1 and "installing 3 packages" in out.getvalue()


def run(*args, cwd):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, cwd=cwd,
                          timeout=120)


def test_an_install_says_what_it_does_and_a_failure_shows_pips_log_and_exit_status(tmp_path):
    req = tmp_path / "req.txt"
    req.write_text("pip\n")  # already there: nothing to download
    ok = run("--no-index", "-r", str(req), cwd=tmp_path)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "pip install 1 pinned packages" in ok.stdout and "done:" in ok.stdout
    req.write_text("recops-no-such-package==0.0.1\n")
    failed = run("--no-index", "-r", str(req), cwd=tmp_path)
    assert failed.returncode != 0
    assert "pip failed" in failed.stdout and "recops-no-such-package" in failed.stdout
    assert "is ignored: it is neither" not in failed.stdout
