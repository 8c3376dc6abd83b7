"""Worker-side functions: what one task runs.

Everything here is pickled to other processes, so it is plain top-level
functions and small classes, and it imports no client code.

A task runs one *stage* of the compiled plan over one *partition* of items:

* :func:`run_fused` drives a fused group of stateless ``batch_size=1`` nodes
  (a chain, or a subtree with fan-out) item by item, depth first, exactly as a
  sequential run would, and writes what comes out into sinks: a leaf's
  outputs, or the items crossing into a sequential stage below.
* :func:`run_seq` / :func:`run_flush` feed one stateful, batched or
  ``BATCH_SIZE_ALL`` node held by a :class:`SeqHolder` (on a Dask actor, or
  in the caller), one partition after another.

Each task also records an ordering *log* (which sink each output went to,
what was printed and where, where a node closed) so the caller can splice the
outputs of different stages back into the sequential order.
"""

from __future__ import annotations

import io
import itertools
import sys
import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import Iterator
from functools import partial
from typing import Any

import cloudpickle

from .errors import short_repr
from .model.node import Node
from .model.streams import edge_selector

__all__ = [
    "END",
    "Chunk",
    "Closed",
    "Ends",
    "FusedSpec",
    "ItemError",
    "NodeFailure",
    "Printed",
    "SegmentResult",
    "SeqHolder",
    "SeqSpec",
    "SeqStep",
    "assemble",
    "final_state",
    "run_flush",
    "run_fused",
    "run_seq",
    "step_flush",
    "step_seq",
]

#: Log entry: the end of one input item's events.
END = None


class Printed:
    """Log entry: text a node printed."""

    __slots__ = ("node", "text")

    def __init__(self, node: str, text: str) -> None:
        self.node = node
        self.text = text

    def __reduce__(self):
        return (Printed, (self.node, self.text))


class Closed:
    """Log entry: the node called ``close()`` here."""

    __slots__ = ("node",)

    def __init__(self, node: str) -> None:
        self.node = node

    def __reduce__(self):
        return (Closed, (self.node,))


class Ends:
    """Log entry: ``n`` item ends in a row (items of a batch still being filled)."""

    __slots__ = ("n",)

    def __init__(self, n: int) -> None:
        self.n = n

    def __reduce__(self):
        return (Ends, (self.n,))


class Chunk:
    """A partition of source items, sent as one object.

    Never a bare list: distributed serializes a plain list element by element.
    ``prints`` maps an item's position to what the source printed before it.
    ``calls`` holds the positions after which a source call ended, when a call
    emitted other than exactly one item (``None``: after every item).
    """

    __slots__ = ("calls", "items", "prints")

    def __init__(self, items: list, prints: dict[int, str] | None = None, calls: set[int] | None = None) -> None:
        self.items = items
        self.prints = prints or {}
        self.calls = calls

    def __reduce__(self):
        return (Chunk, (self.items, self.prints, self.calls))

    def __len__(self) -> int:
        return len(self.items)


class SegmentResult:
    """What one stage task produced for one partition.

    ``outs[s]`` holds the values that went to sink ``s`` in order. ``log`` is
    the ordering log (sink ids, :class:`Printed`, :class:`Closed`, ``END``);
    a stage with a single sink keeps ``log=None`` and records only ``marks``,
    ``(position in outs[0], entry)`` pairs, so its hot loop appends nothing extra.
    """

    __slots__ = (
        "carried",
        "closed",
        "cross_closed",
        "errors",
        "log",
        "marks",
        "n_in",
        "one_to_one",
        "outs",
        "printed",
        "seconds",
    )

    def __init__(self, n_sinks: int, ordered: bool = True) -> None:
        self.outs: list = [[] for _ in range(n_sinks)]
        self.log: list | None = [] if ordered else None
        self.marks: list[tuple[int, Any]] = []
        self.closed: list[str] = []
        self.cross_closed: set[int] = set()
        self.printed = False
        # Ran breadth first and each input item gave exactly one output: item ends are implied.
        self.one_to_one = False
        self.n_in = 0
        self.seconds = 0.0
        self.carried: tuple[int, SegmentResult] | None = None
        self.errors: list[ItemError] = []  # items skipped or collected by on_error

    def __repr__(self) -> str:
        return f"<SegmentResult {self.n_in} in, {[len(o) for o in self.outs]} out>"


