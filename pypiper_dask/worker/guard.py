"""The hidden-state guard: a stateless node whose ``run`` keeps changing what it holds.

Such a node gives one answer at ``n_threads=1`` and another on a cluster,
where each worker changes its own copy. Per partition (not per item) each
attribute is compared with what it was after the previous partition: by
identity, and by content where the value pickles in under 1 MB. An
attribute that changed in two partitions of one instance is reported once; a
value set once and then left alone (a lazily built cache) is not.

Besides the node's own attributes, the state its class shares is watched the
same way: the class attributes of its class (and of its bases below
:class:`~pypiper_dask.model.node.Node`) that hold data, and the module globals
its methods name that are neither modules, classes nor functions. Names the
node lists in ``cache_attributes`` are not watched: a memo cache changes
every partition and never the output.
"""

from __future__ import annotations

import pickle
import types
from collections.abc import Iterable, Iterator
from typing import Any

from ..model.node import PRIVATE, process_attributes  # the engine's bindings and the constructor's record

__all__ = ["CONTENT_LIMIT", "StateWatch", "cache_attributes"]

#: Values whose pickle is larger are compared by identity only.
CONTENT_LIMIT = 1 << 20

# Compared by value: cheap and exact.
_PLAIN = frozenset({int, float, complex, bool, str, bytes, type(None)})

# Code, not state: never watched as a class attribute or a global.
_CODE = (
    types.ModuleType,
    type,
    types.FunctionType,
    types.BuiltinFunctionType,
    types.MethodType,
    staticmethod,
    classmethod,
    property,
)

_UNHASHED = object()  # too large or not picklable: identity only


def cache_attributes(node: Any) -> frozenset[str]:
    """The names ``node`` declares as caches (``cache_attributes``, a name or a tuple of names)."""
    names = getattr(node, "cache_attributes", ())
    return frozenset((names,) if isinstance(names, str) else names)


class StateWatch:
    """Watches the attributes of some nodes, and the class attributes and globals they use, between partitions.

    ``check`` returns ``(node, what)`` pairs, ``what`` saying in words what
    changed (``"its attribute 'counts'"``).

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
    [('count', "its attribute 'counts'")]
    >>> node.counts["b"] = 1
    >>> watch.check()  # reported once
    []
    """

    def __init__(self, nodes: dict[str, Any]) -> None:
        self.nodes = nodes
        self._large: set[tuple[str, str]] = set()  # values known to pickle over the limit
        self._shared = {name: list(_shared_state(node)) for name, node in nodes.items()}
        self._skip = {name: cache_attributes(node) for name, node in nodes.items()}
        self._seen = {name: self._prints(name, node) for name, node in nodes.items()}
        self._changes: dict[tuple[str, str], int] = {}
        self._reported: set[tuple[str, str]] = set()

    def check(self) -> list[tuple[str, str]]:
        """Compare with the last check; ``(node, what)`` pairs newly seen changing twice."""
        found = []
        for name, node in self.nodes.items():
            now = self._prints(name, node)
            before = self._seen[name]
            for what in _changed(before, now):
                key = (name, what)
                self._changes[key] = count = self._changes.get(key, 0) + 1
                if count >= 2 and key not in self._reported:
                    self._reported.add(key)
                    found.append(key)
            self._seen[name] = now
        return found

    def _prints(self, name: str, node: Any) -> dict[str, tuple]:
        skip = self._skip[name]
        try:
            state = vars(node)
        except TypeError:  # __slots__: nothing to watch cheaply
            state = {}
        local = process_attributes(node)  # what setup_worker() set is the process's, not state
        prints = {
            f"its attribute {attr!r}": self._print(name, attr, value)
            for attr, value in state.items()
            if attr not in PRIVATE and attr not in skip and attr not in local
        }
        for what, holder, key in self._shared[name]:
            if key not in skip and key in holder:
                prints[what] = self._print(name, what, holder[key])
        return prints

    def _print(self, name: str, attr: str, value: Any) -> tuple:
        kind = type(value)
        if kind in _PLAIN:
            return (kind, value)
        if (name, attr) in self._large or _surely_large(value):
            return (id(value), _UNHASHED)
        try:
            data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:  # a lock, a file, a generator: identity only
            return (id(value), _UNHASHED)
        if len(data) > CONTENT_LIMIT:
            self._large.add((name, attr))  # not pickled again
            return (id(value), _UNHASHED)
        return (id(value), hash(data))


def _surely_large(value: Any) -> bool:
    """Known over the limit without pickling it (a big table a node only reads is pickled never, not once)."""
    nbytes = getattr(value, "nbytes", None)  # numpy, pandas
    if isinstance(nbytes, int) and nbytes > CONTENT_LIMIT:
        return True
    try:
        return len(value) > CONTENT_LIMIT // 16
    except Exception:  # no len()
        return False


def _changed(before: dict[str, tuple], now: dict[str, tuple]) -> Iterable[str]:
    """Attributes set or changed since ``before`` (one deleted is no hidden state)."""
    return [attr for attr, fingerprint in now.items() if before.get(attr) != fingerprint]


def _shared_state(node: Any) -> Iterator[tuple[str, Any, str]]:
    """``(what, mapping, key)`` for the data ``node``'s class shares: its class attributes, the globals it names.

    Found once, when the watch starts; read again at each check (a class
    attribute or a global may be rebound). The mapping is the class's
    ``__dict__`` (read-only, live) or the module's (on a worker, the globals
    dict its pickled functions share).
    """
    from ..model.node import Node

    own = [c for c in type(node).__mro__ if c not in Node.__mro__]  # the user's classes, mixins too
    for cls in own:
        for key, value in vars(cls).items():
            if not key.startswith(("__", "_abc_")) and key not in PRIVATE and not isinstance(value, _CODE):
                yield f"its class attribute '{cls.__name__}.{key}'", vars(cls), key
    seen: set[tuple[int, str]] = set()
    for cls in own:
        for value in vars(cls).values():
            func = getattr(value, "__func__", None) or getattr(value, "fget", None) or value
            if not isinstance(func, types.FunctionType):
                continue
            space = func.__globals__
            for key in _names(func.__code__):
                if (id(space), key) in seen or key not in space or isinstance(space[key], _CODE):
                    continue
                seen.add((id(space), key))
                module = space.get("__name__", "?")
                yield f"the global {key!r} of module {module!r} that its code uses", space, key


def _names(code: types.CodeType) -> Iterator[str]:
    """The global (and attribute) names a function's code, nested functions included, mentions."""
    yield from code.co_names
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _names(const)
