"""The rules of shared/docs/semantics.md, in the calling process (n_threads=1)."""

from __future__ import annotations

import contextlib
import io
import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pypiper_dask import Node, NodeGraph, Pipeline, PipelineResult
from pypiper_dask.runtime import SyncTaskBackend
from tests import nodes as N
from tests.reference import reference_run
from tests.strategies import build, failing_programs, programs
from tests.test_output_before_error import check_failing_program


def run_text(pipeline: Pipeline, **kwargs) -> tuple[str, PipelineResult]:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        result = pipeline.run(**kwargs)
    return buf.getvalue(), result


def run_tasks_text(pipeline: Pipeline, partition_size: int | None) -> tuple[str, PipelineResult]:
    """Run the task path of a cluster run (partitions, stages, splicing) in this process."""
    buf = io.StringIO()
    pipeline.partition_size = partition_size
    with contextlib.redirect_stdout(buf):
        result = pipeline._run_on(SyncTaskBackend())
    return buf.getvalue(), result


def check_against_reference(graph: NodeGraph, partition_size: int | None = None) -> str:
    """The reference's output from the in-process run and from the task path at ``partition_size``."""
    want_text, want_values = reference_run(graph)
    in_process, tasks = Pipeline(graph, n_threads=1), Pipeline(graph)  # a later run re-initialises the nodes
    text, result = run_text(in_process)
    assert text == want_text
    assert dict(result) == want_values
    text, result = run_tasks_text(tasks, partition_size)
    assert text == want_text
    assert dict(result) == want_values
    return text


# -- the seed README's examples ---------------------------------------------------------


class Generate(Node):
    def setup(self):
        self.pos = 0

    def run(self, data):
        if self.pos < self.size:
            self.emit(self.pos)
            self.pos = self.pos + 1
        else:
            self.close()


class Square(Node):
    def run(self, data):
        self.emit(data**2)


class Printer(Node):
    def setup(self):
        self.batch_size = Node.BATCH_SIZE_ALL

    def run(self, data):
        print(data)


def test_seed_first_example_prints_squares():
    text, result = run_text(Pipeline(Generate("gen", size=10) | Square("square")))
    assert text == "".join(f"{i * i}\n" for i in range(10))
    assert result["square"] == [i * i for i in range(10)]


def test_seed_batch_all_printer_gets_one_list():
    text, result = run_text(Pipeline(Generate("gen", size=10) | Square("square") | Printer("print")))
    assert text == str([i * i for i in range(10)]) + "\n"
    assert result["print"] == []


def test_seed_stateful_generator_in_setup():
    class StatefulGenerate(Generate):
        def setup(self):
            self.pos = 0
            self.stateless = False

    gen = StatefulGenerate("gen", size=10)
    assert gen.stateless is False
    text, _ = run_text(Pipeline(gen | Square("square") | Printer("print")))
    assert text == str([i * i for i in range(10)]) + "\n"
    assert gen.pos == 10  # the caller's source holds its final state


def test_printer_with_batch_size_keyword():
    class Show(Node):
        def run(self, data):
            print(data)

    text, _ = run_text(Pipeline(Generate("gen", size=7) | Show("print", batch_size=3)))
    assert text == "(0, 1, 2)\n(3, 4, 5)\n(6,)\n"


# -- the model -------------------------------------------------------------------------


def test_setup_receives_keywords_both_ways():
    class ByArg(Node):
        def setup(self, size, step=1):
            self.got = (size, step)

        def run(self, data):
            pass

    class ByKwargs(Node):
        def setup(self, **kwargs):
            self.got = dict(kwargs)

        def run(self, data):
            pass

    assert ByArg("a", size=3).got == (3, 1)
    assert ByArg("a", size=3).size == 3
    assert ByKwargs("b", size=3, colour="red").got == {"size": 3, "colour": "red"}
    assert Generate("g", size=4).size == 4  # attribute only, setup() takes none


def test_reserved_keywords_do_not_reach_setup_and_win():
    class Node5(Node):
        def setup(self, **kwargs):
            self.got = dict(kwargs)
            self.batch_size = 5

        def run(self, data):
            pass

    n = Node5("n", batch_size=2, stateless=False, in_streams=["x"], colour=1)
    assert n.got == {"colour": 1}
    assert n.batch_size == 2 and n.stateless is False and n.in_streams == ["x"]
    assert Node5("m").batch_size == 5


