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

    def step(self, number, method, *args, log=None):
        self.calls.append((number, method))
        self.log = log
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


# -- a stateful leaf's steps collected by the caller, without a task each ------------------


def test_a_fused_tasks_push_carries_its_log_without_its_items():
    """Where the caller collects the step, the fused task's result is never fetched: its log comes this way."""
    holder = FakeHolder()
    run_fused(top_stage(), Chunk([1, 2, 3]), None, frozenset(), ((0, 7, False),), holder)
    assert holder.log.n_in == 3
    assert len(holder.log.outs[0]) == 3 and not isinstance(holder.log.outs[0], list)  # counted, not carried


def _seq_holder():
    from pypiper_dask.compiler.tasks import seq_spec
    from pypiper_dask.worker.sequential import SeqHolder

    graph = N.Gen("g", size=3) | N.Running("r")
    plan = Pipeline(graph).plan
    plan = replace(plan, snapshot=plan.snapshot.with_nodes({n.name: n for n in graph}))
    return SeqHolder(seq_spec(plan, next(s for s in plan.stages if s.kind == "seq")))


def test_a_holder_answers_a_collect_with_the_log_pushed_with_its_step():
    import asyncio

    from pypiper_dask.worker.values import Items

    holder, log = _seq_holder(), Segment(1)

    async def push_then_collect():
        collected = asyncio.ensure_future(holder.step(0, "collect", with_log=True))  # before the push: it waits
        pushed = await holder.step(0, "process", Items([1, 2]), False, False, log=log)
        return pushed, await collected, await holder.step(0, "collect")

    pushed, (seg, kept), plain = asyncio.run(push_then_collect())
    assert seg is pushed is plain and list(seg.outs[0]) == [(1, 1), (2, 3)]
    assert kept is log


def test_the_caller_takes_only_a_steps_segment_and_falls_back_to_its_task_otherwise():
    from concurrent.futures import Future

    from pypiper_dask.compiler.tasks import TaskSpec
    from pypiper_dask.runtime.collect import Direct
    from pypiper_dask.worker import NodeFailure

    def direct(*answers, carry=4, keyed=False):
        d = Direct(TaskSpec(("r", 1), run_seq, (None, 1, None, 0, carry, False), 5), upstream=None, keyed=keyed)
        d.answers = [Future() for _ in answers]
        for future, answer in zip(d.answers, answers, strict=True):
            if answer is not None:
                (future.set_exception if isinstance(answer, Exception) else future.set_result)(answer)
        return d

    seg, log = Segment(1), Segment(1)
    taken = direct((seg, log))
    assert taken.answered() is True and taken.result is seg and seg.carried == (4, log)  # as run_seq brings it
    assert direct((Segment(1), None), carry=None).answered() is True  # the fused task's result is fetched
    assert direct(None).answered() is None  # not answered yet
    assert direct((None, log)).answered() is False  # no push arrived: the task sends the items
    assert direct((Segment(1), None)).answered() is False  # the log did not come with it
    assert direct(NodeFailure("r", 3, RuntimeError("x"), "")).answered() is False  # the task reports it
    assert direct(OSError("Unable to contact Actor's worker")).answered() is False  # the task's loss says which


def test_a_keyed_steps_answers_are_merged_in_the_partitions_order():
    """Each holder's answer comes with where its items were; an item whose key() raised leaves it to the task."""
    from concurrent.futures import Future

    from pypiper_dask.compiler.tasks import TaskSpec
    from pypiper_dask.runtime.collect import Direct

    def answer(values, log, where, bad=False):
        seg = Segment(1)
        seg.outs[0].extend(values)
        seg.ends = list(range(1, len(values) + 1))
        seg.n_in = len(values)
        future = Future()
        future.set_result((seg, (log, where, bad)))
        return future

    def direct(*answers):
        d = Direct(TaskSpec(("k", 1), run_seq, (None, 1, None, 0, 4, False), 5), upstream=None, keyed=True)
        d.answers = list(answers)
        return d

    log = Segment(1)
    merged = direct(answer(["a0", "a2"], log, [0, 2]), answer(["b1", "b3"], None, [1, 3]))
    assert merged.answered() is True
    assert list(merged.result.outs[0]) == ["a0", "b1", "a2", "b3"] and merged.result.carried == (4, log)
    assert direct(answer(["a0"], log, [0], bad=True), answer([], None, [], bad=True)).answered() is False
    assert direct(answer(["a0"], None, [0]), answer(["b1"], None, [1])).answered() is False  # no log came


def test_a_stateful_leafs_steps_run_without_tasks_of_their_own(local_client):
    """Each step was a task that waited on a worker's thread for the holder (S3 at 8 workers: +22% over S1)."""
    from dask.utils import key_split
    from distributed import get_task_stream

    from pypiper_dask.compiler import key_label
    from tests.reference import reference_run

    graph = N.Gen("gen", size=2_000) | N.Map("sq", op="sq") | N.Running("total")
    expected = reference_run(graph)[1]  # (before the run: the source runs in the caller, on its node)
    with get_task_stream(client=local_client) as ts:
        result = Pipeline(graph, client=local_client, quiet=True, partition_size=100).run()
    assert dict(result) == expected
    rounds = [t["key"] for t in ts.data if key_split(t["key"]) == key_label("sq")]
    steps = [t["key"] for t in ts.data if key_split(t["key"]) == key_label("total") and isinstance(t["key"][1], int)]
    assert len(rounds) == 20
    # A step left to its task (a push that took over 5 s to arrive) is still right, if slower.
    assert len(steps) < len(rounds) / 2, steps
