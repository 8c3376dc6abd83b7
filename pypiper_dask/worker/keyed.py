"""A keyed stateful node: one instance per key, its key groups spread over holders.

:class:`KeyedNodes` is the rule itself, as the semantics page states it: each
key's instance is a copy of the node as constructed, made when the key's first
item arrives, called with that key's items in order (batched per key), ended
by its own ``close()``; at the end of input each key's last batch goes, keys
in the order of their first item. The calling process uses it directly
(``n_threads=1``); on a cluster :class:`KeyedHolder` wraps it as a Dask actor
holding the keys of some key groups, and a step's task (:func:`keyed_step`)
computes the partition's keys, hands each holder its groups' items in one
call, and merges the holders' outputs back into the sequential order.

Every item carries a *stamp*, ``(step, position in the partition)``: source
order. A key's first stamp orders the flush, across holders as within one.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import cloudpickle

from ..errors import BadKeyError, short_repr
from ..model.keys import KEY_GROUPS, key_group
from ..model.node import Node, arm_setup_emits
from ..model.pickling import dumps
from ..model.snapshot import load_node
from ..ordering import Marks, Segment
from .capture import capture_stdout
from .sequential import SeqHolder, SeqSpec, _actor
from .setups import set_up
from .snapshots import SnapshotError, final_state
from .values import Items, NodeFailure, failure, freezing, retry_or_drop

__all__ = [
    "KeyRoute",
    "KeyedHolder",
    "KeyedInstances",
    "KeyedNodes",
    "keyed_flush",
    "keyed_state",
    "keyed_step",
]

Stamp = tuple[int, int]


class KeyedInstances(dict):
    """A keyed node's per-key instances at the end of a run: key → node, keys in order of their first item.

    What ``result.keyed(name)`` returns. A plain ``dict`` whose values are
    copies of the node, each with its key's final state.
    """

    def __repr__(self) -> str:
        shown = ", ".join(repr(k) for k in itertools.islice(self, 5))
        more = ", ..." if len(self) > 5 else ""
        return f"<KeyedInstances of {len(self)} keys: {shown}{more}>"


def instances_blob(entries: Sequence[tuple[Stamp, Any, bytes]]) -> bytes:
    """The pickled :class:`KeyedInstances` of ``(first stamp, key, pickled node)`` entries (any order)."""
    ordered = sorted(entries, key=lambda e: e[0])
    return cloudpickle.dumps(_Final([(key, blob) for _, key, blob in ordered]))


class _Final:
    """A :class:`KeyedInstances` on its way to the caller: the nodes stay pickled until it arrives."""

    __slots__ = ("entries",)

    def __init__(self, entries: list[tuple[Any, bytes]]) -> None:
        self.entries = entries

    def __reduce__(self):
        return (_instances, (self.entries,))


def _instances(entries: list[tuple[Any, bytes]]) -> KeyedInstances:
    return KeyedInstances((key, load_node(blob)) for key, blob in entries)


class KeyedNodes:
    """One keyed node's per-key instances (those of the keys this process holds).

    ``emit``: where the values of every instance go, as they are emitted.
    ``errors``: what ``retry_or_drop`` lists dropped items on (``.errors``).
    """

    def __init__(self, name: str, blob: bytes, batch_size: int | float, scope: str) -> None:
        self.name, self.blob, self.batch_size, self.scope = name, blob, batch_size, scope
        self.nodes: dict[Any, Any] = {}  # key -> its instance, keys in order of their first item
        self.first: dict[Any, Stamp] = {}
        self.pending: dict[Any, list] = {}
        self.finished: set[Any] = set()  # keys whose instance called close()
        self.buf: list = []  # what the instance being called emits

    # -- state ---------------------------------------------------------------------------

    def _made(self, key: Any, node: Any) -> Any:
        """Bind a key's instance to the engine: its emits to ``buf``, its close() to its key alone."""

        def close() -> None:
            self.finished.add(key)

        node.emit = freezing(self.buf.append, node, to="out of its actor")
        node.close = close
        return node

    def instance(self, key: Any, stamp: Stamp) -> Any:
        node = self.nodes.get(key)
        if node is None:
            node = self._made(key, load_node(self.blob))  # a copy of the node as constructed
            set_up(node, self.scope)  # setup_worker() once per process; later copies share its values
            arm_setup_emits(node)
            self.nodes[key], self.first[key] = node, stamp
        return node

    def rearm(self) -> None:
        """Check the instances' values again (as a fused stage does per partition)."""
        for node in self.nodes.values():
            node.emit = freezing(self.buf.append, node, to="out of its actor")

    # -- calls ---------------------------------------------------------------------------

    def call(self, key: Any, data: Any, out: list, seg: Any) -> None:
        """Call ``key``'s instance with ``data``; what it emitted goes onto ``out``."""
        node = self.nodes[key]
        try:
            node.run(data)
        except Exception as exc:
            # What the failing call emitted goes nowhere, as in a sequential run.
            retry_or_drop(node, self.name, data, exc, self.buf.clear, seg)
        out.extend(self.buf)
        self.buf.clear()
        if key in self.finished:
            self.pending.pop(key, None)

    def feed(self, key: Any, item: Any, stamp: Stamp, out: list, seg: Any) -> None:
        """One item of ``key``: a call, or a place in its batch (a call when the batch is full)."""
        if key in self.finished:
            return
        self.instance(key, stamp)
        k = self.batch_size
        if k == 1:
            self.call(key, item, out, seg)
            return
        pending = self.pending.setdefault(key, [])
        pending.append(item)
        if len(pending) >= k:  # never for BATCH_SIZE_ALL: k is infinite
            batch = tuple(pending)
            pending.clear()
            self.call(key, batch, out, seg)

    def flush(self, out: list, seg: Any) -> Iterator[tuple[Stamp, int, int]]:
        """The input has ended: each key's last batch, keys in order of their first item.

        Yields each flushed key's first stamp, and where its values and its marks end in ``out``
        and ``seg.marks``.
        """
        for key in self.waiting():
            self.flush_one(key, out, seg)
            yield self.first[key], len(out), len(seg.marks)

    def waiting(self) -> list:
        """The keys with items waiting for their last batch, in order of their first item."""
        return [k for k in self.nodes if self.pending.get(k) and k not in self.finished]

    def flush_one(self, key: Any, out: list, seg: Any) -> None:
        """Call ``key``'s instance with its last batch (all its items, for ``BATCH_SIZE_ALL``)."""
        pending = self.pending.pop(key)
        data = list(pending) if self.batch_size == Node.BATCH_SIZE_ALL else tuple(pending)
        self.call(key, data, out, seg)

    # -- snapshots -------------------------------------------------------------------------

    @contextlib.contextmanager
    def unbound(self) -> Iterator[None]:
        """The instances without the engine's ``emit``/``close`` (not their state), bound again after."""
        for node in self.nodes.values():
            for attr in ("emit", "close"):
                node.__dict__.pop(attr, None)
        try:
            yield
        finally:
            for key, node in self.nodes.items():
                self._made(key, node)

    def entries(self, pickler: Callable[[Any], bytes] = dumps) -> list[tuple]:
        """``(first stamp, key, pickled instance, pending, finished)`` for each key held."""
        with self.unbound():
            return [
                (self.first[k], k, pickler(n), list(self.pending.get(k, ())), k in self.finished)
                for k, n in self.nodes.items()
            ]

    def load(self, entries: list[tuple], keep: Callable[[Any], bool] = lambda key: True) -> None:
        """Take the keys of ``entries`` (from :meth:`entries`, any holders') that ``keep`` accepts."""
        for stamp, key, blob, pending, finished in sorted(entries, key=lambda e: e[0]):
            if not keep(key):
                continue
            self.nodes[key] = self._made(key, load_node(blob))
            self.first[key] = stamp
            if pending:
                self.pending[key] = list(pending)
            if finished:
                self.finished.add(key)


