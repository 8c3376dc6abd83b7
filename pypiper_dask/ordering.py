"""The ordering log: what a task records so the caller can restore a sequential run's order.

A task runs one stage of the plan over one partition, once. Its result, a
:class:`Segment`, holds the values that reached each of the stage's *sinks*
(a leaf's output, or the items crossing into a sequential stage below) and
just enough to put them back in the order a sequential run produces:

``order``
    the sink of each value, in emission order (``None`` when the stage has
    one sink, so its hot loop appends nothing extra);
``ends``
    for each input *unit* (an item of the stage's input), how many values
    had been emitted when it ended (``None`` where the caller can never need
    item boundaries: a chain into one leaf, fed by a plain partition);
``marks``
    the rare events, each at its place: ``(unit, values emitted before it,
    Printed | Closed)``;
``failure``
    set when a node of the stage raised: the segment then holds what the
    stage produced before the failing call, and its events end with the failure.

This module holds the three sides of that encoding: the types a task writes,
the small helpers that write them (:class:`Marks`), and the code that reads
them back in the caller (:func:`events`, :class:`Splicer`). It imports
nothing from the rest of the package, so both the worker code and the
runtime import it.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol

__all__ = [
    "END",
    "Closed",
    "Failed",
    "ItemError",
    "Marks",
    "Printed",
    "Segment",
    "Splicer",
    "compact_ends",
    "events",
    "stripped",
]

#: An event: the end of one input unit.
END = None


class Printed:
    """Event: text a node printed."""

    __slots__ = ("node", "text")

    def __init__(self, node: str, text: str) -> None:
        self.node = node
        self.text = text

    def __reduce__(self):
        return (Printed, (self.node, self.text))

    def __eq__(self, other: object) -> bool:
        return type(other) is Printed and (other.node, other.text) == (self.node, self.text)

    def __repr__(self) -> str:
        return f"Printed({self.node!r}, {self.text!r})"


class Closed:
    """Event: the node called ``close()`` here."""

    __slots__ = ("node",)

    def __init__(self, node: str) -> None:
        self.node = node

    def __reduce__(self):
        return (Closed, (self.node,))

    def __eq__(self, other: object) -> bool:
        return type(other) is Closed and other.node == self.node

    def __repr__(self) -> str:
        return f"Closed({self.node!r})"


class Failed:
    """Event: a node raised here (``failure``); nothing after it is output."""

    __slots__ = ("failure",)

    def __init__(self, failure: Exception) -> None:
        self.failure = failure

    def __repr__(self) -> str:
        return f"Failed({self.failure!r})"


class ItemError:
    """An item a node's ``run`` failed on and ``on_error`` dropped."""

    __slots__ = ("error", "item", "item_repr", "node")

    def __init__(self, node: str, item_repr: str, error: str, item: Any = None) -> None:
        self.node, self.item_repr, self.error, self.item = node, item_repr, error, item

    def __reduce__(self):
        return (ItemError, (self.node, self.item_repr, self.error, self.item))

    def __repr__(self) -> str:
        return f"<ItemError node={self.node!r} item={self.item_repr} error={self.error}>"


class Segment:
    """What one task produced: one stage over one partition (see the module's docstring).

    Examples
    --------
    >>> seg = Segment(2)
    >>> seg.outs[1].append("b"); seg.outs[0].append("a")
    >>> seg.order, seg.ends = [1, 0], [2]
    >>> list(events(seg))
    [(1, 'b'), (0, 'a'), None]
    """

    __slots__ = (
        "blocked",
        "carried",
        "ends",
        "errors",
        "failure",
        "marks",
        "n_in",
        "order",
        "outs",
        "pushed",
        "seconds",
        "snap",
        "suspects",
    )

    def __init__(self, n_sinks: int, ordered: bool | None = None) -> None:
        self.outs: list[list] = [[] for _ in range(n_sinks)]
        self.order: list[int] | None = [] if (n_sinks > 1 if ordered is None else ordered) else None
        self.ends: Sequence[int] | None = None
        self.marks: list[tuple[int, int, Printed | Closed]] = []
        self.blocked: set[int] = set()  # sinks whose path a node of this stage closed
        self.errors: list[ItemError] = []  # items skipped or collected by on_error
        self.n_in = 0
        self.seconds = 0.0  # time in the nodes' own loop, for the partition sizer
        self.carried: tuple[int, Segment] | None = None  # a stage's log brought back by this task
        self.suspects: list[tuple[str, str]] = []  # (node, attribute): hidden state (worker.guard)
        self.snap: Any = None  # a sequential stage's snapshot after this step, when asked (worker.snapshots)
        self.pushed: frozenset[int] = frozenset()  # sinks whose items this task pushed to their holder
        # The failure of a node of this stage (a NodeFailure), raised where the events end: the
        # segment holds what came before the failing call, that call's prints included.
        self.failure: Exception | None = None

    def __reduce__(self):
        state = {slot: getattr(self, slot) for slot in self.__slots__}
        return (_rebuild_segment, (state,))

    @property
    def closed(self) -> list[str]:
        """Nodes that called ``close()`` in this segment."""
        return [m[2].node for m in self.marks if type(m[2]) is Closed]

    def __repr__(self) -> str:
        return f"<Segment {self.n_in} in, {[len(o) for o in self.outs]} out, {len(self.marks)} marks>"


