"""Jupyter, the dashboard and scripts: HTML repr, pictures, progress, to_dask, notebooks, the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import dask
import pytest

from pypiper_dask import Node, OptionError, Pipeline
from pypiper_dask.demo import Generate
from pypiper_dask.runtime.progress import progress_callback
from tests import nodes as N
from tests.conftest import ROOT, dask_processes
from tests.reference import reference_run


def test_html_repr_shows_nodes_roles_and_where():
    pipeline = Pipeline(
        N.Gen("gen", size=3) | N.Map("sq") | [N.Running("total"), N.Batch("all", batch_size=Node.BATCH_SIZE_ALL)],
        n_threads=2,
    )
    page = pipeline._repr_html_()
    for text in [
        "<table>",
        "gen",
        "sq",
        "total",
        "all",
        "runs in parallel, one task per partition",
        "stateful",
        "waits for all its input",
        "ALL",
        "local cluster of 2 worker processes",
    ]:
        assert text in page, text
    result = Pipeline(N.Gen("gen", size=3) | N.Map("sq"), n_threads=1, quiet=True).run()
    assert "<b>sq</b></td><td>3</td>" in result._repr_html_()


def test_visualize_draws_stages_or_says_how_to_install():
    pipeline = Pipeline(N.Gen("gen", size=3) | N.Map("sq") | N.Running("total"))
    try:
        import graphviz  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match=r'pip install "pypiper-dask\[viz\]"'):
            pipeline.visualize()
        return
    source = pipeline.visualize().source
    assert "cluster_0" in source and "stage 0: in parallel" in source
    assert '"sq"' in source or "sq [" in source
    assert "stateful, in one place" in source
    assert "gen -> sq" in source and "sq -> total" in source


def test_visualize_without_graphvizs_dot_says_what_to_install(tmp_path, monkeypatch):
    pytest.importorskip("graphviz")
    monkeypatch.setenv("PATH", str(tmp_path))  # no dot to be found
    pipeline = Pipeline(N.Gen("gen", size=3) | N.Map("sq"))
    with pytest.raises(RuntimeError, match=r"needs Graphviz's dot program .* apt-get install graphviz"):
        pipeline.visualize(str(tmp_path / "plan.png"))
    shown = pipeline.visualize()._repr_mimebundle_()  # what a notebook shows
    assert "apt-get install graphviz" in shown["text/plain"]


def test_progress_callback_path_reports_items_against_size():
    seen = []
    callback, bar = progress_callback(False, "gen", lambda done, total: seen.append((done, total)))
    assert bar is None
    Pipeline(N.Gen("gen", size=500) | N.Map("m"), n_threads=1, quiet=True, partition_size=50).run(
        update_callback=callback
    )
    assert seen[0] == (0, 500) and seen[-1] == (500, 500)
    callback, bar = progress_callback(True, "gen", None)
    Pipeline(N.Gen("gen", size=200) | N.Map("m"), n_threads=1, quiet=True, partition_size=50).run(
        update_callback=callback
    )
    assert bar.done == 200
    bar.close()


def test_progress_bar_goes_to_stderr_never_stdout(capfd):
    Pipeline(N.Gen("gen", size=300) | N.Map("m"), n_threads=1, progress=True, partition_size=50).run()
    out, err = capfd.readouterr()
    assert out == "".join(f"{i * i}\n" for i in range(300))
    assert "300/300" in err


@pytest.mark.parametrize("partition_size", [None, 3])
def test_to_dask_computes_the_same_result_as_run(partition_size):
    graph_args = (
        {"size": 40, "per_call": 2, "loud": True},
        [
            (
                "echo",
                {"stateless": False},
                [
                    ("batch", {"batch_size": 3, "stateless": True}, []),
                    ("take", {"n": 11}, [("all", {"stateless": None}, [])]),
                ],
            ),
            ("running", {"stateless": None}, []),
        ],
    )
    from tests.strategies import build

    collection = Pipeline(build(graph_args)).to_dask(partition_size=partition_size)
    (computed,) = dask.compute(collection, scheduler="sync")
    _, want = reference_run(build(graph_args))
    assert dict(computed) == want
    assert dict(computed) == dict(Pipeline(build(graph_args), n_threads=1, quiet=True).run())
    assert collection.n_partitions >= 1


def test_to_dask_is_a_collection_dask_accepts():
    collection = Pipeline(N.Gen("gen", size=30) | N.Map("sq") | N.Running("total")).to_dask(partition_size=10)
    assert dask.is_dask_collection(collection)
    (threaded,) = dask.compute(collection)  # the collection's own (threaded) scheduler
    assert threaded["total"][-1] == (30, sum(i * i for i in range(30)))
    from dask.utils import key_split

    names = {key_split(k) for k in collection.__dask_graph__()}
    assert {"sq", "total"} <= names


# -- notebooks, executed on a real kernel --------------------------------------------------


@pytest.mark.cluster
@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", ["quickstart.ipynb", "cluster.ipynb"])
def test_notebook_runs_top_to_bottom(name, external_cluster):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    book = nbformat.read(str(ROOT / "notebooks" / name), as_version=4)
    assert all(not c.get("outputs") for c in book.cells if c.cell_type == "code"), "commit notebooks without outputs"
    os.environ["PYPIPER_DASK_SCHEDULER"] = external_cluster
    try:
        nbclient.NotebookClient(
            book, timeout=240, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
        ).execute()
    finally:
        os.environ.pop("PYPIPER_DASK_SCHEDULER", None)
    errors = [o for c in book.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    if name == "quickstart.ipynb":
        # The submit() cell returned while its run went on (the notebook asserts the result).
        shown = [o["data"].get("text/html", "") for c in book.cells for o in c.get("outputs", []) if "data" in o]
        assert any("<b>RunHandle</b>: running" in html for html in shown)


# -- the command line ------------------------------------------------------------------------

SCRIPT = """
from pypiper_dask import Node, Pipeline

