"""An immutable snapshot of a node graph, taken when a ``Pipeline`` is built."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

import cloudpickle

from ..errors import NodePickleError
from .functions import FunctionNode
from .graph import NodeGraph
from .keys import is_keyed
from .node import Node, check_resources, check_snapshot_every, has_setup_emits, has_worker_setup
from .pickling import dumps_node

__all__ = ["NodeInfo", "NodePickleError", "Snapshot", "load_node"]


def load_node(blob: bytes) -> Any:
    """Unpickle a node into an instance as fast to run as one built by its constructor.

    Typed ``Any``: the engine rebinds the copy's ``emit`` and ``close``.

    An unpickled object's attribute dict is filled in one go, which leaves it
    without the key sharing that makes ``self.x`` fast; the attributes are set
    one by one on a new instance instead (measured: a W1 source's calls took
    1.6x as long on the plain unpickled copy).
    """
    return _rebuilt(cloudpickle.loads(blob))


def _rebuilt(node: Any) -> Any:
    """A new instance of ``node``'s class holding the same attribute values, set one by one."""
    try:
        state = vars(node)
    except TypeError:  # __slots__: nothing to gain
        return copy.copy(node)
    cls: Any = type(node)
    fresh = cls.__new__(cls)
    for key, value in state.items():
        object.__setattr__(fresh, key, value)
    return fresh


@dataclass(frozen=True)
class NodeInfo:
    """What the compiler needs to know of one node."""

    name: str
    cls: str
    batch_size: int | float
    stateless: bool
    in_streams: str | tuple[str, ...]
    out_streams: str | tuple[str, ...]
    size: Any
    snapshot_every: tuple[int | None, float | None] | None = None  # the node's own (see runtime.recovery)
    resources: tuple[tuple[str, float], ...] = ()  # Dask worker resources its tasks need, sorted
    worker_setup: bool = False  # it has setup_worker() or teardown_worker()
    keyed: bool = False  # stateless=False with a key() method: one instance per key (see .keys)


def _pickle(node: Node) -> bytes:
    return dumps_node(node)


@dataclass(frozen=True)
class Snapshot:
    """The graph's structure and each node pickled as it was after ``setup``.

    The source is the exception: it runs in the caller, so it is never
    pickled (it may hold an open file, which cloudpickle would read whole).
    ``source`` is the caller's object and :meth:`node` gives a shallow copy;
    only a checkpoint pickles it (through its own ``__getstate__``).

    Examples
    --------
    >>> class N(Node):
    ...     def run(self, data):
    ...         self.emit(data)
    >>> snap = Snapshot.from_graph(N("a") | N("b"))
    >>> snap.order, snap.children["a"]
    (('a', 'b'), ('b',))
    >>> snap.node("b") is not snap.node("b")
    True
    """

    root: str
    order: tuple[str, ...]
    children: Mapping[str, tuple[str, ...]]
    info: Mapping[str, NodeInfo]
    blobs: Mapping[str, bytes]  # every node but the source
    source: Any = field(default=None, compare=False, repr=False)  # the caller's source object

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "source": None}  # a snapshot that travels leaves the source behind

    @classmethod
    def from_graph(cls, graph: NodeGraph, pickle: bool = True) -> Snapshot:
        """The snapshot of ``graph``; ``pickle=False`` takes its structure only (see :meth:`with_nodes`)."""
        nodes = list(graph)
        children = {n.name: tuple(c.name for c in graph.children(n)) for n in nodes}
        root = graph.root
        info = {
            n.name: NodeInfo(
                n.name,
                n.kind if isinstance(n, FunctionNode) else type(n).__name__,
                n.batch_size,
                # Values a setup() emitted go out with the node's first call: one instance,
                # in order, so it runs as a sequential stage (the source always is one).
                n.stateless and (n is root or not has_setup_emits(n)),
                n.in_streams if n.in_streams == "*" else tuple(n.in_streams),
                n.out_streams if n.out_streams == "*" else tuple(n.out_streams),
                getattr(n, "size", None),
                check_snapshot_every(f"Node {n.name!r}", getattr(n, "snapshot_every", None)),
                tuple(sorted((check_resources(n.name, getattr(n, "resources", None)) or {}).items())),
                has_worker_setup(n),
                n is not root and is_keyed(n),
            )
            for n in nodes
        }
        return cls(
            root=graph.root.name,
            order=tuple(n.name for n in nodes),
            children=MappingProxyType(children),
            info=MappingProxyType(info),
            blobs=MappingProxyType({n.name: _pickle(n) for n in nodes if n is not root} if pickle else {}),
            source=root if pickle else None,
        )

    def with_nodes(self, nodes: Mapping[str, Node]) -> Snapshot:
        """This structure with ``nodes`` pickled as they are now, the source kept (raises :class:`NodePickleError`)."""
        blobs = {name: _pickle(nodes[name]) for name in self.order if name != self.root}
        return replace(self, blobs=MappingProxyType(blobs), source=nodes[self.root])

    def node(self, name: str) -> Node:
        """A fresh copy of the node as it was after ``setup`` (of the source: a shallow one)."""
        if name == self.root:
            if self.source is None:
                raise ValueError(f"This snapshot of {self.root!r} holds its structure only.")
            return _rebuilt(self.source)
        return load_node(self.blobs[name])
