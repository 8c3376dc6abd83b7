"""Issue 19 item 2: before a node's error is raised, every mode delivers what a sequential run output first.

A node raises part-way through the input: ``run()`` prints, ``stream()`` yields,
``submit().result()`` prints and ``NodeError.partial`` holds exactly what the
sequential reference output before the failing call, in every mode; then the
``NodeError`` is raised. Before the fix ``stream()`` yielded 511 of 1,000 items at
``n_threads=1`` and a cluster run printed 65.
"""

from __future__ import annotations

import contextlib
import io

import pytest

from pypiper_dask import NodeError, Pipeline
from tests import nodes as N
from tests.reference import reference_until_error

MODES = ["n_threads=1", "local cluster", "external cluster"]
CONSUMERS = ["run", "stream", "collect", "submit"]

SIZE, FAIL_AT = 3000, 1000


def make(mode: str, request: pytest.FixtureRequest, graph, **options) -> Pipeline:
    if mode == "n_threads=1":
        return Pipeline(graph, n_threads=1, **options)
    if mode == "local cluster":
        return Pipeline(graph, client=request.getfixturevalue("local_client"), **options)
    return Pipeline(graph, client=request.getfixturevalue("external_cluster"), **options)


def consume(pipeline_of, consumer: str) -> tuple[str, list, NodeError]:
    """(what was printed, the (leaf, item) pairs delivered, the NodeError) of one way of consuming the run."""
    buf, pairs = io.StringIO(), []
    with contextlib.redirect_stdout(buf), pytest.raises(NodeError) as info:
        if consumer == "run":
            pipeline_of().run()
        elif consumer == "stream":
            for pair in pipeline_of().stream():
                pairs.append(pair)
        elif consumer == "collect":
            pipeline_of(quiet=True).run()
        else:
            pipeline_of().submit().result(timeout=120)
    return buf.getvalue(), pairs, info.value


def graphs():
    """The shapes: a fused chain whose leaf fails; a stateful node failing part-way; a failure above a stateful node.

    The failing leaf and the failing stateful node emit the item before they raise.
    """
    return {
        "fused leaf": N.Gen("gen", size=SIZE) | N.Ledger("ledger", every=250, fail_at=FAIL_AT, emit_first=True),
        "stateful": (
            N.Gen("gen", size=SIZE)
            | N.Map("inc", op="inc")
            | N.Ledger("ledger", every=250, fail_at=FAIL_AT + 1, stateless=False, emit_first=True)
            | N.Map("sq", op="sq")
        ),
        "above stateful": (
            N.Gen("gen", size=SIZE) | N.Ledger("ledger", every=250, fail_at=FAIL_AT) | N.Running("running")
        ),
    }


@pytest.mark.timeout(180)
@pytest.mark.parametrize("shape", list(graphs()))
@pytest.mark.parametrize("consumer", CONSUMERS)
@pytest.mark.parametrize("mode", MODES)
def test_output_before_a_node_error_is_the_sequential_runs(request, mode, consumer, shape):
    text, values, exc = reference_until_error(graphs()[shape])
    assert isinstance(exc, ValueError)
    (leaf,) = values
    assert len(values[leaf]) == FAIL_AT  # the items before the failing one went all the way

    printed, pairs, error = consume(lambda **o: make(mode, request, graphs()[shape], **o), consumer)
    assert error.node == "ledger" and "fails at" in str(error)
    if consumer in ("run", "submit"):
        assert printed == text
    elif consumer == "stream":
        assert pairs == [(leaf, v) for v in values[leaf]]
        assert printed == "".join(
            line + "\n" for line in text.splitlines() if line.startswith("ledger at")
        )  # the nodes' prints
    else:
        assert error.partial[leaf] == values[leaf]
    assert error.partial.counts == {leaf: FAIL_AT}


@pytest.mark.timeout(60)
def test_a_node_failing_in_its_first_call_delivers_nothing():
    graph = N.Gen("gen", size=50) | N.Ledger("ledger", fail_at=0)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), pytest.raises(NodeError) as info:
        Pipeline(graph, n_threads=1).run()
    assert buf.getvalue() == "" and info.value.partial.counts == {"ledger": 0}


# -- random programs (the random-program suites call this, in every mode) -----------------------


def check_failing_program(program, where: int, ledger: dict, make, runner=None, stream: bool = True) -> None:
    """A random program with a node that raises at a drawn item, against the reference.

    ``make(graph)`` gives the pipeline of a mode; ``runner(pipeline)`` runs it
    (``run()`` if not given). Printed output and the error's ``partial`` (or
    the result, where nothing raised) are the reference's output before the
    failing call; with ``stream``, so are the items ``stream()`` yields.
    """
    from tests.strategies import build_failing

    def graph():
        return build_failing(program, where, ledger)

    text, values, exc = reference_until_error(graph())
    buf, error, result = io.StringIO(), None, None
    with contextlib.redirect_stdout(buf):
        try:
            result = (runner or Pipeline.run)(make(graph()))
        except NodeError as raised:
            error = raised
    check_error(error, exc)
    assert buf.getvalue() == text
    assert dict(result if error is None else error.partial) == values
    if not stream:
        return
    pairs, error = [], None
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            for pair in make(graph()).stream():
                pairs.append(pair)
        except NodeError as raised:
            error = raised
    check_error(error, exc)
    assert {leaf: [v for who, v in pairs if who == leaf] for leaf in values} == values


def check_error(error: NodeError | None, exc: Exception | None) -> None:
    """The run raised a ``NodeError`` where the reference raised, caused by the same exception."""
    if exc is None:
        assert error is None, f"the reference raised nothing, the run raised {error!r}"
        return
    assert error is not None, f"the reference raised {exc!r}, the run nothing"
    assert type(error.__cause__) is type(exc) and str(error.__cause__) == str(exc)


class FailingGen(N.Gen):
    """A source that raises in its call at position ``fail_at``, after printing."""

    def setup(self, size: int, fail_at: int, per_call: int = 1) -> None:
        super().setup(size, per_call=per_call, loud=True)
        self.fail_at = fail_at

    def run(self, data):
        if self.pos >= self.fail_at:
            print("source fails")
            self.emit(-1)  # never leaves the failing call
            raise ValueError("source fails")
        super().run(data)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("per_call", [1, 3])
@pytest.mark.parametrize("mode", MODES)
def test_output_before_the_sources_error_is_the_sequential_runs(request, mode, per_call):
    def graph():
        return FailingGen("gen", size=SIZE, fail_at=FAIL_AT, per_call=per_call) | N.Running("running")

    text, values, exc = reference_until_error(graph())
    assert isinstance(exc, ValueError) and len(values["running"]) == -(-FAIL_AT // per_call) * per_call
    printed, _, error = consume(lambda **o: make(mode, request, graph(), partition_size=100, **o), "run")
    assert printed == text
    assert error.node == "gen" and error.partial["running"] == values["running"]
