"""``print(pipeline)``: the node tree exactly as built, each node's stage, and the plan."""

from __future__ import annotations

import textwrap

from pypiper_dask import Node, Pipeline
from tests import nodes as N


def drawn(pipeline: Pipeline) -> str:
    return str(pipeline) + "\n"


def test_a_node_under_the_source_is_drawn_under_the_source_and_fused_siblings_are_not_a_chain():
    graph = N.Gen("gen", size=10) | [N.Map("a") | N.Map("a2"), N.Map("b")]
    assert drawn(Pipeline(graph, n_threads=2)) == textwrap.dedent("""\
        Pipeline of 4 nodes, runs on a local cluster of 2 worker processes
        Graph:
          gen (Gen)         source
          ├─ a (Map)        stage 0
          │  └─ a2 (Map)    stage 0
          └─ b (Map)        stage 0
        Plan:
          source   gen: runs in this process; its items go out in partitions of a size chosen while it runs
          stage 0  a, a2, b: run in parallel, one task per partition of gen's items
        """)


def test_sequential_nodes_deep_in_the_tree_keep_their_place_and_stage():
    graph = N.Gen("gen", size=7) | [
        N.Map("a") | [N.Running("total") | N.Map("after"), N.Map("a2")],
        N.Batch("fours", batch_size=4),
        N.Map("b"),
    ]
    assert drawn(Pipeline(graph, n_threads=1)) == textwrap.dedent("""\
        Pipeline of 7 nodes, runs in the calling process
        Graph:
          gen (Gen)                          source
          ├─ a (Map)                         stage 0
          │  ├─ total (Running, stateful)    stage 1
          │  │  └─ after (Map)               stage 2
          │  └─ a2 (Map)                     stage 0
          ├─ fours (Batch, batch=4)          stage 3
          └─ b (Map)                         stage 0
        Plan:
          source   gen: runs in this process, no partitions: each of its items goes through all the nodes before the next, as in pyPiper (the stages below are how a cluster would run them)
          stage 0  a, a2, b: run in parallel, one task per partition of gen's items; they pass items on to total, fours
          stage 1  total: runs in one place, stateful: one call per item, every item once, in order
          stage 2  after: runs in parallel, one task per partition of total's items
          stage 3  fours: runs in one place, called with batches of exactly 4 items, in order
        """)  # noqa: E501


def test_named_streams_are_drawn_on_the_nodes_that_name_them():
    split = N.Split("split", out_streams=["item", "twice"])
    graph = (
        N.Gen("gen", size=5)
        | split
        | [
            N.Map("items", in_streams="item"),
            N.Running("both", in_streams=["twice", "item"]),
            N.Map("whole"),
        ]
    )
    assert drawn(Pipeline(graph, partition_size=100)) == textwrap.dedent("""\
        Pipeline of 5 nodes, runs on the default Dask client if one is active, else in the calling process
        Graph:
          gen (Gen)                                                     source
          └─ split (Split, streams * -> [item, twice])                  stage 0
             ├─ items (Map, streams [item] -> *)                        stage 0
             ├─ both (Running, stateful, streams [twice, item] -> *)    stage 1
             └─ whole (Map)                                             stage 0
        Plan:
          source   gen: runs in this process; its items go out in partitions of 100
          stage 0  split, items, whole: run in parallel, one task per partition of gen's items; they pass items on to both
          stage 1  both: runs in one place, stateful: one call per item, every item once, in order
        """)  # noqa: E501


def test_stages_with_no_fused_node_say_they_only_route():
    graph = (
        N.Gen("gen", size=5)
        | N.Running("total")
        | [
            N.Running("again"),
            N.Batch("all", batch_size=Node.BATCH_SIZE_ALL),
        ]
    )
    assert drawn(Pipeline(graph, client="tcp://127.0.0.1:8786", partition_size=3)) == textwrap.dedent("""\
        Pipeline of 4 nodes, runs on the cluster at tcp://127.0.0.1:8786
        Graph:
          gen (Gen)                          source
          └─ total (Running, stateful)       stage 1
             ├─ again (Running, stateful)    stage 3
             └─ all (Batch, batch=ALL)       stage 4
        Plan:
          source   gen: runs in this process; its items go out in partitions of 3
          stage 0  (no node): one task per partition of gen's items passes them on to total
          stage 1  total: runs in one place, stateful: one call per item, every item once, in order
          stage 2  (no node): one task per partition of total's items passes them on to again, all
          stage 3  again: runs in one place, stateful: one call per item, every item once, in order
          stage 4  all: runs in one place, waits for all its input, then one call with every item
        """)


def test_the_source_line_names_the_partition_size_the_run_uses_not_the_sources_size():
    pipeline = Pipeline(N.Gen("gen", size=12345) | N.Map("sq"), n_threads=2)
    assert "12345" not in str(pipeline)
    assert "partitions of a size chosen while it runs" in str(pipeline)
    pipeline.partition_size = 500
    assert "its items go out in partitions of 500\n" in str(pipeline)
    pipeline.n_threads = 1
    assert "no partitions" in str(pipeline) and "500" not in str(pipeline)
