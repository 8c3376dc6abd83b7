"""A plain sequential interpreter of ``shared/docs/semantics.md``, for differential tests.

It shares nothing with the engine but the model (Node, NodeGraph, streams): it
calls nodes one item at a time, depth first, and records what a sequential
run prints and what each leaf emits. The engine, with any partitioning and on
any cluster, must produce exactly this.

Every consumer gets a value as it was when it was emitted ("Depth-first means
depth-first"): the reference takes a deep copy at ``emit``, so a node that
reuses and mutates one output buffer gets the answer a sequential run gives.
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
from typing import Any

import cloudpickle

from pypiper_dask.model import Node, NodeGraph, edge_selector


def reference_run(
    graph: NodeGraph, calls: str | os.PathLike | None = None, partial: dict | None = None
) -> tuple[str, dict[str, list]]:
    r"""Return (stdout text, leaf name -> items) of a sequential run on copies of the nodes.

    ``calls``, a path: for each node that logs its calls (``tests/nodes.py``'s ``calls=``),
    the reference itself appends ``f"{name}\t{data!r}\n"`` there for each ``run`` call it
    makes, in call order. The copies' own logging is switched off either way, so a graph
    whose nodes log to the engine's file can be given as it is: the reference never writes there.
    ``partial``, a dict: given the run's ``out`` (a ``StringIO``) and ``values`` as they fill
    (see :func:`reference_until_error`).
    """
    nodes = {n.name: cloudpickle.loads(cloudpickle.dumps(n)) for n in graph}
    logged = {name for name, node in nodes.items() if getattr(node, "calls", None) is not None}
    for name in logged:
        nodes[name].calls = None  # the reference counts these calls itself
    root = graph.root.name
    kids = {n.name: [c.name for c in graph.children(n)] for n in graph}
    parent = {c: p for p, cs in kids.items() for c in cs}
    leaves = [n for n in kids if not kids[n]]
    out = io.StringIO()
    values: dict[str, list] = {leaf: [] for leaf in leaves}
    if partial is not None:
        partial.update(out=out, values=values)
    closed: set[str] = set()
    ended: set[str] = set()
    pending: dict[str, list] = {n: [] for n in nodes}
    # Keyed nodes (stateless=False with a key() method): one instance per key, each a copy
    # of the node as constructed, made at its key's first item; close() ends that key only.
    keyed = {
        n for n, node in nodes.items() if n != root and not node.stateless and callable(getattr(node, "key", None))
    }
    built = {n: cloudpickle.dumps(nodes[n]) for n in keyed}
    instances: dict[str, dict] = {n: {} for n in keyed}
    key_pending: dict[str, dict] = {n: {} for n in keyed}
    key_closed: dict[str, set] = {n: set() for n in keyed}
    no_key = object()

    def ancestors(name: str) -> set[str]:
        found = {name}
        while name in parent:
            name = parent[name]
            found.add(name)
        return found

    def exhausted() -> bool:
        return bool(closed) and all(ancestors(leaf) & closed for leaf in leaves)

    def call(name: str, data: Any, key: Any = no_key) -> None:
        node = nodes[name] if key is no_key else instances[name][key]
        buf: list = []

        def emit(value: Any) -> None:
            buf.append(copy.deepcopy(value))  # the value as it is now, whatever the node does to it later

        node.emit = emit

        def close() -> None:
            if key is no_key:
                closed.add(name)
            else:
                key_closed[name].add(key)

        node.close = close
        was_closed = name in closed
        if calls is not None and name in logged:
            with open(calls, "a", encoding="utf-8") as log:
                log.write(f"{name}\t{data!r}\n")
        with contextlib.redirect_stdout(out):
            node.run(data)
        for value in buf:
            if not kids[name]:
                values[name].append(value)
                out.write(f"{value!s}\n")
            for kid in kids[name]:
                child = nodes[kid]
                select = edge_selector(node.out_streams, child.in_streams, name, kid)
                for part in [value] if select is None else select(value):
                    push(kid, part)
        if name in closed and not was_closed and name != root:
            ended.add(name)
            for kid in kids[name]:
                end(kid)

    def push_keyed(name: str, data: Any) -> None:
        key = nodes[name].key(data)
        if key in key_closed[name]:
            return
        if key not in instances[name]:
            instances[name][key] = cloudpickle.loads(built[name])
        size = nodes[name].batch_size
        if size == 1:
            call(name, data, key)
            return
        batch = key_pending[name].setdefault(key, [])
        batch.append(data)
        if size != Node.BATCH_SIZE_ALL and len(batch) == size:
            key_pending[name][key] = []
            call(name, tuple(batch), key)

    def push(name: str, data: Any) -> None:
        if name in closed or name in ended:
            return
        if name in keyed:
            push_keyed(name, data)
            return
        size = nodes[name].batch_size
        if size == 1:
            call(name, data)
            return
        pending[name].append(data)
        if size != Node.BATCH_SIZE_ALL and len(pending[name]) == size:
            batch = tuple(pending[name])
            pending[name].clear()
            call(name, batch)

    def end(name: str) -> None:
        if name in ended:
            return
        ended.add(name)
        for key in list(instances.get(name, ())):  # each key's last batch, keys in order of first item
            batch = key_pending[name].pop(key, None)
            if batch and key not in key_closed[name]:
                call(name, list(batch) if nodes[name].batch_size == Node.BATCH_SIZE_ALL else tuple(batch), key)
        if name not in closed and pending[name]:
            batch = pending[name]
            pending[name] = []
            call(name, list(batch) if nodes[name].batch_size == Node.BATCH_SIZE_ALL else tuple(batch))
        for kid in kids[name]:
            end(kid)

    while root not in closed and not exhausted():
        call(root, None)
    for kid in kids[root]:
        end(kid)
    reference_run.keyed = instances  # type: ignore[attr-defined] # the last run's per-key instances
    return out.getvalue(), values


def reference_until_error(graph: NodeGraph) -> tuple[str, dict[str, list], Exception | None]:
    """(stdout text, leaf name -> items, the node's exception) of a sequential run that may raise.

    What it printed and emitted before the failing call (that call's own prints
    included, its emits not: they never left it), and the exception a node
    raised; ``None`` and the whole output if none did.
    """
    seen: dict = {}
    try:
        text, values = reference_run(graph, partial=seen)
    except Exception as exc:
        return seen["out"].getvalue(), seen["values"], exc
    return text, values, None