def key_of(node: Any, name: str, item: Any) -> Any:
    """``node.key(item)``, checked: hashable and picklable; else the node's failure naming the item."""
    try:
        key = node.key(item)
    except Exception as exc:
        raise failure(name, item, exc) from None
    what = f"key() returned {short_repr(key)} of type {type(key).__name__}, which"
    try:
        hash(key)
    except TypeError as exc:
        raise failure(name, item, BadKeyError(f"{what} is not hashable ({exc})")) from None
    try:
        key_group(key)  # a key of no known kind is hashed by its pickle
    except Exception as exc:
        error = BadKeyError(f"{what} cannot be pickled ({type(exc).__name__}: {exc}); a key travels between processes")
        raise failure(name, item, error) from None
    return key


# -- the holder: an actor with the keys of some key groups ---------------------------------


class KeyedHolder(SeqHolder):
    """Holds the keys of a keyed node's groups ``g`` with ``g % shards == shard``.

    Steps arrive as :class:`SeqHolder`'s do (in number order, each once);
    ``process`` takes the items with their keys (:func:`keyed_step` computed
    them) or computes them itself in the calling process. ``restore`` is a
    snapshot of any number of holders (see :func:`merge_snapshots`).
    """

    def __init__(
        self,
        spec: SeqSpec,
        keep: int = 64,
        restore: bytes | None = None,
        start: int = 0,
        shard: int = 0,
        shards: int = 1,
    ) -> None:
        self.name, self.scope, self.batch_size = spec.name, spec.scope, spec.batch_size
        self.ready = True  # each instance is set up as it is made
        self.keyed = KeyedNodes(spec.name, spec.blob, spec.batch_size, spec.scope)
        self.shard, self.shards = shard, shards
        self.closed = False  # a keyed node ends only when its input ends
        self.upstream_closed = False
        self.count = start  # the number of this holder's next step: the stamps' first part
        self._template: Any = None
        if restore is not None:
            entries, self.upstream_closed = load_keyed_snapshot(restore)
            self.keyed.load(entries, self.holds)
        self._steps_from(start, keep)

    def holds(self, key: Any) -> bool:
        return key_group(key) % self.shards == self.shard

    def key(self, item: Any) -> Any:
        if self._template is None:
            self._template = load_node(self.keyed.blob)
        return key_of(self._template, self.name, item)

    def process(
        self,
        items: Any,
        upstream_closed: bool = False,
        snap: bool = False,
        keys: list | None = None,
        positions: list[int] | None = None,
    ) -> Segment:
        """Feed one partition's items of this holder's keys, in order; each item is one unit.

        ``keys``/``positions``: each item's key and place in the partition, as
        :func:`keyed_step` found them; computed here when not given.
        """
        seg = Segment(1)
        number, self.count = self.count, self.count + 1
        if isinstance(items, Items):
            items = items.items
        if self.upstream_closed:
            if snap:
                seg.snap = self.snapshot()
            return seg  # the caller skips these items too
        ends: list[int] = []
        out = seg.outs[0]
        keyed = self.keyed
        keyed.rearm()
        marks = Marks(seg, lambda: (len(ends), len(out)), lambda: self.name)
        start = time.perf_counter()
        with capture_stdout(marks.printed):
            try:
                for j, item in enumerate(items):
                    key = keys[j] if keys is not None else self.key(item)
                    keyed.feed(key, item, (number, positions[j] if positions is not None else j), out, seg)
                    ends.append(len(out))
            except NodeFailure as failed:  # what came before the failing call goes with the failure
                seg.ends, seg.n_in = ends, len(items)
                raise failed.detached().with_partial(seg, own=True) from None
        seg.seconds = time.perf_counter() - start  # for the partition sizer (the step's: its slowest holder's)
        if upstream_closed:
            self.upstream_closed = True
        seg.ends = ends
        seg.n_in = len(items)
        if snap:
            seg.snap = self.snapshot()
        return seg

    def flush(self, snap: bool = False, stamps: bool = False) -> Any:
        """The input has ended: each key's last batch; one unit.

        ``stamps``: also return where each key's values end, with its first stamp (to merge holders).
        """
        self.count += 1
        seg = Segment(1)
        out = seg.outs[0]
        marks = Marks(seg, lambda: (0, len(out)), lambda: self.name)
        with capture_stdout(marks.printed):
            ends = list(self.keyed.flush(out, seg))
        seg.ends = [len(out)]
        if snap:
            seg.snap = self.snapshot()
        return (seg, ends) if stamps else seg

    def state(self, entries: bool = False) -> Any:
        """Every key's instance as it is now: a pickled :class:`KeyedInstances` (or the entries, to merge)."""
        found = [(stamp, key, blob) for stamp, key, blob, _, _ in self.keyed.entries(final_state)]
        return found if entries else instances_blob(found)

    def snapshot(self) -> Any:
        try:
            entries = self.keyed.entries()
        except Exception as exc:
            return SnapshotError(f"Node {self.name!r} cannot be snapshotted: {type(exc).__name__}: {exc}")
        return cloudpickle.dumps(("keyed", entries, self.upstream_closed))


