"""Exactly once: each node's ``run`` is called once per item it receives; values are as at emit; any name works.

shared/docs/semantics.md, "How often `run` is called": in a run that loses no
worker and retries nothing, a node's ``run`` is called exactly once per item
(or batch) it receives, whatever it prints, emits or closes. At ``n_threads=1``
the calls are exactly the sequential run's; on a cluster they are the same up to
a ``close()`` or an error, and past it a node may have been called for later
items, but never twice for one item. "Depth-first means depth-first": a value
reaches every consumer as it was at ``emit``, even from a reused buffer. "Node
names are the user's": any string is a valid name.

Every node logs its calls to a file (``calls=``, tests/nodes.py), which worker
processes append to; the reference logs the calls of the sequential run.
"""

from __future__ import annotations

import ast
import contextlib
import io
import itertools
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pypiper_dask import Node, NodeError, NodeGraph, Pipeline
from tests import nodes as N
from tests.nodes import read_calls
from tests.reference import reference_run
from tests.strategies import build, has_closes, programs, without_closes

# distributed's background threads draw from the global `random` module while
# hypothesis generates a program; hypothesis takes that for the strategy's doing.
random_in_background = pytest.mark.filterwarnings("ignore:Do not use the `random` module inside strategies")

MODES = [
    pytest.param("n_threads=1", id="n_threads=1"),
    pytest.param("local cluster", id="local", marks=pytest.mark.cluster),
    pytest.param("external cluster", id="external", marks=pytest.mark.cluster),
]


@pytest.fixture(params=MODES)
def where(request) -> dict:
    """The ``Pipeline`` keywords of one execution mode."""
    return keywords(request)


@pytest.fixture(params=MODES[:2])
def where_in_caller_or_local(request) -> dict:
    """The ``Pipeline`` keywords of the caller or a local cluster.

    For the many small graphs of the reused-buffer and node-name cases: what they check
    (values pickled at emit, names in keys) is the same on an external cluster, which the
    other tests here and tests/test_distributed.py run on.
    """
    return keywords(request)


def keywords(request) -> dict:
    if request.param == "local cluster":
        return {"client": request.getfixturevalue("local_client")}
    if request.param == "external cluster":
        return {"client": request.getfixturevalue("external_cluster")}
    return {"n_threads": 1}


def run_text(pipeline: Pipeline, **kwargs) -> tuple[str, dict]:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        result = pipeline.run(**kwargs)
    return buf.getvalue(), dict(result)


_files = itertools.count()


def fresh(tmp_path, what: str):
    """A new file name under ``tmp_path`` (hypothesis runs many examples in one test's folder)."""
    return tmp_path / f"{what}-{next(_files)}.calls"


def count_calls(path) -> Counter:
    """``(node, repr of data) -> how many calls`` from a call log."""
    return Counter(read_calls(path))


def differences(got: Counter, want: Counter) -> list:
    """The call lines whose counts differ, as ``(node, data, got, want)``, for a readable failure."""
    return sorted((*line, got[line], want[line]) for line in got.keys() | want.keys() if got[line] != want[line])[:20]


def check_program(program, tmp_path, **options) -> None:
    """Output equals the sequential reference's, and the calls do too (on a cluster, up to closes)."""
    ref_log, log = fresh(tmp_path, "reference"), fresh(tmp_path, "engine")
    want = reference_run(build(program, calls=log), calls=ref_log)  # never writes to `log`
    got = run_text(Pipeline(build(program, calls=log), **options))
    assert got == want
    got_calls, want_calls = count_calls(log), count_calls(ref_log)
    if "client" not in options or not has_closes(program):
        source = (program[0].get("name", "gen"), "None")
        pulled, pulls = got_calls.pop(source, 0), want_calls.pop(source, 0)
        assert not differences(got_calls, want_calls), "calls differ from the sequential run's (node, data, got, want)"
        assert pulled == pulls, f"the source was called {pulled} times; the sequential run calls it {pulls} times"
        return
    unclosed_log = fresh(tmp_path, "unclosed")
    reference_run(build(without_closes(program), calls=log), calls=unclosed_log)
    check_calls_past_a_close(got_calls, want_calls, count_calls(unclosed_log), build(program))


def check_graph(make, tmp_path, where: dict) -> None:
    """``make(calls_path)``'s graph: output and calls equal the reference's (no closes in it)."""
    log, ref_log = fresh(tmp_path, "engine"), fresh(tmp_path, "reference")
    want = reference_run(make(str(log)), calls=ref_log)
    got = run_text(Pipeline(make(str(log)), partition_size=4, **where))
    assert got == want
    assert not differences(count_calls(log), count_calls(ref_log)), "calls differ (node, data, got, want)"


