"""Unit tests of the execution core's parts: the plan compiler, task names, the ordering log, the splicer, the sizer."""

from __future__ import annotations

import pickle

import pytest
from dask.utils import key_split

from pypiper_dask import Node, NodeGraph
from pypiper_dask.compiler import FusedStage, SeqStage, TaskNames, compile_plan, fused_spec, round_tasks
from pypiper_dask.model.snapshot import Snapshot
from pypiper_dask.ordering import END, Closed, Printed, Segment, Splicer, compact_ends, events
from pypiper_dask.runtime.source import PartitionSizer
from pypiper_dask.worker import Chunk, SeqHolder, run_fused
from pypiper_dask.worker.sequential import SeqSpec
from tests import nodes as N


def plan_of(graph):
    return compile_plan(Snapshot.from_graph(graph))


def shape(plan) -> list:
    return [(s.kind, s.nodes if isinstance(s, FusedStage) else s.node) for s in plan.stages]


# -- the plan compiler -----------------------------------------------------------------------


def test_a_stateless_chain_is_one_fused_stage():
    plan = plan_of(N.Gen("gen", size=3) | N.Map("a") | N.Map("b"))
    assert shape(plan) == [("fused", ("a", "b"))]
    (stage,) = plan.stages
    assert [(s.kind, s.node) for s in stage.sinks] == [("leaf", "b")]
    assert not stage.ends  # a chain into one leaf, fed by the source: no item ends needed
    assert plan.leaves == ("b",)


def test_sequential_nodes_cut_the_graph_into_stages_in_preorder():
    graph = N.Gen("gen", size=3) | [
        N.Map("a") | N.Running("run") | [N.Map("b"), N.Batch("all", batch_size=Node.BATCH_SIZE_ALL)],
        N.Map("c"),
    ]
    plan = plan_of(graph)
    assert shape(plan) == [("fused", ("a", "c")), ("seq", "run"), ("fused", ("b",)), ("seq", "all")]
    top, run, below, barrier = plan.stages
    assert [(s.kind, s.node, s.stage) for s in top.sinks] == [("cross", "run", 1), ("leaf", "c", None)]
    assert isinstance(run, SeqStage) and run.below == 2 and run.chain == (1,)
    assert isinstance(barrier, SeqStage) and barrier.below is None and barrier.chain == (1, 3)
    assert top.ends and below.ends
    assert dict(top.under) == {"a": frozenset({0}), "c": frozenset({1})}
    assert plan.seq_under["a"] == (1, 3)
    assert plan.ancestors["b"] == {"gen", "a", "run", "b"}


def test_the_source_alone_is_its_own_output():
    plan = plan_of(NodeGraph(N.Gen("gen", size=3)))
    assert shape(plan) == [("fused", ())]
    assert [(s.kind, s.node) for s in plan.stages[0].sinks] == [("leaf", "gen")]


def test_every_node_name_comes_back_from_its_keys_and_no_two_stages_share_a_prefix():
    names = ["gen", "gen-out", "a+b", "x y", "ünï", "stage-2-1a2b3c4d"]
    graph = N.Gen(names[0], size=3) | N.Running(names[1]) | [N.Map(names[2]), N.Map(names[3])]
    graph = graph | N.Running(names[4]) | N.Map(names[5])
    plan = plan_of(graph)
    task_names = TaskNames(plan)
    prefixes = set(task_names.prefix.values())
    assert len(prefixes) == len(plan.stages)
    for stage in plan.stages:
        wanted = [stage.node] if isinstance(stage, SeqStage) else list(stage.nodes) or [stage.above]
        shown = key_split(task_names.key(stage.id, 0)).replace("\u2011", "-")
        assert shown == "+".join(wanted)


def test_round_tasks_number_each_sequential_step_in_the_holders_order():
    plan = plan_of(N.Gen("gen", size=3) | N.Running("r1") | N.Running("r2"))
    names = TaskNames(plan, token="00000000")
    source_round = round_tasks(plan, names, 5, 0, Chunk([1, 2]))
    steps = {t.stage: t.args[1] for t in source_round if t.sequential}
    assert steps == {1: 5, 3: 5}  # source round i is every holder's step i
    flush_r1 = round_tasks(plan, names, 7, 1, n_source=7)
    flush_r2 = round_tasks(plan, names, 8, 3, n_source=7)
    assert {t.stage: t.args[1] for t in flush_r1 if t.sequential} == {1: 7, 3: 7}
    assert {t.stage: t.args[1] for t in flush_r2 if t.sequential} == {3: 8}
    assert all(t.key[0] != u.key[0] for t in source_round for u in source_round if t is not u)


# -- the ordering log: written by the tasks, read back by the caller ---------------------------