def _rebuild_segment(state: dict) -> Segment:
    seg = Segment.__new__(Segment)
    seg.failure = None  # a segment pickled before segments could fail (a checkpoint's)
    seg.pushed = frozenset()  # or before pushes were noted
    for slot, value in state.items():
        setattr(seg, slot, value)
    return seg


def compact_ends(ends: list[int]) -> Sequence[int]:
    """``ends`` as a ``range`` when every unit gave exactly one value (the common case).

    Examples
    --------
    >>> compact_ends([1, 2, 3])
    range(1, 4)
    >>> compact_ends([0, 2, 3])
    [0, 2, 3]
    """
    n = len(ends)
    if n and ends[-1] == n and all(map(operator.eq, ends, range(1, n + 1))):
        return range(1, n + 1)
    return ends


class Marks:
    """Writes a segment's marks: prints merged per place, closes, at the current place.

    ``place()`` returns ``(unit, values emitted so far)``; ``who()`` the node now running.
    """

    __slots__ = ("marks", "place", "who")

    def __init__(self, seg: Segment, place: Callable[[], tuple[int, int]], who: Callable[[], str]) -> None:
        self.marks = seg.marks
        self.place = place
        self.who = who

    def printed(self, text: str) -> None:
        unit, pos = self.place()
        node = self.who()
        if self.marks:
            last = self.marks[-1]
            if last[0] == unit and last[1] == pos and type(last[2]) is Printed and last[2].node == node:
                last[2].text += text  # print() writes the text and "\n" separately
                return
        self.marks.append((unit, pos, Printed(node, text)))

    def closed(self, node: str) -> None:
        unit, pos = self.place()
        self.marks.append((unit, pos, Closed(node)))


def stripped(seg: Segment) -> Segment:
    """``seg`` without its values: what the caller needs of a stage whose outputs all cross on."""
    copy = _rebuild_segment({slot: getattr(seg, slot) for slot in Segment.__slots__})
    copy.outs = [_Blank(len(o)) for o in seg.outs]  # type: ignore[misc]  # read for their lengths only
    copy.carried = None
    return copy


class _Blank:
    """Stands for ``n`` values the caller never reads (items that crossed into a sequential stage)."""

    __slots__ = ("n",)

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> None:
        if not 0 <= i < self.n:
            raise IndexError(i)
        return None

    def __reduce__(self):
        return (_Blank, (self.n,))


# -- reading ------------------------------------------------------------------------------