def load_keyed_snapshot(blob: bytes) -> tuple[list[tuple], bool]:
    """The entries and ``upstream_closed`` of a keyed snapshot (one holder's or merged)."""
    mark, entries, upstream_closed = cloudpickle.loads(blob)
    assert mark == "keyed"
    return entries, upstream_closed


def keyed_final_blob(entries: list[tuple]) -> bytes:
    """The final state (a pickled :class:`KeyedInstances`) of a keyed snapshot's entries."""
    return instances_blob([(stamp, key, node) for stamp, key, node, _, _ in entries])


def merge_snapshots(parts: list[Any]) -> Any:
    """One snapshot of a keyed node out of its holders' (a ``SnapshotError`` if any is one)."""
    for part in parts:
        if isinstance(part, SnapshotError):
            return part
    loaded = [load_keyed_snapshot(p) for p in parts]
    entries = [e for found, _ in loaded for e in found]
    return cloudpickle.dumps(("keyed", entries, any(closed for _, closed in loaded)))


# -- a step's task on a cluster: route the partition to the holders, merge what they emit --


@dataclass(frozen=True)
class KeyRoute:
    """What a keyed node's step tasks need to find each item's holder."""

    name: str
    blob: bytes
    token: str  # the node's template is made once per process and run

    def __repr__(self) -> str:
        return f"<KeyRoute {self.name} {KEY_GROUPS} groups>"


