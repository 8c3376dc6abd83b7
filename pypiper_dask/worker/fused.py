"""A fused stage: stateless ``batch_size=1`` nodes run together over one partition, once.

The stage's node tree is turned into one small Python function per stage
(written out as source and compiled once per worker thread), which feeds
each input item depth first exactly as a sequential run does: a node's
``run`` is called, then each value it emitted goes through the whole subtree
below before the next. ``emit`` appends to the node's own buffer; a leaf's
``emit`` stores straight into its sink. Nothing is ever run twice: where
output order matters, the function records it (:mod:`pypiper_dask.ordering`)
while it runs.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..model.snapshot import load_node
from ..model.streams import edge_selector
from ..ordering import Marks, Segment, compact_ends, stripped
from .capture import capture_stdout
from .guard import StateWatch
from .sequential import push_step
from .setups import set_up
from .values import NodeFailure, failed_above, freezing, retry_or_drop, stage_input

__all__ = [
    "Edge",
    "FusedSpec",
    "SettlingBuffer",
    "ToNode",
    "ToSink",
    "call_lines",
    "forget",
    "run_fused",
    "select_loop",
    "skip",
]


@dataclass(frozen=True)
class ToSink:
    """An edge's end that leaves the stage: into sink ``sink``."""

    sink: int


@dataclass(frozen=True)
class ToNode:
    """An edge's end at a node of the stage; ``sink`` is its own if it is a leaf."""

    name: str
    sink: int | None
    edges: tuple[Edge, ...]


@dataclass(frozen=True)
class Edge:
    """One edge of the graph inside a fused stage: what ``parent`` emits, as ``child`` reads it."""

    parent_out: str | tuple[str, ...]
    child_in: str | tuple[str, ...]
    parent: str
    child: str
    target: ToNode | ToSink


@dataclass(frozen=True)
class FusedSpec:
    """A fused stage as the compiler describes it to its tasks.

    ``token`` is unique per stage and run (the worker caches the stage's nodes
    under it); ``edges`` leave the stage's input; ``sinks`` names the node
    each sink leads to (a leaf, or the sequential node it crosses into);
    ``under[node]`` are the sinks below ``node``; ``ends``: record each input
    item's end even when no event needs it (the stage has several sinks, a
    crossing, or a sequential input); ``top``: it reads the source.
    ``scope``: whose per-process set-up its nodes share (see :mod:`.setups`).
    """

    token: str
    label: str
    above: str
    blobs: dict[str, bytes]
    edges: tuple[Edge, ...]
    sinks: tuple[str, ...]
    under: dict[str, frozenset[int]]
    ends: bool
    top: bool
    scope: str = ""

    @property
    def n_sinks(self) -> int:
        return len(self.sinks)

    def __repr__(self) -> str:
        return f"<FusedSpec {self.label}>"


def call_lines(pad: str, i: int, value: str, mark: str | None = None) -> list[str]:
    """Generated lines calling node ``i``'s ``run`` (``RUN{i}``) with ``value``; a raise goes to ``FAIL{i}``.

    ``mark``: an expression taken before the call and handed to ``FAIL{i}``
    (a leaf's sink length: what the failing call stored past it is dropped).

    Examples
    --------
    >>> call_lines("", 3, "v0")
    ['try:', '    RUN3(v0)', 'except Exception as e:', '    FAIL3(v0, e)']
    >>> call_lines("", 3, "v0", mark="len(OUT0)")[1::2]
    ['    M3 = len(OUT0); RUN3(v0)', '    FAIL3(v0, e, M3)']
    """
    if mark is None:
        run, fail = f"RUN{i}({value})", f"FAIL{i}({value}, e)"
    else:  # on the RUN line: the lines' count and places stay (see _Compiled._target)
        run, fail = f"M{i} = {mark}; RUN{i}({value})", f"FAIL{i}({value}, e, M{i})"
    return [f"{pad}try:", f"{pad}    {run}", f"{pad}except Exception as e:", f"{pad}    {fail}"]


def select_loop(ns: dict, select: Callable, value: str, depth: int, indent: int, lines: list[str]) -> str:
    """Open a generated loop over the items a named-streams edge makes of ``value``; returns the item's name."""
    name = f"SEL{len(ns)}"
    ns[name] = select
    part = f"p{depth}_{len(lines)}"
    lines.append(f"{'    ' * indent}for {part} in {name}({value}):")
    return part


def skip(value: Any) -> None:
    """A closed node's ``run``: it receives nothing more."""


