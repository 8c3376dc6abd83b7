"""Plain functions as nodes: ``as_node`` (issue 22, item 3)."""

from __future__ import annotations

import contextlib
import functools
import io
import subprocess
import sys
import textwrap

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pypiper_dask import FunctionNode, NodeTypeError, OptionError, Pipeline, as_node
from pypiper_dask.runtime.backends import SyncTaskBackend
from tests import nodes as N
from tests.conftest import ROOT
from tests.reference import reference_run
from tests.strategies import build, programs


def square(x):
    return x * x


def digits(x):
    yield from str(x)


def is_even(x):
    return x % 2 == 0


def nothing(x):
    return None


def total(batch):
    return sum(batch)


class Scale:
    def __init__(self, k):
        self.k = k

    def __call__(self, x):
        return self.k * x


def graph():
    return (
        N.Gen("gen", size=30)
        | as_node(square)
        | as_node(is_even, filter=True)
        | N.Map("m", op="inc")
        | [as_node(digits), as_node(total, batch_size=4), as_node(nothing)]
    )


def test_return_value_generator_and_filter_forms_in_every_mode():
    mapped = [x * x + 1 for x in range(30) if x % 2 == 0]  # squares, the even ones, plus one
    one = Pipeline(graph(), n_threads=1, quiet=True).run()
    tasks = Pipeline(graph(), quiet=True, partition_size=4)._run_on(SyncTaskBackend())
    for result in (one, tasks):
        assert result["nothing"] == [None] * len(mapped)  # None is emitted, as emit(None) would be
        assert result["digits"] == [d for v in mapped for d in str(v)]  # each value a generator yields
        assert result["total"] == [sum(mapped[i : i + 4]) for i in range(0, len(mapped), 4)]  # gets the batch


def test_names_follow_the_function_and_name_overrides():
    assert as_node(square).name == "square"
    assert as_node(square, name="sq").name == "sq"
    assert as_node(functools.partial(pow, exp=2)).name == "pow"
    assert as_node(Scale(3)).name == "Scale"
    first, second = as_node(lambda x: x), as_node(lambda x: x)
    a, b = (int(n.name.split("-")[1]) for n in (first, second))
    assert first.name.startswith("lambda-") and b == a + 1  # numbered in order, per process


def test_decorator_forms_and_the_node_stays_callable():
    @as_node
    def inc(x):
        return x + 1

    @as_node(name="pairs", batch_size=2)
    def pairs(batch):
        return list(batch)

    assert isinstance(inc, FunctionNode) and inc(1) == 2
    assert pairs.name == "pairs" and pairs.batch_size == 2
    result = Pipeline(N.Gen("gen", size=5) | inc | pairs, n_threads=1, quiet=True).run()
    assert result["pairs"] == [[1, 2], [3, 4], [5]]


def test_repr_plan_and_fusion_with_node_classes():
    p = Pipeline(N.Gen("gen", size=3) | as_node(square) | N.Map("m") | as_node(digits) | as_node(total, batch_size=2))
    assert repr(as_node(square)) == "as_node(square)"
    assert repr(as_node(is_even, name="even", filter=True)) == "as_node(is_even, name='even', filter=True)"
    stages = p.plan.stages
    assert stages[0].nodes == ("square", "m", "digits")  # fused with a node class, one task per partition
    assert stages[1].node == "total"
    text = str(p)
    assert "square (function)" in text and "digits (generator function)" in text
    assert p.plan.snapshot.info["square"].stateless


def test_a_function_keeping_state_in_a_closure_can_be_stateful():
    seen = []

    def running(x):
        seen.append(x)
        return sum(seen)

    result = Pipeline(N.Gen("gen", size=6) | as_node(running, stateless=False), quiet=True, partition_size=2)._run_on(
        SyncTaskBackend()
    )
    assert result["running"] == [0, 1, 3, 6, 10, 15]