def check_calls_past_a_close(got: Counter, closed: Counter, unclosed: Counter, graph) -> None:
    """The cluster's calls when nodes close: every call of the sequential run, and no item twice.

    Past a close, other workers may have called nodes for later items, each at most
    once: an item reaches a node no more often than in the sequential run, or in a run
    where nothing closes (the same value may legitimately come twice, from two items).
    Batches count per item, so a batch called again with a later item added is caught;
    and a batch that the sequential run ends early, at the close, may hold more items
    on a cluster that had already cut them (its items still each arrive once; what
    the short batch made below it never appears there).
    """
    batched = {n.name for n in graph if n.batch_size != 1}

    def per_item(calls: Counter) -> Counter:
        items: Counter = Counter()
        for (name, data), k in calls.items():
            if name in batched:
                for part in ast.literal_eval(data):
                    items[name, repr(part)] += k
            else:
                items[name, data] += k
        return items

    got_items, closed_items, unclosed_items = per_item(got), per_item(closed), per_item(unclosed)
    # A value that only the sequential run's early stop makes (a batch flushed short because
    # every path had closed, while the cluster had already cut more items) may be missing.
    missing = Counter({line: k for line, k in (closed_items - got_items).items() if unclosed_items[line]})
    assert not missing, f"items of the sequential run that no call received: {sorted(missing)[:20]}"
    twice = sorted(
        (*line, k, closed_items[line], unclosed_items[line])
        for line, k in got_items.items()
        if k > max(closed_items[line], unclosed_items[line], 1)
    )
    assert not twice, f"items a node got more often than any sequential run gives them (node, item, got, ...): {twice}"


# -- the examples: a node with a side effect per item ----------------------------


@pytest.mark.timeout(60)
def test_a_node_that_prints_every_tenth_item_is_called_once_per_item(where, tmp_path):
    log, ref_log = fresh(tmp_path, "ledger"), fresh(tmp_path, "reference")
    graph = N.Gen("gen", size=100) | N.Ledger("ledger", every=10, calls=str(log))
    want = reference_run(graph, calls=ref_log)
    assert len(read_calls(ref_log)) == 100
    got = run_text(Pipeline(graph, partition_size=7, **where))
    assert got == want
    assert [line for line in got[0].splitlines() if " at " in line] == [f"ledger at {i}" for i in range(0, 100, 10)]
    items = [int(data) for _, data in read_calls(log)]
    assert len(items) == 100, f"{len(items)} calls for 100 items"
    assert sorted(items) == list(range(100))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("stateless", [True, False], ids=["stateless", "stateful"])
def test_a_node_that_closes_is_called_once_per_item_up_to_its_close(where, tmp_path, stateless):
    log, ref_log = fresh(tmp_path, "ledger"), fresh(tmp_path, "reference")
    graph = N.Gen("gen", size=100) | N.Ledger("ledger", close_at=57, stateless=stateless, calls=str(log))
    want = reference_run(graph, calls=ref_log)
    assert [data for name, data in read_calls(ref_log) if name == "ledger"] == [repr(i) for i in range(58)]
    got = run_text(Pipeline(graph, partition_size=7, **where))
    assert got == want
    items = Counter(int(data) for _, data in read_calls(log))
    assert [i for i, k in items.items() if k > 1] == [], "items called twice"
    assert all(items[i] == 1 for i in range(58)), "items up to the close must each be called once"
    if "n_threads" in where or not stateless:
        # In the caller, and for the one instance of a stateful node, the calls stop at the close.
        assert sorted(items) == list(range(58))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("stateless", [True, False], ids=["stateless", "stateful"])
def test_a_node_that_raises_is_called_once_per_item_up_to_the_error(where, tmp_path, stateless):
    log = fresh(tmp_path, "ledger")
    graph = N.Gen("gen", size=100) | N.Ledger("ledger", fail_at=42, stateless=stateless, calls=str(log))
    with pytest.raises(NodeError) as info:
        run_text(Pipeline(graph, partition_size=7, **where))
    assert info.value.node == "ledger"
    items = Counter(int(data) for _, data in read_calls(log))
    assert [i for i, k in items.items() if k > 1] == [], "items called twice"
    assert items[42] == 1
    if not stateless:
        assert all(items[i] == 1 for i in range(42)), "a stateful node sees every item in order"
    if "n_threads" in where:
        assert sorted(items) == list(range(43))  # in the caller, the calls are the sequential run's


# -- every kind of node: the calls are the sequential run's -------------------------------

