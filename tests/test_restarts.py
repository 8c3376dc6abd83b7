"""Workers that die and come back: unguarded scripts, items that kill their worker, large items."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from pypiper_dask import Node, Pipeline, PipelineError
from tests import nodes as N
from tests.conftest import ROOT

pytestmark = pytest.mark.cluster

UNGUARDED = """
import os
import time

from pypiper_dask import Node, Pipeline

with open(os.environ["TOPLOG"], "a") as log:
    log.write("top\\n")


class Gen(Node):
    def setup(self):
        self.pos = 0

    def run(self, data):
        if self.pos >= 400:
            self.close()
            return
        time.sleep(0.005)
        self.emit(self.pos)
        self.pos += 1


class DieOnce(Node):
    def run(self, data):
        if data == 100 and not os.path.exists(os.environ["MARK"]):
            open(os.environ["MARK"], "w").close()
            os._exit(1)
        self.emit(data)


class Total(Node):
    def setup(self):
        self.total = 0
        self.stateless = False

    def run(self, data):
        self.total += data
        self.emit(self.total)


Pipeline(Gen("gen") | DieOnce("die") | Total("total"), n_threads=2, partition_size=10).run()
"""


@pytest.mark.timeout(120)
def test_an_unguarded_script_is_not_run_again_by_a_restarted_worker(tmp_path):
    script = tmp_path / "unguarded.py"
    script.write_text(textwrap.dedent(UNGUARDED))
    top, mark = tmp_path / "top.log", tmp_path / "mark"
    done = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=100,
        env={**os.environ, "PYTHONPATH": str(ROOT), "TOPLOG": str(top), "MARK": str(mark)},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert mark.exists(), "the worker was never killed: nothing was tested"
    assert top.read_text() == "top\n", "the script's top level ran again in a worker"
    assert "bootstrapping phase" not in done.stderr
    totals, total = [], 0
    for i in range(400):
        total += i
        totals.append(str(total))
    assert done.stdout.split() == totals


class Poison(Node):
    """Kills its worker process on one item, every time."""

    def run(self, data):
        if data == 77 or (isinstance(data, tuple) and 77 in data):
            os._exit(3)
        self.emit(data)


@pytest.mark.timeout(120)
def test_an_item_that_kills_its_worker_every_time_is_named():
    graph = N.Gen("g", size=300) | Poison("poison") | N.Map("m")
    with pytest.raises(PipelineError, match=r"Node 'poison' killed its worker process on item 77 \(item \d+ of"):
        Pipeline(graph, n_threads=2, quiet=True).run()


@pytest.mark.timeout(240)  # room for slow nanny restarts: every worker dies again and again
@pytest.mark.parametrize(
    "where, said",
    [
        ("stateful", r"on item 77 \(partition \d+\)"),
        ("batched", r"on batch \(75, 76, 77\) \(partition \d+\)"),
        ("after a stateful node", r"on item 77 \(partition \d+\)"),
    ],
)
def test_an_item_that_kills_a_sequential_nodes_worker_every_time_is_named(where, said):
    """The worker that dies holds a sequential node: its state is restored, the item kills it again."""
    if where == "stateful":
        graph = N.Gen("g", size=300) | Poison("poison", stateless=False) | N.Map("m")
    elif where == "batched":
        graph = N.Gen("g", size=300) | Poison("poison", batch_size=3) | N.Map("m")
    else:
        graph = N.Gen("g", size=300) | N.Echo("e", stateless=False) | Poison("poison") | N.Map("m")
    with pytest.raises(PipelineError, match=r"Node 'poison' killed its worker process " + said):
        Pipeline(graph, n_threads=2, quiet=True).run()


class Size(Node):
    def run(self, data):
        self.emit(len(data))


class Big(N.Gen):
    def item(self):
        return bytes([self.pos]) * (80 * 2**20)


@pytest.mark.timeout(120)
@pytest.mark.filterwarnings("ignore:Sending large graph")  # 4 items are embedded in their task, not scattered
def test_large_items_through_a_batched_node_are_not_taken_for_a_death():
    result = Pipeline(Big("big", size=4) | Size("size", batch_size=2), n_threads=2, quiet=True).run()
    assert result["size"] == [2, 2]


def test_the_probe_file_names_what_its_first_run_was_calling(tmp_path):
    """A probe's worker dies and the scheduler runs it again into the same file: the first run counts.

    A multi-line repr (an array's) stays on its line, and a name with a tab stays one field.
    """
    from pypiper_dask.runtime.poison import _unescaped
    from pypiper_dask.worker.probe import _one_line, _open, read_probe

    path = str(tmp_path / "probe")
    name, data = _one_line("a\tb"), _one_line("[[0, 0],\n [0, 0]]")
    for calls in (["3\tnode\t1", f"4\t{name}\t{data}"], ["0\tnode\t0"]):
        fd = _open(path)
        for line in calls:
            os.write(fd, (line + "\n").encode())
        os.close(fd)
    started, line = read_probe(path)
    index, node, data = line.split("\t", 2)
    assert (index, _unescaped(node), data) == ("4", "a\tb", "[[0, 0],\\n [0, 0]]")
    assert started > 0 and not os.path.exists(path)


def test_a_probe_file_on_this_machine_is_read_while_no_worker_answers(tmp_path):
    """The probe killed every worker and none is back yet: the file it wrote here still names the item.

    (A CI run on a loaded machine waited 15 s for a restarted worker to read it, got none, and said
    'state lost' instead of naming the item.)
    """
    from pypiper_dask.runtime.poison import _read_everywhere
    from pypiper_dask.worker.probe import _open

    class NoWorkers:
        def run(self, *args, **kwargs):
            return {}  # what client.run answers while every worker is restarting

    path = str(tmp_path / "probe")
    fd = _open(path)
    os.write(fd, b"3\tpoison\t77\n")
    os.close(fd)
    [(_, line)] = _read_everywhere(NoWorkers(), path, 0.0)
    assert line == "3\tpoison\t77" and not os.path.exists(path)


def test_a_cluster_the_library_starts_takes_the_removal_of_a_worker_it_never_listed():
    """A worker killed before its cluster listed it (dask/distributed#5407).

    distributed's KeyError ended the task keeping the cluster's list of workers and came back
    when the cluster closed: a CI run's kill trial failed at teardown with it.
    """
    from pypiper_dask.runtime.cluster import local_cluster_class

    class Listed:
        def __init__(self):
            self.scheduler_info = {"workers": {}}  # the killed worker's start not seen yet

    cluster = Listed()
    local_cluster_class()._update_worker_status(cluster, "remove", "tcp://127.0.0.1:1")
    assert cluster.scheduler_info == {"workers": {}}
