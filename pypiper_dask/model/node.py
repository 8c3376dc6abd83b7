"""The user's unit of work: :class:`Node`, as pyPiper defines it."""

from __future__ import annotations

import abc
import inspect
import numbers
from collections.abc import Callable
from typing import Any

from ..errors import NodeTypeError, OptionError

__all__ = [
    "NODE_OPTIONS",
    "ON_ERROR",
    "RESERVED_KEYWORDS",
    "Node",
    "check_batch_size",
    "near_miss",
    "normalize_streams",
]

#: Per-node options: keywords of ``Node(...)`` that win over what ``setup`` sets.
NODE_OPTIONS = ("batch_size", "stateless", "retries", "on_error")

#: Keywords of ``Node(...)`` the library consumes; they never reach ``setup``.
RESERVED_KEYWORDS = ("in_streams", "out_streams", *NODE_OPTIONS)

#: What a node does with an item whose ``run`` raised (after its retries).
ON_ERROR = ("raise", "skip", "collect")


def normalize_streams(node_name: str, what: str, streams: Any) -> str | list[str]:
    """Return ``"*"`` or a list of stream names.

    Examples
    --------
    >>> normalize_streams("n", "out_streams", "even")
    ['even']
    >>> normalize_streams("n", "out_streams", ("even", "odd"))
    ['even', 'odd']
    """
    if streams == "*":
        return "*"
    if isinstance(streams, str):
        return [streams]
    if isinstance(streams, (list, tuple)) and all(isinstance(s, str) for s in streams):
        return list(streams)
    raise NodeTypeError(
        f"Node {node_name!r}: {what} must be '*', a stream name or a list of stream names, not {streams!r}."
    )


def check_batch_size(node_name: str, batch_size: Any) -> int | float:
    """Validate ``batch_size``: an int >= 1 or ``Node.BATCH_SIZE_ALL``.

    Examples
    --------
    >>> check_batch_size("n", 5)
    5
    >>> check_batch_size("n", 0)
    Traceback (most recent call last):
    ...
    pypiper_dask.errors.OptionError: Node 'n': batch_size must be an int >= 1 or Node.BATCH_SIZE_ALL, not 0.
    """
    expected = "an int >= 1 or Node.BATCH_SIZE_ALL"
    if isinstance(batch_size, float) and batch_size == Node.BATCH_SIZE_ALL:
        return Node.BATCH_SIZE_ALL
    if not isinstance(batch_size, numbers.Number):
        raise NodeTypeError(
            f"Node {node_name!r}: batch_size must be {expected}, not {type(batch_size).__name__} {batch_size!r}."
        )
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise OptionError(f"Node {node_name!r}: batch_size must be {expected}, not {batch_size!r}.")
    return int(batch_size)


