"""A run in the calling process: the nodes called depth first, exactly as a sequential run calls them.

In the caller nothing needs partitions: the whole node tree is written out as
one Python function (the same technique as a fused stage's,
:mod:`pypiper_dask.worker.fused`) that calls the source, then sends each item
it emitted through the tree — batches filled, barriers held until their
input ends, closes taking effect where pyPiper has them. So every ``run`` is
called exactly when and as often as in a sequential run, the source is pulled
no further once every path is closed, what nodes print goes straight to
``sys.stdout`` in its place, and nothing is captured or reordered.
"""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Callable, Generator
from functools import partial
from typing import Any

from ..errors import NodeError
from ..log import HiddenStateReport, SilentSource
from ..model.keys import is_keyed
from ..model.node import Node, arm_setup_emits
from ..model.pickling import dumps_node
from ..model.snapshot import Snapshot, load_node
from ..model.streams import edge_selector
from ..ordering import ItemError
from ..worker.fused import SettlingBuffer, call_lines, select_loop, skip
from ..worker.guard import StateWatch
from ..worker.keyed import KeyedInstances, KeyedNodes, key_of
from ..worker.setups import set_up, tear_down
from ..worker.values import NodeFailure, freezing, retry_or_drop
from .output import PipelineResult

__all__ = ["iter_in_process", "set_up_here"]


class _Nowhere:
    """A closed batch node's pending list: takes nothing, holds nothing."""

    __slots__ = ()

    def append(self, value: Any) -> None:
        pass

    def __len__(self) -> int:
        return 0


_NOWHERE = _Nowhere()


class _Vars(dict):
    """The names the generated code uses, held in closure cells (as fast to read as locals).

    Setting a name here sets the cell too, so a ``close()`` that swaps a
    node's ``run`` for a no-op takes effect at once, in the code running now.
    """

    def __init__(self, **values: Any) -> None:
        super().__init__(values)
        self.setters: dict[str, Callable[[Any], None]] = {}

    def __setitem__(self, name: str, value: Any) -> None:
        super().__setitem__(name, value)
        if name in self.setters:
            self.setters[name](value)

    def compile(self, lines: list[str], filename: str) -> None:
        """Define the functions in ``lines`` (at the top level) over cells of this mapping's names."""
        names = list(self)
        functions = [line.split("(")[0][4:] for line in lines if line.startswith("def ")]
        source = ["def factory(V):"] + [f"    {name} = V[{name!r}]" for name in names]
        source += [f"    {line}" for line in lines]
        for name in names:
            source += [f"    def set_{name}(value):", f"        nonlocal {name}", f"        {name} = value"]
        made = ", ".join(f"{f!r}: {f}" for f in functions + [f"set_{n}" for n in names])
        source.append(f"    return {{{made}}}")
        namespace: dict[str, Any] = {"__builtins__": __builtins__}
        exec(compile("\n".join(source) + "\n", filename, "exec"), namespace)
        for name, function in namespace["factory"](dict(self)).items():
            if name.startswith("set_"):
                self.setters[name[4:]] = function
            else:
                super().__setitem__(name, function)


class _Errors:
    """Where ``retry_or_drop`` lists the items nodes dropped (``on_error``)."""

    def __init__(self) -> None:
        self.errors: list[ItemError] = []


class _LastBatch:
    """What a keyed node's ``run`` gets when its input ended: call ``key``'s instance with its last batch."""

    __slots__ = ("key",)

    def __init__(self, key: Any) -> None:
        self.key = key


class _Keyed:
    """A keyed node in the tree: each item to its key's instance (see :mod:`pypiper_dask.worker.keyed`).

    The tree calls it as a node of ``batch_size=1``; batches are made per key
    inside. The caller's own node object is not called: each key's instance
    is a copy of it as constructed.
    """

    batch_size = 1
    retries = 0
    on_error = "raise"

    def __init__(self, node: Any, scope: str, dropped: _Errors) -> None:
        self.name = node.name
        blob = dumps_node(node)
        self.template = load_node(blob)
        self.keyed = KeyedNodes(node.name, blob, node.batch_size, scope)
        self.dropped = dropped
        self.count = 0

    def run(self, data: Any) -> None:
        out: list = []
        if type(data) is _LastBatch:
            self.keyed.flush_one(data.key, out, self.dropped)
        else:
            key = key_of(self.template, self.name, data)
            self.keyed.feed(key, data, (0, self.count), out, self.dropped)
            self.count += 1
        for value in out:
            self.emit(value)

    def emit(self, value: Any) -> None:  # bound by the tree
        raise AssertionError("not bound")

    def close(self) -> None:  # bound by the tree; a key's close() is its instance's own
        raise AssertionError("not bound")

    def instances(self) -> KeyedInstances:
        """Copies of the per-key instances as they ended, without what is the process's or the engine's."""
        from ..worker.snapshots import final_state

        with self.keyed.unbound():
            return KeyedInstances((k, load_node(final_state(n))) for k, n in self.keyed.nodes.items())


