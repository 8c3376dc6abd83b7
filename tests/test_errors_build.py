"""Bad graphs and bad options are refused early, with specific types and messages."""

from __future__ import annotations

import threading

import pytest

from pypiper_dask import (
    GraphError,
    Node,
    NodeGraph,
    NodePickleError,
    NodeTypeError,
    OptionError,
    Pipeline,
    PipelineError,
    StreamError,
)
from tests.nodes import Gen, Map


@pytest.mark.parametrize("bad", [0, -1, 2.5, 3.0, True, False])
def test_bad_batch_size_value(bad):
    with pytest.raises(OptionError, match=r"Node 'm': batch_size must be an int >= 1 or Node.BATCH_SIZE_ALL, not") as e:
        Map("m", batch_size=bad)
    assert isinstance(e.value, ValueError) and isinstance(e.value, PipelineError)


@pytest.mark.parametrize("bad", ["3", None, [2]])
def test_bad_batch_size_type(bad):
    with pytest.raises(NodeTypeError, match=r"Node 'm': batch_size must be an int >= 1") as e:
        Map("m", batch_size=bad)
    assert isinstance(e.value, TypeError)


@pytest.mark.parametrize(
    ("bad", "kind", "part"),
    [
        (0, OptionError, "items must be an int >= 1 or None, not 0"),
        ((10, 0), OptionError, "seconds must be a number > 0 or None, not 0"),
        ((10, float("nan")), OptionError, "seconds must be a number > 0 or None, not nan"),
        ((None, None), OptionError, "cannot both be None"),
        (("10", 1), NodeTypeError, "items must be an int >= 1 or None, not str '10'"),
        ((1, 2, 3), NodeTypeError, "a tuple must be (items, seconds), not 3 values"),
        ("5000", NodeTypeError, "not str"),
    ],
)
@pytest.mark.parametrize("where", ["Pipeline", "Node"])
def test_a_bad_snapshot_every_is_refused_naming_the_value_and_its_wrong_part(bad, kind, part, where):
    with pytest.raises(kind) as e:
        if where == "Pipeline":
            Pipeline(Gen("g", size=3) | Map("m"), snapshot_every=bad)
        else:
            Map("m", snapshot_every=bad)
    owner = "Pipeline" if where == "Pipeline" else "Node 'm'"
    assert str(e.value).startswith(f"{owner}: snapshot_every={bad!r} is not valid: "), e.value
    assert part in str(e.value)


def test_batch_size_set_in_setup_is_checked_too():
    class Bad(Node):
        def setup(self):
            self.batch_size = 0

        def run(self, data):
            pass

    with pytest.raises(OptionError, match="Node 'bad'"):
        Bad("bad")


def test_duplicate_names_at_pipe():
    with pytest.raises(GraphError, match=r"Two nodes are named 'a' .*names must be unique"):
        Gen("g", size=1) | Map("a") | Map("a")


def test_node_added_twice_at_pipe():
    a = Map("a")
    with pytest.raises(GraphError, match=r"Node 'a' is added to the graph twice"):
        Gen("g", size=1) | [a, a]


def test_named_streams_must_match_at_pipe():
    with pytest.raises(
        StreamError, match=r"Node 'b' reads streams \['z'\] but its predecessor 'a' writes \['x', 'y'\]"
    ):
        Gen("g", size=1) | Map("a", out_streams=["x", "y"]) | Map("b", in_streams="z")


def test_reading_all_streams_of_a_node_that_writes_none():
    with pytest.raises(StreamError, match=r"Node 'b' reads every stream but its predecessor 'a' writes none"):
        Gen("g", size=1) | Map("a", out_streams=[]) | Map("b")


def test_non_node_in_graph():
    with pytest.raises(
        NodeTypeError, match=r"Only a Node, a NodeGraph or a list of them can follow node 'g', not int 3"
    ):
        Gen("g", size=1) | [Map("a"), 3]


