"""The run loop: pull the source, keep a window of rounds in flight, hand results to the output."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import Any

from ..compiler.plan import Plan
from ..compiler.tasks import TaskNames, round_tasks
from ..errors import NodeError
from ..model.node import Node
from ..worker import Chunk, NodeFailure, SegmentResult, capture_stdout
from .backends import DataLost
from .output import Output, PipelineResult

#: How many times partitions lost with a worker are sent again before giving up.
MAX_RESENDS = 5

__all__ = ["PartitionSizer", "SourceReader", "execute"]


class SourceReader:
    """Calls the source's ``run(None)`` until it closes, a partition at a time."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.emitted = 0
        self._stop: list = []  # non-empty once the source called close()
        # The engine rebinds emit/close on its own copy of the node.
        setattr(node, "close", partial(self._stop.append, True))  # noqa: B010

    @property
    def closed(self) -> bool:
        return bool(self._stop)

    def pull(self, n: int) -> Chunk:
        """The next ``n`` or so items (a call may emit several), and what the source printed.

        ``Chunk.calls`` records where calls ended only once a call emitted
        several items; until then every item is a call of its own (a call
        that emits nothing ends no item), and the loop does no bookkeeping.
        """
        items: list = []
        prints: dict[int, str] = {}
        bounds: set[int] | None = None  # len(items) after each call, once needed
        stop, run = self._stop, self.node.run
        k = start = 0

        def record(text: str) -> None:
            # What a call prints comes before the items it emits.
            at = k - 1 if bounds is None else start
            prints[at] = prints.get(at, "") + text

        setattr(self.node, "emit", items.append)  # noqa: B010
        with capture_stdout(record):
            try:
                while not stop and len(items) < n:
                    if bounds is None:
                        for k in range(len(items) + 1, n + 1):
                            run(None)
                            if stop or len(items) != k:
                                break
                        if len(items) > k:  # that call emitted several items
                            bounds = set(range(1, k))
                            bounds.add(len(items))
                    else:
                        start = len(items)
                        run(None)
                        bounds.add(len(items))
            except Exception as exc:
                raise NodeError(
                    self.node.name,
                    "None",
                    f"Node {self.node.name!r} (the source) raised {type(exc).__name__}: {exc} in run(None), "
                    f"after emitting {self.emitted + len(items)} items.",
                ) from exc
        self.emitted += len(items)
        return Chunk(items, prints, bounds)

    def unbind(self) -> None:
        for attr in ("emit", "close"):
            self.node.__dict__.pop(attr, None)


class PartitionSizer:
    """Chooses how many source items go in each partition.

    A task costs a few milliseconds to schedule and move, so a partition should
    carry about ``target`` seconds of work; when the source's size is known,
    partitions are made smaller so each worker gets about two, but never below
    ``least`` seconds of work. The cost per item is measured from finished
    tasks; the first partition is small and runs alone to measure it.
    """

    target, least = 0.1, 0.025
    smallest, largest, first = 16, 100_000, 32

    def __init__(self, fixed: int | None, n_workers: int, total: int | None) -> None:
        self.fixed = fixed
        self.n_workers = n_workers
        self.total = total
        self.per_item: float | None = None
        self._seconds = self._items = 0.0
        self.current = self.first

    @property
    def calibrated(self) -> bool:
        return bool(self.fixed) or self.per_item is not None

    def next(self) -> int:
        return self.fixed or self.current

    def observe(self, n_items: int, results: dict[int, SegmentResult]) -> None:
        if self.fixed or n_items == 0:
            return
        # Weighted by items, decaying: a small first task's fixed costs fade at once.
        self._seconds = 0.5 * self._seconds + sum(r.seconds for r in results.values())
        self._items = 0.5 * self._items + n_items
        self.per_item = max(self._seconds / self._items, 1e-7)
        want = self.target / self.per_item
        if self.total and self.n_workers > 1:
            balanced = math.ceil(self.total / (2 * self.n_workers))
            want = min(want, max(balanced, self.least / self.per_item))
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
    backend.start(plan, names, quiet)
    inflight: deque = deque()
    flushes: list | None = None
    index = attempt = 0
    try:
        while True:
            # One small round per worker first: their cost per item sizes the
            # partitions that fill the window, and no worker waits meanwhile.
            window = backend.window if sizer.calibrated else backend.n_workers
            while len(inflight) < window and not source.closed and not out.exhausted:
                chunk = source.pull(sizer.next())
                if chunk.items or chunk.prints:
                    # The chunk stays here until its round is gathered: if the worker
                    # holding it dies, it is sent again (a source cannot be re-run).
                    inflight.append((chunk, index, backend.submit(round_tasks(plan, names, index, 0, chunk))))
                    index += 1
            if flushes is None and (source.closed or out.exhausted):
                # The input is complete: end each sequential stage's input (in preorder,
                # so a stage's flush feeds the stages below before theirs), and ask for
                # final states, while the last rounds still run.
                flushes = []
                for stage in plan.seq_stages:
                    flushes.append((stage.id, backend.submit(round_tasks(plan, names, index, stage.id, None, attempt))))
                    index += 1
                states = backend.submit_states(names, attempt)
            if not inflight:
                break
            chunk, _, handle = inflight[0]
            try:
                results = backend.gather(handle)
            except DataLost:
                attempt += 1
                if attempt > MAX_RESENDS:
                    raise
                # Every round not gathered yet goes again, in order, from its kept chunk;
                # their sequential tasks had not run (each waits on the one that failed).
                backend.rollback()
                flushes = None
                inflight = deque(
                    (c, i, backend.submit(round_tasks(plan, names, i, 0, c, attempt))) for c, i, _ in inflight
                )
                continue
            inflight.popleft()
            sizer.observe(len(chunk), results)
            out.round(0, results, chunk.calls)
            done += len(chunk)
            if callback:
                callback(done, total)
        assert flushes is not None  # submitted once the source was done
        for stage_id, handle in flushes:
            out.flush(stage_id, backend.gather(handle))
        out.finish()
        final_states = backend.gather_states(states)
    except NodeFailure as failure:
        backend.cancel()
        raise _node_error(failure) from failure.error
    except BaseException:
        backend.cancel()
        raise
    if callback:
        callback(done, total)
    source.unbind()
    return out.result(), source.node, final_states