SHAPES = {
    "printing chain": (
        {"size": 40, "per_call": 1, "loud": False},
        [("echo", {"stateless": True}, [("map", {"op": "sq"}, [("echo", {"stateless": True}, [])])])],
    ),
    "fan-out": (
        {"size": 30, "per_call": 2, "loud": False},
        [
            ("echo", {"stateless": True}, [("map", {"op": "neg"}, []), ("explode", {"n": 2}, [])]),
            ("filter", {"mod": 3}, [("echo", {"stateless": True}, [])]),
            ("map", {"op": "str"}, []),
        ],
    ),
    "several emits per call": (
        {"size": 30, "per_call": 3, "loud": False},
        [("explode", {"n": 3}, [("echo", {"stateless": True}, [("map", {"op": "inc"}, [])])])],
    ),
    "named streams": (
        {"size": 25, "per_call": 1, "loud": False},
        [("split", {}, [("echo", {"stateless": True}, []), ("map", {"op": "sq"}, []), ("filter", {"mod": 2}, [])])],
    ),
    "batches": (
        {"size": 31, "per_call": 1, "loud": False},
        [
            ("batch", {"batch_size": 3, "stateless": True}, [("echo", {"stateless": True}, [])]),
            ("echo", {"stateless": True}, [("batch", {"batch_size": 4, "stateless": False}, [])]),
        ],
    ),
    "stateful": (
        {"size": 35, "per_call": 2, "loud": False},
        [("echo", {"stateless": False}, [("running", {"stateless": None}, [("echo", {"stateless": True}, [])])])],
    ),
    "barrier": (
        {"size": 30, "per_call": 1, "loud": False},
        [("explode", {"n": 2}, [("all", {"stateless": None}, [("echo", {"stateless": True}, [])])]), ("map", {}, [])],
    ),
    "a closing chain": (
        {"size": 50, "per_call": 1, "loud": False},
        [("map", {"op": "inc"}, [("close_at", {"limit": 29}, [("map", {"op": "neg"}, [])])])],
    ),
    "printing source": (
        {"size": 30, "per_call": 2, "loud": True},
        [("echo", {"stateless": True}, [("map", {"op": "sq"}, [])]), ("filter", {"mod": 3}, [])],
    ),
    "closes": (
        {"size": 60, "per_call": 1, "loud": True},
        [
            ("close_at", {"limit": 23}, [("echo", {"stateless": True}, []), ("all", {"stateless": None}, [])]),
            ("take", {"n": 31}, [("batch", {"batch_size": 4, "stateless": True}, [("echo", {"stateless": True}, [])])]),
        ],
    ),
    "every path closes": (
        {"size": 10**4, "per_call": 1, "loud": False},
        [("echo", {"stateless": True}, [("close_at", {"limit": 17}, [("running", {"stateless": None}, [])])])],
    ),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("shape", list(SHAPES))
def test_calls_of_each_kind_of_node_are_the_sequential_runs(where, tmp_path, shape):
    check_program(SHAPES[shape], tmp_path, partition_size=4, **where)


# -- reused output buffers: each consumer gets the value as it was at emit ---------------


@pytest.mark.timeout(60)
def test_a_reused_buffer_then_times10_gives_multiples_of_ten(where, tmp_path):
    log = fresh(tmp_path, "engine")
    graph = N.Gen("gen", size=5) | N.Reuse("reuse", calls=str(log)) | N.Times10("times10", calls=str(log))
    text, result = run_text(Pipeline(graph, **where))
    assert text == "0\n10\n20\n30\n40\n"  # as pyPiper prints it
    assert result == {"times10": [0, 10, 20, 30, 40]}
    assert sorted(read_calls(log)) == sorted(
        [("reuse", repr(i)) for i in range(5)] + [("times10", repr([i, i * 10])) for i in range(5)]
    )


REUSED = {
    "into a leaf": lambda log: N.Gen("gen", size=23) | N.Reuse("reuse", calls=log),
    "twice per call into a leaf": lambda log: N.Gen("gen", size=23) | N.Reuse("reuse", times=2, calls=log),
    "into a node": lambda log: N.Gen("gen", size=23) | N.Reuse("reuse", times=2) | N.Times10("times10", calls=log),
    "into a fan-out": lambda log: (
        N.Gen("gen", size=23) | N.Reuse("reuse") | [N.Times10("times10", calls=log), N.Echo("echo", calls=log)]
    ),
    "into a batch": lambda log: N.Gen("gen", size=23) | N.Reuse("reuse") | N.Echo("batch", batch_size=3, calls=log),
    "into a stateful batch": lambda log: (
        N.Gen("gen", size=23) | N.Reuse("reuse", times=2) | N.Echo("batch", batch_size=4, stateless=False, calls=log)
    ),
    "into a barrier": lambda log: (
        N.Gen("gen", size=23) | N.Reuse("reuse") | N.Echo("all", batch_size=Node.BATCH_SIZE_ALL, calls=log)
    ),
    "into a stateful node": lambda log: (
        N.Gen("gen", size=23) | N.Reuse("reuse") | N.Echo("stateful", stateless=False, calls=log) | N.Running("sum")
    ),
    "into a stateful closer": lambda log: (
        N.Gen("gen", size=23) | N.Reuse("reuse") | N.Take("take", n=9, calls=log) | N.Echo("echo", calls=log)
    ),
    "into named streams": lambda log: (
        N.Gen("gen", size=23)
        | N.Reuse("reuse", times=2, out_streams=["a", "b"])
        | [N.Echo("b-a", in_streams=["b", "a"], calls=log), N.Map("a", op="str", in_streams=["a"], calls=log)]
    ),
    "into another reuser": lambda log: (
        N.Gen("gen", size=23) | N.Reuse("outer") | N.Reuse("inner", times=2) | N.Echo("echo", calls=log)
    ),
    "from the source into a node": lambda log: N.ReuseGen("gen", size=23) | N.Times10("times10", calls=log),
    "from the source, three per call": lambda log: (
        N.ReuseGen("gen", size=23, per_call=3) | N.Echo("echo", calls=log) | N.Batch("batch", batch_size=2)
    ),
    "from the source alone": lambda log: NodeGraph(N.ReuseGen("gen", size=23, calls=log)),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", list(REUSED))
def test_a_reused_buffer_reaches_every_consumer_as_it_was_at_emit(where_in_caller_or_local, tmp_path, case):
    check_graph(REUSED[case], tmp_path, where_in_caller_or_local)


# -- any string is a node name ----------------------------------------------------------

NAMED = {
    "gen-out": lambda log: N.Gen("gen", size=20, calls=log) | N.Map("gen-out", op="inc", calls=log),
    "stateful gen-out under gen": lambda log: N.Gen("gen", size=20) | N.Running("gen-out", calls=log),
    "stateful gen-out in a fan-out": lambda log: (
        N.Gen("gen", size=20) | [N.Running("gen-out", calls=log), N.Map("out", op="neg", calls=log)]
    ),
    "stateful a+b beside a and b": lambda log: (
        N.Gen("gen", size=20) | [N.Map("a", calls=log) | N.Map("b", calls=log), N.Running("a+b", calls=log)]
    ),
    "stateful a+b below a and b": lambda log: (
        N.Gen("gen", size=20) | N.Map("a", calls=log) | N.Map("b", calls=log) | N.Running("a+b", calls=log)
    ),
    "a+b below a and b": lambda log: N.Gen("a", size=20) | N.Map("b", calls=log) | N.Map("a+b", op="neg", calls=log),
    "spaces and non-ASCII": lambda log: (
        N.Gen("x y", size=20)
        | [N.Echo("ünï", calls=log), N.Map("名前 ", op="str", calls=log), N.Running(" 🙂", calls=log)]
    ),
    "a hyphen and a non-breaking hyphen": lambda log: (
        N.Gen("gen", size=20)
        | [N.Map("a-b", calls=log), N.Map("a\u2011b", op="inc", calls=log), N.Running("gen\u2011out", calls=log)]
    ),
    "names like keys": lambda log: (
        N.Gen("stage-2-1a2b3c4d", size=20)
        | N.Echo("stage-2", batch_size=3, calls=log)
        | N.Running("stage", calls=log)
        | N.Map("stage-2-1a2b3c4d-out", calls=log)
    ),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", list(NAMED))
def test_any_string_is_a_node_name(where_in_caller_or_local, tmp_path, case):
    check_graph(NAMED[case], tmp_path, where_in_caller_or_local)


@pytest.mark.cluster
@pytest.mark.timeout(60)
def test_a_stateful_node_named_gen_out_runs_at_n_threads_2():
    total = N.Running("gen-out")
    _text, result = run_text(Pipeline(N.Gen("gen", size=50) | total, n_threads=2, quiet=True, partition_size=8))
    assert result["gen-out"] == [(i + 1, sum(range(i + 1))) for i in range(50)]
    assert (total.count, total.total) == (50, sum(range(50)))


# -- random programs ----------------------------------------------------------------------


@pytest.mark.timeout(300, method="thread")  # hypothesis would swallow a signal
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(programs(reuse=True, names=True), st.sampled_from([None, 1, 3, 17]))
def test_random_programs_call_each_node_as_the_sequential_run_does(tmp_path, program, partition_size):
    check_program(program, tmp_path, n_threads=1, partition_size=partition_size)


@pytest.mark.cluster
@random_in_background
@pytest.mark.timeout(300, method="thread")  # hypothesis would swallow a signal
@settings(
    # 25, not 15: tests/test_distributed.py's output-only check of these programs on a local
    # cluster (40 examples) was this check's first half, and is gone.
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(programs(reuse=True, names=True), st.sampled_from([None, 2, 7]))
def test_random_programs_on_a_local_cluster_call_no_node_twice_for_an_item(
    local_client, tmp_path, program, partition_size
):
    check_program(program, tmp_path, client=local_client, partition_size=partition_size)