def events(
    seg: Segment, calls: set[int] | None = None, prints: Mapping[int, str] | None = None, source: str = ""
) -> Iterator[Any]:
    """``seg``'s events in order: ``(sink, value)``, :class:`Printed`, :class:`Closed` or ``END``.

    For a top stage, ``calls`` are the units after which a source call ended
    (``None``: after every unit) and ``prints`` what the source printed
    before a unit (``Chunk.prints``), placed here as the source's prints.

    Examples
    --------
    >>> seg = Segment(1)
    >>> seg.outs[0].extend([10, 11, 20])
    >>> seg.ends = [2, 3]
    >>> seg.marks.append((1, 2, Printed("n", "hi\\n")))
    >>> list(events(seg))
    [(0, 10), (0, 11), None, Printed('n', 'hi\\n'), (0, 20), None]
    >>> list(events(seg, calls={2}))
    [(0, 10), (0, 11), Printed('n', 'hi\\n'), (0, 20), None]

    A segment a node failed in ends with the unit it failed in, cut where it failed:

    >>> seg.ends, seg.failure = [2], ValueError("at 2")
    >>> list(events(seg))
    [(0, 10), (0, 11), None, Printed('n', 'hi\\n'), (0, 20), Failed(ValueError('at 2'))]
    """
    outs, order, marks = seg.outs, seg.order, seg.marks
    taken = [0] * len(outs)
    total = len(order) if order is not None else len(outs[0]) if outs else 0

    def values(lo: int, hi: int) -> Iterator[tuple[int, Any]]:
        if order is None:
            out = outs[0]
            for i in range(lo, hi):
                yield (0, out[i])
            return
        for i in range(lo, hi):
            s = order[i]
            yield (s, outs[s][taken[s]])
            taken[s] += 1

    if seg.ends is None:  # no unit boundaries: marks placed by value count alone
        pos = 0
        for _, at, entry in marks:
            yield from values(pos, at)
            pos = at
            yield entry
        yield from values(pos, total)
        if seg.failure is not None:
            yield Failed(seg.failure)
        return
    prints = prints or {}
    pos = mi = 0
    n_marks = len(marks)
    n_units = len(seg.ends)
    for unit, end in enumerate(seg.ends):
        if unit in prints:
            yield Printed(source, prints[unit])
        while mi < n_marks and marks[mi][0] == unit:
            _, at, entry = marks[mi]
            yield from values(pos, at)
            pos = at
            yield entry
            mi += 1
        yield from values(pos, end)
        pos = end
        if calls is None or unit + 1 in calls:
            yield END
    if n_units in prints:  # printed by the last call, which emitted nothing (or before the failing unit)
        yield Printed(source, prints[n_units])
    if seg.failure is not None:
        # The unit a node failed in: what it produced up to the failing call, then the failure.
        for _, at, entry in marks[mi:]:
            yield from values(pos, at)
            pos = at
            yield entry
        yield from values(pos, total)
        yield Failed(seg.failure)


class _Stage(Protocol):
    id: int


