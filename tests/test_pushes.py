"""A fused task hands its items to the sequential holder below as it ends (a push); its step collects.

A run does not wait for its holders to be made before its first rounds go out:
a fused task sent before its holder exists pushes nothing, says so in its
segment, and the step below sends the items itself instead of waiting for a
push that never comes. Worker functions called here directly, with a stand-in
for the holder's actor: no cluster.
"""

from __future__ import annotations

import threading
from dataclasses import replace

import pytest

from pypiper_dask import Pipeline
from pypiper_dask.compiler.tasks import fused_spec
from pypiper_dask.errors import ValuePickleError
from pypiper_dask.ordering import Segment
from pypiper_dask.worker import Chunk
from pypiper_dask.worker.fused import run_fused
from pypiper_dask.worker.sequential import push_step, run_seq
from tests import nodes as N


class Answer:
    def __init__(self, value):
        self.value = value

    def result(self, timeout=None):
        return self.value


class FakeHolder:
    """Records the steps asked of it; a collect finds the pushed step's result."""

    def __init__(self):
        self.calls = []
        self.done = Segment(1)

    def step(self, number, method, *args):
        self.calls.append((number, method))
        return Answer(None if method == "process" and len(args) == 4 else self.done)


def top_stage():
    """The fused stage of ``g | m | e`` (``e`` stateful): ``m``, its one sink crossing into ``e``."""
    graph = N.Gen("g", size=3) | N.Map("m") | N.Echo("e", stateless=False)
    plan = Pipeline(graph).plan
    # The nodes as a run sends them (the plan alone holds the graph's structure).
    plan = replace(plan, snapshot=plan.snapshot.with_nodes({n.name: n for n in graph}))
    return fused_spec(plan, plan.stages[0], "test")


def test_a_fused_task_pushes_to_a_made_holder_and_says_so():
    holder = FakeHolder()
    seg = run_fused(top_stage(), Chunk([1, 2, 3]), None, frozenset(), ((0, 7, False),), holder)
    assert holder.calls == [(7, "process")]
    assert seg.pushed == frozenset({0})


def test_a_fused_task_sent_before_its_holder_was_made_pushes_nothing():
    seg = run_fused(top_stage(), Chunk([1, 2, 3]), None, frozenset(), ((0, 7, False),), None)
    assert seg.pushed == frozenset()
    assert len(seg.outs[0]) == 3  # its items go down with the segment: the step sends them


def test_a_step_collects_what_was_pushed():
    holder, upstream = FakeHolder(), Segment(1)
    upstream.outs[0].extend([1, 2, 3])
    upstream.pushed = frozenset({0})
    assert run_seq(holder, 7, upstream, 0) is holder.done
    assert holder.calls == [(7, "collect")]


def test_a_step_whose_items_were_not_pushed_sends_them_without_waiting_for_a_push():
    """Before, every step asked its holder to collect first, which waits 5 s for a push."""
    holder, upstream = FakeHolder(), Segment(1)
    upstream.outs[0].extend([1, 2, 3])
    assert run_seq(holder, 7, upstream, 0) is holder.done
    assert holder.calls == [(7, "process")]


def test_a_value_that_cannot_be_pickled_is_named_with_its_node_whether_pushed_or_not():
    """Sent before its holder was made, the partition still fails where it was made, naming its receiver."""
    for holder in (None, FakeHolder()):
        with pytest.raises(ValuePickleError, match="on its way to node 'e' in another process"):
            push_step(holder, 0, [1, threading.Lock()], False, node="e")


# -- a holder in the task's own worker is called without the network ------------------------


def _call_twice(holder, number, items):
    """On a worker: a step of ``holder`` processed, its answer changed by the task, then asked again."""
    from pypiper_dask.worker.sequential import _actor
    from pypiper_dask.worker.values import Items

    target = _actor(holder)
    first = target.step(number, "process", Items(items), False, False).result(timeout=30)
    first.outs[0].append("changed by the task")
    again = target.step(number, "collect").result(timeout=30)
    return type(target).__name__, first.outs[0], again.outs[0]


def test_a_task_calls_a_holder_of_its_own_worker_directly_and_gets_a_copy(local_client):
    from pypiper_dask.compiler.tasks import seq_spec
    from pypiper_dask.worker.sequential import HolderAt, make_holder

    graph = N.Gen("g", size=3) | N.Running("r")
    plan = Pipeline(graph).plan
    plan = replace(plan, snapshot=plan.snapshot.with_nodes({n.name: n for n in graph}))
    stage = next(s for s in plan.stages if s.kind == "seq")
    here, there = sorted(local_client.scheduler_info()["workers"])
    actor = local_client.submit(make_holder, seq_spec(plan, stage), actor=True, workers=[here], pure=False)
    actor.result(timeout=60)
    holder = HolderAt(here, actor.key)
    try:
        # Step 0 from the holder's worker (no network), step 1 from the other (an actor call).
        local = local_client.submit(_call_twice, holder, 0, [1, 2], workers=[here], pure=False).result(timeout=60)
        remote = local_client.submit(_call_twice, holder, 1, [3], workers=[there], pure=False).result(timeout=60)
    finally:
        del actor
    assert local[0] == "_HolderHere" and remote[0] == "Actor"
    # (count, total) after each item, and the holder's kept answer untouched by the task that changed its copy.
    assert local[1:] == ([(1, 1), (2, 3), "changed by the task"], [(1, 1), (2, 3)])
    assert remote[1:] == ([(3, 6), "changed by the task"], [(3, 6)])