class ItemError:
    """An item a node's ``run`` failed on and ``on_error`` dropped."""

    __slots__ = ("error", "item", "item_repr", "node")

    def __init__(self, node: str, item_repr: str, error: str, item: Any = None) -> None:
        self.node, self.item_repr, self.error, self.item = node, item_repr, error, item

    def __reduce__(self):
        return (ItemError, (self.node, self.item_repr, self.error, self.item))

    def __repr__(self) -> str:
        return f"<ItemError node={self.node!r} item={self.item_repr} error={self.error}>"


def _retry_or_drop(node: Any, name: str, run: Any, data: Any, exc: Exception, buf: list, res: SegmentResult) -> None:
    """``run(data)`` raised: retry it, then raise or drop the item as the node asks."""
    for _ in range(getattr(node, "retries", 0)):
        buf.clear()  # what the failed call emitted is discarded with it
        try:
            run(data)
            return
        except Exception as again:
            exc = again
    policy = getattr(node, "on_error", "raise")
    if policy == "raise":
        raise _failure(name, data, exc) from exc
    buf.clear()
    res.errors.append(
        ItemError(name, short_repr(data), f"{type(exc).__name__}: {exc}", data if policy == "collect" else None)
    )


class NodeFailure(Exception):
    """A node's ``run`` raised on a worker; carries what the caller reports."""

    def __init__(self, node: str, item: str, error: BaseException | None, tb: str) -> None:
        super().__init__(node, item, error, tb)
        self.node, self.item, self.error, self.tb = node, item, error, tb

    def __str__(self) -> str:
        return f"node {self.node!r} failed on {self.item}: {self.error!r}"


def _failure(node: str, data: Any, exc: BaseException) -> NodeFailure:
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        cloudpickle.loads(cloudpickle.dumps(exc))
    except Exception:
        exc = RuntimeError(f"{type(exc).__name__}: {exc}")  # unpicklable: keep its text
    return NodeFailure(node, short_repr(data), exc, tb)


# -- stdout capture -------------------------------------------------------------------

_local = threading.local()


class _Dispatch(io.TextIOBase):
    """``sys.stdout`` stand-in: the running task's capture, else the real stream.

    Installed once per process; capture is per thread, so tasks on a worker
    with several threads never see each other's prints.
    """

    def __init__(self, real: Any) -> None:
        self.real = real

    def write(self, text: str) -> int:
        target = getattr(_local, "capture", None)
        if target is None:
            return self.real.write(text)
        target(text)
        return len(text)

    def flush(self) -> None:
        if getattr(_local, "capture", None) is None:
            self.real.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


_install_lock = threading.Lock()


class capture_stdout:
    """Send this thread's prints to ``record(text)`` for the ``with`` block."""

    def __init__(self, record: Any) -> None:
        self.record = record

    def __enter__(self) -> None:
        if not isinstance(sys.stdout, _Dispatch):
            with _install_lock:
                if not isinstance(sys.stdout, _Dispatch):
                    sys.stdout = _Dispatch(sys.stdout)
        self.saved = getattr(_local, "capture", None)
        _local.capture = self.record

    def __exit__(self, *exc: Any) -> None:
        _local.capture = self.saved


def _recorder(res: SegmentResult, current: list) -> Any:
    """A ``record(text)`` that logs prints at their place in ``res``."""
    if res.log is not None:
        log = res.log

        def record(text: str) -> None:
            res.printed = True
            last = log[-1] if log else None
            if type(last) is Printed and last.node == current[0]:
                last.text += text  # print() writes text and "\n" separately
            else:
                log.append(Printed(current[0], text))
    else:
        marks, out = res.marks, res.outs[0]

        def record(text: str) -> None:
            res.printed = True
            pos = len(out)
            if marks and marks[-1][0] == pos and type(marks[-1][1]) is Printed and marks[-1][1].node == current[0]:
                marks[-1][1].text += text
            else:
                marks.append((pos, Printed(current[0], text)))

    return record


