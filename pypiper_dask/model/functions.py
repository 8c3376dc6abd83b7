"""Plain functions as nodes: :func:`as_node`.

A function, a lambda, a :func:`functools.partial` or any callable object
becomes a stateless node that can stand anywhere below the source and fuses
with node classes like any other:

* a plain function: its return value is emitted, ``None`` included (as
  ``self.emit(None)`` would be; use ``filter=True`` or a generator function
  to emit nothing for an item);
* a generator function: each value it yields is emitted, in order;
* ``filter=True``: the function is a predicate, and the item itself is
  emitted when it returns something true.

The node is named after the function (``square``; a lambda ``lambda-1``,
``lambda-2``, ... numbered in the order this process makes them), or
``name=``. Every node option is accepted (``batch_size=``, ``retries=``,
``resources=``, streams, ...); with ``batch_size=k`` the function gets the
batch, a tuple. The node stays callable as the function was.
"""

from __future__ import annotations

import functools
import inspect
import itertools
from collections.abc import Callable
from typing import Any, overload

from ..errors import NodeTypeError, OptionError
from .node import RESERVED_KEYWORDS, Node, near_miss

__all__ = ["FunctionNode", "as_node"]

# Lambdas are numbered per process, in the order their nodes are made (deterministic
# for a script; a notebook cell run again makes new numbers).
_lambdas = itertools.count(1)


def _unwrapped(fn: Any) -> Any:
    while isinstance(fn, functools.partial):
        fn = fn.func
    return fn


def _default_name(fn: Any) -> str:
    """``square`` for ``def square``; ``lambda-N`` for a lambda; a callable object's class name."""
    base = _unwrapped(fn)
    name = getattr(base, "__name__", None)
    if not isinstance(name, str) or not name:
        name = type(base).__name__
    if name == "<lambda>":
        return f"lambda-{next(_lambdas)}"
    return name


def _is_generator_function(fn: Any) -> bool:
    base = _unwrapped(fn)
    if inspect.isgeneratorfunction(base):
        return True
    call = vars(type(base)).get("__call__")  # a callable object whose __call__ yields
    return not inspect.isfunction(base) and inspect.isgeneratorfunction(call)


def _is_async(fn: Any) -> bool:
    base = _unwrapped(fn)
    call = vars(type(base)).get("__call__")
    return inspect.iscoroutinefunction(base) or inspect.isasyncgenfunction(base) or inspect.iscoroutinefunction(call)


