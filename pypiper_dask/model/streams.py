"""How an emitted value travels along one edge: pyPiper's named streams."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import StreamError

__all__ = ["edge_selector"]


def edge_selector(
    parent_out: str | list[str], child_in: str | list[str], parent: str, child: str
) -> Callable[[Any], list] | None:
    """A function turning one emitted value into the items the child receives.

    ``None`` means the value passes unchanged (the child reads ``"*"``), which
    the engine uses to skip a call per item.

    Examples
    --------
    >>> pick = edge_selector(["even", "odd"], ["odd", "even"], "split", "sink")
    >>> pick([0, 1])
    [1, 0]
    >>> edge_selector("*", ["a", "b"], "p", "c")(5)
    Traceback (most recent call last):
    ...
    pypiper_dask.errors.StreamError: Node 'p' emitted 1 value(s) (5) but node 'c' reads 2 streams ['a', 'b'].
    """
    if child_in == "*":
        return None
    if parent_out == "*":
        width = len(child_in)

        def select_all(value: Any) -> list:
            seq = value if isinstance(value, (list, tuple)) else [value]
            if len(seq) != width:
                raise StreamError(
                    f"Node {parent!r} emitted {len(seq)} value(s) ({value!r}) but node {child!r} "
                    f"reads {width} streams {child_in!r}."
                )
            return list(seq)

        return select_all
    positions = [parent_out.index(name) for name in child_in]

    def select_named(value: Any) -> list:
        seq = value if isinstance(value, (list, tuple)) else [value]
        try:
            return [seq[i] for i in positions]
        except IndexError:
            raise StreamError(
                f"Node {parent!r} emitted {value!r}, {len(seq)} value(s) for its streams "
                f"{parent_out!r}; node {child!r} reads {child_in!r}."
            ) from None

    return select_named