def _mark(res: SegmentResult, entry: Any) -> None:
    if res.log is not None:
        res.log.append(entry)
    else:
        res.marks.append((len(res.outs[0]), entry))


# -- fused stages ---------------------------------------------------------------------


class FusedSpec:
    """A fused stage as the compiler describes it.

    ``edges`` are the edges leaving the stage's input (the source's or a
    sequential node's output): ``(parent_out, child_in, parent, child, target)``,
    with ``target`` either ``("node", name, leaf_sink_or_None, child_edges)`` or
    ``("sink", sink_id)`` for an item leaving the stage.
    """

    def __init__(
        self,
        token: str,
        name: str,
        blobs: dict[str, bytes],
        edges: tuple,
        n_sinks: int,
        ends: bool,
        under: dict[str, frozenset[int]],
        source: str,
        leaf_out: bool,
        breadth_first: bool = False,
    ) -> None:
        self.token, self.name, self.blobs, self.edges = token, name, blobs, edges
        self.n_sinks, self.under, self.source = n_sinks, under, source
        # One sink and no need to splice per input item: outputs need no log.
        self.single = n_sinks == 1 and not ends
        # Its one sink is a leaf's output: the caller needs item ends only after a close.
        self.leaf_out = leaf_out
        # The caller needs no order between sinks: try node-by-node over the partition first.
        self.breadth_first = breadth_first

    def __repr__(self) -> str:
        return f"<FusedSpec {self.name}>"


# Node instances of a fused stage, per (stage token, thread): a stateless
# node's snapshot is unpickled once per worker thread and run, not once per task.
_instances: OrderedDict[tuple[str, int], dict[str, Any]] = OrderedDict()


def _nodes_for(spec: FusedSpec) -> dict[str, Any]:
    key = (spec.token, threading.get_ident())
    nodes = _instances.get(key)
    if nodes is None:
        nodes = {name: cloudpickle.loads(blob) for name, blob in spec.blobs.items()}
        _instances[key] = nodes
        while len(_instances) > 32:
            _instances.popitem(last=False)
    return nodes


def _build(spec: FusedSpec, nodes: dict[str, Any], res: SegmentResult, current: list) -> Any:
    """Compose the push functions of a fused stage; returns the input's push."""
    single = spec.single
    # Only used in ordered mode (not single), where the log exists.
    outs, log = res.outs, res.log if res.log is not None else []

    def deliver(edge: tuple) -> Any:
        parent_out, child_in, parent, child, target = edge
        push = build_target(target)
        select = edge_selector(parent_out, child_in, parent, child)
        if select is None:
            return push

        def selected(value: Any) -> None:
            for part in select(value):
                push(part)

        return selected

    def build_target(target: tuple) -> Any:
        if target[0] == "sink":
            sid = target[1]
            out = outs[sid]
            if single:
                return out.append

            def to_sink(value: Any) -> None:
                out.append(value)
                log.append(sid)

            return to_sink
        _, name, leaf_sink, child_edges = target
        return build_node(name, leaf_sink, [deliver(e) for e in child_edges])

    def build_node(name: str, leaf_sink: int | None, kids: list) -> Any:
        node = nodes[name]
        buf: list = []
        node.emit = buf.append
        run = node.run
        closed = False

        def close() -> None:
            nonlocal closed
            closed = True

        node.close = close

        def report() -> None:
            _mark(res, Closed(name))
            res.closed.append(name)
            res.cross_closed.update(spec.under[name])

        if leaf_sink is not None:
            out = outs[leaf_sink]

            def forward() -> None:
                out.extend(buf)
                if not single:
                    log.extend([leaf_sink] * len(buf))
                buf.clear()
        elif len(kids) == 1:
            kid = kids[0]

            def forward() -> None:
                for value in buf:
                    kid(value)
                buf.clear()
        else:

            def forward() -> None:
                for value in buf:
                    for kid in kids:
                        kid(value)
                buf.clear()

        def push(data: Any) -> None:
            if closed:
                return
            current[0] = name
            try:
                run(data)
            except Exception as exc:
                _retry_or_drop(node, name, run, data, exc, buf, res)
            if buf:
                forward()
            if closed:
                report()

        return push

    pushes = [deliver(edge) for edge in spec.edges]
    if len(pushes) == 1:
        return pushes[0]

    def fan_out(value: Any) -> None:
        for push in pushes:
            push(value)

    return fan_out