def test_pipeline_is_lazy():
    calls = []

    class Spy(Node):
        def run(self, data):
            calls.append(data)
            self.close()

    pipeline = Pipeline(Spy("spy") | Square("sq"))
    str(pipeline)
    repr(pipeline)
    assert calls == []


def test_pipeline_keeps_the_graph_shape_and_runs_the_callers_nodes():
    gen = Generate("gen", size=3)
    graph = gen | Square("square")
    pipeline = Pipeline(graph)
    graph | Printer("late")  # a node added afterwards is not run
    gen.size = 4  # but the nodes are the caller's objects, as in pyPiper
    text, result = run_text(pipeline)
    assert list(result) == ["square"]
    assert text == "0\n1\n4\n9\n"
    text, _ = run_text(pipeline)  # a later run re-initialises them from their keywords
    assert text == "0\n1\n4\n"


def test_run_twice_prints_the_same_and_final_state_is_kept():
    gen = Generate("gen", size=5)
    total = N.Running("total")
    pipeline = Pipeline(gen | total, quiet=True)
    first = pipeline.run()
    second = pipeline.run()
    assert first["total"] == second["total"] == [(i + 1, sum(range(i + 1))) for i in range(5)]
    assert total.count == 5 and total.total == 10
    assert gen.pos == 5


def test_single_node_pipeline_prints_the_source():
    text, result = run_text(Pipeline(Generate("gen", size=3)))
    assert text == "0\n1\n2\n"
    assert result["gen"] == [0, 1, 2]


def test_result_is_a_readonly_mapping_with_short_repr():
    _, result = run_text(Pipeline(Generate("gen", size=1000) | [Square("a"), N.Map("b", op="inc")]))
    assert repr(result) == "<PipelineResult a: 1000 items, b: 1000 items>"
    with pytest.raises(TypeError):
        result["a"] = []  # type: ignore[index]


def test_collect_false_keeps_counts_only():
    result = Pipeline(Generate("gen", size=50) | Square("sq"), quiet=True).run(collect=False)
    assert len(result) == 0
    assert result.counts == {"sq": 50}
    assert "not collected" in repr(result)


def test_update_callback_monotonic_with_total():
    seen = []
    Pipeline(Generate("gen", size=300) | Square("sq"), quiet=True, partition_size=32).run(
        update_callback=lambda done, total: seen.append((done, total))
    )
    assert seen[0] == (0, 300) and seen[-1] == (300, 300)
    assert all(a[0] <= b[0] for a, b in itertools.pairwise(seen))
    assert len(seen) > 3


def test_update_callback_total_none_without_size():
    class NoSize(Node):
        def setup(self):
            self.n = 0

        def run(self, data):
            self.n += 1
            self.emit(self.n) if self.n <= 3 else self.close()

    seen = []
    Pipeline(NoSize("src") | Square("sq"), quiet=True).run(update_callback=lambda d, t: seen.append((d, t)))
    assert seen[0] == (0, None) and seen[-1] == (3, None)


# -- batches, barriers, streams, closing ---------------------------------------------------


@pytest.mark.parametrize("partition_size", [1, 2, 5, 64])
def test_batches_are_exact_across_partitions(partition_size):
    text = check_against_reference(
        N.Gen("gen", size=23) | N.Batch("b", batch_size=4) | Printer("p"), partition_size=partition_size
    )
    assert text == str([(4, 6), (4, 22), (4, 38), (4, 54), (4, 70), (3, 63)]) + "\n"


def test_batch_all_gets_everything_once_after_input_ends():
    text = check_against_reference(
        N.Gen("gen", size=10, per_call=3) | N.Batch("all", batch_size=Node.BATCH_SIZE_ALL), partition_size=4
    )
    assert text == "(10, 45)\n"


def test_no_call_with_an_empty_batch():
    text, result = run_text(Pipeline(N.Gen("gen", size=0) | N.Batch("all", batch_size=Node.BATCH_SIZE_ALL)))
    assert text == "" and result["all"] == []


def test_named_streams_select_and_reorder():
    graph = (
        N.Gen("gen", size=4)
        | N.Split("split", out_streams=["a", "b"])
        | [N.Map("first", op="inc", in_streams=["a"]), N.Map("both", op="neg", in_streams=["b", "a"])]
    )
    text = check_against_reference(graph)
    assert text.splitlines()[:3] == ["1", "0", "0"]


