"""``Pipeline.to_dask()``: the tasks of every round as one Dask graph and a collection around it.

It is an adapter over the same task specs ``run()`` submits
(:func:`~pypiper_dask.compiler.tasks.round_tasks`). A collection holds no
actor, so each sequential stage's holder is carried through a chain of tasks
(:func:`~pypiper_dask.worker.step_seq`), one per round, each depending on the
one before. The collection finishes in the caller (``__dask_postcompute__``):
the rounds' segments are spliced into the ``PipelineResult`` that ``run()``
returns.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import dask
from dask.base import DaskMethodsMixin
from dask.task_spec import DataNode, Task, TaskRef

from .. import worker
from .plan import FusedStage, Plan
from .tasks import Ref, StageRef, TaskNames, TaskSpec, fused_spec, round_tasks, seq_spec

__all__ = ["PipelineCollection", "collection_graph"]

#: One round's layout: (origin stage, its partition or None for a flush, [(stage, key)] fetched).
Layout = list[tuple[int, Any, list[tuple[int, Any]]]]


def collection_graph(plan: Plan, names: TaskNames, chunks: list[worker.Chunk]) -> tuple[dict, Layout]:
    """The graph of a whole run over source partitions ``chunks``, and what each round fetches."""
    graph: dict = {}
    last: dict[int, Any] = {}  # sequential stage -> the key of its latest step, or of its spec
    for stage in plan.stages:
        spec_key = names.key(stage.id, "spec")
        spec = fused_spec(plan, stage, names.token) if isinstance(stage, FusedStage) else seq_spec(plan, stage)
        graph[spec_key] = DataNode(spec_key, spec)
        last[stage.id] = spec_key

    def add(task: TaskSpec) -> None:
        def arg(a: Any) -> Any:
            if isinstance(a, Ref):
                return TaskRef(a.key)
            if isinstance(a, StageRef):
                return TaskRef(last[a.stage])
            return a

        if task.func is worker.run_fused:
            # No holders to push to: each sequential step is a task of its own chain.
            graph[task.key] = Task(task.key, worker.run_fused, *[arg(a) for a in task.args[:4]])
            return
        args = [arg(a) for a in task.args]
        prev = args[0]
        if task.func is worker.run_flush:
            graph[task.key] = Task(task.key, worker.step_flush, prev)
        else:  # run_seq(holder, number, upstream, sink, carry)
            graph[task.key] = Task(task.key, worker.step_seq, prev, *args[2:])
        last[task.stage] = task.key

    layout: Layout = []
    rounds = [(0, chunk) for chunk in chunks] + [(s.id, None) for s in plan.seq_stages]
    for index, (origin, chunk) in enumerate(rounds):
        tasks = round_tasks(plan, names, index, origin, chunk, n_source=len(chunks))
        for task in tasks:
            add(task)
        layout.append((origin, chunk, [(t.stage, t.key) for t in tasks if t.fetch]))
    return graph, layout


class PipelineCollection(DaskMethodsMixin):
    """A whole run of a pipeline as one Dask collection.

    ``dask.compute(collection)`` gives the ``PipelineResult`` that ``run()``
    gives (without printing: a collection returns values); ``dask.visualize``
    draws its task graph.
    """

    def __init__(self, graph: dict, layout: Layout, finish: Callable[[list, Layout], Any]) -> None:
        self._graph = graph
        self._layout = layout
        self._finish = finish
        self.n_partitions = sum(1 for origin, _, _ in layout if origin == 0)

    def __dask_graph__(self) -> dict:
        return self._graph

    def __dask_keys__(self) -> list:
        return [key for _, _, fetched in self._layout for _, key in fetched]

    def __dask_layers__(self) -> tuple:
        return tuple({key[0] for key in self.__dask_keys__()})

    def __dask_tokenize__(self) -> Any:
        return self.__dask_keys__()

    def __dask_postcompute__(self) -> tuple:
        return self._finish, (self._layout,)

    def __dask_postpersist__(self) -> tuple:
        return PipelineCollection._rebuild, (self._layout, self._finish)

    @staticmethod
    def _rebuild(dsk: dict, layout: Layout, finish: Callable, rename: Any = None) -> PipelineCollection:
        return PipelineCollection(dsk, layout, finish)

    # The chain tasks of a sequential stage run one after another anyway;
    # threads let the fused tasks of different partitions overlap.
    __dask_scheduler__ = staticmethod(dask.threaded.get)

    @staticmethod
    def __dask_optimize__(dsk: dict, keys: list, **kwargs: Any) -> dict:
        return dsk

    def __repr__(self) -> str:
        return f"<PipelineCollection: {len(self._graph)} tasks over {self.n_partitions} partitions>"
