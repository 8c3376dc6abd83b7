"""What travels between the caller and tasks: partitions, item lists, failures; values frozen at emit."""

from __future__ import annotations

import copy
import datetime
import decimal
import fractions
import pickle
import traceback
from collections.abc import Callable
from typing import Any

import cloudpickle
from dask.sizeof import sizeof
from tblib import pickling_support

from ..errors import ValuePickleError, short_repr
from ..ordering import ItemError, Segment

__all__ = [
    "ATOMIC",
    "Chunk",
    "Items",
    "NodeFailure",
    "StandInError",
    "error_text",
    "failed_above",
    "failure",
    "freeze",
    "freezing",
    "retry_or_drop",
    "stage_input",
]


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


@sizeof.register(Chunk)
def _sizeof_chunk(chunk: Chunk) -> int:
    # Dask's estimate of the items (a sample of them), not of the wrapper: the runtime decides
    # by it whether a partition travels inside its task or is sent to a worker on its own.
    return sizeof(chunk.items) + sizeof(chunk.prints)


class Items:
    """A list of items handed to an actor as one object (an actor call serializes a bare list per element).

    Pickled here, when it is made: an actor call whose message cannot be
    serialized never answers, so a value that cannot be pickled must fail in
    the task that sends it (``node`` names the node it was sent to).
    """

    __slots__ = ("blob",)

    def __init__(self, items: Any, node: str | None = None) -> None:
        items = list(items)
        try:
            self.blob = pickle.dumps(items, pickle.HIGHEST_PROTOCOL)
        except Exception:
            try:
                self.blob = cloudpickle.dumps(items)
            except Exception as exc:
                bad = next((v for v in items if not _portable(v)), None)
                to = f"node {node!r}" if node is not None else "a stateful or batched node"
                raise ValuePickleError(
                    f"{_described(bad)}, on its way to {to} in another process, cannot be pickled "
                    f"({type(exc).__name__}: {exc})."
                ) from exc

    @property
    def items(self) -> list:
        return pickle.loads(self.blob)

    def __reduce__(self):
        return (_items_from, (self.blob,))


def _items_from(blob: bytes) -> Items:
    made = Items.__new__(Items)
    made.blob = blob
    return made


#: Types whose values cannot change after ``emit``: passed on as they are.
ATOMIC = frozenset(
    {
        int,
        float,
        complex,
        bool,
        str,
        bytes,
        type(None),
        range,
        frozenset,
        decimal.Decimal,
        fractions.Fraction,
        datetime.date,
        datetime.datetime,
        datetime.time,
        datetime.timedelta,
    }
)


def freeze(value: Any, to: str | None = None) -> Any:
    """``value`` as it is now, safe from later changes by the node that emitted it.

    A node may emit one buffer again and again, changing it in between; a
    value held past its ``emit`` (in a sink, a batch, a partition) must keep
    what it held at the time. Atomic values and tuples of them are returned
    as they are; anything else is copied (pickled and unpickled, or
    deep-copied; a value that allows neither is passed on as it is).

    With ``to`` (where the value goes, in another process) the value must
    pickle: one that does not raises :class:`~pypiper_dask.errors.ValuePickleError`
    here, where the node emitting it is known, and not later in Dask, which
    knows neither the node nor the item.

    Examples
    --------
    >>> buf = [1]
    >>> kept = freeze(buf)
    >>> buf[0] = 2
    >>> kept
    [1]
    >>> t = (1, "a")
    >>> freeze(t) is t
    True
    >>> freeze((x for x in ()), to="back to the caller")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    pypiper_dask.errors.ValuePickleError: <generator object <genexpr> at 0x...> (a generator), which cannot ...
    """
    kind = type(value)
    # (issuperset over map: the element types checked in C, twice as fast on a long tuple)
    if kind in ATOMIC or (kind is tuple and ATOMIC.issuperset(map(type, value))):
        return value
    try:
        return pickle.loads(pickle.dumps(value, pickle.HIGHEST_PROTOCOL))
    except Exception:
        if to is not None:  # as distributed does: pickle, else cloudpickle (a lambda, a local class)
            try:
                return cloudpickle.loads(cloudpickle.dumps(value))
            except Exception as exc:
                raise ValuePickleError(
                    f"{_described(value)}, which cannot be pickled ({type(exc).__name__}: {exc}); "
                    f"what it emits goes {to}, across processes, so it must be picklable."
                ) from None  # the message says why; pickle's own frames would only bury the node's
        try:
            return copy.deepcopy(value)
        except Exception:
            return value