@pytest.mark.parametrize(
    ("call", "error", "words"),
    [
        (lambda: as_node(3), NodeTypeError, "takes a function"),
        (lambda: as_node(N.Map("m")), NodeTypeError, "already a node"),
        (lambda: as_node(square, batchsize=2), NodeTypeError, "did you mean 'batch_size'"),
        (lambda: as_node(square, factor=2), NodeTypeError, "functools.partial"),
        (lambda: as_node(is_even, filter=True, batch_size=2), OptionError, "batch_size must be 1"),
        (lambda: as_node(digits, filter=True), NodeTypeError, "not a generator function"),
        (lambda: as_node(square, batch_size=0), OptionError, "batch_size"),
    ],
)
def test_mistakes_are_named(call, error, words):
    with pytest.raises(error, match=words):
        call()


def test_async_functions_are_refused():
    async def fetch(x):
        return x

    with pytest.raises(NodeTypeError, match="not an async one"):
        as_node(fetch)


def test_duplicate_names_say_which():
    from pypiper_dask import GraphError

    with pytest.raises(GraphError, match="square"):
        N.Gen("gen", size=1) | as_node(square) | as_node(square)


SCRIPT = """
from pypiper_dask import Pipeline, as_node
from tests.nodes import Gen

@as_node
def square(x):
    return x * x

def words(x):
    yield f"w{x}"

Pipeline(Gen("gen", size=6) | square | as_node(lambda x: x % 2 == 0, filter=True) | as_node(words),
         n_threads=2, partition_size=2).run()
"""


@pytest.mark.cluster
@pytest.mark.timeout(180)
def test_functions_from_main_go_to_workers_by_value(tmp_path):
    script = tmp_path / "fns.py"
    script.write_text(textwrap.dedent(SCRIPT))
    done = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=170,
        cwd=tmp_path,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["w0", "w4", "w16"]


@pytest.mark.cluster
@pytest.mark.timeout(120)
def test_function_nodes_on_a_cluster_match_the_caller(local_client):
    def g():
        return N.Gen("gen", size=40) | as_node(square) | [as_node(digits), as_node(is_even, filter=True)]

    here = Pipeline(g(), n_threads=1, quiet=True).run()
    there = Pipeline(g(), client=local_client, quiet=True, partition_size=5).run()
    assert dict(here) == dict(there)


def test_the_guide_sample_runs_and_gives_the_digits_of_the_large_squares():
    import re

    text = (
        (ROOT / "docs" / "guide" / "nodes.md")
        .read_text()
        .split("\n## Plain functions as nodes\n", 1)[1]
        .split("\n## ", 1)[0]
    )
    (code,) = re.findall(r"```python\n(.*?)```", text, re.S)
    assert "n_threads=2" in code
    namespace: dict = {"__name__": "readme_sample"}
    exec(compile(code.replace("n_threads=2", "n_threads=1, quiet=True"), "README.md", "exec"), namespace)
    assert namespace["result"]["chars"] == [d for x in range(10) if x * x > 10 for d in str(x * x)]
    assert namespace["square"](3) == 9


@pytest.mark.timeout(300, method="thread")  # hypothesis would swallow a signal
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(programs(reuse=True, names=True, functions=True), st.sampled_from([None, 1, 3, 17]))
def test_random_programs_with_function_nodes_match_the_sequential_reference(program, partition_size):
    graph = build(program)
    want_text, want_values = reference_run(graph)
    for pipeline, run in (
        (Pipeline(graph, n_threads=1), lambda p: p.run()),
        (Pipeline(graph, partition_size=partition_size), lambda p: p._run_on(SyncTaskBackend())),
    ):
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            result = run(pipeline)
        assert buf.getvalue() == want_text
        assert dict(result) == want_values


@pytest.mark.cluster
@pytest.mark.timeout(120)
def test_function_nodes_on_an_external_cluster(external_cluster):
    graph = N.Gen("gen", size=20) | as_node(square) | as_node(is_even, filter=True) | as_node(digits)
    result = Pipeline(graph, client=external_cluster, quiet=True, partition_size=3).run()
    assert result["digits"] == [d for x in range(20) if x % 2 == 0 for d in str(x * x)]