def test_non_graph_to_pipeline():
    with pytest.raises(NodeTypeError, match=r"Pipeline\(\) takes a NodeGraph or a Node, not str"):
        Pipeline("gen")


@pytest.mark.parametrize(
    "bad,kind", [(0, OptionError), (-2, OptionError), (True, NodeTypeError), (2.0, NodeTypeError), ("2", NodeTypeError)]
)
def test_bad_n_threads(bad, kind):
    with pytest.raises(kind, match=r"Pipeline: n_threads must be an int >= 1 or None, not"):
        Pipeline(Gen("g", size=1), n_threads=bad)


def test_bad_streams_type():
    with pytest.raises(NodeTypeError, match=r"Node 'a': in_streams must be '\*', a stream name or a list"):
        Map("a", in_streams=5)


def test_bad_name():
    with pytest.raises(NodeTypeError, match=r"A node's name must be a non-empty str, not 5"):
        Map(5)


def test_unknown_pipeline_keyword_and_ignored_exec_name():
    Pipeline(Gen("g", size=1), exec_name="ParallelExecutor2")  # pyPiper's, accepted and ignored
    with pytest.raises(NodeTypeError, match=r"unexpected keyword argument\(s\) \['colour'\]"):
        Pipeline(Gen("g", size=1), colour="red")


def test_bad_client_type():
    with pytest.raises(NodeTypeError, match=r"client must be a distributed.Client or a scheduler address"):
        Pipeline(Gen("g", size=1), client=42)


def test_unpicklable_node_names_node_and_attribute():
    class Locked(Node):
        def setup(self):
            self.lock = threading.Lock()

        def run(self, data):
            self.emit(data)

    # Only a run that leaves the process needs to pickle it (in the process it just runs).
    with pytest.raises(NodePickleError, match=r"Node 'locked' cannot be pickled \(its attribute 'lock' holds lock"):
        Pipeline(Gen("g", size=1) | Locked("locked"), n_threads=2)


def test_emit_outside_a_pipeline_is_explained():
    with pytest.raises(RuntimeError, match=r"Node 'a': emit\(\) was called outside a running pipeline"):
        Map("a").emit(1)


def test_stream_length_mismatch_at_run_time():
    graph = Gen("g", size=3) | Map("m", in_streams=["x", "y"])
    with pytest.raises(StreamError, match=r"Node 'g' emitted 1 value\(s\) \(0\) but node 'm' reads 2 streams"):
        Pipeline(graph, n_threads=1, quiet=True).run()


def test_graph_repr_and_str():
    g = Gen("g", size=1) | Map("a")
    assert repr(g) == "<NodeGraph 'g': 2 nodes>"
    assert "Node<g> -> [Node<a>]" in str(g)
    assert isinstance(g, NodeGraph)


@pytest.mark.parametrize(
    ("keyword", "meant"),
    [
        ("stateles", "stateless"),
        ("batchsize", "batch_size"),
        ("in_stream", "in_streams"),
        ("retry", "retries"),
        ("on_errors", "on_error"),
        ("out_stream", "out_streams"),
        ("Batch_Size", "batch_size"),
    ],
)
def test_a_near_miss_of_a_reserved_keyword_is_an_error_naming_it(keyword, meant):
    class WordCount(Node):
        def run(self, data):
            self.emit(data)

    with pytest.raises(NodeTypeError, match=rf"Node 'wc': keyword '{keyword}' .* did you mean '{meant}'\?"):
        WordCount("wc", **{keyword: False})


def test_keywords_setup_takes_and_seed_style_attributes_keep_working():
    class Takes(Node):
        def setup(self, retry=0, stream="x"):
            self.got = (retry, stream)

        def run(self, data):
            pass

    class Seed(Node):
        def run(self, data):
            pass

    assert Takes("t", retry=2, stream="y").got == (2, "y")  # setup takes them: no slip
    seed = Seed("s", size=3, stream="y", batch=2, stateful=True, state=1)  # not close enough to any
    assert (seed.size, seed.stream, seed.batch) == (3, "y", 2)