def _described(value: Any) -> str:
    """A short repr of ``value`` and its type, for an error message.

    Examples
    --------
    >>> _described(iter(()))  # doctest: +ELLIPSIS
    '<tuple_iterator object at 0x...> (a tuple_iterator)'
    """
    kind = type(value)
    name = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
    return f"{short_repr(value)} (a {name})"


def _portable(value: Any) -> bool:
    try:
        cloudpickle.dumps(value)
        return True
    except Exception:
        return False


def freezing(
    append: Callable[[Any], Any], node: Any = None, trust_after: int = 64, to: str | None = None
) -> Callable[[Any], None]:
    """An ``emit`` that hands each value to ``append`` as it was when emitted (see :func:`freeze`).

    With ``node``: once ``trust_after`` values in a row were atomic, the node's
    ``emit`` becomes ``append`` itself, so a node of plain numbers and strings
    pays no Python call per value; the engine arms this again for every
    partition, so a node whose values change type is checked again there.
    A node that emitted anything else keeps the freezing ``emit``.
    ``to``: where the values go in another process; each must pickle (see
    :func:`freeze`), and the error names the node.
    """
    left = trust_after if node is not None else -1

    def emit(value: Any) -> None:
        nonlocal left
        if type(value) in ATOMIC:
            append(value)
            if left > 0:
                left -= 1
                if left == 0:
                    node.emit = append
        else:
            left = -1  # it emits values that can change: keep checking
            try:
                value = freeze(value, to)
            except ValuePickleError as exc:  # the node's name leads; the caller adds the item
                who = f"Node {node.name!r}" if node is not None else "A node"
                raise ValuePickleError(f"{who} emitted {exc}") from None
            append(value)

    return emit


class NodeFailure(Exception):
    """A node's ``run`` raised in a task; carries what the caller reports.

    ``error`` is the node's exception, with its traceback where the node ran
    (carried across with tblib); ``tb`` is that traceback as text, for where
    it could not come along. ``tb`` is not in ``args``: a worker's log of the
    failed task shows the node, the item and the error, not the traceback.

    ``partial``: what the task's stage produced before the failing call (a
    :class:`~pypiper_dask.ordering.Segment`), so that the caller delivers the
    output a sequential run has before the error; the segment's ``failure``
    is set where a node of that stage raised (see :meth:`with_partial`).
    ``segments`` is the caller's: the failed round's partial segments by stage.
    """

    def __init__(
        self, node: str, item: str, error: BaseException | None, tb: str, partial: Segment | None = None
    ) -> None:
        super().__init__(node, item, error)
        self.node, self.item, self.error, self.tb = node, item, error, tb
        self.partial = partial
        self.segments: dict[int, Segment] = {}

    def __reduce__(self):
        return (NodeFailure, (self.node, self.item, self.error, self.tb, self.partial))

    def with_partial(self, seg: Segment, own: bool) -> NodeFailure:
        """This failure carrying ``seg``, ready to leave the process.

        ``own``: a node of ``seg``'s stage raised it, and ``seg`` ends there; else
        the stage only passed on the failure of a stage above, after the items
        that stage produced before it.
        """
        if own:
            seg.failure = NodeFailure(self.node, self.item, self.error, self.tb)  # no cycle: it pickles
        return NodeFailure(self.node, self.item, self.error, self.tb, seg)

    def __str__(self) -> str:
        return f"node {self.node!r} failed on {self.item}: {self.error!r}"

    def detached(self) -> NodeFailure:
        """This failure without its own traceback and chained exceptions, ready to leave the process; returns it.

        Raised inside the node's ``except``, it chains the node's error, whose
        traceback :func:`failure` kept as text only (see there).
        """
        self.__traceback__ = self.__cause__ = self.__context__ = None
        return self