class _Compiled:
    """One worker thread's instance of a stage: its nodes and its compiled feed functions."""

    def __init__(self, spec: FusedSpec) -> None:
        self.spec = spec
        self.nodes = {name: load_node(blob) for name, blob in spec.blobs.items()}
        for node in self.nodes.values():
            set_up(node, spec.scope)  # raises the node's failure
        self.watch = StateWatch(self.nodes)
        self.filename = f"<fused stage {spec.label}>"
        self.line_node: dict[int, str] = {}
        self.leaf_sink: dict[str, int] = {}
        self.crosses: dict[str, str] = {}  # node -> the first sequential node its values cross into
        self.ns: dict[str, Any] = {"__builtins__": __builtins__}
        self.index = {name: i for i, name in enumerate(self.nodes)}
        lines: list[str] = []
        self._edges(spec.edges, "v0", 0, 2, lines)
        body = "\n".join(lines)
        source = (
            "def feed(items):\n    for v0 in items:\n"
            + body
            + "\n        if STOP and SETTLE():\n            break\n"
            + "def feed_ends(items):\n    for v0 in items:\n"
            + body
            + "\n        if STOP and SETTLE():\n            ENDS_APPEND(len(POS))\n            break"
            + "\n        ENDS_APPEND(len(POS))\n"
        )
        # The body appears twice, from line 3 and 4 lines after its first copy's end:
        # map both copies' lines to their nodes (the print attribution reads them).
        at_body = dict(self.line_node)
        self.line_node = {}
        for line, name in at_body.items():
            self.line_node[line + 2] = name
            self.line_node[line + 2 + len(lines) + 4] = name
        exec(compile(source, self.filename, "exec"), self.ns)
        self.feed: Callable = self.ns["feed"]
        self.feed_ends: Callable = self.ns["feed_ends"]
        for name, node in self.nodes.items():
            i = self.index[name]
            if name not in self.leaf_sink:
                self.ns[f"BUF{i}"] = []
            self.ns[f"FAIL{i}"] = self._failer(name, node)
        self._bound: Segment | None = None
        self.ends: list[int] | None = None
        self.calls: set[int] | None = None
        self.unsettled: list[Callable[[], None]] = []

    def _edges(self, edges: tuple[Edge, ...], value: str, depth: int, indent: int, lines: list[str]) -> None:
        for edge in edges:
            if isinstance(edge.target, ToSink) and edge.parent in self.nodes:
                self.crosses.setdefault(edge.parent, self.spec.sinks[edge.target.sink])
            select = edge_selector(edge.parent_out, edge.child_in, edge.parent, edge.child)  # type: ignore[arg-type]
            if select is None:
                self._target(edge.target, value, depth, indent, lines)
                continue
            part = select_loop(self.ns, select, value, depth, indent, lines)
            self._target(edge.target, part, depth, indent + 1, lines)

    def _target(self, target: ToNode | ToSink, value: str, depth: int, indent: int, lines: list[str]) -> None:
        pad = "    " * indent
        if isinstance(target, ToSink):
            lines.append(f"{pad}SINK{target.sink}({value})")
            return
        i = self.index[target.name]
        first = len(lines)
        # A leaf stores straight into its sink: a failing call's values are taken back from there.
        lines += call_lines(pad, i, value, None if target.sink is None else f"len(OUT{target.sink})")
        # The call's lines, for a print's node (see _who): RUN and FAIL, the 2nd and 4th.
        self.line_node[first + 2] = self.line_node[first + 4] = target.name
        if target.sink is not None:
            self.leaf_sink[target.name] = target.sink
        if target.edges:
            kid = f"v{depth + 1}"
            lines.append(f"{pad}for {kid} in BUF{i}:")
            self._edges(target.edges, kid, depth + 1, indent + 1, lines)
            lines.append(f"{pad}BUF{i}.clear()")

    def _failer(self, name: str, node: Any) -> Callable[..., None]:
        """What happens when ``node.run`` raised: retry, then raise or drop as the node asks.

        What the failing call emitted goes nowhere, as in a sequential run: a
        node's buffer is cleared; a leaf's sink is cut back to ``mark``, its
        length before the call (and the sinks' shared order with it).
        """
        buf = self.ns.get(f"BUF{self.index[name]}")

        def fail(data: Any, exc: Exception, mark: int = 0) -> None:
            seg = self._bound
            assert seg is not None

            def discard() -> None:
                if buf is not None:
                    buf.clear()
                    return
                out = seg.outs[self.leaf_sink[name]]
                extra = len(out) - mark
                if extra > 0:  # during a leaf's call only its own sink grows
                    del out[mark:]
                    if seg.order is not None:
                        del seg.order[len(seg.order) - extra :]

            retry_or_drop(node, name, data, exc, discard, seg)

        return fail

    def bind(self, seg: Segment, ends: list[int] | None, closed: frozenset[str], calls: set[int] | None) -> Marks:
        """Point the stage's sinks, closes and marks at ``seg`` for one task.

        ``closed``: nodes the caller knows closed in an earlier partition; they
        get nothing here, and the sinks they lead to are closed off.
        """
        ns, spec = self.ns, self.spec
        self._bound = seg
        self.ends, self.calls = ends, calls
        order = seg.order
        pos_list = order if order is not None else seg.outs[0]
        ns["POS"] = pos_list
        ns["STOP"] = False
        ns["SETTLE"] = self._settle
        self.unsettled = []
        ns["ENDS_APPEND"] = ends.append if ends is not None else None
        marks = Marks(seg, lambda: (len(ends) if ends is not None else 0, len(pos_list)), self._who)
        for s, out in enumerate(seg.outs):
            ns[f"SINK{s}"] = _sink(out, order, s)
            ns[f"OUT{s}"] = out
        for name, node in self.nodes.items():
            i = self.index[name]
            ns[f"RUN{i}"] = node.run
            # A leaf's values go back to the caller, a crossing node's to a holder: they must pickle.
            to = f"to node {self.crosses[name]!r}" if name in self.crosses else None
            if name in self.leaf_sink:
                node.emit = freezing(ns[f"SINK{self.leaf_sink[name]}"], node, to=to or "back to the caller")
            else:
                ns[f"BUF{i}"].clear()
                node.emit = freezing(ns[f"BUF{i}"].append, node, to=to)
            node.close = self._closer(name, i, seg, marks)
            if name in closed:
                ns[f"RUN{i}"] = skip
                seg.blocked.update(spec.under[name])
        seg.blocked.update(s for s, node in enumerate(spec.sinks) if node in closed)
        return marks

    def _closer(self, name: str, i: int, seg: Segment, marks: Marks) -> Callable[[], None]:
        """``node.close`` for one task: the node gets nothing after the item during which it closed.

        The close is marked where a sequential run has it: after the values the
        node emitted in that call went through its subtree (so a barrier below
        sees them before its input ends). A node with successors is marked when
        its buffer is next emptied; a leaf at the end of the item.
        """
        ns = self.ns
        below = self.spec.under[name]
        buf = ns.get(f"BUF{i}")

        def settle() -> None:
            marks.closed(name)
            seg.blocked.update(below)
            if buf is not None:
                ns[f"BUF{i}"] = buf
            ns["STOP"] = True  # the end of this item checks whether every path is closed

        def close() -> None:
            if ns[f"RUN{i}"] is skip:
                return
            ns[f"RUN{i}"] = skip
            if buf is not None:
                ns[f"BUF{i}"] = SettlingBuffer(buf, settle)
            else:
                self.unsettled.append(settle)
                ns["STOP"] = True

        return close

    def _settle(self) -> bool:
        """At the end of an item with a close in it: mark leaves' closes. Stop feeding here?

        Only the top stage stops, once every path from the source is closed and
        the source call that emitted this item is over: a sequential run pulls
        no more items then. (Below a sequential node, nodes above a closed one
        still get the items of the source item in progress.)
        """
        for settle in self.unsettled:
            settle()
        self.unsettled.clear()
        assert self._bound is not None
        stop = self.spec.top and len(self._bound.blocked) == self.spec.n_sinks
        if stop and self.calls is not None and len(self.ends or ()) + 1 not in self.calls:
            return False  # STOP stays set: check again after the call's next item
        self.ns["STOP"] = False
        return stop

    def _who(self) -> str:
        """The node whose ``run`` is on this thread's stack now (for a print)."""
        frame = sys._getframe(1)
        while frame is not None:
            if frame.f_code.co_filename == self.filename:
                return self.line_node.get(frame.f_lineno, self.spec.above)
            frame = frame.f_back  # type: ignore[assignment]
        return self.spec.above