def test_a_segment_written_by_a_fused_task_reads_back_in_sequential_order():
    # fan-out, a node printing before it emits, a node emitting twice per item
    graph = N.Gen("gen", size=3) | [N.Echo("e") | N.Explode("x", n=2), N.Map("m", op="neg")]
    plan = plan_of(graph)
    spec = fused_spec(plan, plan.stages[0], "t1")
    seg = run_fused(spec, Chunk([1, 2]))
    seg = pickle.loads(pickle.dumps(seg))  # what crosses a process boundary
    got = list(events(seg))
    assert got == [
        Printed("e", "e got 1\n"),
        (0, (1, 0)),
        (1, -1),
        END,
        Printed("e", "e got 2\n"),
        (0, (2, 0)),
        (0, (2, 1)),
        (1, -2),
        END,
    ]


def test_a_close_is_read_back_after_the_values_of_the_call_that_closed():
    graph = N.Gen("gen", size=5) | [N.CloseAt("stop", limit=1) | N.Map("m"), N.Map("n", op="inc")]
    plan = plan_of(graph)
    seg = run_fused(fused_spec(plan, plan.stages[0], "t2"), Chunk([0, 1, 2]))
    got = list(events(seg))
    assert got == [(0, 0), (1, 1), END, (0, 1), Closed("stop"), (1, 2), END, (1, 3), END]
    assert seg.closed == ["stop"] and seg.blocked == {0}


def test_a_sequential_holder_writes_one_unit_per_input_item():
    holder = SeqHolder(SeqSpec("b", pickle.dumps(N.Batch("b", batch_size=2)), 2))
    seg = holder.process([1, 2, 3])
    assert list(events(seg)) == [END, (0, (2, 3)), END, END]
    assert list(events(holder.flush())) == [(0, (1, 3)), END]


def test_compact_ends_round_trip():
    seg = Segment(1)
    seg.outs[0].extend("abc")
    seg.ends = compact_ends([1, 2, 3])
    assert seg.ends == range(1, 4)
    back = pickle.loads(pickle.dumps(seg))
    assert list(events(back)) == [(0, "a"), END, (0, "b"), END, (0, "c"), END]


# -- the splicer -----------------------------------------------------------------------------


def test_the_splicer_interleaves_a_sequential_stage_into_the_items_it_came_from():
    graph = N.Gen("gen", size=2) | [N.Running("run"), N.Map("m")]
    plan = plan_of(graph)
    top = Segment(2)
    top.outs[0].extend([0, 1])  # into "run"
    top.outs[1].extend([10, 11])  # leaf "m"
    top.order, top.ends = [0, 1, 0, 1], [2, 4]
    run = Segment(1)
    run.outs[0].extend([(1, 0), (2, 1)])
    run.ends = [1, 2]
    run.marks.append((1, 1, Printed("run", "second\n")))
    delivered, written = [], []
    splicer = Splicer(
        plan, quiet=False, deliver=lambda leaf, vs: delivered.append((leaf, list(vs))), write=written.append
    )
    splicer.round({0: top, 1: run}, Chunk([0, 1]))
    flush = Segment(1)
    flush.ends = [0]
    splicer.flush(1, {1: flush})
    splicer.finish()
    assert delivered == [("run", [(1, 0)]), ("m", [10]), ("run", [(2, 1)]), ("m", [11])]
    assert written == ["second\n"]


def test_the_splicer_takes_plain_rounds_whole():
    plan = plan_of(N.Gen("gen", size=3) | N.Map("m"))
    seg = Segment(1)
    seg.outs[0].extend([1, 2, 3])
    delivered = []
    splicer = Splicer(plan, quiet=True, deliver=lambda leaf, vs: delivered.append((leaf, list(vs))), write=print)
    splicer.round({0: seg}, Chunk([0, 1, 2]))
    assert delivered == [("m", [1, 2, 3])]


# -- the partition sizer ----------------------------------------------------------------------


def test_partitions_are_calibrated_then_sized_by_cost_and_shrink_at_the_end():
    sizer = PartitionSizer(None, n_workers=4, total=100_000)
    # Before a cost is known partitions grow from one item (slow nodes show progress early).
    assert not sizer.calibrated and [sizer.next(0) for _ in range(3)] == [1, 32, 32]
    first = Segment(1)
    first.seconds = 0.032  # 1 ms an item over the first 32
    sizer.observe(32, {0: first})
    assert sizer.calibrated
    assert sizer.next(0) == 200  # 0.2 s of work
    assert sizer.next(99_800) == 25  # what is left over twice the workers, but ≥ 25 ms of work
    assert sizer.next(100_000) == 25


def test_a_fixed_partition_size_is_kept():
    sizer = PartitionSizer(7, n_workers=4, total=100)
    assert sizer.calibrated and sizer.next(0) == sizer.next(99) == 7


@pytest.mark.parametrize("total", [None, 10])
def test_partitions_stay_within_bounds(total):
    sizer = PartitionSizer(None, n_workers=2, total=total)
    fast = Segment(1)
    fast.seconds = 1e-9
    sizer.observe(1000, {0: fast})
    assert PartitionSizer.smallest <= sizer.next(0) <= PartitionSizer.largest