class _Tree:
    """The node tree of one run, compiled; see the module's docstring."""

    def __init__(
        self,
        snap: Snapshot,
        nodes: dict[str, Any],
        quiet: bool,
        collect: bool,
        stream: list | None = None,
        dropped: _Errors | None = None,
    ) -> None:
        self.snap, self.nodes = snap, nodes
        self.stream = stream
        self.kids = snap.children
        self.index = {name: i for i, name in enumerate(snap.order)}
        self.leaves = [n for n in snap.order if not self.kids[n]]
        self.values: dict[str, list] = {leaf: [] for leaf in self.leaves}
        self.counts: dict[str, int] = dict.fromkeys(self.leaves, 0)
        self.closed: set[str] = set()
        self.ended: set[str] = set()
        self.dropped = dropped if dropped is not None else _Errors()
        self.parent = {kid: p for p, kids in self.kids.items() for kid in kids}
        self.ns = _Vars(STOP=False, SOURCE_FAILED=None)
        self.filename = f"<pipeline {snap.root}>"
        self.appends: list[tuple[Any, Callable]] = []  # each node's emit target, to check its values again
        # A quiet leaf's values go straight into the result: per leaf, the expression of how
        # much it holds (taken before each call) and how to cut it back there (see _marker).
        self.marks: dict[str, tuple[str, Callable[[int], None]]] = {}
        self._bind(quiet, collect)
        self.arm()
        self._compile(stream)

    def _bind(self, quiet: bool, collect: bool) -> None:
        """Each node's emit target, close and run, as the compiled code finds them in its namespace."""
        snap, nodes, root = self.snap, self.nodes, self.snap.root
        for name in snap.order:
            node, i = nodes[name], self.index[name]
            arm_setup_emits(node)
            if name == root:
                self.items: list = []
                self.ns["ITEMS"] = self.items
                self.appends.append((node, self.items.append))
                node.close = self._source_closed
                if not self.kids[root]:  # the source alone: its items are the output
                    self.ns[f"OUT{i}"] = self._printer(name, collect) if not quiet else self._collector(name, collect)
                continue
            self.ns[f"RUN{i}"] = node.run
            if node.batch_size != 1:
                self.ns[f"PEND{i}"] = []
            buf: list = []
            if self.kids[name]:
                self.ns[f"BUF{i}"] = buf
                self.appends.append((node, buf.append))
            elif quiet:  # a leaf whose items are not printed: straight into the result
                self.appends.append((node, self._collector(name, collect)))
                self.marks[name] = self._marker(name, collect)
            else:  # printed after its call returns, as pyPiper prints a leaf's items
                self.ns[f"BUF{i}"] = buf
                self.appends.append((node, buf.append))
                self.ns[f"OUT{i}"] = self._printer(name, collect)
            self.ns[f"FAIL{i}"] = self._failer(name)  # after BUF: it drops what a failing call emitted
            node.close = self._closer(name)

    def _compile(self, stream: list | None) -> None:
        """The run's code: ``drive`` (blocks of source calls) and a ``call`` function per node."""
        snap, root = self.snap, self.snap.root
        # The source's items and run are bound as locals (they never change); a node's
        # RUN/BUF/PEND stay globals, which a close() rebinds.
        self.ns["RUN_SOURCE"] = self.nodes[root].run
        # One block of up to n source calls; the caller loops over blocks (progress, streaming).
        lines = ["def drive(n, count, ITEMS=ITEMS, RUN_SOURCE=RUN_SOURCE, len=len):"]
        lines += ["    for _ in range(n):", "        try:"]
        lines += ["            RUN_SOURCE(None)", "        except Exception as e:"]
        lines += ["            SOURCE_FAILED(e, count)", "        for v0 in ITEMS:"]
        if self.kids[root]:
            self._deliver(root, "v0", 0, 3, lines)
        else:
            lines.append(f"            OUT{self.index[root]}(v0)")
        lines += ["        count += len(ITEMS)", "        ITEMS.clear()", "        if STOP:"]
        lines += ["            break"]
        if stream is not None:
            # A pause for the consumer to take the items now, not after the next call (a live
            # source's next call may wait long for its reading): drive is a generator then.
            self.ns["STREAM"] = stream
            lines += ["        if STREAM:", "            yield"]
        lines += ["    return count"]
        for name in snap.order[1:]:
            i = self.index[name]
            lines.append(f"def call{i}(v0):")
            self._call(name, "v0", 0, 1, lines)
        self.ns.compile(lines, self.filename)

    # -- code ---------------------------------------------------------------------------

    def _deliver(self, parent: str, value: str, depth: int, indent: int, lines: list[str]) -> None:
        """Lines sending ``value``, emitted by ``parent``, to each of its successors."""
        info = self.snap.info
        for kid in self.kids[parent]:
            select = edge_selector(info[parent].out_streams, info[kid].in_streams, parent, kid)  # type: ignore[arg-type]
            if select is None:
                self._push(kid, value, depth, indent, lines)
                continue
            part = select_loop(self.ns, select, value, depth, indent, lines)
            self._push(kid, part, depth, indent + 1, lines)

    def _push(self, name: str, value: str, depth: int, indent: int, lines: list[str]) -> None:
        """Lines handing ``value`` to node ``name``: a call, or a place in its batch."""
        pad, i, size = "    " * indent, self.index[name], self.nodes[name].batch_size
        if size == 1:
            self._call(name, value, depth, indent, lines)
            return
        lines.append(f"{pad}PEND{i}.append({value})")
        if size == Node.BATCH_SIZE_ALL:
            return  # called once, when its input ends
        batch = f"b{depth}_{len(lines)}"
        lines += [f"{pad}if len(PEND{i}) >= {size}:", f"{pad}    {batch} = tuple(PEND{i})", f"{pad}    PEND{i}.clear()"]
        self._call(name, batch, depth, indent + 1, lines)

    def _call(self, name: str, value: str, depth: int, indent: int, lines: list[str]) -> None:
        """Lines calling node ``name`` with ``value``, then sending on what it emitted."""
        pad, i = "    " * indent, self.index[name]
        mark = self.marks.get(name)
        lines += call_lines(pad, i, value, None if mark is None else mark[0])
        if f"BUF{i}" not in self.ns:
            return
        kid = f"v{depth + 1}"
        lines.append(f"{pad}for {kid} in BUF{i}:")
        if self.kids[name]:
            self._deliver(name, kid, depth + 1, indent + 1, lines)
        else:
            lines.append(f"{pad}    OUT{i}({kid})")
        lines.append(f"{pad}BUF{i}.clear()")

    # -- what the code calls ------------------------------------------------------------

    def _failer(self, name: str) -> Callable[..., None]:
        """``FAIL{i}``: retry, drop or raise (see ``retry_or_drop``); what the failing call emitted goes nowhere."""
        node, buf, mark = self.nodes[name], self.ns.get(f"BUF{self.index[name]}"), self.marks.get(name)

        def fail(data: Any, exc: Exception, held: int = 0) -> None:
            if isinstance(exc, NodeFailure):  # a keyed node's instance: its own retries were spent
                raise exc
            if buf is not None:
                discard = buf.clear
            else:
                assert mark is not None
                discard = partial(mark[1], held)
            retry_or_drop(node, name, data, exc, discard, self.dropped)  # type: ignore[arg-type]

        return fail

    def _marker(self, leaf: str, collect: bool) -> tuple[str, Callable[[int], None]]:
        """How much a quiet leaf's result holds (an expression of the code), and how to cut it back to that."""
        i, counts = self.index[leaf], self.counts
        if self.stream is not None:  # during the leaf's call only its pairs are added
            stream = self.ns[f"HELD{i}"] = self.stream

            def cut_stream(held: int) -> None:
                extra = len(stream) - held
                if extra > 0:
                    del stream[held:]
                    counts[leaf] -= extra

            return f"len(HELD{i})", cut_stream
        if collect:
            values = self.ns[f"HELD{i}"] = self.values[leaf]

            def cut_values(held: int) -> None:
                del values[held:]

            return f"len(HELD{i})", cut_values
        self.ns["COUNTS"], self.ns[f"LEAF{i}"] = counts, leaf

        def cut_count(held: int) -> None:
            counts[leaf] = min(counts[leaf], held)

        return f"COUNTS[LEAF{i}]", cut_count

    def _printer(self, leaf: str, collect: bool) -> Callable[[Any], None]:
        values, counts = self.values[leaf], self.counts
        if self.stream is not None:
            return self._streamer(leaf)

        def out(value: Any) -> None:
            if collect:
                values.append(value)
            else:
                counts[leaf] += 1
            sys.stdout.write(f"{value!s}\n")  # looked up now: a notebook cell or a redirect may replace it

        return out

    def _streamer(self, leaf: str) -> Callable[[Any], None]:
        """A leaf's items go to the stream's consumer, in order, and are counted."""
        stream, counts = self.stream, self.counts
        assert stream is not None

        def out(value: Any) -> None:
            counts[leaf] += 1
            stream.append((leaf, value))

        return out

    def _collector(self, leaf: str, collect: bool) -> Callable[[Any], None]:
        if self.stream is not None:
            return self._streamer(leaf)
        if collect:
            return self.values[leaf].append
        counts = self.counts

        def count(value: Any) -> None:
            counts[leaf] += 1

        return count

    def arm(self) -> None:
        """(Re)bind each node's ``emit`` so that its values are frozen, until they prove atomic."""
        for node, append in self.appends:
            node.emit = freezing(append, node)

    def _source_closed(self) -> None:
        self.ns["STOP"] = True

    def _closer(self, name: str) -> Callable[[], None]:
        ns, i = self.ns, self.index[name]

        def close() -> None:
            if name in self.closed:
                return
            self.closed.add(name)
            ns[f"RUN{i}"] = skip  # it gets nothing after the item during which it closed
            if f"PEND{i}" in ns:
                ns[f"PEND{i}"] = _NOWHERE
            if all(self._below_closed(leaf) for leaf in self.leaves):
                ns["STOP"] = True  # every path is closed: the source is pulled no further
            buf = ns.get(f"BUF{i}")
            if buf is None:
                self.ended.add(name)
                return

            def settle() -> None:
                # Its input ends below it once what it emitted in this call went down.
                ns[f"BUF{i}"] = buf
                self.ended.add(name)
                for kid in self.kids[name]:
                    self.end(kid)

            ns[f"BUF{i}"] = SettlingBuffer(buf, settle)

        return close

    def _below_closed(self, leaf: str) -> bool:
        name: str | None = leaf
        while name is not None:
            if name in self.closed:
                return True
            name = self.parent.get(name)
        return False

    def end(self, name: str) -> None:
        """``name``'s input has ended: call it with what it still holds, then end the nodes below."""
        if name in self.ended:
            return
        self.ended.add(name)
        i = self.index[name]
        node = self.nodes[name]
        if isinstance(node, _Keyed):
            for key in node.keyed.waiting():  # each key's last batch goes down before the next key's call
                self.ns[f"call{i}"](_LastBatch(key))
        pending = self.ns.get(f"PEND{i}")
        if name not in self.closed and pending:
            data = list(pending) if self.nodes[name].batch_size == Node.BATCH_SIZE_ALL else tuple(pending)
            pending.clear()
            self.ns[f"call{i}"](data)
        for kid in self.kids[name]:
            self.end(kid)


