"""Graph → plan: which nodes run together, and how.

The plan is a tree of *stages*, in preorder:

* a **fused** stage takes the output stream of the source (or of a sequential
  node) and runs every stateless ``batch_size=1`` node reachable from it
  through other such nodes, item by item, in one task per partition; items
  headed for a sequential node leave it through a *crossing* sink;
* a **sequential** stage is one stateful (``stateless=False``), batched
  (``batch_size=k``) or barrier (``BATCH_SIZE_ALL``) node, fed every partition
  in order by one holder; what it emits goes to the fused stage below it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

from ..model.keys import KEY_GROUPS
from ..model.node import Node
from ..model.snapshot import NodeInfo, Snapshot
from ..worker.fused import Edge, ToNode, ToSink

__all__ = ["FusedStage", "Plan", "SeqStage", "Sink", "compile_plan", "is_sequential", "stage_resources"]


def _nothing() -> Mapping[str, float]:
    return MappingProxyType({})


def is_sequential(info: NodeInfo) -> bool:
    """Does this node need one holder that sees every item in order?"""
    return not info.stateless or info.batch_size != 1


@dataclass(frozen=True)
class Sink:
    """Where a fused stage's outputs go: a leaf's results, or a crossing into a sequential stage."""

    kind: Literal["leaf", "cross"]
    node: str  # the leaf, or the sequential node crossed into
    stage: int | None  # the sequential stage, for a crossing


@dataclass(frozen=True)
class FusedStage:
    """Stateless ``batch_size=1`` nodes fused into one task per partition."""

    id: int
    above: str  # the source or sequential node whose output this stage reads
    nodes: tuple[str, ...]
    edges: tuple[Edge, ...]  # the edges leaving ``above``, each down to its sink
    sinks: tuple[Sink, ...]
    under: Mapping[str, frozenset[int]]  # node -> the sinks below it
    resources: Mapping[str, float] = field(default_factory=_nothing)  # per resource, the most its nodes ask
    kind: Literal["fused"] = "fused"

    @property
    def ends(self) -> bool:
        """Its tasks record each input item's end: the caller may need it to splice.

        Not needed only for a chain into one leaf fed by the source.
        """
        return self.above_sequential or len(self.sinks) > 1 or self.sinks[0].kind == "cross"

    @property
    def above_sequential(self) -> bool:
        return self.id != 0


@dataclass(frozen=True)
class SeqStage:
    """One stateful, batched or ``BATCH_SIZE_ALL`` node."""

    id: int
    node: str
    batch_size: int | float
    stateless: bool
    below: int | None  # the fused stage reading its output, if it has successors
    chain: tuple[int, ...] = ()  # the sequential stages at or above it, top first (their flushes reach it)
    resources: Mapping[str, float] = field(default_factory=_nothing)  # what its holder's worker must have
    keyed: bool = False  # one instance per key, its key groups spread over several holders
    kind: Literal["seq"] = "seq"

    @property
    def role(self) -> str:
        """How its node is called, in a newcomer's words (what the plan text and table show)."""
        if self.batch_size == Node.BATCH_SIZE_ALL:
            role = "waits for all its input, then one call with every item"
        elif self.batch_size != 1:
            role = f"called with batches of exactly {self.batch_size} items, in order"
        else:
            role = "one call per item, every item once, in order"
        if self.keyed:
            return f"keyed by key(), {KEY_GROUPS} groups: per key, " + role.replace("every item", "each item")
        return role if self.stateless else "stateful: " + role


@dataclass(frozen=True)
class Plan:
    """The compiled form of a pipeline's graph; immutable."""

    snapshot: Snapshot
    stages: tuple[FusedStage | SeqStage, ...]
    leaves: tuple[str, ...]
    ancestors: Mapping[str, frozenset[str]]  # node -> itself and every node above it
    seq_under: Mapping[str, tuple[int, ...]]  # node -> sequential stages at or below it
    scope: str = ""  # the run's (or kept cluster's) per-process set-up scope; set by the runtime

    @property
    def seq_stages(self) -> tuple[SeqStage, ...]:
        return tuple(s for s in self.stages if isinstance(s, SeqStage))


