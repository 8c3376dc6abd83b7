"""Output: put the stages' results back into the sequential order, print, collect."""

from __future__ import annotations

import itertools
import sys
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from ..compiler.plan import FusedStage, Plan, SeqStage
from ..errors import short_repr
from ..worker import Closed, Ends, Printed, SegmentResult

__all__ = ["Output", "PipelineResult"]


class PipelineResult(Mapping):
    """What a run produced: each leaf's name → its items, in stream order.

    A read-only mapping. ``counts`` holds how many items each leaf emitted,
    also when the run did not collect them (``run(collect=False)``);
    ``errors`` the items that nodes with ``on_error="skip"`` or ``"collect"``
    dropped (:class:`~pypiper_dask.worker.ItemError`: node, item, error).

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


def _events(res: SegmentResult, calls: set[int] | None = None) -> Iterator[Any]:
    """A stage result's events in order: ``(sink, value)``, Printed, Closed or None (END).

    ``calls``: where the source's calls ended, for a top stage result whose item
    ends are implied (``one_to_one``); ``None`` means after every item.
    """
    outs = res.outs
    if res.one_to_one:
        for i, value in enumerate(outs[0], 1):
            yield (0, value)
            if calls is None or i in calls:
                yield None
        return
    if res.log is not None:
        pos = [0] * len(outs)
        for entry in res.log:
            kind = type(entry)
            if kind is int:
                yield (entry, outs[entry][pos[entry]])
                pos[entry] += 1
            elif kind is Ends:
                yield from itertools.repeat(None, entry.n)
            else:
                yield entry
        return
    out, i = outs[0], 0
    for at, entry in res.marks:
        while i < at:
            yield (0, out[i])
            i += 1
        yield entry
    for j in range(i, len(out)):
        yield (0, out[j])


class Output:
    """Receives rounds of stage results in order; prints and collects leaf items.

    Most rounds take a fast path (each leaf's items appended as they are).
    Rounds with prints, closes or several printed leaves are *walked*: the
    top stage's events in order, each crossing into a sequential stage
    replaced by that stage's events for the item, recursively — which is the
    order a sequential run produces.
    """

    def __init__(self, plan: Plan, quiet: bool, collect: bool) -> None:
        self.plan = plan
        self.quiet = quiet
        self.collect = collect
        self.values: dict[str, list] = {leaf: [] for leaf in plan.leaves}
        self.counts: dict[str, int] = dict.fromkeys(plan.leaves, 0)
        self.errors: list = []
        self.closed: set[str] = set()
        self.seen_closed: set[str] = set()  # every close reported, walked or not
        self.flushed: set[int] = set()
        self.flush_results: dict[int, dict[int, SegmentResult]] = {}
        self.waiting: list[tuple[int, dict[int, SegmentResult], set[int] | None]] = []
        self.leaf_sinks: dict[str, tuple[int, int]] = {}
        for stage in plan.stages:
            if isinstance(stage, FusedStage):
                for i, sink in enumerate(stage.sinks):
                    if sink.kind == "leaf":
                        self.leaf_sinks[sink.node] = (stage.id, i)
            elif stage.below is None:
                self.leaf_sinks[stage.node] = (stage.id, 0)

    # -- what the run loop calls -------------------------------------------------------

    def round(self, origin: int, results: dict[int, SegmentResult], calls: set[int] | None = None) -> None:
        """Take the results of one round (every stage at or below ``origin``).

        ``calls`` are the source call ends of the round's partition (``Chunk.calls``).
        """
        for res in results.values():
            self.seen_closed.update(res.closed)
        if self._done() and not self.waiting:
            return  # a sequential run would not have pulled these source items
        if self.waiting or self._needs_flush(results):
            self.waiting.append((origin, results, calls))  # walked once flushes are known
            return
        if self._plain(results):
            for res in results.values():
                self.errors.extend(res.errors)
            for leaf, (sid, sink) in self.leaf_sinks.items():
                if sid in results:
                    self._deliver_many(leaf, results[sid].outs[sink])
            return
        self._walk_round(origin, results, calls)

    def flush(self, stage: int, results: dict[int, SegmentResult]) -> None:
        """Take the results of the round that ends sequential stage ``stage``'s input."""
        self.flush_results[stage] = results

    def finish(self) -> None:
        """Walk what waited for flushes, then every flush not walked at a close."""
        waiting, self.waiting = self.waiting, []
        for origin, results, calls in waiting:
            if self._done():
                break
            self._walk_round(origin, results, calls)
        for stage in self.plan.seq_stages:
            if stage.id not in self.flushed and stage.id in self.flush_results:
                self.flushed.add(stage.id)
                self._walk_round(stage.id, self.flush_results.pop(stage.id))

    @property
    def exhausted(self) -> bool:
        """Every leaf sits below a closed node: pulling more source items is useless."""
        return self._covers(self.seen_closed)

    def result(self) -> PipelineResult:
        return PipelineResult(self.values if self.collect else {}, self.counts, self.errors)

    # -- internals ---------------------------------------------------------------------

    def write(self, text: str) -> None:
        sys.stdout.write(text)  # looked up now: a notebook cell or a redirect may have replaced it

    def _needs_flush(self, results: dict[int, SegmentResult]) -> bool:
        seq_under = self.plan.seq_under
        return any(seq_under[n] for res in results.values() for n in res.closed if n not in self.closed)

    def _plain(self, results: dict[int, SegmentResult]) -> bool:
        if self.closed or not (self.quiet or len(self.plan.leaves) == 1):
            return False
        return all(not (res.closed or res.printed) for res in results.values())

    def _done(self) -> bool:
        """Every leaf is below a node closed so far in the walk: a sequential run stops here."""
        return self._covers(self.closed)

    def _covers(self, closed: set[str]) -> bool:
        """Does every path from the source to a leaf pass through a node in ``closed``?"""
        anc = self.plan.ancestors
        return bool(closed) and all(anc[leaf] & closed for leaf in self.plan.leaves)

    def _blocked(self, node: str) -> bool:
        return bool(self.closed) and not self.closed.isdisjoint(self.plan.ancestors[node])

    def _deliver_many(self, leaf: str, values: Sequence[Any]) -> None:
        if not values:
            return
        self.counts[leaf] += len(values)
        if self.collect:
            self.values[leaf].extend(values)
        if not self.quiet:
            self.write("".join(f"{v!s}\n" for v in values))

    def _deliver(self, leaf: str, value: Any) -> None:
        self._deliver_many(leaf, (value,))

    def _walk_round(self, origin: int, results: dict[int, SegmentResult], calls: set[int] | None = None) -> None:
        for res in results.values():
            self.errors.extend(res.errors)
        iters = {sid: _events(res, calls if sid == 0 else None) for sid, res in results.items()}
        self._walk(origin, iters, whole=origin == 0)

    def _walk(self, sid: int, iters: dict[int, Iterator[Any]], whole: bool) -> None:
        stage = self.plan.stages[sid]
        for event in iters[sid]:
            if event is None:  # END of one input item
                if whole:
                    if self._done():
                        return  # every path closed: a sequential run pulls no more items
                    continue
                return
            kind = type(event)
            if kind is tuple:
                sink, value = event
                if isinstance(stage, SeqStage):
                    if stage.below is None:
                        self._deliver(stage.node, value)
                    else:
                        self._walk(stage.below, iters, whole=False)
                    continue
                target = stage.sinks[sink]
                if self._blocked(target.node):
                    continue
                if target.kind == "leaf":
                    self._deliver(target.node, value)
                else:
                    self._walk(target.stage, iters, whole=False)
            elif kind is Printed:
                if not self._blocked(event.node):
                    self.write(event.text)
            elif kind is Closed:
                self._close(event.node)

    def _close(self, node: str) -> None:
        """``node`` closed here: its subtree's input ends now, so splice in their flushes."""
        if self._blocked(node):
            return
        for stage in self.plan.seq_under[node]:
            if stage not in self.flushed:
                self.flushed.add(stage)
                self._walk_round(stage, self.flush_results.pop(stage))
        self.closed.add(node)
