"""Plan → one Dask graph of a whole, finite run (for ``Pipeline.to_dask()``).

A collection holds no actor, so each sequential stage's holder is carried
through a chain of tasks (``worker.step_seq``), one per partition, each
depending on the one before. The last task assembles the
``PipelineResult`` exactly as ``run()`` does.
"""

from __future__ import annotations

from typing import Any

from dask.task_spec import DataNode, Task, TaskRef

from .. import worker
from .plan import FusedStage, Plan
from .tasks import TaskNames, fused_spec, seq_spec

__all__ = ["collection_graph"]


def collection_graph(plan: Plan, names: TaskNames, chunks: list[worker.Chunk]) -> tuple[dict, Any]:
    """The graph and the key of its result, for source partitions ``chunks``."""
    graph: dict = {}
    last: dict[int, Any] = {}  # sequential stage -> its latest step (key) or its spec
    for stage in plan.stages:
        spec_key = names.key(stage.id, "spec")
        spec = fused_spec(plan, stage, names.token) if isinstance(stage, FusedStage) else seq_spec(plan, stage)
        graph[spec_key] = DataNode(spec_key, spec)
        last[stage.id] = spec_key
    rounds = []

    def add(stage_id: int, index: int, upstream: Any, sink: int | None, results: dict) -> None:
        stage = plan.stages[stage_id]
        key = names.key(stage_id, index)
        if isinstance(stage, FusedStage):
            graph[key] = Task(key, worker.run_fused, TaskRef(names.key(stage_id, "spec")), upstream, sink)
            for i, s in enumerate(stage.sinks):
                if s.kind == "cross":
                    assert s.stage is not None  # a crossing always names its stage
                    add(s.stage, index, TaskRef(key), i, results)
        else:
            prev = TaskRef(last[stage_id])
            if upstream is None:
                graph[key] = Task(key, worker.step_flush, prev)
            else:
                graph[key] = Task(key, worker.step_seq, prev, upstream, sink)
            last[stage_id] = key
            if stage.below is not None:
                add(stage.below, index, TaskRef(key), 0, results)
        results[stage_id] = TaskRef(key)

    for index, chunk in enumerate(chunks):
        results: dict = {}
        add(0, index, chunk, None, results)
        rounds.append((0, chunk.calls, results))
    index = len(chunks)
    for stage in plan.seq_stages:
        results = {}
        add(stage.id, index, None, None, results)
        rounds.append((stage.id, None, results))
        index += 1
    # References go in as plain arguments (a task resolves those, not ones nested in dicts).
    layout = [(origin, calls, list(results)) for origin, calls, results in rounds]
    refs = [ref for _, _, results in rounds for ref in results.values()]
    final = (f"pipeline-{names.token}", 0)
    graph[final] = Task(final, worker.assemble, plan, layout, *refs)
    return graph, final