class Splicer:
    """Puts rounds of segments back into the sequential order; hands leaf items and prints on.

    ``plan`` is the compiled plan (:class:`pypiper_dask.compiler.Plan`);
    ``deliver(leaf, values)`` receives each leaf's items in order and
    ``write(text)`` what nodes printed, both in the sequential run's order.

    Most rounds take a fast path (each leaf's items handed on as they are).
    Rounds with prints, closes or several printed leaves are *walked*: the top
    stage's events in order, each crossing into a sequential stage replaced by
    that stage's events for the item, recursively — which is the order a
    sequential run produces.
    """

    def __init__(self, plan: Any, quiet: bool, deliver: Callable[[str, Sequence], None], write: Callable[[str], None]):
        self.plan = plan
        self.quiet = quiet
        self._deliver = deliver
        self.write = write
        self.errors: list[ItemError] = []
        self.closed: set[str] = set()  # closes reached in the walk, in sequential order
        self.seen_closed: set[str] = set()  # every close reported, walked or not
        self.flushed: set[int] = set()
        self.flush_results: dict[int, dict[int, Segment]] = {}
        self.waiting: list[tuple[int, dict[int, Segment], Any]] = []
        self.leaf_sinks: dict[str, tuple[int, int]] = {}
        self._ends_walked = 0  # source calls' ends walked in the last source round walked
        self._call_ends: list[int] | None = None  # where that round's source calls ended (None: every item)
        for stage in plan.stages:
            if stage.kind == "fused":
                for i, sink in enumerate(stage.sinks):
                    if sink.kind == "leaf":
                        self.leaf_sinks[sink.node] = (stage.id, i)
            elif stage.below is None:
                self.leaf_sinks[stage.node] = (stage.id, 0)

    # -- what the run loop calls -------------------------------------------------------

    def saw(self, results: Mapping[int, Segment]) -> None:
        """Note the closes of a round as soon as it is back, delivered or not."""
        for res in results.values():
            self.seen_closed.update(res.closed)

    def round(self, results: dict[int, Segment], chunk: Any = None) -> None:
        """Take the results of one source round (every stage), in round order.

        ``chunk`` is the round's partition (its source prints and call ends).
        """
        self.saw(results)
        if self._done() and not self.waiting:
            return  # a sequential run would not have pulled these source items
        if any(res.failure is not None for res in results.values()):
            # A node failed in this round: no flush comes after it, so what waited for one
            # goes out now, then this round up to the failure, which the walk raises.
            self.waiting.append((0, results, chunk))
            self.finish()
            return
        if self.waiting or self._needs_flush(results):
            self.waiting.append((0, results, chunk))  # walked once flushes are known
            return
        if self._plain(results, chunk):
            for res in results.values():
                self.errors.extend(res.errors)
            for leaf, (sid, sink) in self.leaf_sinks.items():
                if sid in results:
                    self._deliver_many(leaf, results[sid].outs[sink])
            return
        self._walk_round(0, results, chunk)

    def flush(self, stage: int, results: dict[int, Segment]) -> None:
        """Take the results of the round that ends sequential stage ``stage``'s input."""
        self.saw(results)
        self.flush_results[stage] = results

    def finish(self, flushes: bool = True) -> None:
        """Walk what waited for flushes, then (``flushes``) every flush not walked at a close."""
        waiting, self.waiting = self.waiting, []
        for origin, results, chunk in waiting:
            if self._done():
                break
            self._walk_round(origin, results, chunk)
        if not flushes:
            return
        for stage in self.plan.seq_stages:
            if stage.id not in self.flushed and stage.id in self.flush_results:
                self.flushed.add(stage.id)
                results = self.flush_results.pop(stage.id)
                if not self._done():  # else every path closed first: a sequential run ended before this flush
                    self._walk_round(stage.id, results)

    @property
    def stopped(self) -> bool:
        """Every path closed in the walk so far: a sequential run stopped here, and output nothing more."""
        return self._done()

    @property
    def exhausted(self) -> bool:
        """Every leaf sits below a closed node: pulling more source items is useless."""
        return self._covers(self.seen_closed)

    # -- internals ---------------------------------------------------------------------

    def _needs_flush(self, results: dict[int, Segment]) -> bool:
        seq_under = self.plan.seq_under
        return any(seq_under[n] for res in results.values() for n in res.closed if n not in self.closed)

    def _plain(self, results: dict[int, Segment], chunk: Any) -> bool:
        if self.closed or not (self.quiet or len(self.plan.leaves) == 1):
            return False
        if chunk is not None and chunk.prints:
            return False
        return all(not res.marks for res in results.values())

    def _done(self) -> bool:
        """Every leaf is below a node closed so far in the walk: a sequential run stops here."""
        return self._covers(self.closed)

    def _covers(self, closed: set[str]) -> bool:
        """Does every path from the source to a leaf pass through a node in ``closed``?"""
        anc = self.plan.ancestors
        return bool(closed) and all(anc[leaf] & closed for leaf in self.plan.leaves)

    def _blocked(self, node: str) -> bool:
        return bool(self.closed) and not self.closed.isdisjoint(self.plan.ancestors[node])

    def _deliver_many(self, leaf: str, values: Sequence[Any]) -> None:
        if values:
            self._deliver(leaf, values)

    @property
    def units_out(self) -> int:
        """Of the source round walked last, how many source items' output all went out (its ends walked)."""
        if self._call_ends is None:
            return self._ends_walked
        return self._call_ends[self._ends_walked - 1] if self._ends_walked else 0

    def _walk_round(self, origin: int, results: dict[int, Segment], chunk: Any = None) -> None:
        if origin == 0:
            self._ends_walked = 0
            self._call_ends = sorted(chunk.calls) if chunk is not None and chunk.calls is not None else None
        for res in results.values():
            self.errors.extend(res.errors)
        iters = {}
        for sid, res in results.items():
            if sid == 0 and chunk is not None:
                iters[sid] = events(res, chunk.calls, chunk.prints, self.plan.snapshot.root)
            else:
                iters[sid] = events(res)
        self._walk(origin, iters, whole=origin == 0)

    def _walk(self, sid: int, iters: dict[int, Iterator[Any]], whole: bool) -> None:
        stage = self.plan.stages[sid]
        for event in iters[sid]:
            if event is END:
                if whole:
                    self._ends_walked += 1
                    if self._done():
                        return  # every path closed: a sequential run pulls no more items
                    continue
                return
            kind = type(event)
            if kind is tuple:
                sink, value = event
                if stage.kind == "seq":
                    if stage.below is None:
                        self._deliver(stage.node, (value,))
                    else:
                        self._walk(stage.below, iters, whole=False)
                    continue
                target = stage.sinks[sink]
                if self._blocked(target.node):
                    continue
                if target.kind == "leaf":
                    self._deliver(target.node, (value,))
                else:
                    self._walk(target.stage, iters, whole=False)
            elif kind is Printed:
                if not self._blocked(event.node):
                    self.write(event.text)
            elif kind is Closed:
                self._close(event.node)
            elif kind is Failed:
                raise event.failure  # the sequential run stops here

    def _close(self, node: str) -> None:
        """``node`` closed here: its subtree's input ends now, so splice in their flushes."""
        if self._blocked(node):
            return
        for stage in self.plan.seq_under[node]:
            if stage not in self.flushed and stage in self.flush_results:
                self.flushed.add(stage)
                self._walk_round(stage, self.flush_results.pop(stage))
        self.closed.add(node)
