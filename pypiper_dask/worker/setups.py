"""Per-process set-up of nodes: ``setup_worker()`` once per process, ``teardown_worker()`` at the end.

A node object that runs somewhere is set up with :func:`set_up` before its
first ``run`` there, under a *scope*: the run (or the cluster
``Pipeline.open()`` keeps, whose runs share one). The first copy of a node
in a process and scope calls ``setup_worker()``; every later copy there (one
per worker thread, a holder restored, the next run on a kept cluster) gets
the same attribute values instead. The attributes it set are named on the
node under :data:`~pypiper_dask.model.node.PROCESS`, so pickling, snapshots,
the hidden-state guard and the caller's final state leave them out.
:func:`tear_down` calls ``teardown_worker()`` on each node a scope set up in
this process, once (the runtime calls it in the caller, and on each worker
with ``Client.run``).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from ..log import logger
from ..model.node import PRIVATE, PROCESS, has_worker_setup
from .values import failure

__all__ = ["prepare", "set_up", "set_up_count", "tear_down"]


@dataclass
class _Entry:
    """What one node's ``setup_worker()`` made in this process."""

    owner: Any  # the copy whose setup_worker() ran: its teardown_worker() runs
    values: dict[str, Any]
    previous: dict[str, Any] = field(default_factory=dict)  # what those attributes held before


_registry: dict[tuple[str, str], _Entry] = {}
# One set-up at a time per process: a second thread needing the same node waits
# for the first one's (a model loaded once), not a second load.
_lock = threading.RLock()


def set_up(node: Any, scope: str) -> None:
    """Give ``node`` this process's set-up for ``scope``: run its ``setup_worker()`` if first here.

    Raises the node's :class:`~pypiper_dask.worker.values.NodeFailure` (item
    ``setup_worker()``) when ``setup_worker()`` raises.

    Examples
    --------
    >>> from pypiper_dask.model import Node
    >>> from pypiper_dask.model.node import process_attributes
    >>> class Heavy(Node):
    ...     def setup_worker(self):
    ...         self.model = object()
    ...     def run(self, data):
    ...         self.emit(data)
    >>> a, b = Heavy("h"), Heavy("h")
    >>> set_up(a, "doc"); set_up(b, "doc")
    >>> a.model is b.model, process_attributes(b)
    (True, frozenset({'model'}))
    >>> tear_down("doc", restore=True), hasattr(a, "model")
    (1, False)
    """
    if not has_worker_setup(node):
        return
    key = (scope, node.name)
    with _lock:
        entry = _registry.get(key)
        if entry is None:
            before = dict(vars(node))
            try:
                node.setup_worker()
            except Exception as exc:
                raise failure(node.name, _SetupCall(), exc) from None
            after = vars(node)
            names = [k for k, v in after.items() if k not in PRIVATE and (k not in before or before[k] is not v)]
            entry = _Entry(node, {k: after[k] for k in names}, {k: before[k] for k in names if k in before})
            _registry[key] = entry
        else:
            for attr, value in entry.values.items():
                setattr(node, attr, value)
    setattr(node, PROCESS, frozenset(entry.values))


def prepare(blobs: list[bytes], scope: str) -> int:
    """Set up the nodes pickled in ``blobs`` in this process now, ahead of their first task; how many ran.

    The runtime sends one such task to each worker as a run starts, so the
    workers' ``setup_worker()`` calls overlap instead of each waiting for the
    worker's first partition. A failure is left for that task to report.
    """
    from ..model.snapshot import load_node

    ran = 0
    for blob in blobs:
        node = load_node(blob)
        try:
            set_up(node, scope)
            ran += 1
        except Exception:  # the node's first task raises it again, with the run's error handling
            pass
    return ran


class _SetupCall:
    """What a failing ``setup_worker()`` was given, as the error names it."""

    def __repr__(self) -> str:
        return "setup_worker()"


def tear_down(scope: str, restore: bool = False) -> int:
    """Call ``teardown_worker()`` on every node ``scope`` set up in this process; how many.

    ``restore``: the set-up's attributes are removed from the node that ran
    it (what they held before put back): the caller's own object after a run
    in the calling process. Errors are logged, not raised (best effort).
    """
    with _lock:
        entries = [(key, _registry.pop(key)) for key in [k for k in _registry if k[0] == scope]]
    for (_, name), entry in entries:
        owner = entry.owner
        try:
            owner.teardown_worker()
        except Exception as exc:
            logger.warning("Node %r: teardown_worker() raised %s: %s", name, type(exc).__name__, exc)
        if restore:
            for attr in entry.values:
                if attr in entry.previous:
                    setattr(owner, attr, entry.previous[attr])
                else:
                    owner.__dict__.pop(attr, None)
            owner.__dict__.pop(PROCESS, None)
    from .fused import forget

    forget(scope)
    return len(entries)


def set_up_count(scope: str) -> int:
    """How many nodes ``scope`` has set up in this process (for tests)."""
    with _lock:
        return sum(1 for key in _registry if key[0] == scope)