class SettlingBuffer:
    """A closed node's buffer until its closing call's values have gone down its subtree.

    The generated code iterates a node's buffer, then clears it: the clear is
    where the close takes its place.
    """

    __slots__ = ("buf", "settle")

    def __init__(self, buf: list, settle: Callable[[], None]) -> None:
        self.buf, self.settle = buf, settle

    def __iter__(self):
        return iter(self.buf)

    def clear(self) -> None:
        self.buf.clear()
        self.settle()


def _sink(out: list, order: list[int] | None, s: int) -> Callable[[Any], None]:
    if order is None:
        return out.append
    out_append, order_append = out.append, order.append

    def store(value: Any) -> None:
        out_append(value)
        order_append(s)

    return store


# A stage's nodes, per (stage token, thread): a stateless node's snapshot is
# unpickled once per worker thread and run, not once per task.
_instances: OrderedDict[tuple[str, int], _Compiled] = OrderedDict()
_instances_lock = threading.Lock()


def _compiled(spec: FusedSpec) -> _Compiled:
    key = (spec.token, threading.get_ident())
    stage = _instances.get(key)
    if stage is None:
        stage = _Compiled(spec)
        with _instances_lock:
            _instances[key] = stage
            while len(_instances) > 32:
                _instances.popitem(last=False)
    return stage