def stage_resources(snap: Snapshot, nodes: list[str] | tuple[str, ...]) -> Mapping[str, float]:
    """What a stage of ``nodes`` asks of its worker: per resource, the most any of them asks.

    Examples
    --------
    >>> from pypiper_dask.model import Node
    >>> class N(Node):
    ...     def run(self, data):
    ...         self.emit(data)
    >>> snap = Snapshot.from_graph(N("gen") | N("a", resources={"GPU": 1}) | N("b", resources={"GPU": 2, "MEM": 1}))
    >>> dict(stage_resources(snap, ["a", "b"]))
    {'GPU': 2, 'MEM': 1}
    """
    most: dict[str, float] = {}
    for name in nodes:
        for resource, amount in snap.info[name].resources:
            most[resource] = max(most.get(resource, amount), amount)
    return MappingProxyType(most)


def compile_plan(snap: Snapshot) -> Plan:
    """Cut the graph of ``snap`` into stages.

    Examples
    --------
    >>> from pypiper_dask.model import Node
    >>> class N(Node):
    ...     def run(self, data):
    ...         self.emit(data)
    >>> g = N("gen") | N("a") | N("b", stateless=False) | N("c")
    >>> plan = compile_plan(Snapshot.from_graph(g))
    >>> [(s.kind, getattr(s, "nodes", None) or s.node) for s in plan.stages]
    [('fused', ('a',)), ('seq', 'b'), ('fused', ('c',))]
    """
    info, children = snap.info, snap.children
    stages: list = []

    def fused(above: str, kids: tuple[str, ...], chain: tuple[int, ...]) -> int:
        sid = len(stages)
        stages.append(None)  # keep preorder ids: this stage before the ones it feeds
        sinks: list[Sink] = []
        nodes: list[str] = []
        under: dict[str, frozenset[int]] = {}

        def edge(parent: str, child: str) -> Edge:
            target: ToNode | ToSink
            if is_sequential(info[child]):
                target_stage = sequential(child, chain)
                sinks.append(Sink("cross", child, target_stage))
                target = ToSink(len(sinks) - 1)
            else:
                nodes.append(child)
                first = len(sinks)
                if children[child]:
                    target = ToNode(child, None, tuple(edge(child, k) for k in children[child]))
                else:
                    sinks.append(Sink("leaf", child, None))
                    target = ToNode(child, len(sinks) - 1, ())
                under[child] = frozenset(range(first, len(sinks)))
            return Edge(info[parent].out_streams, info[child].in_streams, parent, child, target)

        if kids:
            edges = tuple(edge(above, k) for k in kids)
        else:  # the source alone: its items are the output
            sinks.append(Sink("leaf", above, None))
            edges = (Edge("*", "*", above, above, ToSink(0)),)
        stages[sid] = FusedStage(
            sid, above, tuple(nodes), edges, tuple(sinks), MappingProxyType(under), stage_resources(snap, nodes)
        )
        return sid

    def sequential(name: str, chain: tuple[int, ...]) -> int:
        sid = len(stages)
        stages.append(None)
        chain = (*chain, sid)
        below = fused(name, children[name], chain) if children[name] else None
        i = info[name]
        stages[sid] = SeqStage(
            sid, name, i.batch_size, i.stateless, below, chain, stage_resources(snap, [name]), i.keyed
        )
        return sid

    fused(snap.root, children[snap.root], ())

    ancestors: dict[str, frozenset[str]] = {}
    seq_under: dict[str, list[int]] = {}
    seq_of = {s.node: s.id for s in stages if isinstance(s, SeqStage)}

    def walk(name: str, above: frozenset[str]) -> list[int]:
        ancestors[name] = above | {name}
        found = [seq_of[name]] if name in seq_of else []
        for kid in children[name]:
            found += walk(kid, ancestors[name])
        seq_under[name] = found
        return found

    walk(snap.root, frozenset())
    leaves = tuple(n for n in snap.order if not children[n])
    return Plan(
        snap,
        tuple(stages),
        leaves,
        MappingProxyType(ancestors),
        MappingProxyType({k: tuple(v) for k, v in seq_under.items()}),
    )
