"""Plan → Dask tasks. The only module that names task keys.

A key is ``(f"{label}-{token}{stage}", index)``: ``label`` is the node's name
(fused nodes joined by ``+``) with ``-`` replaced by a non-breaking hyphen so
that :func:`dask.utils.key_split`, which the dashboard and progress bars
group by, returns it whole; ``token`` is 8 hex digits, new for every run, so
keys never collide with an earlier run's; ``stage`` (the stage's number)
makes every stage's keys its own whatever its nodes are called (a node named
``"a+b"`` beside fused nodes ``a`` and ``b``); ``index`` is the round. What a
run sends to the cluster as data is keyed the same way: a fused stage's spec
under its stage's name, a partition under the source's (``"{source}-{token}"``,
no stage number), so the dashboard shows node names only.

One builder, :func:`round_tasks`, makes the tasks of a round for ``run()``
(submitted round by round) and for ``to_dask()`` (one graph of every round).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from .. import worker
from .plan import FusedStage, Plan, SeqStage

__all__ = [
    "Ref",
    "StageRef",
    "TaskNames",
    "TaskSpec",
    "fused_spec",
    "key_label",
    "round_tasks",
    "seq_spec",
    "state_step",
]

Key = tuple[Any, ...]


def key_label(name: str) -> str:
    """A node name as it appears in task keys: survives ``key_split`` whole.

    Examples
    --------
    >>> from dask.utils import key_split
    >>> key_split((key_label("stage-2") + "-1a2b3c4d0", 0)) == key_label("stage-2")
    True
    """
    return name.replace("-", "\u2011")


class Ref(NamedTuple):
    """An argument that is the result of another task of this round."""

    key: Key


class StageRef(NamedTuple):
    """An argument the runtime fills in: a fused stage's spec, or a sequential stage's holder."""

    stage: int


@dataclass(frozen=True)
class TaskSpec:
    """One task, before the runtime turns it into a submission or a graph entry."""

    key: Key
    func: Callable
    args: tuple
    stage: int
    fetch: bool = True  # the caller gathers its result (else a task below brings back what it needs)
    resources: dict[str, float] | None = None  # Dask worker resources it needs (a fused stage's)

    @property
    def sequential(self) -> bool:
        """A step of a sequential stage's holder."""
        return self.func is not worker.run_fused


class TaskNames:
    """The key names of one run of a plan.

    Examples
    --------
    >>> from pypiper_dask.model import Node
    >>> from pypiper_dask.model.snapshot import Snapshot
    >>> from pypiper_dask.compiler.plan import compile_plan
    >>> class N(Node):
    ...     def run(self, data):
    ...         self.emit(data)
    >>> names = TaskNames(compile_plan(Snapshot.from_graph(N("gen") | N("gen-out"))), token="1a2b3c4d")
    >>> names.key(0, 3)
    ('gen‑out-1a2b3c4d0', 3)
    """

    def __init__(self, plan: Plan, token: str | None = None) -> None:
        self.token = token or uuid.uuid4().hex[:8]
        self.prefix = {s.id: f"{self.label(s)}-{self.token}{s.id}" for s in plan.stages}
        self.source = f"{key_label(plan.snapshot.root)}-{self.token}"

    @staticmethod
    def label(stage: FusedStage | SeqStage) -> str:
        if isinstance(stage, SeqStage):
            return key_label(stage.node)
        if stage.nodes:
            return "+".join(map(key_label, stage.nodes))
        return key_label(stage.above)  # routing only: the items of the node above, handed on

    def key(self, stage: int, index: Any, attempt: int = 0) -> Key:
        """``(prefix, index)``; a round submitted again gets ``(prefix, index, attempt)``."""
        return (self.prefix[stage], index, attempt) if attempt else (self.prefix[stage], index)

    def partition(self, task: Key) -> Key:
        """The key the partition a round's top task reads is sent under: the source's name, that round.

        Examples
        --------
        >>> from dask.utils import key_split
        >>> from pypiper_dask.model import Node
        >>> from pypiper_dask.model.snapshot import Snapshot
        >>> from pypiper_dask.compiler.plan import compile_plan
        >>> class N(Node):
        ...     def run(self, data):
        ...         self.emit(data)
        >>> names = TaskNames(compile_plan(Snapshot.from_graph(N("gen") | N("sq"))), token="1a2b3c4d")
        >>> names.partition(names.key(0, 3, attempt=1))
        ('gen-1a2b3c4d', 3, 1)
        >>> key_split(names.partition(names.key(0, 3)))
        'gen'
        """
        return (self.source, *task[1:])