class Node(abc.ABC):
    """A step of a pipeline. Subclass it and implement :meth:`run`.

    Parameters
    ----------
    name : str
        Unique within a pipeline; tasks on the Dask dashboard carry it.
    in_streams, out_streams : str or list of str
        ``"*"`` (everything) or the names of the streams this node reads or writes.
    batch_size : int or Node.BATCH_SIZE_ALL
        ``1`` calls ``run(item)``; ``k > 1`` calls ``run(tuple_of_k)``;
        ``BATCH_SIZE_ALL`` calls ``run(list_of_everything)`` once, after the input ends.
    stateless : bool
        ``False`` makes one instance see every item once, in order, wherever it runs.
    retries : int
        Call ``run`` again this many times when it raises (stateless nodes only:
        a stateful node's state may already have changed).
    on_error : {"raise", "skip", "collect"}
        After the retries: stop the run with a ``NodeError`` (default), or drop
        the item and report it in ``PipelineResult.errors`` (``"collect"`` also
        keeps the item itself there).
    **kwargs
        Set as attributes, then passed to :meth:`setup` if its signature takes them.

    Examples
    --------
    >>> class Square(Node):
    ...     def run(self, data):
    ...         self.emit(data ** 2)
    >>> Square("square", batch_size=4)
    Square('square', batch_size=4)
    """

    BATCH_SIZE_ALL = float("inf")

    name: str
    in_streams: str | list[str]
    out_streams: str | list[str]
    batch_size: int | float
    stateless: bool
    retries: int
    on_error: str
    size: Any

    def __init__(self, name: str, in_streams: Any = "*", out_streams: Any = "*", **kwargs: Any) -> None:
        if not isinstance(name, str) or not name:
            raise NodeTypeError(f"A node's name must be a non-empty str, not {name!r}.")
        self.name = name
        self.in_streams = normalize_streams(name, "in_streams", in_streams)
        self.out_streams = normalize_streams(name, "out_streams", out_streams)
        self.batch_size = 1
        self.stateless = True
        self.retries = 0
        self.on_error = "raise"
        self.size = None
        override = {k: kwargs.pop(k) for k in NODE_OPTIONS if k in kwargs}
        accepted = _accepted(self.setup, kwargs)
        # Node's own setup takes **kwargs and does nothing with them: it takes none really.
        taken = accepted.keys() if type(self).setup is not Node.setup else set()
        for key in kwargs.keys() - taken:
            meant = near_miss(key)
            if meant is not None:
                raise NodeTypeError(
                    f"Node {name!r}: keyword {key!r} is not one of Node's and {type(self).__name__}.setup() does "
                    f"not take it; did you mean {meant!r}? (Left as it is, it would only become an attribute.)"
                )
        for key, value in kwargs.items():
            setattr(self, key, value)
        self.setup(**accepted)
        # A keyword given to the constructor wins over what setup() chose.
        for key, value in override.items():
            setattr(self, key, value)
        self.batch_size = check_batch_size(name, self.batch_size)
        if not isinstance(self.stateless, bool):
            raise NodeTypeError(f"Node {name!r}: stateless must be True or False, not {self.stateless!r}.")
        if isinstance(self.retries, bool) or not isinstance(self.retries, int) or self.retries < 0:
            raise OptionError(f"Node {name!r}: retries must be an int >= 0, not {self.retries!r}.")
        if self.retries and not self.stateless:
            raise OptionError(
                f"Node {name!r}: retries={self.retries} needs a stateless node; a stateful node's state "
                "may already have changed when run() raised."
            )
        if self.on_error not in ON_ERROR:
            raise OptionError(f"Node {name!r}: on_error must be one of {ON_ERROR!r}, not {self.on_error!r}.")

    def _setup(self, **kwargs: Any) -> None:  # noqa: B027 - optional hook, as in pyPiper
        """Prepare the node; called once by the constructor. Override freely."""

    # Typed as any callable: pyPiper programs override setup() with any signature.
    setup: Callable[..., None] = _setup

    @abc.abstractmethod
    def run(self, data: Any) -> None:
        """Handle one item (or one batch); call :meth:`emit` for each result."""

    def emit(self, data: Any) -> None:
        """Send ``data`` to every successor.

        The engine rebinds this on the copies it runs; calling it outside a run
        has nowhere to send to and raises.
        """
        raise RuntimeError(f"Node {self.name!r}: emit() was called outside a running pipeline.")

    def close(self) -> None:
        """End this node's stream: it gets no item after the current one."""
        raise RuntimeError(f"Node {self.name!r}: close() was called outside a running pipeline.")

    def __or__(self, other: Any):
        from .graph import NodeGraph

        return NodeGraph(self) | other

    def __repr__(self) -> str:
        extra = ""
        if self.batch_size != 1:
            extra += ", batch_size=" + (
                "Node.BATCH_SIZE_ALL" if self.batch_size == Node.BATCH_SIZE_ALL else str(self.batch_size)
            )
        if not self.stateless:
            extra += ", stateless=False"
        return f"{type(self).__name__}({self.name!r}{extra})"

    def __str__(self) -> str:
        return f"Node<{self.name}>"


def _forms(word: str) -> set[str]:
    """A keyword as written, without underscores, and in the singular."""
    forms = {word, word.replace("_", "")}
    for form in list(forms):
        if form.endswith("ies"):
            forms.add(form[:-3] + "y")
        elif form.endswith("s") and not form.endswith("ss"):
            forms.add(form[:-1])
    return forms


def _one_edit_apart(a: str, b: str) -> bool:
    """At most one letter inserted, deleted or changed between ``a`` and ``b``."""
    if abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        return sum(x != y for x, y in zip(a, b, strict=True)) <= 1
    short, long = sorted((a, b), key=len)
    return any(long[:i] + long[i + 1 :] == short for i in range(len(long)))


def near_miss(keyword: str) -> str | None:
    """The reserved keyword that ``keyword`` is a slip of, if any.

    Examples
    --------
    >>> [near_miss(k) for k in ("stateles", "batchsize", "in_stream", "retry", "on_errors")]
    ['stateless', 'batch_size', 'in_streams', 'retries', 'on_error']
    >>> near_miss("size") is None and near_miss("stream") is None
    True
    """
    mine = _forms(keyword.lower())
    for reserved in RESERVED_KEYWORDS:
        if keyword != reserved and any(_one_edit_apart(a, b) for a in mine for b in _forms(reserved)):
            return reserved
    return None


def _accepted(method: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The part of ``kwargs`` that ``method``'s signature accepts."""
    params = inspect.signature(method).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return kwargs
    names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return {k: v for k, v in kwargs.items() if k in names}
