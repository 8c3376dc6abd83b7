"""Keyed stateful nodes: what makes a node keyed, and which key group a key falls in.

A node with ``stateless=False`` and a ``key(self, data)`` method runs as one
instance per distinct key (see ``docs/guide/nodes.md``). Keys fall into
:data:`KEY_GROUPS` groups by :func:`stable_hash`, which is the same in every
process and every run (Python's ``hash()`` of a ``str`` is not: it changes
with ``PYTHONHASHSEED``), so a checkpoint taken at one worker count resumes at
any other, and a group's items always reach the same holder.
"""

from __future__ import annotations

import hashlib
import numbers
import pickle
from typing import Any

__all__ = ["KEY_GROUPS", "is_keyed", "key_group", "stable_hash"]

#: How many groups a keyed node's keys fall into, whatever the worker count.
KEY_GROUPS = 128

_MASK = (1 << 61) - 1  # hashes are kept to 61 bits, as CPython's numeric hash is


def is_keyed(node: Any) -> bool:
    """Is ``node`` keyed: ``stateless=False`` with a ``key()`` method of its own?

    Examples
    --------
    >>> from pypiper_dask.model import Node
    >>> class Session(Node):
    ...     def key(self, data):
    ...         return data["user"]
    ...     def run(self, data):
    ...         self.emit(data)
    >>> is_keyed(Session("s", stateless=False)), is_keyed(Session("s"))
    (True, False)
    """
    return not getattr(node, "stateless", True) and callable(getattr(type(node), "key", None))


def _digest(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little") & _MASK


def stable_hash(key: Any) -> int:
    """A hash of ``key`` that equal keys share, the same in every process and run.

    Numbers use Python's numeric hash (already stable, and ``1``, ``1.0`` and
    ``True`` share it, as equal dict keys must); ``str`` and ``bytes`` a
    BLAKE2 digest; tuples and frozensets combine their members'; anything else
    hashable the digest of its pickle. Raises ``TypeError`` for an
    unhashable key.

    Examples
    --------
    >>> stable_hash(1) == stable_hash(1.0) == stable_hash(True)
    True
    >>> stable_hash("user-7") == stable_hash("user-7"), stable_hash(("a", 1)) == stable_hash(("a", 1.0))
    (True, True)
    >>> stable_hash(["a"])
    Traceback (most recent call last):
    ...
    TypeError: unhashable type: 'list'
    """
    hash(key)  # unhashable keys fail here, with Python's own message
    if key is None:
        return 0x5EED
    if isinstance(key, numbers.Number):
        return hash(key) & _MASK
    if isinstance(key, str):
        return _digest(key.encode("utf-8", "surrogatepass"))
    if isinstance(key, (bytes, bytearray)):
        return _digest(b"b" + bytes(key))
    if isinstance(key, tuple):
        h = 0x345678
        for member in key:
            h = (h * 1000003 ^ stable_hash(member)) & _MASK
        return h ^ len(key)
    if isinstance(key, frozenset):
        return sum(stable_hash(member) for member in key) & _MASK  # members' order is not stable
    return _digest(b"p" + pickle.dumps(key, protocol=4))


def key_group(key: Any) -> int:
    """The key group of ``key``: ``0 <= group < KEY_GROUPS``.

    Examples
    --------
    >>> [key_group(k) for k in (0, 1, 127, 128)]
    [0, 1, 127, 0]
    """
    return stable_hash(key) % KEY_GROUPS