def _breadth_first(spec: FusedSpec, nodes: dict[str, Any], items: list) -> SegmentResult | None:
    """Each node over the whole partition, ``emit`` bound to a list's append.

    Without prints, closes or errors, every sink receives exactly what the
    depth-first walk would give it, in the same order, with one Python call
    per item per node fewer. ``None`` means something happened whose place
    matters: the caller walks the partition depth first instead.
    """
    res = SegmentResult(spec.n_sinks, ordered=not spec.single)
    trouble: list = []
    # Items crossing into a sequential stage need their source item's end, which
    # the caller can rebuild only if every node gave exactly one output per input.
    one_to_one = not (spec.single and spec.leaf_out) and spec.n_sinks == 1

    def close() -> None:
        trouble.append("close")

    def feed(edges: tuple, values: list) -> None:
        for parent_out, child_in, parent, child, target in edges:
            select = edge_selector(parent_out, child_in, parent, child)
            if select is not None:
                values = [part for value in values for part in select(value)]
            if target[0] == "sink":
                res.outs[target[1]].extend(values)
                continue
            _, name, leaf_sink, kids = target
            node = nodes[name]
            out: list = []
            node.emit = out.append
            node.close = close
            run = node.run
            start = time.perf_counter()
            for value in values:
                run(value)
            res.seconds += time.perf_counter() - start
            if one_to_one and len(out) != len(values):
                trouble.append("not one to one")
            if trouble:
                return
            if leaf_sink is not None:
                res.outs[leaf_sink].extend(out)
            else:
                feed(kids, out)

    try:
        with capture_stdout(trouble.append):
            feed(spec.edges, items)
    except Exception:
        return None  # the depth-first walk raises it, for the item a sequential run fails on
    if trouble or (one_to_one and len(res.outs[0]) != len(items)):
        return None
    res.one_to_one = one_to_one
    return res


def run_fused(spec: FusedSpec, upstream: Any, sink: int | None = None) -> SegmentResult:
    """Run a fused stage over one partition.

    ``upstream`` is a :class:`Chunk` of source items, or the
    :class:`SegmentResult` of the sequential stage above, whose sink ``sink``
    holds this stage's input. An ``END`` follows each input item's events,
    except where the caller cannot need it: a single-sink stage feeding a leaf
    marks ends only after a node in it closed.
    """
    items, prints, calls = _input(upstream, sink)
    nodes = _nodes_for(spec)
    # res.seconds times the nodes' loops only: a task's fixed set-up would make a
    # small first partition look many times costlier per item than it is.
    if spec.breadth_first and not prints:
        res = _breadth_first(spec, nodes, items)
        if res is not None:
            res.n_in = len(items)
            return res
    res = SegmentResult(spec.n_sinks, ordered=not spec.single)
    current = [spec.source]
    push = _build(spec, nodes, res, current)
    record = _recorder(res, current)
    closed = res.closed
    if spec.single:
        marks, out = res.marks, res.outs[0]

        def end() -> None:
            marks.append((len(out), END))
    else:
        end = partial(_log(res).append, END)
    with capture_stdout(record):
        start = time.perf_counter()
        if prints or calls is not None or not (spec.single and spec.leaf_out):
            for i, value in enumerate(items, 1):
                if i - 1 in prints:
                    current[0] = spec.source
                    record(prints[i - 1])
                push(value)
                if calls is None or i in calls:
                    end()
            if len(items) in prints:
                current[0] = spec.source
                record(prints[len(items)])
        else:  # the hot loop: nothing but the nodes' own work
            rest = iter(items)
            for value in rest:
                push(value)
                if closed:
                    end()
                    break
            for value in rest:
                push(value)
                end()
        res.seconds = time.perf_counter() - start
    res.n_in = len(items)
    return res