_templates: dict[str, Any] = {}


def _route(route: KeyRoute, items: list, shards: int) -> tuple[list[list], list[list], list[list], Any]:
    """Each holder's items, keys and positions in the partition, up to an item whose key fails (then its failure)."""
    node = _templates.get(route.token)
    if node is None:
        if len(_templates) > 16:  # earlier runs'
            _templates.clear()
        node = _templates[route.token] = load_node(route.blob)
    parts: list[list] = [[] for _ in range(shards)]
    keys: list[list] = [[] for _ in range(shards)]
    where: list[list] = [[] for _ in range(shards)]
    for j, item in enumerate(items):
        try:
            key = key_of(node, route.name, item)
        except NodeFailure as failed:  # the items before it still go, as in a sequential run
            return parts, keys, where, failed
        h = key_group(key) % shards
        parts[h].append(item)
        keys[h].append(key)
        where[h].append(j)
    return parts, keys, where, None


def _deal(
    route: KeyRoute, shards: Any, number: int, items: list, upstream_closed: bool, snap: bool, log: Any = None
) -> tuple[list, list[list[int]], NodeFailure | None]:
    """Route ``items`` by ``key()`` and send each holder its share as step ``number``, not waiting.

    The calls' answers to come, where each holder's items were in the
    partition, and the failure of a ``key()`` that raised (the items before it
    are sent). Each call carries, for the caller, ``(log, positions, failed)``:
    the fused task's log (the first holder's only), those positions, and
    whether a ``key()`` raised (then the step's task reports it). A holder
    keeps the first call of a step, so a step sent again changes nothing.
    """
    parts, keys, where, bad_key = _route(route, items, len(shards))
    calls = [
        _actor(holder).step(
            number,
            "process",
            Items(part, route.name),
            upstream_closed,
            snap,
            k,
            w,
            log=(log if h == 0 else None, w, bad_key is not None),
        )
        for h, (holder, part, k, w) in enumerate(zip(shards, parts, keys, where, strict=True))
    ]
    return calls, where, bad_key


def push_keyed(holders: tuple, number: int, items: list, upstream_closed: bool, snap: bool, log: Any) -> None:
    """Hand each of a keyed node's holders its share of a partition as step ``number``, not waiting.

    As :func:`keyed_step` sends them (it sends them again if the caller falls
    back to it); see :func:`_deal`.
    """
    route, *shards = holders
    _deal(route, shards, number, items, upstream_closed, snap, log)


def _gather(calls: list) -> list:
    """Each call's answer, or the node's failure it raised; waits for all of them."""
    from .sequential import _task

    results: list = []
    for call in calls:
        try:
            try:
                results.append(call.result(timeout=0.01))
            except NodeFailure:
                raise
            except Exception:
                if not getattr(_task, "seceded", False):  # leave the worker's pool while the holders work
                    from distributed import secede

                    secede()
                    _task.seceded = True
                results.append(call.result())
        except NodeFailure as failed:
            results.append(failed)
    return results


def _raised(answers: list) -> list:
    """``answers``, or the first holder's failure among them raised."""
    for answer in answers:
        if isinstance(answer, NodeFailure):
            raise answer
    return answers


