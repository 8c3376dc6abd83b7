"""Hypothesis strategies: random pyPiper programs built from tests/nodes.py.

A program is ``(source params, subtree specs)``; a spec is ``(kind, params, children)``.
``programs()`` draws what it always drew; ``programs(reuse=True)`` adds nodes (and a
source) that emit one reused, mutated output list, ``programs(functions=True)`` adds
plain functions made nodes with ``as_node`` (return value, generator, filter and batch
forms), and ``programs(names=True)`` gives every node a name drawn from
:data:`TRICKY_NAMES`, random text and names made from the other nodes' names (kept in
``params["name"]``, unique per program).
"""

from __future__ import annotations

import ast
import functools
import math
import os
import tempfile

from hypothesis import strategies as st

from pypiper_dask import Node, NodeGraph, as_node
from tests import nodes as N

# Each entry: (kind, factory(name, draw) -> Node). Kinds decide what may follow.
_MIDDLE = ["map", "explode", "filter", "echo", "close_at", "take", "batch", "all", "running", "split"]

#: Kinds that may call close(): what :func:`without_closes` disarms.
CLOSING = ("close_at", "take")

#: Names that look like what an engine might build from names: a key is
#: "{label}-{token}", "-" may become "\u2011", fused nodes are joined by "+",
#: a node's output stage may be "{name}-out".
TRICKY_NAMES = (
    "gen",
    "gen-out",
    "gen\u2011out",
    "a",
    "b",
    "a+b",
    "a-b",
    "a\u2011b",
    "x y",
    " x",
    "x ",
    "ünï",
    "名前",
    "stage",
    "stage-2",
    "stage-2-1a2b3c4d",
    "-",
    "+",
    "--",
    "out",
    "None",
    "0",
    "'q'",
    '"q"',
    "a/b",
    "a.b",
    "a:b",
    "{x}",
    "(0, 1)",
    "%s",
    "\\",
    "🙂",
    "é-ö+ü",
)

# No tab or line break: tests/nodes.py's call log is one "name<TAB>repr" line per call.
_NAME_CHARS = "ab-+ ü名🙂\u2011.:/_()'\"0123"
_SUFFIXES = ("-out", "\u2011out", "-0", "-1a2b3c4d", "+a", " ", "-")


@st.composite
def node_names(draw, n: int) -> list[str]:
    """``n`` distinct node names: tricky ones, random text, and names built from names already drawn."""
    names: list[str] = []
    for _ in range(n):
        options = [st.sampled_from(TRICKY_NAMES), st.text(alphabet=_NAME_CHARS, min_size=1, max_size=10)]
        if names:
            earlier = st.sampled_from(names)
            options += [
                st.tuples(earlier, st.sampled_from(_SUFFIXES)).map("".join),
                st.tuples(earlier, earlier).map("+".join),
                earlier.map(lambda a: a.replace("-", "\u2011")),
            ]
        name = draw(st.one_of(options))
        while name in names:
            name += "~"
        names.append(name)
    return names


@st.composite
def node_specs(draw, depth: int = 0, kinds: tuple[str, ...] = tuple(_MIDDLE)):
    """A random subtree description: (kind, params, children)."""
    kind = draw(st.sampled_from(kinds))
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
    elif kind == "function":
        params["form"] = draw(st.sampled_from(["inc", "none", "repeat", "odd", "sum"]))
        if params["form"] == "repeat":
            params["n"] = draw(st.integers(0, 3))
        if params["form"] == "sum":
            params["batch_size"] = draw(st.sampled_from([2, 5, Node.BATCH_SIZE_ALL]))
    elif kind == "keyed":
        params["keys"] = draw(st.integers(1, 9))
        params["batch_size"] = draw(st.sampled_from([1, 1, 2, 3, Node.BATCH_SIZE_ALL]))
        params["close_after"] = draw(st.sampled_from([0, 0, 1, 3]))
        params["loud"] = draw(st.booleans())
        params["text"] = draw(st.booleans())
    elif kind == "reuse":
        params["times"] = draw(st.integers(1, 2))
        params["streams"] = draw(st.booleans())  # out_streams=["a", "b"] over the reused list
    n_kids = 0 if depth >= 3 else draw(st.integers(0, 2 if depth else 3))
    kids = [draw(node_specs(depth=depth + 1, kinds=kinds)) for _ in range(n_kids)]
    return kind, params, kids


