"""Output: print and collect the leaves' items in the order the splicer restores; the result."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from ..compiler.plan import Plan
from ..errors import short_repr
from ..ordering import Splicer

__all__ = ["Output", "PipelineResult"]


class PipelineResult(Mapping):
    """What a run produced: each leaf's name → its items, in stream order.

    Returned by :meth:`Pipeline.run`, :meth:`RunHandle.result` and
    ``dask.compute(pipeline.to_dask())``. A read-only mapping:
    ``result[leaf]`` is the list of that leaf's items, and ``keys()``,
    ``items()``, ``values()``, ``len()``, ``in`` and iteration work as on a
    dict (over the leaves whose items were collected). In a notebook it shows
    as a table of counts and first items.

    Parameters
    ----------
    values : dict of str to list
        Each leaf's items (empty when the run did not collect them).
    counts : dict of str to int
        How many items each leaf emitted.
    errors : list, optional
        The items dropped by ``on_error``.

    Attributes
    ----------
    counts : dict of str to int
        How many items each leaf emitted, also when the run did not collect
        them (``run(collect=False)``).
    errors : list of ItemError
        The items that nodes with ``on_error="skip"`` or ``"collect"``
        dropped, in order: each an ``ItemError`` with ``node`` (its name),
        ``item_repr`` (a short repr of the item or batch), ``error`` (the
        error, as text) and ``item`` (the item itself with ``"collect"``,
        ``None`` with ``"skip"``).

    Examples
    --------
    >>> r = PipelineResult({"square": [0, 1, 4]}, {"square": 3})
    >>> r["square"]
    [0, 1, 4]
    >>> r
    <PipelineResult square: 3 items>
    """

    def __init__(self, values: dict[str, list], counts: dict[str, int], errors: list | None = None) -> None:
        self._values = values
        self.counts = dict(counts)
        self.errors = list(errors or [])
        self.keyed_nodes: dict[str, Mapping[Any, Any]] = {}  # filled in by the run

    def keyed(self, name: str) -> Mapping[Any, Any]:
        """A keyed node's per-key instances as the run left them: key → node, keys in order of first item.

        The node object you built is not changed by a keyed run; each key's
        instance is a copy of it, with that key's state.

        Raises ``KeyError`` naming the keyed nodes when ``name`` is not one.
        """
        try:
            return self.keyed_nodes[name]
        except KeyError:
            known = ", ".join(map(repr, self.keyed_nodes)) or "none"
            raise KeyError(f"{name!r} is not a keyed node of this run (keyed nodes: {known})") from None

    def __getitem__(self, leaf: str) -> list:
        return self._values[leaf]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def _repr_html_(self) -> str:
        import html

        rows = "".join(
            f"<tr><td><b>{html.escape(k)}</b></td><td>{n}</td>"
            f"<td><code>{html.escape(short_repr(self._values[k][:5])) if k in self._values else '(not collected)'}"
            "</code></td></tr>"
            for k, n in self.counts.items()
        )
        errors = (
            f"<p>{len(self.errors)} item(s) dropped by on_error; see <code>.errors</code>.</p>" if self.errors else ""
        )
        head = "<tr><th>leaf</th><th>items</th><th>first</th></tr>"
        return f"<div><b>PipelineResult</b><table>{head}{rows}</table>{errors}</div>"

    def __repr__(self) -> str:
        parts = ", ".join(f"{k}: {n} item{'s' if n != 1 else ''}" for k, n in self.counts.items())
        note = "" if self._values or not self.counts else " (not collected)"
        if self.errors:
            note += f"; {len(self.errors)} item{'s' if len(self.errors) != 1 else ''} dropped by on_error"
        return f"<PipelineResult {parts}{note}>"


class Output:
    """Where a run's output goes, in the sequential order: stdout (unless quiet) and the result.

    The :class:`~pypiper_dask.ordering.Splicer` decides the order; this
    prints each leaf item and collects (or counts) it.
    """

    def __init__(self, plan: Plan, quiet: bool, collect: bool, stream: list | None = None) -> None:
        self.quiet = quiet or stream is not None
        self.collect = collect and stream is None
        self.stream = stream  # (leaf, item) pairs for a consumer, instead of printed or kept
        self.mute = False  # computed, kept, but not printed (a resumed run's output that went out before)
        self.values: dict[str, list] = {leaf: [] for leaf in plan.leaves}
        self.counts: dict[str, int] = dict.fromkeys(plan.leaves, 0)
        # A stream needs the items interleaved across leaves, as printed (quiet runs skip that).
        self.splicer = Splicer(plan, quiet and stream is None, self._deliver, self.write)

    def write(self, text: str) -> None:
        if self.mute:
            return
        sys.stdout.write(text)  # looked up now: a notebook cell or a redirect may have replaced it

    def _deliver(self, leaf: str, values: Sequence[Any]) -> None:
        self.counts[leaf] += len(values)
        if self.stream is not None and not self.mute:
            self.stream.extend((leaf, v) for v in values)
        if self.collect:
            self.values[leaf].extend(values)
        if not self.quiet:
            self.write("".join(f"{v!s}\n" for v in values))

    def result(self) -> PipelineResult:
        return PipelineResult(self.values if self.collect else {}, self.counts, self.splicer.errors)