def keyed_step(route: KeyRoute, shards: tuple, number: int, items: list, upstream_closed: bool, snap: bool) -> Segment:
    """Hand a partition to a keyed node's holders (one call each) and merge their outputs in source order.

    A failure (of ``key()`` or of an instance) is raised carrying the output
    of the items before the failing one, in order (see ``NodeFailure.partial``).
    """
    calls, where, bad_key = _deal(route, shards, number, items, upstream_closed, snap)
    answers = _gather(calls)
    failed = [(h, a) for h, a in enumerate(answers) if isinstance(a, NodeFailure)]
    if not failed and bad_key is None:
        return merge_steps(answers, where, len(items), snap)
    # The first failure in source order is the one a sequential run meets.
    first: list[tuple[int, int, NodeFailure]] = []
    if bad_key is not None:
        first.append((sum(map(len, where)), -1, bad_key))
    for h, f in failed:
        if f.partial is None or f.partial.failure is None or f.partial.ends is None:
            raise f  # not an instance's own failure with its output: nothing to deliver before it
        first.append((where[h][len(f.partial.ends)], h, f))
    at, h, failure = min(first, key=lambda c: c[0])
    segs: list[Segment] = []
    for a in answers:
        part = a.partial if isinstance(a, NodeFailure) else a
        assert part is not None  # a failure without its output was raised above
        segs.append(part)
    merged = merge_steps(segs, where, at, False)
    if h >= 0:  # the failing call's prints and what its unit emitted before it
        seg = segs[h]
        assert seg.ends is not None  # checked above
        j = len(seg.ends)
        start = seg.ends[j - 1] if j else 0
        base = len(merged.outs[0]) - start
        merged.marks.extend((at, base + pos, event) for unit, pos, event in seg.marks if unit == j)
        merged.outs[0].extend(seg.outs[0][start:])
    raise failure.detached().with_partial(merged, own=True)


def merge_steps(segs: list[Segment], where: list[list[int]], n: int, snap: bool) -> Segment:
    """The holders' segments of one step as one, in the partition's order (each item one unit).

    Only the first ``n`` items' (those before a failure, when ``n`` is less than all).
    """
    owner = [0] * n
    local = [0] * n
    for h, positions in enumerate(where):
        for j, position in enumerate(positions):
            if position < n:
                owner[position], local[position] = h, j
    marks_at: list[dict[int, list]] = []
    for seg in segs:
        by_unit: dict[int, list] = {}
        for unit, pos, event in seg.marks:
            by_unit.setdefault(unit, []).append((pos, event))
        marks_at.append(by_unit)
    merged = Segment(1)
    out, ends = merged.outs[0], []
    whole = n == sum(map(len, where))
    if any(seg.ends for seg in segs) or not whole:  # else the holders skipped their items (input closed above)
        for position in range(n):
            h, j = owner[position], local[position]
            seg = segs[h]
            assert seg.ends is not None  # every holder ran its items when one did
            start = seg.ends[j - 1] if j else 0
            base = len(out) - start
            for pos, event in marks_at[h].get(j, ()):
                merged.marks.append((position, base + pos, event))
            out.extend(seg.outs[0][start : seg.ends[j]])
            ends.append(len(out))
        merged.ends = ends
    for h, seg in enumerate(segs):  # marks after a holder's last unit (none are expected)
        for _, event in marks_at[h].get(len(where[h]), ()) if whole else ():
            merged.marks.append((n, len(out), event))
        merged.errors.extend(seg.errors)
    merged.n_in = n
    merged.seconds = max((s.seconds for s in segs), default=0.0)
    if snap:
        merged.snap = merge_snapshots([s.snap for s in segs])
    return merged


def keyed_flush(shards: tuple, number: int, snap: bool) -> Segment:
    """End a keyed node's input on every holder; their last batches merged in order of each key's first item."""
    answers = _raised(_gather([_actor(h).step(number, "flush", snap, True) for h in shards]))
    chunks = []  # (first stamp, holder, start, end, first mark, end of marks)
    for h, (_, ends) in enumerate(answers):
        start = first = 0
        for stamp, end, marks_end in ends:
            chunks.append((stamp, h, start, end, first, marks_end))
            start, first = end, marks_end
    chunks.sort(key=lambda c: c[0])
    merged = Segment(1)
    out = merged.outs[0]
    for _, h, start, end, first, marks_end in chunks:
        seg = answers[h][0]
        base = len(out) - start
        merged.marks.extend((0, base + pos, event) for _, pos, event in seg.marks[first:marks_end])
        out.extend(seg.outs[0][start:end])
    merged.ends = [len(out)]
    for seg, _ in answers:
        merged.errors.extend(seg.errors)
    if snap:
        merged.snap = merge_snapshots([seg.snap for seg, _ in answers])
    return merged


def keyed_state(shards: tuple, number: int) -> bytes:
    """Every holder's instances as one pickled :class:`KeyedInstances`."""
    answers = _raised(_gather([_actor(h).step(number, "state", True) for h in shards]))
    return instances_blob([entry for found in answers for entry in found])