def _count(specs) -> int:
    return sum(1 + _count(sub) for _kind, _params, sub in specs)


def _named(specs, names) -> list:
    """Copies of ``specs`` with the next of ``names`` in each ``params["name"]``, depth first."""
    out = []
    for kind, params, sub in specs:
        mine = {**params, "name": next(names)}
        out.append((kind, mine, _named(sub, names)))
    return out


@st.composite
def programs(draw, *, reuse: bool = False, names: bool = False, functions: bool = False, keyed: bool = False):
    """(source params, subtree specs) for a random pipeline.

    ``keyed``: also draw keyed stateful nodes (``tests/nodes.py``'s ``KeyedRunning``).
    ``reuse``: also draw "reuse" nodes and a source that reuses its output list.
    ``functions``: also draw function nodes (:func:`pypiper_dask.as_node`).
    ``names``: draw every node's name (see :func:`node_names`); else ``build`` numbers them.
    """
    size = draw(st.integers(0, 120))
    per_call = draw(st.integers(1, 3))
    loud = draw(st.booleans())
    source: dict = {"size": size, "per_call": per_call, "loud": loud}
    kinds = (*_MIDDLE, "reuse") if reuse else tuple(_MIDDLE)
    if functions:
        kinds = (*kinds, "function")
    if keyed:
        kinds = (*kinds, "keyed", "keyed")
    if reuse:
        source["reuse"] = draw(st.booleans())
    kids = draw(st.lists(node_specs(kinds=kinds), min_size=1, max_size=3))
    if names:
        drawn = draw(node_names(1 + _count(kids)))
        source["name"] = drawn[0]
        kids = _named(kids, iter(drawn[1:]))
    return source, kids


def has_closes(program) -> bool:
    """Whether any node of ``program`` may call ``close()`` (other than the source at its end)."""

    def any_close(specs) -> bool:
        return any(kind in CLOSING or any_close(sub) for kind, _params, sub in specs)

    return any_close(program[1])


def without_closes(program):
    """``program`` with every ``close_at`` and ``take`` node made never to close (same names)."""

    def disarm(specs) -> list:
        out = []
        for kind, params, sub in specs:
            if kind == "close_at":
                params = {**params, "limit": 10**9}
            elif kind == "take":
                params = {**params, "n": 10**9}
            out.append((kind, params, disarm(sub)))
        return out

    source, kids = program
    return source, disarm(kids)