def test_star_to_named_streams_pushes_every_position():
    graph = N.Gen("gen", size=3) | N.Map("pair", op="pair") | N.Map("m", op="inc", in_streams=["x", "y"])
    text = check_against_reference(graph)
    # pyPiper 0.5.3 loses values here (to_push = data); every position goes through.
    assert text == "1\n1\n2\n2\n3\n3\n"


def test_middle_node_emitting_twice_loses_nothing():
    # pyPiper 0.5.3 forwards only the first of several outputs of a middle node.
    graph = N.Gen("gen", size=4) | N.Explode("x", n=3) | N.Map("m", op="inc")
    text = check_against_reference(graph, partition_size=2)
    assert text == "2\n3\n4\n4\n5\n6\n"  # 1:(1,0); 2:(2,0),(2,1); 3:(3,0..2)


def test_fan_out_order_is_depth_first_in_written_order():
    graph = N.Gen("gen", size=2) | [N.Echo("a") | N.Map("a2", op="neg"), N.Map("b", op="inc")]
    text = check_against_reference(graph)
    assert text == "a got 0\n0\n1\na got 1\n-1\n2\n"


def test_stateless_close_discards_later_partitions_and_flushes_below():
    graph = N.Gen("gen", size=100) | [
        N.CloseAt("stop", limit=7) | N.Batch("all", batch_size=Node.BATCH_SIZE_ALL),
        N.Filter("f", mod=50),
    ]
    text = check_against_reference(graph, partition_size=3)
    lines = text.splitlines()
    # The barrier below the closed node runs as soon as item 7 closed its branch,
    # before item 7 goes down the second branch.
    assert lines.index("(8, 28)") + 1 == lines.index("7")


def test_close_stops_pulling_the_source_when_every_path_is_closed():
    gen = N.Gen("gen", size=10**9)
    _text, result = run_text(Pipeline(gen | N.Take("take", n=5) | Square("sq")))
    assert result["sq"] == [0, 1, 4, 9, 16]
    assert gen.pos < 10**6


@pytest.mark.parametrize("partition_size", [None, 1, 3])
def test_when_every_path_closed_the_stages_above_are_not_flushed_into_the_output(partition_size):
    """Found by hypothesis: the last, shorter batch went on to a printing node after every path had closed.

    A sequential run ends when the leaf closes: the batch above never gets its
    last tuple, so the node below it prints nothing more.
    """
    graph = N.Gen("gen", size=3) | N.Batch("b", batch_size=2, stateless=False) | N.Echo("e", stateless=False)
    text = check_against_reference(graph | N.CloseAt("stop", limit=0), partition_size=partition_size)
    assert text == "e got (2, 1)\n(2, 1)\n"


def test_prints_from_nodes_and_source_keep_sequential_order():
    graph = N.Gen("gen", size=5, loud=True) | N.Echo("e", stateless=False) | [N.Echo("leaf"), N.Running("r")]
    check_against_reference(graph, partition_size=2)


# The session's clusters' threads may draw from `random` while hypothesis draws a program.
@pytest.mark.filterwarnings("ignore:Do not use the `random` module inside strategies")
@pytest.mark.timeout(300, method="thread")  # hypothesis would swallow a signal
# 75, not 150 (the suite's costliest test): the in-process output of such programs is also
# checked by tests/test_exactly_once.py (60 examples, with calls) and tests/test_functions.py
# (60, both paths); each run draws new programs.
@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(programs(reuse=True, names=True), st.sampled_from([None, 1, 3, 17]))
def test_random_pipelines_match_the_sequential_reference(program, partition_size):
    check_against_reference(build(program), partition_size=partition_size)


@pytest.mark.timeout(300, method="thread")  # hypothesis would swallow a signal
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(failing_programs(reuse=True, names=True, keyed=True), st.sampled_from([None, 1, 3, 17]))
def test_random_programs_with_a_failing_node_output_what_the_reference_did_before_it(failing, partition_size):
    """Issue 19 item 2: in the caller's process, and on the task path at any partition size."""
    program, where, ledger = failing
    check_failing_program(program, where, ledger, lambda g: Pipeline(g, n_threads=1))

    def tasks(pipeline: Pipeline) -> PipelineResult:
        pipeline.partition_size = partition_size
        return pipeline._run_on(SyncTaskBackend())

    check_failing_program(program, where, ledger, Pipeline, tasks, stream=False)