class FunctionNode(Node):
    """A node that calls a plain function on each item and emits what it returns.

    Made by :func:`as_node` (use that); its subclasses emit what a generator
    function yields, or the item a predicate accepts. Stateless unless
    ``stateless=False`` is given.

    Examples
    --------
    >>> def square(x):
    ...     return x * x
    >>> sq = as_node(square)
    >>> sq, sq.name, sq(3)
    (as_node(square), 'square', 9)
    """

    #: What the plan shows in a node's "class" column.
    kind = "function"

    fn: Callable[..., Any]

    def setup(self, fn: Callable[..., Any]) -> None:
        self.fn = fn

    def run(self, data: Any) -> None:
        self.emit(self.fn(data))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the function itself (the decorated name stays usable as a function)."""
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        fn = self.fn
        base = _unwrapped(fn)
        what = getattr(base, "__qualname__", None) or type(base).__name__
        if isinstance(fn, functools.partial):
            what = f"partial({what}, ...)"
        extra = "" if self.name == _plain_name(fn) else f", name={self.name!r}"
        if isinstance(self, _FilterNode):
            extra += ", filter=True"
        if self.batch_size != 1:
            extra += ", batch_size=" + (
                "Node.BATCH_SIZE_ALL" if self.batch_size == Node.BATCH_SIZE_ALL else str(self.batch_size)
            )
        if not self.stateless:
            extra += ", stateless=False"
        return f"as_node({what}{extra})"


def _plain_name(fn: Any) -> str | None:
    base = _unwrapped(fn)
    name = getattr(base, "__name__", None)
    return None if name == "<lambda>" else (name if isinstance(name, str) and name else type(base).__name__)


class _GeneratorNode(FunctionNode):
    """A generator function: each value it yields is emitted."""

    kind = "generator function"

    def run(self, data: Any) -> None:
        emit = self.emit
        for value in self.fn(data):
            emit(value)


class _FilterNode(FunctionNode):
    """A predicate: the item is emitted when it returns something true."""

    kind = "filter"

    def run(self, data: Any) -> None:
        if self.fn(data):
            self.emit(data)


@overload
def as_node(
    fn: Callable[..., Any], /, name: str | None = None, *, filter: bool = False, **options: Any
) -> FunctionNode: ...
@overload
def as_node(
    fn: None = None, /, name: str | None = None, *, filter: bool = False, **options: Any
) -> Callable[[Callable[..., Any]], FunctionNode]: ...


def as_node(
    fn: Callable[..., Any] | None = None, /, name: str | None = None, *, filter: bool = False, **options: Any
) -> Any:
    """Make a plain function a node; also a decorator (``@as_node``, ``@as_node(name=..., batch_size=...)``).

    Parameters
    ----------
    fn : callable
        A function, lambda, ``functools.partial`` or callable object taking
        one item (or, with ``batch_size=k``, one batch). Its return value is
        emitted, ``None`` too; a generator function emits each value it
        yields. Bind other arguments with ``functools.partial``.
    name : str, optional
        The node's name; by default the function's (``lambda-1``, ... for lambdas).
    filter : bool
        ``fn`` is a predicate: the item is emitted when ``fn(item)`` is true.
    **options
        Node options: ``batch_size``, ``stateless``, ``retries``,
        ``on_error``, ``snapshot_every``, ``resources``, ``in_streams``,
        ``out_streams``.

    Returns
    -------
    FunctionNode
        A stateless node, callable as ``fn`` is.

    Examples
    --------
    >>> from pypiper_dask import Pipeline
    >>> from pypiper_dask.demo import Generate
    >>> @as_node
    ... def square(x):
    ...     return x * x
    >>> def digits(x):
    ...     yield from str(x)
    >>> p = Pipeline(Generate("gen", size=5) | square | as_node(lambda x: x > 3, filter=True) | as_node(digits),
    ...              n_threads=1, quiet=True)
    >>> p.run()["digits"]
    ['4', '9', '1', '6']
    """
    if fn is None:
        return lambda f: as_node(f, name, filter=filter, **options)
    if isinstance(fn, Node):
        raise NodeTypeError(f"as_node() takes a function, and {fn!r} is already a node.")
    if not callable(fn):
        raise NodeTypeError(f"as_node() takes a function (or any callable), not {type(fn).__name__} {fn!r}.")
    if name is None:
        name = _default_name(fn)
    if _is_async(fn):
        raise NodeTypeError(f"Node {name!r}: as_node() takes a plain or generator function, not an async one.")
    unknown = sorted(options.keys() - set(RESERVED_KEYWORDS))
    if unknown:
        meant = {k: near_miss(k) for k in unknown}
        hint = "; ".join(f"did you mean {m!r} for {k!r}?" for k, m in meant.items() if m)
        raise NodeTypeError(
            f"Node {name!r}: as_node() takes node options ({', '.join(RESERVED_KEYWORDS)}), not "
            f"{unknown!r}{'; ' + hint if hint else ''}. Bind the function's own arguments with functools.partial."
        )
    generator = _is_generator_function(fn)
    if filter:
        if generator:
            raise NodeTypeError(f"Node {name!r}: filter=True takes a predicate, not a generator function.")
        if options.get("batch_size", 1) != 1:
            raise OptionError(
                f"Node {name!r}: filter=True tests one item at a time; batch_size must be 1, "
                f"not {options['batch_size']!r}."
            )
        cls: type[FunctionNode] = _FilterNode
    else:
        cls = _GeneratorNode if generator else FunctionNode
    return cls(name, fn=fn, **options)