def set_up_here(node: Any, scope: str) -> None:
    """:func:`~pypiper_dask.worker.setups.set_up` in the calling process: a failure is the node's ``NodeError``."""
    from .execute import node_error

    try:
        set_up(node, scope)
    except NodeFailure as failure:
        raise node_error(failure) from failure.error


def iter_in_process(
    snap: Snapshot,
    nodes: dict[str, Any],
    *,
    quiet: bool,
    collect: bool,
    callback: Callable[[int, int | None], None] | None,
    stream: list | None = None,
) -> Generator[None, None, PipelineResult]:
    """Run the pipeline of ``snap`` here, on ``nodes`` themselves (the caller's objects), in pausing blocks.

    ``callback(done, total)`` is called at the start, about ten times a second
    while the run goes on (``done``: source items fully processed), and at the end.
    The engine's bindings (``emit``, ``close``) are taken off the nodes when
    the run ends, however it ends. With ``stream`` (a list), the leaves'
    items are appended to it as ``(leaf, item)`` instead of printed or
    collected, for the consumer to take at a pause. Closing the generator
    ends the run where it is.
    """
    scope = uuid.uuid4().hex
    originals = nodes
    keyed = {n: node for n, node in nodes.items() if n != snap.root and is_keyed(node)}
    try:
        for name in snap.order:  # this process runs every node: each is set up here, once
            if name not in keyed:  # a keyed node's instances are set up as they are made
                set_up_here(nodes[name], scope)
        dropped = _Errors()
        nodes = {**nodes, **{n: _Keyed(node, scope, dropped) for n, node in keyed.items()}}
        result = yield from _run(snap, nodes, quiet, collect, callback, stream, dropped)
        result.keyed_nodes.update({n: nodes[n].instances() for n in keyed})
        return result
    finally:
        for node in originals.values():
            for name in ("emit", "close", "run"):
                node.__dict__.pop(name, None)
        tear_down(scope, restore=True)  # the caller's objects: what setup_worker() set goes again


