"""Hypothesis strategies: random pyPiper programs built from tests/nodes.py."""

from __future__ import annotations

from hypothesis import strategies as st

from pypiper_dask import Node, NodeGraph
from tests import nodes as N

# Each entry: (kind, factory(name, draw) -> Node). Kinds decide what may follow.
_MIDDLE = ["map", "explode", "filter", "echo", "close_at", "take", "batch", "all", "running", "split"]


@st.composite
def node_specs(draw, depth: int = 0):
    """A random subtree description: (kind, params, children)."""
    kind = draw(st.sampled_from(_MIDDLE))
    params: dict = {}
    if kind == "map":
        params["op"] = draw(st.sampled_from(["sq", "inc", "neg", "str", "pair"]))
    elif kind == "explode":
        params["n"] = draw(st.integers(0, 3))
    elif kind == "filter":
        params["mod"] = draw(st.integers(2, 4))
    elif kind == "close_at":
        params["limit"] = draw(st.integers(0, 60))
    elif kind == "take":
        params["n"] = draw(st.integers(1, 30))
    elif kind == "batch":
        params["batch_size"] = draw(st.integers(2, 7))
        params["stateless"] = draw(st.booleans())
    elif kind in ("echo", "running", "all"):
        params["stateless"] = draw(st.booleans()) if kind == "echo" else None
    n_kids = 0 if depth >= 3 else draw(st.integers(0, 2 if depth else 3))
    kids = [draw(node_specs(depth=depth + 1)) for _ in range(n_kids)]
    return kind, params, kids


@st.composite
def programs(draw):
    """(source params, subtree specs) for a random pipeline."""
    size = draw(st.integers(0, 120))
    per_call = draw(st.integers(1, 3))
    loud = draw(st.booleans())
    kids = draw(st.lists(node_specs(), min_size=1, max_size=3))
    return {"size": size, "per_call": per_call, "loud": loud}, kids


def build(program) -> NodeGraph:
    """Turn a program description into a fresh NodeGraph."""
    source_params, kids = program
    counter = iter(range(1000))
    graph = NodeGraph(N.Gen("gen", **source_params))

    def make(kind: str, params: dict, parent_split: bool) -> Node:
        name = f"{kind}{next(counter)}"
        extra = {}
        if parent_split:
            extra["in_streams"] = ["b", "a"] if params.get("stateless") is None and kind == "map" else ["b"]
        p = {k: v for k, v in params.items() if v is not None}
        if kind == "map":
            return N.Map(name, **p, **extra)
        if kind == "explode":
            return N.Explode(name, **p, **extra)
        if kind == "filter":
            return N.Filter(name, **p, **extra)
        if kind == "echo":
            return N.Echo(name, **p, **extra)
        if kind == "close_at":
            return N.CloseAt(name, **p, **extra)
        if kind == "take":
            return N.Take(name, **p, **extra)
        if kind == "batch":
            return N.Batch(name, **p, **extra)
        if kind == "all":
            return N.Batch(name, batch_size=Node.BATCH_SIZE_ALL, **extra)
        if kind == "running":
            return N.Running(name, **extra)
        if kind == "split":
            return N.Split(name, out_streams=["a", "b"], **extra)
        raise AssertionError(kind)

    def attach(parent: Node, spec, parent_split: bool) -> None:
        kind, params, sub = spec
        node = make(kind, params, parent_split)
        graph.add(parent, node)
        for s in sub:
            attach(node, s, kind == "split")

    for spec in kids:
        attach(graph.root, spec, False)
    return graph