def forget(scope: str) -> None:
    """Drop this process's instances of the stages of ``scope`` (their set-up was torn down)."""
    with _instances_lock:
        for key in [k for k, stage in _instances.items() if stage.spec.scope == scope]:
            del _instances[key]


def run_fused(
    spec: FusedSpec,
    upstream: Any,
    sink: int | None = None,
    closed: frozenset[str] = frozenset(),
    pushes: tuple[tuple[int, int, bool], ...] = (),
    *holders: Any,
) -> Segment | NodeFailure:
    """Run a fused stage over one partition, each node once per item it receives.

    ``upstream`` is a :class:`Chunk` of source items, or the
    :class:`~pypiper_dask.ordering.Segment` of the sequential stage above,
    whose sink ``sink`` holds this stage's input. ``closed`` are the nodes
    known to have closed in an earlier partition. ``pushes``, ``(sink, step, snap)``
    for each of ``holders``: hand that sink's items to that sequential stage's
    holder as its step ``step`` (``snap``: snapshot it after) as soon as this task ends, so the stage goes
    on without waiting for a worker slot (its own task collects the result).

    A node that raised (or a failure that came from above) is returned as its
    :class:`~pypiper_dask.worker.values.NodeFailure`, in place of the segment,
    carrying what the stage produced before the failing call (``partial``):
    a failure from above is passed on after the items the stage above produced
    before it went through this one.
    """
    above = failed_above(upstream)
    if above is not None:  # a node above failed: pass its failure on, after what came before it
        if above.partial is None:
            return above
        upstream = above.partial
    items, prints, calls = stage_input(upstream, sink)
    try:
        stage = _compiled(spec)
    except NodeFailure as failed:  # a node's setup_worker() raised
        return failed.detached()
    seg = Segment(spec.n_sinks)
    ends: list[int] | None = [] if (spec.ends or prints or calls is not None) else None
    marks = stage.bind(seg, ends, closed, calls)
    if not (spec.top and len(seg.blocked) == spec.n_sinks):  # else every path is closed: nothing to feed
        with capture_stdout(marks.printed):
            # seconds times the nodes' loop only: a task's fixed set-up would make a
            # small first partition look many times costlier per item than it is.
            start = time.perf_counter()
            try:
                (stage.feed if ends is None else stage.feed_ends)(items)
            except NodeFailure as failed:
                # Returned, not raised: the task succeeds, so no worker logs "Compute Failed"
                # for an error the caller reports as a NodeError. What came before the failing
                # call goes with it: the caller delivers it first, as a sequential run did.
                stage._bound = None
                if ends is not None:
                    seg.ends = compact_ends(ends)
                seg.n_in = len(items)
                return failed.detached().with_partial(seg, own=True)
            seg.seconds = time.perf_counter() - start
    if ends is not None:
        seg.ends = compact_ends(ends)
    seg.n_in = len(items)
    seg.suspects = stage.watch.check()
    stage._bound = None
    if above is not None:
        return above.with_partial(seg, own=False)  # the holders below take it from their own tasks
    pushed = []
    # This task's log goes with its first push: where the caller collects that step
    # from its holder, this task's result (and its items) is never fetched.
    log = stripped(seg) if pushes else None
    for (out, number, snap), holder in zip(pushes, holders, strict=True):
        if push_step(holder, number, seg.outs[out], out in seg.blocked, snap, spec.sinks[out], log):
            pushed.append(out)
            log = None
    seg.pushed = frozenset(pushed)
    return seg