def round_tasks(
    plan: Plan,
    names: TaskNames,
    index: int,
    origin: int,
    chunk: worker.Chunk | None = None,
    *,
    n_source: int | None = None,
    attempt: int = 0,
    closed: frozenset[str] = frozenset(),
    cut: bool = False,
) -> list[TaskSpec]:
    """The tasks of one round, parents before children.

    A round is a partition of source items fed to the top stage (``origin``
    0, ``chunk``), or the end of input of the sequential stage ``origin``
    (its flush), once every one of the ``n_source`` source rounds is out.

    Each sequential stage's steps are numbered in the order its holder must
    run them: step ``i`` for source round ``i``, then one step for each flush
    of a sequential stage at or above it, top first. ``closed`` are the
    nodes known to have closed in an earlier round: fused stages skip them.

    ``cut``: every sequential stage snapshots its state after this source
    round's step (a consistent cut, see :mod:`pypiper_dask.runtime.recovery`).
    A stateful stage always snapshots after its own flush: its final state.
    """
    tasks: list[TaskSpec] = []

    def number(stage: SeqStage) -> int:
        if origin == 0:
            return index
        assert n_source is not None  # a flush round comes after every source round
        return n_source + stage.chain.index(origin)

    def snap(stage: SeqStage) -> bool:
        return cut if origin == 0 else stage.id == origin and not stage.stateless

    def add(stage_id: int, upstream: Any, sink: int | None, carry: int | None = None) -> None:
        stage = plan.stages[stage_id]
        key = names.key(stage_id, index, attempt)
        if isinstance(stage, FusedStage):
            # A stage whose outputs all cross on is not fetched: its first crossing's
            # task brings back its log, so its items never travel to the caller.
            crossing = [i for i, s in enumerate(stage.sinks) if s.kind == "cross"]
            fetch = len(crossing) < len(stage.sinks)
            # Each sequential stage below gets its items straight from this task (see run_fused);
            # a keyed node's holders each their share.
            below_seq = [plan.stages[s.stage] for s in stage.sinks if s.stage is not None]
            pushes = tuple(
                (i, number(b), snap(b)) for i, b in zip(crossing, below_seq, strict=True) if isinstance(b, SeqStage)
            )
            holders = tuple(StageRef(b.id) for b in below_seq if isinstance(b, SeqStage))
            args = (StageRef(stage_id), upstream, sink, closed, pushes, *holders)
            tasks.append(TaskSpec(key, worker.run_fused, args, stage_id, fetch, dict(stage.resources) or None))
            for i in crossing:
                below = stage.sinks[i].stage
                assert below is not None  # a crossing always names its stage
                add(below, Ref(key), i, None if fetch or i != crossing[0] else stage_id)
            return
        if upstream is None:
            tasks.append(TaskSpec(key, worker.run_flush, (StageRef(stage_id), number(stage), snap(stage)), stage_id))
        else:
            args = (StageRef(stage_id), number(stage), upstream, sink, carry, snap(stage))
            tasks.append(TaskSpec(key, worker.run_seq, args, stage_id))
        if stage.below is not None:
            add(stage.below, Ref(key), 0)

    add(origin, chunk, None)
    return tasks


def state_step(stage: SeqStage, n_source: int) -> int:
    """The step number of a sequential stage's final-state call: after its own flush."""
    return n_source + len(stage.chain)


def fused_spec(plan: Plan, stage: FusedStage, token: str) -> worker.FusedSpec:
    """What a fused stage's tasks need on the worker."""
    return worker.FusedSpec(
        token=f"{token}-{stage.id}",
        label=TaskNames.label(stage),
        above=stage.above,
        blobs={n: plan.snapshot.blobs[n] for n in stage.nodes},
        edges=stage.edges,
        sinks=tuple(s.node for s in stage.sinks),
        under=dict(stage.under),
        ends=stage.ends,
        top=not stage.above_sequential,
        scope=plan.scope,
    )


def seq_spec(plan: Plan, stage: SeqStage) -> worker.SeqSpec:
    """What a sequential stage's holder is built from."""
    return worker.SeqSpec(stage.node, plan.snapshot.blobs[stage.node], stage.batch_size, plan.scope, stage.keyed)
