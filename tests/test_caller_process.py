"""In the caller's process, nodes behave as they do in pyPiper (issue: the caller's process).

An in-process run (``n_threads=1``, or neither ``n_threads`` nor a client)
uses the caller's node objects: shared objects, module globals, unpicklable
attributes and ``emit()`` in ``setup()`` work; a later run re-initialises the
nodes in place. A run that leaves the process still pickles and says which
attribute cannot travel.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import textwrap
import threading
import traceback

import pyPiper
import pytest

from pypiper_dask import Node, NodeError, Pipeline
from pypiper_dask.model.snapshot import NodePickleError
from tests.conftest import two_worker_client

RESULTS: list = []  # a module-level list a leaf appends to, as pyPiper users write


def make_classes(base: type) -> dict[str, type]:
    """The same user classes over pyPiper's ``Node`` and ours."""

    class Gen(base):  # type: ignore[valid-type, misc]
        def setup(self, size):
            self.pos, self.size = 0, size  # pyPiper passes keywords to setup() only

        def run(self, data):
            if self.pos < self.size:
                self.emit(self.pos)
                self.pos += 1
            else:
                self.close()

    class ToList(base):  # type: ignore[valid-type, misc]
        def setup(self, sink):
            self.sink = sink

        def run(self, data):
            self.sink.append(data)

    class ToGlobal(base):  # type: ignore[valid-type, misc]
        def run(self, data):
            RESULTS.append(data)

    class Seen(base):  # type: ignore[valid-type, misc]
        def setup(self):
            self.seen = []

        def run(self, data):
            self.seen.append(data)

    class Hello(base):  # type: ignore[valid-type, misc]
        """Emits in setup(), as some pyPiper programs do."""

        def setup(self, word="hello"):
            self.emit(word)

        def run(self, data):
            self.emit(data)

    return {c.__name__: c for c in (Gen, ToList, ToGlobal, Seen, Hello)}


OURS = make_classes(Node)
THEIRS = make_classes(pyPiper.Node)


def quietly(fn, *args, **kwargs):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        value = fn(*args, **kwargs)
    return out.getvalue(), value


def shared_objects(classes: dict[str, type], pipeline_class: type) -> tuple[list, list, list]:
    mine: list = []
    RESULTS.clear()
    seen = classes["Seen"]("seen")
    graph = classes["Gen"]("gen", size=3) | [classes["ToList"]("t", sink=mine), classes["ToGlobal"]("g"), seen]
    quietly(pipeline_class(graph, n_threads=1).run)
    return mine, list(RESULTS), seen.seen


def test_results_collected_through_shared_objects_as_in_pypiper():
    assert shared_objects(THEIRS, pyPiper.Pipeline) == ([0, 1, 2], [0, 1, 2], [0, 1, 2])
    assert shared_objects(OURS, Pipeline) == ([0, 1, 2], [0, 1, 2], [0, 1, 2])


def test_no_n_threads_and_no_client_is_in_process_too():
    mine: list = []
    quietly(Pipeline(OURS["Gen"]("gen", size=2) | OURS["ToList"]("t", sink=mine)).run)
    assert mine == [0, 1]


def test_a_later_run_reinitialises_the_nodes_in_place():
    mine: list = []
    gen, seen, to_list = OURS["Gen"]("gen", size=3), OURS["Seen"]("seen"), OURS["ToList"]("t", sink=mine)
    pipeline = Pipeline(gen | [seen, to_list], n_threads=1)
    first, _ = quietly(pipeline.run)
    second, _ = quietly(pipeline.run)
    assert first == second == ""  # leaves that emit nothing print nothing
    assert gen.pos == 3  # the source's final state
    assert seen.seen == [0, 1, 2]  # what setup() creates starts fresh
    assert mine == [0, 1, 2, 0, 1, 2]  # a passed-in object keeps what earlier runs added
    assert to_list.sink is mine


def test_run_twice_prints_the_same():
    gen = OURS["Gen"]("gen", size=3)
    pipeline = Pipeline(gen | OURS["Hello"]("h"), n_threads=1)
    assert quietly(pipeline.run)[0] == quietly(pipeline.run)[0] == "hello\n0\n1\n2\n"


class Holding(Node):
    """A node holding what cannot be pickled."""

    def setup(self, held):
        pass  # set as an attribute by the constructor

    def run(self, data):
        self.emit(data)


