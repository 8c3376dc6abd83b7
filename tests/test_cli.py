"""The command line speaks one way: usage errors, failed runs, checkpoints, Ctrl-C, and the demo."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import urllib.request

import pytest

from pypiper_dask.cli import main
from tests.conftest import ROOT
from tests.test_experience import SCRIPT, cli


@pytest.fixture
def script(tmp_path):
    path = tmp_path / "jobs.py"
    path.write_text(textwrap.dedent(SCRIPT))
    return path


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (
            ["run", "jobs.py:pipeline", "--scheduler", "nonsense"],
            "pypiper-dask run: argument --scheduler: expected a scheduler address such as tcp://HOST:8786, "
            "got 'nonsense' (see 'pypiper-dask run --help')",
        ),
        (
            ["run", "jobs.py:pipeline", "--scheduler", "tcp://10.0.0.1"],
            "pypiper-dask run: argument --scheduler: expected a scheduler address such as tcp://HOST:8786, "
            "got 'tcp://10.0.0.1' (see 'pypiper-dask run --help')",
        ),
        (
            ["run", "jobs.py:pipeline", "--scheduler", "http://10.0.0.1:8786"],
            "pypiper-dask run: argument --scheduler: expected a scheduler address such as tcp://HOST:8786, "
            "got 'http://10.0.0.1:8786' (see 'pypiper-dask run --help')",
        ),
        (
            ["run", "jobs.py:pipeline", "--n-threads", "0"],
            "pypiper-dask run: argument --n-threads: expected a whole number >= 1, got '0' "
            "(see 'pypiper-dask run --help')",
        ),
        (
            ["demo", "--n-threads", "0"],
            "pypiper-dask demo: argument --n-threads: expected a whole number >= 1, got '0' "
            "(see 'pypiper-dask demo --help')",
        ),
        (
            ["demo", "--size", "many"],
            "pypiper-dask demo: argument --size: expected a whole number >= 1, got 'many' "
            "(see 'pypiper-dask demo --help')",
        ),
        (
            ["run", "jobs.py:pipeline", "--quite"],
            "pypiper-dask run: unrecognized arguments: --quite; did you mean --quiet? (see 'pypiper-dask run --help')",
        ),
        (
            ["demo", "--sise", "10"],
            "pypiper-dask demo: unrecognized arguments: --sise 10; did you mean --size? "
            "(see 'pypiper-dask demo --help')",
        ),
        (
            ["run", "jobs.py:pipeline", "--overwrite"],
            "pypiper-dask run: --overwrite needs --checkpoint PATH (see 'pypiper-dask run --help')",
        ),
        (
            ["run"],
            "pypiper-dask run: the following arguments are required: FILE.py:NAME (see 'pypiper-dask run --help')",
        ),
        ([], "pypiper-dask: the following arguments are required: {run,demo} (see 'pypiper-dask --help')"),
    ],
)
def test_a_usage_error_is_one_line_and_exit_code_2(args, said, script, capsys, monkeypatch):
    monkeypatch.chdir(script.parent)
    with pytest.raises(SystemExit) as exited:
        main(args)
    out, err = capsys.readouterr()
    assert exited.value.code == 2
    assert out == ""
    assert err == said + "\n"


def test_host_and_port_alone_is_an_address_as_in_dask():
    from pypiper_dask.cli import scheduler_address

    assert scheduler_address("10.0.0.1:8786") == "10.0.0.1:8786"
    assert scheduler_address("tls://[::1]:8786") == "tls://[::1]:8786"


def test_usage_errors_from_the_entry_point_too(script):
    done = cli("run", f"{script}:pipeline", "--scheduler", "nonsense", cwd=script.parent)
    assert done.returncode == 2 and done.stdout == ""
    assert len(done.stderr.splitlines()) == 1 and "expected a scheduler address" in done.stderr


def test_a_failing_node_shows_the_users_frames_and_the_error_once(script):
    done = cli("run", f"{script}:broken", "--n-threads", "1", cwd=script.parent)
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        "Traceback (most recent call last):",
        f'  File "{script}", line 21, in run',
        '    raise RuntimeError("no good")',
        "pypiper-dask: NodeError: Node 'fail' raised RuntimeError: no good on input 0.",
    ]
    full = cli("run", f"{script}:broken", "--n-threads", "1", "--traceback", cwd=script.parent)
    assert full.returncode == 1
    assert f"pypiper_dask{os.sep}runtime" in full.stderr  # the library's frames, asked for
    assert full.stderr.count("NodeError: Node 'fail' raised RuntimeError: no good") == 1


def test_an_error_in_the_users_file_shows_its_frames(tmp_path):
    (tmp_path / "oops.py").write_text("x = 1\ny = undefined_name + x\n")
    done = cli("run", "oops.py:y", cwd=tmp_path)
    assert done.returncode == 1
    lines = [line for line in done.stderr.splitlines() if line.strip(" ^~")]  # carets from Python 3.11 on
    assert lines == [
        "Traceback (most recent call last):",
        f'  File "{tmp_path / "oops.py"}", line 2, in <module>',
        "    y = undefined_name + x",
        "pypiper-dask: NameError: name 'undefined_name' is not defined",
    ]


def test_checkpoint_resumes_a_finished_run_without_printing_it_again(script, tmp_path):
    where = str(tmp_path / "run.ckpt")
    first = cli("run", f"{script}:pipeline", "--n-threads", "1", "--checkpoint", where, cwd=script.parent)
    assert first.returncode == 0, first.stderr
    assert first.stdout == "0\n1\n4\n9\n16\n"
    again = cli("run", f"{script}:pipeline", "--n-threads", "1", "--checkpoint", where, cwd=script.parent)
    assert again.returncode == 0, again.stderr
    assert again.stdout == ""  # all delivered before: nothing to print
    assert "<PipelineResult square: 5 items>" in again.stderr
    anew = cli("run", f"{script}:pipeline", "--n-threads", "1", "--checkpoint", where, "--overwrite", cwd=script.parent)
    assert anew.returncode == 0, anew.stderr
    assert anew.stdout == "0\n1\n4\n9\n16\n"


SLOW = """
import time
from pypiper_dask import Node, Pipeline

