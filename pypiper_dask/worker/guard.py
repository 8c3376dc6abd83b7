"""The hidden-state guard: a stateless node whose ``run`` keeps changing what it holds.

Such a node gives one answer at ``n_threads=1`` and another on a cluster,
where each worker changes its own copy. Per partition (not per item) each
attribute is compared with what it was after the previous partition: by
identity, and by content where the value pickles in under 1 MB. An
attribute that changed in two partitions of one instance is reported once; a
value set once and then left alone (a lazily built cache) is not.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterable
from typing import Any

from ..model.node import PRIVATE, process_attributes  # the engine's bindings and the constructor's record

__all__ = ["CONTENT_LIMIT", "StateWatch"]

#: Values whose pickle is larger are compared by identity only.
CONTENT_LIMIT = 1 << 20

# Compared by value: cheap and exact.
_PLAIN = frozenset({int, float, complex, bool, str, bytes, type(None)})


_UNHASHED = object()  # too large or not picklable: identity only


class StateWatch:
    """Watches the attributes of some nodes between partitions.

    Examples
    --------
    >>> class Counter:
    ...     def __init__(self):
    ...         self.counts, self.cache = {}, None
    >>> node = Counter()
    >>> watch = StateWatch({"count": node})
    >>> node.cache = "built once"; node.counts["a"] = 1
    >>> watch.check()  # one partition: each changed once
    []
    >>> node.counts["a"] += 1
    >>> watch.check()  # counts changed again, cache did not
    [('count', 'counts')]
    >>> node.counts["b"] = 1
    >>> watch.check()  # reported once
    []
    """

    def __init__(self, nodes: dict[str, Any]) -> None:
        self.nodes = nodes
        self._large: set[tuple[str, str]] = set()  # attributes known to pickle over the limit
        self._seen = {name: self._prints(name, node) for name, node in nodes.items()}
        self._changes: dict[tuple[str, str], int] = {}
        self._reported: set[tuple[str, str]] = set()

    def check(self) -> list[tuple[str, str]]:
        """Compare with the last check; ``(node, attribute)`` pairs newly seen changing twice."""
        found = []
        for name, node in self.nodes.items():
            now = self._prints(name, node)
            before = self._seen[name]
            for attr in _changed(before, now):
                key = (name, attr)
                self._changes[key] = count = self._changes.get(key, 0) + 1
                if count >= 2 and key not in self._reported:
                    self._reported.add(key)
                    found.append(key)
            self._seen[name] = now
        return found

    def _prints(self, name: str, node: Any) -> dict[str, tuple]:
        try:
            state = vars(node)
        except TypeError:  # __slots__: nothing to watch cheaply
            return {}
        local = process_attributes(node)  # what setup_worker() set is the process's, not state
        return {
            attr: self._print(name, attr, value)
            for attr, value in state.items()
            if attr not in PRIVATE and attr not in local
        }

    def _print(self, name: str, attr: str, value: Any) -> tuple:
        kind = type(value)
        if kind in _PLAIN:
            return (kind, value)
        if (name, attr) in self._large:
            return (id(value), _UNHASHED)
        try:
            data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:  # a lock, a file, a generator: identity only
            return (id(value), _UNHASHED)
        if len(data) > CONTENT_LIMIT:
            self._large.add((name, attr))  # not pickled again
            return (id(value), _UNHASHED)
        return (id(value), hash(data))


def _changed(before: dict[str, tuple], now: dict[str, tuple]) -> Iterable[str]:
    """Attributes set or changed since ``before`` (one deleted is no hidden state)."""
    return [attr for attr, fingerprint in now.items() if before.get(attr) != fingerprint]