class StandInError(Exception):
    """In place of a node's exception that cannot be pickled: its type's name and its message.

    ``type_name`` is the original class's name, ``message`` its ``str``; it
    keeps the traceback where the node raised it.
    """

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(type_name, message)
        self.type_name, self.message = type_name, message

    def __reduce__(self):
        return (StandInError, (self.type_name, self.message))

    def __str__(self) -> str:
        return f"{self.type_name}: {self.message} (an exception that could not be pickled, in its text)"


def error_text(exc: BaseException | None) -> str:
    """``"Type: message"`` of a node's exception, or of the one a :class:`StandInError` stands in for.

    Examples
    --------
    >>> error_text(ValueError("bad")), error_text(StandInError("LockedError", "bad"))
    ('ValueError: bad', 'LockedError: bad')
    """
    if isinstance(exc, StandInError):
        return f"{exc.type_name}: {exc.message}"
    return f"{type(exc).__name__}: {exc}"


def failure(node: str, data: Any, exc: BaseException) -> NodeFailure:
    """A :class:`NodeFailure` for ``exc``, raised by ``node`` on ``data``, that survives pickling.

    The traceback is kept as text in ``tb``, and goes with ``exc`` itself
    (tblib) where it pickles, so the caller shows the user's file and source
    line. A traceback that cannot be pickled (a ``RecursionError``'s is too
    deep) and the exceptions chained to ``exc`` are dropped from it: the
    caller then got a bare ``Exception`` in its place. An exception that
    cannot be pickled itself goes as a :class:`StandInError` naming its type.
    """
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    exc.__cause__ = exc.__context__ = None
    # Its traceback goes with it whatever its class, also from an actor (distributed
    # registers only the classes it knows, and those of a task's own error).
    pickling_support.install(exc)
    frames = exc.__traceback__
    if not _travels(exc):
        exc.__traceback__ = None  # too deep a traceback to pickle (a RecursionError's): `tb` keeps it
        if not _travels(exc):
            # Unpicklable itself (it holds a lock, say): its type's name, its text, and where it was raised.
            exc = StandInError(type(exc).__name__, str(exc)).with_traceback(frames)
            if not _travels(exc):
                exc.__traceback__ = None
    return NodeFailure(node, short_repr(data), exc, tb)


def _travels(exc: BaseException) -> bool:
    try:
        cloudpickle.loads(cloudpickle.dumps(exc))
    except Exception:
        return False
    return True


def retry_or_drop(
    node: Any, name: str, data: Any, exc: Exception, discard: Callable[[], object] | None, seg: Segment
) -> None:
    """``node.run(data)`` raised ``exc``: call it again ``node.retries`` times, then raise or drop the item.

    What a failed call emitted is discarded with it (``discard()``: a buffer's
    ``clear``, say), before each retry and before the item is dropped or the
    failure raised. Dropped items (``on_error="skip"`` or ``"collect"``) are
    listed in ``seg.errors``.
    """
    for _ in range(getattr(node, "retries", 0)):
        if discard is not None:
            discard()
        try:
            node.run(data)
            return
        except Exception as again:
            exc = again
    if discard is not None:
        discard()
    policy = getattr(node, "on_error", "raise")
    if policy == "raise":
        raise failure(name, data, exc) from exc
    kept = data if policy == "collect" else None
    seg.errors.append(ItemError(name, short_repr(data), f"{type(exc).__name__}: {exc}", kept))


def failed_above(upstream: Any) -> NodeFailure | None:
    """The failure a stage's input is, if a node above failed (tasks return failures, see ``run_fused``)."""
    upstream = getattr(upstream, "segment", upstream)  # a to_dask step carries its segment
    return upstream if isinstance(upstream, NodeFailure) else None


def stage_input(upstream: Any, sink: int | None) -> tuple[list, dict, set | None]:
    """The items a stage reads: a partition of source items, or a sink of the stage above."""
    upstream = getattr(upstream, "segment", upstream)  # a to_dask step carries its segment
    if isinstance(upstream, Chunk):
        return upstream.items, upstream.prints, upstream.calls
    assert sink is not None
    return upstream.outs[sink], {}, None