def _input(upstream: Any, sink: int | None) -> tuple[list, dict, set | None]:
    if isinstance(upstream, SeqStep):
        upstream = upstream.result
    if isinstance(upstream, Chunk):
        return upstream.items, upstream.prints, upstream.calls
    return upstream.outs[sink], {}, None


# -- sequential stages ----------------------------------------------------------------


class SeqSpec:
    """A stateful, batched or ``BATCH_SIZE_ALL`` node as the compiler describes it."""

    def __init__(self, name: str, blob: bytes, batch_size: int | float) -> None:
        self.name, self.blob, self.batch_size = name, blob, batch_size

    def __repr__(self) -> str:
        return f"<SeqSpec {self.name}>"


class SeqHolder:
    """Holds one sequential node and feeds it partition after partition.

    On a cluster it lives on a Dask actor; in the caller it is a plain object.
    Its single sink (0) receives the node's outputs.
    """

    def __init__(self, spec: SeqSpec) -> None:
        self.name = spec.name
        self.batch_size = spec.batch_size
        self.node = cloudpickle.loads(spec.blob)
        self.pending: list = []
        self.closed = False  # the node called close()
        self.upstream_closed = False  # a node above it closed: no more input
        self._buf: list = []
        self._bind()

    def _bind(self) -> None:
        def close() -> None:
            self.closed = True

        self.node.emit = self._buf.append
        self.node.close = close

    def _call(self, data: Any, res: SegmentResult) -> None:
        was_closed = self.closed
        try:
            self.node.run(data)
        except Exception as exc:
            _retry_or_drop(self.node, self.name, self.node.run, data, exc, self._buf, res)
        buf, log = self._buf, _log(res)
        if buf:
            res.outs[0].extend(buf)
            log.extend([0] * len(buf))
            buf.clear()
        if self.closed and not was_closed:
            log.append(Closed(self.name))
            res.closed.append(self.name)

    def process(self, items: list, upstream_closed: bool = False) -> SegmentResult:
        """Feed one partition's items; log an ``END`` after each."""
        res = SegmentResult(1)
        if self.upstream_closed or self.closed:
            return res  # the caller skips these items too
        current = [self.name]
        log, pending, k = _log(res), self.pending, self.batch_size
        with capture_stdout(_recorder(res, current)):
            start = time.perf_counter()
            if k == 1:
                for value in items:
                    self._call(value, res)
                    log.append(END)
                    if self.closed:
                        break
            else:
                # Whole slices: only the item that completes a batch has events.
                i, n = 0, len(items)
                while i < n and not self.closed:
                    part = items[i:] if k == Node.BATCH_SIZE_ALL else items[i : i + int(k) - len(pending)]
                    i += len(part)
                    pending.extend(part)
                    if len(pending) < k:  # also every BATCH_SIZE_ALL slice: k is infinite
                        log.append(Ends(len(part)))
                        continue
                    log.append(Ends(len(part) - 1))
                    batch = tuple(pending)
                    pending.clear()
                    self._call(batch, res)
                    log.append(END)
        if upstream_closed:
            self.upstream_closed = True
        if k == 1 and not res.printed and not res.closed and not res.errors and len(res.outs[0]) == len(items):
            # One output per item, nothing else: the caller can rebuild [0, END, 0, END, ...].
            res.log, res.one_to_one = None, True
        res.seconds = time.perf_counter() - start
        res.n_in = len(items)
        return res

    def flush(self) -> SegmentResult:
        """The input has ended: run what is still pending (the last batch)."""
        res = SegmentResult(1)
        if self.pending and not self.closed:
            data = list(self.pending) if self.batch_size == Node.BATCH_SIZE_ALL else tuple(self.pending)
            self.pending.clear()
            with capture_stdout(_recorder(res, [self.name])):
                self._call(data, res)
        _log(res).append(END)
        return res

    def state(self) -> bytes:
        """The node as it is now, pickled without the engine's bindings."""
        for attr in ("emit", "close"):
            self.node.__dict__.pop(attr, None)
        try:
            return cloudpickle.dumps(self.node)
        finally:
            self._bind()