def _run(
    snap: Snapshot,
    nodes: dict[str, Any],
    quiet: bool,
    collect: bool,
    callback: Callable[[int, int | None], None] | None,
    stream: list | None,
    dropped: _Errors,
) -> Generator[None, None, PipelineResult]:
    tree = _Tree(snap, nodes, quiet, collect, stream, dropped)
    # The nodes a cluster runs as copies, one per worker thread: hidden state there changes
    # the output, so it is reported here too, before the user scales out.
    info = snap.info
    watch = StateWatch({n: nodes[n] for n in snap.order[1:] if info[n].stateless and info[n].batch_size == 1})
    hidden = HiddenStateReport()
    root = snap.root
    size = snap.info[root].size
    total = size if isinstance(size, int) else None
    if callback:
        callback(0, total)
    last: list = [time.monotonic(), 1]  # when progress was last reported, and the calls since
    silent, seen = SilentSource(root), [0]

    def progress(count: int) -> int:
        # Calls of the source between progress reports: grown while they take under 0.1 s.
        now = time.monotonic()
        n = last[1]
        if count == seen[0]:
            silent.idle(n)
        else:
            seen[0] = count
            silent.heard()
        n = n * 2 if now - last[0] < 0.1 else max(1, n // 2)
        last[0], last[1] = now, min(n, 1 << 16)
        if callback:
            callback(count, total)
        if watch.nodes:
            hidden.saw(watch.check())
        tree.arm()  # values are checked again, as a fused stage does per partition
        return last[1]

    def result() -> PipelineResult:
        counts = {leaf: len(v) for leaf, v in tree.values.items()} if collect and stream is None else tree.counts
        return PipelineResult(tree.values if collect and stream is None else {}, counts, tree.dropped.errors)

    def source_failed(exc: Exception, count: int) -> None:
        error = NodeError(
            root,
            "None",
            f"Node {root!r} (the source) raised {type(exc).__name__}: {exc} in run(None), "
            f"after emitting {count + len(tree.items)} items.",
        )
        error.partial = result()
        raise error from exc

    tree.ns["SOURCE_FAILED"] = source_failed
    drive, ns = tree.ns["drive"], tree.ns
    done, n = 0, 1
    try:
        while not ns["STOP"]:
            done = (yield from drive(n, done)) if stream is not None else drive(n, done)
            n = progress(done)
            yield  # between blocks (about ten a second): a stream's consumer takes its items; a cancel lands here
        for kid in snap.children[root]:
            tree.end(kid)
    except NodeFailure as failure:
        # Everything before the failing call went out as it happened: the error says what that was.
        from .execute import node_error

        raise node_error(failure, result()) from failure.error
    yield
    if watch.nodes:
        hidden.saw(watch.check())
    if callback:
        callback(done, total)
    return result()
