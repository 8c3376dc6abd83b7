"""Plan → Dask tasks. The only module that names task keys.

A key is ``(f"{label}-{token}", index)``: ``label`` is the node's name (fused
nodes joined by ``+``) with ``-`` replaced by a non-breaking hyphen so that
:func:`dask.utils.key_split`, which the dashboard and progress bars group by,
returns it whole; ``token`` is 8 hex digits, new for every run, so keys never
collide with an earlier run's; ``index`` is the round (partition).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from .. import worker
from .plan import FusedStage, Plan, SeqStage

__all__ = ["Ref", "StageRef", "TaskNames", "TaskSpec", "fused_spec", "key_label", "round_tasks", "seq_spec"]

Key = tuple[Any, ...]


def key_label(name: str) -> str:
    """A node name as it appears in task keys: survives ``key_split`` whole.

    Examples
    --------
    >>> from dask.utils import key_split
    >>> key_split((key_label("stage-2") + "-1a2b3c4d", 0)) == key_label("stage-2")
    True
    """
    return name.replace("-", "\u2011")


class Ref(NamedTuple):
    """An argument that is the result of another task of this run."""

    key: Key


class StageRef(NamedTuple):
    """An argument the runtime fills in: a fused stage's spec, or a sequential stage's holder."""

    stage: int


@dataclass(frozen=True)
class TaskSpec:
    """One task, before the runtime turns it into a graph entry or a submission."""

    key: Key
    func: Callable
    args: tuple
    stage: int
    sequential: bool  # must run after this stage's previous task, where its holder lives
    fetch: bool = True  # the caller gathers its result (else a task below carries what it needs)


class TaskNames:
    """The key names of one run of a plan."""

    def __init__(self, plan: Plan, token: str | None = None) -> None:
        self.token = token or uuid.uuid4().hex[:8]
        self.prefix = {s.id: f"{self.label(s)}-{self.token}" for s in plan.stages}

    @staticmethod
    def label(stage: FusedStage | SeqStage) -> str:
        if isinstance(stage, SeqStage):
            return key_label(stage.node)
        if stage.nodes:
            return "+".join(map(key_label, stage.nodes))
        return key_label(stage.above) + "\u2011out"

    def key(self, stage: int, index: Any, attempt: int = 0) -> Key:
        """``(prefix, index)``; a round submitted again gets ``(prefix, index, attempt)``."""
        return (self.prefix[stage], index, attempt) if attempt else (self.prefix[stage], index)


def round_tasks(
    plan: Plan, names: TaskNames, index: int, origin: int, chunk: worker.Chunk | None = None, attempt: int = 0
) -> list[TaskSpec]:
    """The tasks of one round, parents before children.

    A round is a partition of source items fed to the top stage (``chunk``),
    or the end of input of the sequential stage ``origin`` (its flush).
    """
    tasks: list[TaskSpec] = []

    def add(stage_id: int, upstream: Any, sink: int | None, carry: int | None = None) -> None:
        stage = plan.stages[stage_id]
        key = names.key(stage_id, index, attempt)
        if isinstance(stage, FusedStage):
            # A stage whose outputs all cross on is not fetched: its first crossing's
            # task brings back its log, so its items travel to the caller never.
            crossing = [i for i, s in enumerate(stage.sinks) if s.kind == "cross"]
            fetch = len(crossing) < len(stage.sinks)
            tasks.append(TaskSpec(key, worker.run_fused, (StageRef(stage_id), upstream, sink), stage_id, False, fetch))
            for i in crossing:
                below = stage.sinks[i].stage
                assert below is not None  # a crossing always names its stage
                add(below, Ref(key), i, None if fetch or i != crossing[0] else stage_id)
        else:
            if upstream is None:
                tasks.append(TaskSpec(key, worker.run_flush, (StageRef(stage_id),), stage_id, True))
            else:
                args = (StageRef(stage_id), upstream, sink, carry)
                tasks.append(TaskSpec(key, worker.run_seq, args, stage_id, True))
            if stage.below is not None:
                add(stage.below, Ref(key), 0)

    add(origin, chunk, None)
    return tasks


def fused_spec(plan: Plan, stage: FusedStage, token: str, quiet: bool = False) -> worker.FusedSpec:
    """What a fused stage's tasks need on the worker.

    A stage may run breadth first when the caller needs no order between its
    sinks: it reads the source (no per-item splicing) and has one sink, or
    only leaves whose items are not printed.
    """
    blobs = {n: plan.snapshot.blobs[n] for n in stage.nodes}
    kinds = [s.kind for s in stage.sinks]
    breadth_first = not stage.ends and (len(kinds) == 1 or (quiet and "cross" not in kinds))
    return worker.FusedSpec(
        f"{token}-{stage.id}",
        TaskNames.label(stage),
        blobs,
        stage.edges,
        len(stage.sinks),
        stage.ends,
        dict(stage.under),
        plan.snapshot.root,
        leaf_out=kinds == ["leaf"],
        breadth_first=breadth_first,
    )


def seq_spec(plan: Plan, stage: SeqStage) -> worker.SeqSpec:
    """What a sequential stage's holder is built from."""
    return worker.SeqSpec(stage.node, plan.snapshot.blobs[stage.node], stage.batch_size)