@pytest.mark.parametrize("kind", ["lock", "text file for writing", "binary file", "generator"])
def test_unpicklable_attributes_work_in_process_and_are_named_when_leaving(kind, tmp_path):
    with contextlib.ExitStack() as stack:
        what = {
            "lock": lambda: threading.Lock(),
            "text file for writing": lambda: stack.enter_context(open(tmp_path / "w.txt", "w")),
            "binary file": lambda: stack.enter_context(open(tmp_path / "b.bin", "wb")),
            "generator": lambda: (i for i in range(3)),
        }[kind]()
        graph = OURS["Gen"]("gen", size=3) | Holding("holding", held=what)
        _, result = quietly(Pipeline(graph, n_threads=1, quiet=True).run)
        assert result["holding"] == [0, 1, 2]
        with pytest.raises(NodePickleError, match=r"Node 'holding' cannot be pickled \(its attribute 'held' holds"):
            Pipeline(OURS["Gen"]("gen", size=3) | Holding("holding", held=what), n_threads=2)


def setup_emitting_graph(c: dict[str, type], middle: bool):
    class Source(c["Gen"]):  # type: ignore[valid-type, misc]
        def setup(self, size):
            self.pos, self.size = 0, size
            self.emit("start")

    if middle:
        return Source("gen", size=3) | c["Hello"]("h", word="mid") | c["Hello"]("leaf", word="end")
    return Source("gen", size=3) | c["Hello"]("leaf", word="end")


def test_emit_in_setup_delivers_the_item_as_in_pypiper():
    want, _ = quietly(pyPiper.Pipeline(setup_emitting_graph(THEIRS, False), n_threads=1).run)
    got, _ = quietly(Pipeline(setup_emitting_graph(OURS, False), n_threads=1).run)
    assert want == "end\nstart\n0\n1\n2\n"  # each sent on with its node's first call
    assert got == want
    # A middle node's first call then sends two values; pyPiper forwards only the first
    # of several (the README's migration table), pypiper_dask both.
    want, _ = quietly(pyPiper.Pipeline(setup_emitting_graph(THEIRS, True), n_threads=1).run)
    got, _ = quietly(Pipeline(setup_emitting_graph(OURS, True), n_threads=1).run)
    assert want == "end\nmid\n0\n1\n2\n"
    assert got == "end\nmid\nstart\n0\n1\n2\n"


@pytest.mark.timeout(120)
@pytest.mark.cluster
def test_emit_in_setup_on_a_cluster_too():
    from tests.nodes import SetupEmitter, SetupSource

    graph = SetupSource("gen", size=3) | SetupEmitter("h", word="mid") | SetupEmitter("leaf", word="end")
    want, _ = quietly(Pipeline(graph, n_threads=1).run)
    with two_worker_client() as client:
        got, _ = quietly(Pipeline(graph, client=client).run)
    assert want == "end\nmid\nstart\n0\n1\n2\n"
    assert got == want


class Connected(Node):
    """Stateful, opening a lock on its first item (as a node opens a connection) beside a running total."""

    def setup(self):
        self.total = 0

    def run(self, data):
        if not hasattr(self, "lock"):
            self.lock = threading.Lock()
        with self.lock:
            self.total += data
        self.emit(self.total)


@pytest.mark.timeout(120)
def test_a_stateful_node_holding_a_lock_finishes_on_a_cluster(local_client, caplog):
    from tests.nodes import Gen

    node = Connected("conn", stateless=False)
    result = Pipeline(Gen("gen", size=50) | node, client=local_client, quiet=True).run()
    assert result["conn"][-1] == sum(range(50))
    assert node.total == sum(range(50))  # what pickles came back
    assert not hasattr(node, "lock")  # what does not stays as the caller's object had it
    warned = [r.getMessage() for r in caplog.records if "final state came back" in r.getMessage()]
    assert len(warned) == 1
    assert "Node 'conn': its final state came back from its worker without attribute 'lock' (lock" in warned[0]


class Fails(Node):
    def run(self, data):
        raise ValueError(f"boom on {data}")  # the line a traceback must show


def test_traceback_shows_the_users_file_and_line():
    with pytest.raises(NodeError) as info:
        quietly(Pipeline(OURS["Gen"]("gen", size=3) | Fails("fails"), n_threads=1).run)
    text = "".join(traceback.format_exception(info.value))
    assert f'File "{__file__}"' in text
    assert 'raise ValueError(f"boom on {data}")  # the line a traceback must show' in text
    assert "<dynamic-code>" not in text


