"""A sequential stage's state, copied out of its holder so that it outlives the holder's worker.

A snapshot is taken on the holder's own thread right after one of its steps
(so it belongs to exactly that step), and travels back to the caller inside
that step's :class:`~pypiper_dask.ordering.Segment` (``seg.snap``): the caller
keeps the latest one, and a holder re-created from it on a live worker goes
on from the step after. What it holds: the node (pickled without the
engine's bindings), the items waiting for the node's next batch, and whether
the node or a node above it closed.
"""

from __future__ import annotations

from typing import Any

import cloudpickle

from ..model.node import LEFT_OUT
from ..model.pickling import dumps, unpicklable_attributes
from ..model.snapshot import load_node

__all__ = ["SnapshotError", "final_state", "load_snapshot", "node_blob", "take_snapshot"]


class SnapshotError(str):
    """Why a snapshot could not be taken (in ``seg.snap`` instead of the bytes): a ``str``, so it pickles."""

    __slots__ = ()


def _culprit(node: Any) -> str:
    """The first attribute of ``node`` that cannot be pickled, described; ``""`` if none is found."""
    for attr, what in unpicklable_attributes(node).items():
        return f"its attribute {attr!r} holds {what}"
    return ""


def final_state(node: Any) -> bytes:
    """``node`` pickled for the caller's object, without the attributes that cannot be pickled.

    Those are named under :data:`~pypiper_dask.model.node.LEFT_OUT` on the
    copy (the caller warns, and its object keeps its own values of them): a
    stateful node holding a lock or a connection must not fail a run that
    has delivered everything. ``node`` must have its engine bindings removed.

    Examples
    --------
    >>> import pickle, threading
    >>> from pypiper_dask.model import Node
    >>> from pypiper_dask.model.node import LEFT_OUT
    >>> class Count(Node):
    ...     def run(self, data):
    ...         self.n = 1
    >>> node = Count("count")
    >>> node.n, node.lock = 3, threading.Lock()
    >>> back = pickle.loads(final_state(node))
    >>> back.n, hasattr(back, "lock"), list(getattr(back, LEFT_OUT))
    (3, False, ['lock'])
    """
    try:
        return dumps(node)
    except Exception:
        bad = unpicklable_attributes(node)
        if not bad:
            raise  # the class itself, or its __getstate__: nothing to leave out
        copy = object.__new__(type(node))
        copy.__dict__.update({k: v for k, v in vars(node).items() if k not in bad})
        copy.__dict__[LEFT_OUT] = bad
        return dumps(copy)


def take_snapshot(name: str, node: Any, pending: list, closed: bool, upstream_closed: bool) -> bytes | SnapshotError:
    """The holder's state as bytes, or a :class:`SnapshotError` naming what cannot be pickled.

    ``node`` must have its engine bindings (``emit``, ``close``) removed.

    Examples
    --------
    >>> import threading
    >>> from pypiper_dask.model import Node
    >>> class Count(Node):
    ...     def run(self, data):
    ...         self.n = getattr(self, "n", 0) + 1
    >>> node = Count("count")
    >>> blob = take_snapshot("count", node, [1, 2], False, False)
    >>> restored, pending, closed, upstream_closed = load_snapshot(blob)
    >>> type(restored).__name__, pending, closed
    ('Count', [1, 2], False)
    >>> node.lock = threading.Lock()
    >>> print(take_snapshot("count", node, [], False, False))  # doctest: +ELLIPSIS
    Node 'count' cannot be snapshotted: its attribute 'lock' holds lock <unlocked _thread.lock object at ...
    """
    try:
        blob = dumps(node)  # its code keeps its file names (tracebacks show the user's lines)
        return cloudpickle.dumps((blob, list(pending), closed, upstream_closed))
    except Exception as exc:
        why = _culprit(node) or f"{type(exc).__name__}: {exc}"
        return SnapshotError(f"Node {name!r} cannot be snapshotted: {why}")


def load_snapshot(blob: bytes) -> tuple[Any, list, bool, bool]:
    """``(node, pending, closed, upstream_closed)`` from :func:`take_snapshot`'s bytes."""
    node, pending, closed, upstream_closed = cloudpickle.loads(blob)
    return load_node(node), pending, closed, upstream_closed


def node_blob(blob: bytes) -> bytes:
    """The pickled node alone, out of a snapshot (what a final state is).

    A keyed node's: its per-key instances (a pickled ``KeyedInstances``).
    """
    value = cloudpickle.loads(blob)
    if value[0] == "keyed":
        from .keyed import keyed_final_blob

        return keyed_final_blob(value[1])
    return value[0]
