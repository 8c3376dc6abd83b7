"""The run loop: pull the source, keep a window of rounds in flight, hand results to the output."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from typing import Any

from ..compiler.plan import Plan
from ..compiler.tasks import TaskNames, round_tasks
from ..errors import NodeError
from ..model.node import Node
from ..worker import Chunk, NodeFailure, SegmentResult, capture_stdout
from .output import Output, PipelineResult

__all__ = ["PartitionSizer", "SourceReader", "execute"]


class SourceReader:
    """Calls the source's ``run(None)`` until it closes, a partition at a time."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.closed = False
        self.calls = 0

        def close() -> None:
            self.closed = True

        node.close = close

    def pull(self, n: int) -> Chunk:
        """The next ``n`` or so items (a call may emit several), and what the source printed."""
        items: list = []
        prints: dict[int, str] = {}
        ends: list[int] = []  # len(items) after each call
        start = 0

        def record(text: str) -> None:
            # What a call prints comes before the items it emits.
            prints[start] = prints.get(start, "") + text

        self.node.emit = items.append
        run = self.node.run
        with capture_stdout(record):
            while not self.closed and len(items) < n:
                start = len(items)
                self.calls += 1
                try:
                    run(None)
                except Exception as exc:
                    raise NodeError(
                        self.node.name,
                        "None",
                        f"Node {self.node.name!r} (the source) raised "
                        f"{type(exc).__name__}: {exc} in its call number {self.calls} of run(None).",
                    ) from exc
                ends.append(len(items))
        # Item ends matter where every path closes: no call is made after that.
        one_each = ends == list(range(1, len(items) + 1))
        return Chunk(items, prints, None if one_each else set(ends))

    def unbind(self) -> None:
        for attr in ("emit", "close"):
            self.node.__dict__.pop(attr, None)


class PartitionSizer:
    """Chooses how many source items go in each partition.

    A partition should carry about ``target`` seconds of work (a task costs
    ~1-2 ms to schedule), and there should be enough partitions to keep every
    worker busy; the per-item cost is measured from the finished tasks.
    """

    target = 0.1
    smallest, largest = 16, 100_000

    def __init__(self, fixed: int | None, n_workers: int, total: int | None) -> None:
        self.fixed = fixed
        self.n_workers = n_workers
        self.total = total
        self.per_item: float | None = None
        self.current = 32

    def next(self) -> int:
        if self.fixed:
            return self.fixed
        return self.current

    def observe(self, n_items: int, results: dict[int, SegmentResult]) -> None:
        if self.fixed or n_items == 0:
            return
        cost = sum(r.seconds for r in results.values()) / n_items
        self.per_item = cost if self.per_item is None else 0.5 * (self.per_item + cost)
        want = self.target / max(self.per_item, 1e-7)
        if self.total and self.n_workers > 1:
            want = min(want, math.ceil(self.total / (4 * self.n_workers)))
        want = min(want, self.current * 8)  # grow gradually: one fast partition can mislead
        self.current = int(min(max(want, self.smallest), self.largest))


def _node_error(failure: NodeFailure) -> NodeError:
    err = failure.error
    error = NodeError(
        failure.node, failure.item, f"Node {failure.node!r} raised {type(err).__name__}: {err} on input {failure.item}."
    )
    error.add_note("Traceback where the node ran:\n" + failure.tb.rstrip())
    error.__cause__ = err
    return error


def execute(
    plan: Plan,
    backend: Any,
    *,
    quiet: bool,
    collect: bool,
    partition_size: int | None,
    callback: Callable[[int, int | None], None] | None,
) -> tuple[PipelineResult, Node, dict[str, bytes]]:
    """Run ``plan`` on an entered backend.

    Returns the result, the source node as it ended and the pickled final state
    of every stateful node.
    """
    snap = plan.snapshot
    source = SourceReader(snap.node(snap.root))
    total = snap.info[snap.root].size if isinstance(snap.info[snap.root].size, int) else None
    names = TaskNames(plan)
    out = Output(plan, quiet=quiet, collect=collect)
    sizer = PartitionSizer(partition_size, backend.n_workers, total)
    done = 0
    if callback:
        callback(done, total)
    backend.start(plan, names)
    inflight: deque = deque()
    index = 0
    try:
        while True:
            while len(inflight) < backend.window and not source.closed and not out.exhausted:
                chunk = source.pull(sizer.next())
                if chunk.items or chunk.prints:
                    inflight.append((len(chunk), backend.submit(round_tasks(plan, names, index, 0, chunk))))
                    index += 1
            if not inflight:
                break
            n_items, handle = inflight.popleft()
            results = backend.gather(handle)
            sizer.observe(n_items, results)
            out.round(0, results)
            done += n_items
            if callback:
                callback(done, total)
        flushes = []
        for stage in plan.seq_stages:
            flushes.append((stage.id, backend.submit(round_tasks(plan, names, index, stage.id))))
            index += 1
        for stage_id, handle in flushes:
            out.flush(stage_id, backend.gather(handle))
        out.finish()
        states = backend.states(names)
    except NodeFailure as failure:
        backend.cancel()
        raise _node_error(failure) from failure.error
    except BaseException:
        backend.cancel()
        raise
    if callback:
        callback(done, total)
    source.unbind()
    return out.result(), source.node, states