def test_engine_bindings_are_taken_off_the_nodes_after_the_run():
    gen, seen = OURS["Gen"]("gen", size=2), OURS["Seen"]("seen")
    quietly(Pipeline(gen | seen, n_threads=1).run)
    for node in (gen, seen):
        assert {"emit", "close", "run"}.isdisjoint(vars(node))
    with pytest.raises(RuntimeError, match="outside a running pipeline"):
        seen.emit(1)


def test_runs_of_one_pipeline_from_two_threads_stay_independent():
    mine: list = []
    pipeline = Pipeline(OURS["Gen"]("gen", size=2000) | OURS["ToList"]("t", sink=mine), n_threads=1, quiet=True)
    results: list = []
    threads = [threading.Thread(target=lambda: results.append(pipeline.run())) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 2
    assert sorted(mine) == sorted(list(range(2000)) * 2)


SCRIPT_STDOUT = """
import subprocess, sys
from pypiper_dask import Node, Pipeline, NodeError
from tests.nodes import Gen, Map

class Bad(Node):
    def run(self, data):
        raise ValueError("bad")

if __name__ == "__main__":
    out, err = sys.stdout, sys.stderr
    for n in (1, 2):
        Pipeline(Gen("gen", size=3) | Map("m"), n_threads=n).run()
        assert sys.stdout is out and sys.stderr is err, n
        sys.stdout.fileno(); sys.stdout.flush()
        try:
            Pipeline(Gen("gen", size=3) | Bad("bad"), n_threads=n, quiet=True).run()
        except NodeError:
            pass
        assert sys.stdout is out and sys.stderr is err, n
        sys.stdout.flush()
        subprocess.run(["echo", f"echo after {n}"], stdout=sys.stdout, check=True)
"""


@pytest.mark.timeout(120)
def test_sys_stdout_is_left_alone_after_a_run_and_a_failed_run(tmp_path):
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(SCRIPT_STDOUT))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=110)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n").count("echo after 1") == 1
    assert "echo after 2" in proc.stdout


SCRIPT_RSS = """
import resource, sys
from pypiper_dask import Node, Pipeline

class Lines(Node):
    def setup(self, path):
        self.f = open(path)

    def run(self, data):
        line = self.f.readline()
        if line:
            self.emit(len(line))
        else:
            self.close()

if __name__ == "__main__":
    path = sys.argv[1]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = Pipeline(Lines("lines", path=path), n_threads=1, quiet=True).run(collect=False)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(result.counts["lines"], (after - before) // 1024)
"""


@pytest.mark.timeout(120)
def test_a_source_holding_a_large_file_is_not_copied(tmp_path):
    data = tmp_path / "big.txt"
    line = "x" * 99 + "\n"
    with open(data, "w") as f:
        for _ in range(8):
            f.write(line * 100_000)  # 80 MB
    script = tmp_path / "rss.py"
    script.write_text(SCRIPT_RSS)
    proc = subprocess.run([sys.executable, str(script), str(data)], capture_output=True, text=True, timeout=110)
    assert proc.returncode == 0, proc.stderr
    count, grown_mb = map(int, proc.stdout.split())
    assert count == 800_000
    assert grown_mb < 40, f"peak RSS grew {grown_mb} MB while reading an 80 MB file line by line"


class NeverPickled(Node):
    """A source that must stay in the caller: pickling it raises, and is counted."""

    pickled = 0

    def setup(self, size):
        self.pos = 0
        self.handle = open(os.devnull)  # noqa: SIM115 - an open file, as a real source holds

    def run(self, data):
        if self.pos == self.size:
            self.close()
            return
        self.emit(self.pos)
        self.pos += 1

    def __getstate__(self):
        NeverPickled.pickled += 1
        raise TypeError("the source was pickled")


@pytest.mark.cluster
@pytest.mark.timeout(120)
def test_a_source_is_never_pickled_on_a_cluster_run_without_checkpoint(local_client):
    from tests import nodes as N

    NeverPickled.pickled = 0
    graph = NeverPickled("src", size=200) | N.Map("m", op="inc") | N.Running("total")
    pipeline = Pipeline(graph, client=local_client, quiet=True, partition_size=20)
    result = pipeline.run()
    assert result["total"][-1] == (200, sum(range(1, 201)))
    assert NeverPickled.pickled == 0
    assert graph.root.pos == 200 and not graph.root.handle.closed  # its end state, in the caller's object
    graph.root.handle.close()