def _holder(ref: Any) -> SeqHolder:
    """The holder itself: passed directly in the caller, or the actor's instance."""
    if isinstance(ref, SeqHolder):
        return ref
    from distributed import get_worker

    holder = get_worker().state.actors[ref.key]
    assert isinstance(holder, SeqHolder)
    return holder


def _log(res: SegmentResult) -> list:
    """The ordering log of a result built in ordered mode (as a sequential stage's always is)."""
    assert res.log is not None
    return res.log


class Blank:
    """Stands for a list of ``n`` values the caller never reads (items that crossed on)."""

    __slots__ = ("n",)

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> None:
        if not 0 <= i < self.n:
            raise IndexError(i)
        return None

    def __iter__(self) -> Iterator[None]:
        return itertools.repeat(None, self.n)

    def __reduce__(self):
        return (Blank, (self.n,))


def stripped(res: SegmentResult) -> SegmentResult:
    """``res`` without its outputs: what the caller needs of a stage whose outputs all cross."""
    copy = SegmentResult.__new__(SegmentResult)
    for slot in SegmentResult.__slots__:
        setattr(copy, slot, getattr(res, slot))
    copy.outs = [Blank(len(o)) for o in res.outs]
    copy.carried = None
    return copy


def run_seq(ref: Any, upstream: SegmentResult, sink: int, carry: int | None, *after: Any) -> SegmentResult:
    """Feed one partition to a sequential stage.

    ``carry``: the id of the fused stage above, when the caller does not fetch
    that stage's result (all its outputs cross into sequential stages) and
    this task brings back its log instead. ``after`` is the previous
    partition's task of the same stage: a dependency only, so the stage sees
    partitions in order.
    """
    res = _holder(ref).process(upstream.outs[sink], sink in upstream.cross_closed)
    if carry is not None:
        res.carried = (carry, stripped(upstream))
    return res


def run_flush(ref: Any, *after: Any) -> SegmentResult:
    """End a sequential stage's input (see :meth:`SeqHolder.flush`)."""
    return _holder(ref).flush()


def final_state(ref: Any, *after: Any) -> bytes:
    """The sequential node's final state, pickled."""
    return _holder(ref).state()


# -- Pipeline.to_dask(): state carried through a chain of tasks ---------------------------


class SeqStep:
    """A sequential stage's holder after one partition, and what it produced."""

    __slots__ = ("holder", "result")

    def __init__(self, holder: SeqHolder, result: SegmentResult) -> None:
        self.holder, self.result = holder, result


def step_seq(prev: SeqStep | SeqSpec, upstream: SegmentResult, sink: int) -> SeqStep:
    """Feed one partition to the holder the previous step left (or a new one)."""
    holder = prev.holder if isinstance(prev, SeqStep) else SeqHolder(prev)
    return SeqStep(holder, holder.process(upstream.outs[sink], sink in upstream.cross_closed))


def step_flush(prev: SeqStep | SeqSpec) -> SeqStep:
    """End the input of the holder the previous step left."""
    holder = prev.holder if isinstance(prev, SeqStep) else SeqHolder(prev)
    return SeqStep(holder, holder.flush())


def assemble(plan: Any, layout: list, *results_in_order: Any) -> Any:
    """Every round's results, in order, into the ``PipelineResult`` ``run()`` would give.

    ``layout`` lists each round as ``(origin stage, source call ends, [stage ids])``;
    the results follow in that order.
    """
    from .runtime.output import Output  # the caller's code, run here as the last task

    out = Output(plan, quiet=True, collect=True)
    flat = iter(results_in_order)
    for origin, calls, stages in layout:
        results = {}
        for stage in stages:
            r = next(flat)
            results[stage] = r.result if isinstance(r, SeqStep) else r
        if origin == 0:
            out.round(0, results, calls)
        else:
            out.flush(origin, results)
    out.finish()
    return out.result()