class Slow(Node):
    def setup(self):
        self.pos = 0

    def run(self, data):
        time.sleep(0.05)
        self.emit(self.pos)
        self.pos += 1

pipeline = Pipeline(Slow("slow"))
"""


@pytest.mark.timeout(120)
def test_ctrl_c_exits_130(tmp_path):
    (tmp_path / "slow.py").write_text(textwrap.dedent(SLOW))
    proc = subprocess.Popen(
        [sys.executable, "-m", "pypiper_dask.cli", "run", "slow.py:pipeline", "--n-threads", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "0\n"  # running
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130
    assert err.splitlines()[-1] == "pypiper-dask: interrupted"


# -- the demo ------------------------------------------------------------------------------


def test_the_demo_in_process_says_what_it_did_plainly():
    done = cli("demo", "--n-threads", "1", "--size", "1000", cwd=ROOT)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "runs in parallel, one task per partition" in out
    assert "waits for all its input, then one call with every item" in out
    assert re.search(r"Done in [\d.]+ s: <PipelineResult running_total: 1000 items, summary: 1 item>", out)
    assert out.endswith(
        "  running_total: 1000 running totals, the last 332833500\n"
        "  summary: 1000 squares, the largest 998001\n"
        "  the RunningTotal object in this process ended with total = 332833500, its last running total\n"
    )
    assert "Press Enter" not in out


@pytest.mark.cluster
@pytest.mark.timeout(180)
def test_the_demo_keeps_its_dashboard_open_until_enter():
    proc = subprocess.Popen(
        [sys.executable, "-m", "pypiper_dask.cli", "demo", "--size", "2000", "--keep-open"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None
        lines = []
        while not (lines and "Press Enter" in lines[-1]):
            line = proc.stdout.readline()
            assert line, "".join(lines)
            lines.append(line)
        (link,) = re.findall(r"see the run at (\S+)\. Press Enter", lines[-1])
        # The link works while the demo waits (a cluster closed a second later made it dead).
        with urllib.request.urlopen(link, timeout=30) as page:
            assert page.status == 200
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.cluster
@pytest.mark.timeout(180)
def test_the_demo_never_waits_when_not_run_from_a_terminal():
    done = subprocess.run(
        [sys.executable, "-m", "pypiper_dask.demo", "--size", "2000"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=150,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stderr
    assert "Press Enter" not in done.stdout
    assert "as its copy on the cluster did" in done.stdout
