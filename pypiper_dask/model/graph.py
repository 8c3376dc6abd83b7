"""The node graph: a tree rooted at the source, built with ``|`` and lists."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ..errors import GraphError, NodeTypeError, StreamError
from .node import Node

__all__ = ["NodeGraph", "check_edge"]


def check_edge(parent: Node, child: Node) -> None:
    """Refuse an edge whose named streams cannot match.

    Examples
    --------
    >>> class N(Node):
    ...     def run(self, data):
    ...         pass
    >>> check_edge(N("a", out_streams=["x"]), N("b", in_streams=["y"]))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    pypiper_dask.errors.StreamError: Node 'b' reads streams ['y'] but its predecessor 'a' writes ['x']; ...
    """
    if parent.out_streams == "*" or child.in_streams == "*":
        if child.in_streams == "*" and parent.out_streams == []:
            raise StreamError(
                f"Node {child.name!r} reads every stream but its predecessor {parent.name!r} writes none."
            )
        return
    missing = [s for s in child.in_streams if s not in parent.out_streams]
    if missing:
        raise StreamError(
            f"Node {child.name!r} reads streams {child.in_streams!r} but its predecessor "
            f"{parent.name!r} writes {parent.out_streams!r}; in_streams must be a subset of "
            "the predecessor's out_streams."
        )


class NodeGraph:
    """A tree of nodes rooted at a source, as pyPiper builds it.

    ``a | b`` chains, ``a | [b, c]`` fans out, lists nest, and ``|`` on a graph
    hangs the new part under the node added last, extending the graph in place.

    Examples
    --------
    >>> class N(Node):
    ...     def run(self, data):
    ...         self.emit(data)
    >>> g = N("gen") | [N("a") | N("b"), N("c")] | N("d")
    >>> [n.name for n in g]
    ['gen', 'a', 'b', 'c', 'd']
    >>> g.children(g.root)
    [N('a'), N('c')]
    """

    def __init__(self, root: Node) -> None:
        if not isinstance(root, Node):
            raise NodeTypeError(f"A graph's root must be a Node, not {type(root).__name__} {root!r}.")
        self._root = root
        self._graph: dict[Node, list[Node]] = {root: []}
        self._names: dict[str, Node] = {root.name: root}
        self._last_added = root

    @property
    def root(self) -> Node:
        """The source node."""
        return self._root

    def children(self, node: Node) -> list[Node]:
        """The successors of ``node``, in the order they were added."""
        return list(self._graph[node])

    def __contains__(self, node: object) -> bool:
        return node in self._graph

    def __len__(self) -> int:
        return len(self._graph)

    def __iter__(self) -> Iterator[Node]:
        """Nodes depth first, children in the order written."""
        stack = [self._root]
        while stack:
            node = stack.pop()
            yield node
            stack.extend(reversed(self._graph[node]))

    def _add_node(self, parent: Node, child: Node) -> None:
        if child in self._graph:
            raise GraphError(f"Node {child.name!r} is added to the graph twice; a node can appear once.")
        if child.name in self._names:
            raise GraphError(
                f"Two nodes are named {child.name!r} ({self._names[child.name]!r} and {child!r}); "
                "names must be unique in a pipeline."
            )
        check_edge(parent, child)
        self._graph[parent].append(child)
        self._graph[child] = []
        self._names[child.name] = child
        self._last_added = child

    def add(self, parent: Node, successors: Any) -> None:
        """Hang ``successors`` (a node, a graph or a list of them) under ``parent``."""
        if parent not in self._graph:
            raise GraphError(f"Node {parent.name!r} is not in this graph.")
        if isinstance(successors, Node):
            self._add_node(parent, successors)
        elif isinstance(successors, NodeGraph):
            for node in successors:
                above = parent if node is successors._root else successors._parent(node)
                self._add_node(above, node)
            self._last_added = successors._last_added
        elif isinstance(successors, (list, tuple)):
            if not successors:
                raise GraphError(f"An empty list was hung under node {parent.name!r}.")
            for s in successors:
                self.add(parent, s)
        else:
            raise NodeTypeError(
                f"Only a Node, a NodeGraph or a list of them can follow node {parent.name!r}, "
                f"not {type(successors).__name__} {successors!r}."
            )

    def _parent(self, node: Node) -> Node:
        return next(p for p, kids in self._graph.items() if node in kids)

    def __or__(self, other: Any) -> NodeGraph:
        self.add(self._last_added, other)
        return self

    def __eq__(self, other: object) -> bool:
        """Same nodes in the same tree (pyPiper compares graphs this way)."""
        if not isinstance(other, NodeGraph):
            return NotImplemented
        return self._graph == other._graph and self._root is other._root

    __hash__ = None  # type: ignore[assignment]  # mutable, like a list

    def __str__(self) -> str:
        lines = ["Graph<"]
        lines += [f"\t{n} -> [{','.join(map(str, kids))}]" for n, kids in self._graph.items() if kids]
        return "\n".join([*lines, ">"])

    def __repr__(self) -> str:
        return f"<NodeGraph {self._root.name!r}: {len(self)} nodes>"