def build(program, calls=None) -> NodeGraph:
    """Turn a program description into a fresh NodeGraph.

    ``calls``: a path every node (source included) logs its ``run`` calls to (``tests/nodes.py``).
    """
    source_params, kids = program
    counter = iter(range(1000))
    log = {} if calls is None else {"calls": str(calls)}
    source = dict(source_params)
    source_name = source.pop("name", "gen")
    source_class = N.ReuseGen if source.pop("reuse", False) else N.Gen
    graph = NodeGraph(source_class(source_name, **source, **log))

    def make(kind: str, params: dict, parent_split: bool) -> Node:
        number = next(counter)
        p = {k: v for k, v in params.items() if v is not None}
        name = p.pop("name", None) or f"{kind}{number}"
        extra = dict(log)
        if parent_split:
            extra["in_streams"] = ["b", "a"] if params.get("stateless") is None and kind == "map" else ["b"]
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
        if kind == "function":
            options = {k: v for k, v in extra.items() if k != "calls"}  # a function logs no calls
            form = p.pop("form")
            if form == "repeat":
                return as_node(functools.partial(N.fn_repeat, p.pop("n")), name, **options)
            fn = {"inc": N.fn_inc, "none": N.fn_none, "odd": N.fn_odd, "sum": N.fn_sum}[form]
            return as_node(fn, name, filter=form == "odd", **p, **options)
        if kind == "keyed":
            return N.KeyedRunning(name, stateless=False, **p, **extra)
        if kind == "reuse":
            streams = ["a", "b"] if p.pop("streams", False) else "*"
            return N.Reuse(name, out_streams=streams, **p, **extra)
        raise AssertionError(kind)

    def attach(parent: Node, spec, parent_split: bool) -> None:
        kind, params, sub = spec
        node = make(kind, params, parent_split)
        graph.add(parent, node)
        for s in sub:
            attach(node, s, node.out_streams != "*")

    for spec in kids:
        attach(graph.root, spec, False)
    return graph


# -- a node that raises at a drawn item (issue 19 item 2) ---------------------------------------


@st.composite
def failing_programs(draw, **options):
    """``(program, where, ledger)``: a program of :func:`programs` and where a node that raises goes in it.

    ``where`` is the preorder position (0: the source) of the node it goes under;
    ``ledger``: the keywords of :func:`build_failing`'s ledger: ``fail_at`` (the
    item it raises at, maybe one that never comes), ``every`` (it prints at every
    ``every``-th item), ``stateless`` and ``above`` (it goes between that node and
    its successors, else it is one more leaf).
    """
    program = draw(programs(**options))
    where = draw(st.integers(0, _count(program[1])))
    ledger = {
        "fail_at": math.nan,  # equal to nothing: it never fails
        "every": draw(st.integers(2, 9)),
        "stateless": draw(st.booleans()),
        "above": draw(st.booleans()),
        "emit_first": draw(st.booleans()),  # what the failing call emitted goes nowhere
    }
    # Mostly an item it does receive (a dry run of the reference says which), sometimes none.
    seen = _ledger_inputs(program, where, ledger)
    if seen and draw(st.integers(0, 9)):
        ledger["fail_at"] = ast.literal_eval(draw(st.sampled_from(seen)))
    return program, where, ledger


def _ledger_inputs(program, where: int, ledger: dict) -> list[str]:
    """The reprs of the items the ledger of :func:`build_failing` receives in a sequential run that never fails."""
    from tests.reference import reference_run

    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "calls")
        graph = build_failing(program, where, {**ledger, "fail_at": math.nan})
        node = next(n for n in graph if isinstance(n, N.Ledger))
        node.calls = path  # only its calls are logged
        reference_run(graph, calls=path)
        return [data for _, data in N.read_calls(path)]


def build_failing(program, where: int, ledger: dict, calls=None) -> NodeGraph:
    """``build(program)`` with a ``tests.nodes.Ledger`` raising at ``fail_at`` (see :func:`failing_programs`)."""
    graph = build(program, calls)
    nodes = list(graph)
    target = nodes[where]
    name = "fail"
    while any(n.name == name for n in nodes):
        name += "~"
    above = ledger["above"] and target.out_streams == "*" and bool(graph.children(target))
    extra = {} if target.out_streams == "*" else {"in_streams": [target.out_streams[0]]}
    log = {} if calls is None else {"calls": str(calls)}
    fail = N.Ledger(
        name,
        every=ledger["every"],
        fail_at=ledger["fail_at"],
        emit_first=ledger.get("emit_first", False),
        stateless=ledger["stateless"],
        **extra,
        **log,
    )
    out = NodeGraph(graph.root)
    for node in nodes:
        parent = node
        if node is target:
            out.add(node, fail)
            if above:
                parent = fail
        for kid in graph.children(node):
            out.add(parent, kid)
    return out