class Gen(Node):
    def setup(self, size):
        self.pos = 0

    def run(self, data):
        if self.pos < self.size:
            self.emit(self.pos)
            self.pos += 1
        else:
            self.close()

class Square(Node):
    def run(self, data):
        self.emit(data * data)

class Fail(Node):
    def run(self, data):
        raise RuntimeError("no good")

pipeline = Pipeline(Gen("gen", size=5) | Square("square"))
graph = Gen("gen", size=3) | Square("square")
broken = Pipeline(Gen("gen", size=3) | Fail("fail"))

if __name__ == "__main__":
    raise SystemExit("the guarded code must not run")
"""


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pypiper_dask.cli", *args],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


@pytest.fixture
def script(tmp_path):
    path = tmp_path / "jobs.py"
    path.write_text(textwrap.dedent(SCRIPT))
    return path


def test_cli_help():
    done = cli("run", "--help", cwd=ROOT)
    assert done.returncode == 0
    for option in ["FILE.py:NAME", "--scheduler", "--n-threads", "--quiet", "--progress", "--no-progress"]:
        assert option in done.stdout
    for option in ["--checkpoint", "--overwrite", "--traceback"]:
        assert option in done.stdout


def test_cli_runs_a_pipeline_in_process(script):
    done = cli("run", f"{script}:pipeline", "--n-threads", "1", cwd=script.parent)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "0\n1\n4\n9\n16\n"
    assert "<PipelineResult square: 5 items>" in done.stderr


def test_cli_runs_a_graph_quietly(script):
    done = cli("run", f"{script}:graph", "--n-threads", "1", "--quiet", cwd=script.parent)
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""


def test_cli_fails_with_the_error(script):
    done = cli("run", f"{script}:broken", "--n-threads", "1", cwd=script.parent)
    assert done.returncode == 1
    assert "NodeError: Node 'fail' raised RuntimeError: no good" in done.stderr
    missing = cli("run", f"{script}:nothing", cwd=script.parent)
    # A typo in FILE.py:NAME is a usage error: one clean line, exit code 2.
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines() == [f"pypiper-dask run: {script} has no attribute 'nothing'"]
    assert "Traceback" not in missing.stderr


def test_cli_version_help_and_usage_errors(script, tmp_path):
    from pypiper_dask import __version__

    version = cli("--version", cwd=ROOT)
    assert version.returncode == 0 and version.stdout.strip() == f"pypiper-dask {__version__}"
    run_help = cli("run", "--help", cwd=ROOT)
    assert "``" not in run_help.stdout and "Runs a Pipeline (or a NodeGraph or Node)" in run_help.stdout
    demo_help = cli("demo", "--help", cwd=ROOT)
    assert "--size" in demo_help.stdout and "The demo pipeline" in demo_help.stdout
    for bad in ["no-colon-here", "nofile.py:x"]:
        done = cli("run", bad, cwd=tmp_path)
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
    (tmp_path / "num.py").write_text("answer = 42\n")
    done = cli("run", "num.py:answer", cwd=tmp_path)
    assert done.returncode == 2
    assert "num.py:answer is an int, not a Pipeline, NodeGraph or Node" in done.stderr


def test_cli_checks_its_options_as_pipeline_does(script):
    # n_threads=0 is refused by both, each in its own words (no "or None" on a command line).
    done = cli("run", f"{script}:pipeline", "--n-threads", "0", cwd=script.parent)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr == (
        "pypiper-dask run: argument --n-threads: expected a whole number >= 1, got '0' "
        "(see 'pypiper-dask run --help')\n"
    )
    with pytest.raises(OptionError, match="n_threads must be an int >= 1 or None, not 0"):
        Pipeline(Generate("gen", size=1), n_threads=0)
    pipeline = Pipeline(Generate("gen", size=1))
    with pytest.raises(OptionError):
        pipeline.n_threads = 0  # set one by one, checked the same way
    assert pipeline.n_threads is None


@pytest.mark.cluster
def test_cli_on_a_local_cluster_and_on_a_scheduler(script, external_cluster):
    before = {p.pid for p in dask_processes()}
    local = cli("run", f"{script}:pipeline", "--n-threads", "2", "--no-progress", cwd=script.parent)
    assert local.returncode == 0, local.stderr
    assert local.stdout == "0\n1\n4\n9\n16\n"
    remote = cli("run", f"{script}:pipeline", "--scheduler", external_cluster, cwd=script.parent)
    assert remote.returncode == 0, remote.stderr
    assert remote.stdout == "0\n1\n4\n9\n16\n"
    assert {p.pid for p in dask_processes()} <= before
