"""The source, pulled in the caller a partition at a time, and how large a partition is."""

from __future__ import annotations

import math
import threading
import time
from functools import partial

from ..errors import NodeError, ValuePickleError
from ..log import SilentSource
from ..model.node import Node, arm_setup_emits
from ..ordering import Segment
from ..worker import Chunk, capture_stdout, freezing

__all__ = ["PartitionSizer", "SourceReader"]


class _Pull:
    """One request to the source for ``n`` or so items, filled by :meth:`SourceReader._fill`.

    ``done``: how many of ``items`` the calls that returned emitted (a call
    still running may have emitted more); ``taken``: how many went into
    partitions so far. Read by the run loop while its thread fills it.
    """

    def __init__(self, n: int) -> None:
        self.n = n
        self.items: list = []
        self.prints: dict[int, str] = {}
        self.bounds: set[int] | None = None
        self.done = self.taken = 0
        self.cut_by_time = False
        self.started = time.monotonic()
        self.finished = threading.Event()


class SourceReader:
    """Calls the source's ``run(None)`` until it closes, a partition at a time.

    ``to``: where its items go in other processes (each must pickle, see
    :func:`~pypiper_dask.worker.freezing`); ``None``: they stay in this one.
    ``threaded``: call the source on a thread of its own, so that a call
    waiting for its next reading (a live source) does not hold back the items
    the calls before it emitted (see :meth:`pull`).
    """

    #: With ``threaded``: seconds :meth:`unbind` waits for a call still running.
    join_seconds = 0.5

    def __init__(self, node: Node, to: str | None = None, threaded: bool = False) -> None:
        self.node = node
        self.to = to
        self.threaded = threaded
        self.emitted = 0
        self._stop: list = []  # non-empty once the source called close()
        self._quit = False  # the run ended: a thread calls the source no more
        self._pull: _Pull | None = None  # a threaded request not taken whole yet
        self._thread: threading.Thread | None = None
        # The engine rebinds emit/close on its own copy of the node.
        setattr(node, "close", partial(self._stop.append, True))  # noqa: B010
        arm_setup_emits(node)
        self.silent = SilentSource(node.name)
        self.cut_by_time = False  # the last partition was cut by time, not size
        self.failed: NodeError | None = None  # the source's run raised: the error, raised after what came before

    @property
    def closed(self) -> bool:
        return bool(self._stop) and self._pull is None

    def pull(self, n: int, seconds: float = math.inf) -> Chunk:
        """The next ``n`` or so items (a call may emit several), and what the source printed.

        A partition is also cut after ``seconds``, so a live source (one that
        waits for its readings) has its items delivered while it goes on;
        ``cut_by_time`` says whether this one was. ``Chunk.calls`` records
        where calls ended only once a call emitted several items; until then
        every item is a call of its own (a call that emits nothing ends no
        item), and the loop does no bookkeeping.

        With ``threaded`` the calls run on the reader's thread, and a partition
        cut by time holds what the calls that returned emitted, also while the
        next call waits: the rest of the request goes in the next partitions.
        The source is called at most one request (``n`` items) ahead.
        """
        if not self.threaded:
            here = _Pull(n)
            self._fill(here, seconds)
            self.cut_by_time = here.cut_by_time
            return self._take(here, len(here.items), whole=True)
        req = self._pull
        if req is None:
            req = self._pull = _Pull(n)
            self._thread = threading.Thread(
                target=self._fill, args=(req, math.inf), name=f"pypiper_dask source {self.node.name!r}", daemon=True
            )
            self._thread.start()
        wait = max(0.0, req.started + seconds - time.monotonic()) if req.taken == 0 else seconds
        if req.finished.wait(None if math.isinf(wait) else wait):
            self._pull = None
            self.cut_by_time = req.taken > 0 or time.monotonic() - req.started >= seconds
            return self._take(req, len(req.items), whole=True)
        self.cut_by_time = True
        return self._take(req, req.done, whole=False)  # the calls that returned: the one running may wait long

    def _take(self, req: _Pull, upto: int, whole: bool) -> Chunk:
        """``req``'s items from where the last partition ended to ``upto``, as a partition.

        ``whole``: the request is finished and this partition ends it.
        """
        lo = req.taken
        req.taken = upto
        items = req.items[lo:upto]
        prints, bounds = req.prints, req.bounds
        if lo or not whole:
            # Copies first: the thread may add to them meanwhile (each copy is one step under the
            # GIL). What was printed before item ``upto`` goes with it, in the next partition.
            prints = {at - lo: text for at, text in dict(prints).items() if lo <= at and (whole or at < upto)}
            if bounds is not None:
                bounds = {b - lo for b in set(bounds) if lo < b and (whole or b <= upto)}
        self.emitted += len(items)
        return Chunk(items, prints, bounds)

    def _fill(self, req: _Pull, seconds: float) -> None:
        """Call the source into ``req`` until it holds ``req.n`` items, the source closes, or ``seconds`` pass."""
        items, prints = req.items, req.prints
        n = req.n
        bounds: set[int] | None = None  # len(items) after each call, once needed
        stop, run = self._stop, self.node.run
        base = self.emitted  # every request before this one was taken whole
        k = start = 0
        clock = time.monotonic
        last = clock()
        deadline = last + seconds
        mask = 0  # the clock is read when k & mask == 0: every call while calls are slow

        def record(text: str) -> None:
            # What a call prints comes before the items it emits.
            at = k - 1 if bounds is None else start
            prints[at] = prints.get(at, "") + text

        setattr(self.node, "emit", freezing(items.append, self.node, to=self.to))  # noqa: B010
        with capture_stdout(record):
            try:
                while not stop and len(items) < n and not self._quit:
                    before = len(items)
                    if bounds is None:
                        for k in range(len(items) + 1, n + 1):
                            run(None)
                            if stop or len(items) != k:
                                break
                            req.done = k
                            if not k & mask:
                                now = clock()
                                if now >= deadline:
                                    req.cut_by_time = True
                                    break
                                if now - last < 0.001 and mask < 1023:
                                    mask = mask << 1 | 1  # fast calls: read the clock less often
                                last = now
                        if req.cut_by_time:
                            break
                        if len(items) > k:  # that call emitted several items
                            bounds = set(range(1, k))
                            bounds.add(len(items))
                            req.bounds = bounds
                    else:
                        start = len(items)
                        run(None)
                        bounds.add(len(items))
                    req.done = len(items)
                    if len(items) == before:  # a call that emitted nothing (rare but for a silent source)
                        self.silent.idle()
                    elif self.silent.calls:
                        self.silent.heard()
                    if bounds is not None and clock() >= deadline:
                        req.cut_by_time = True
                        break
            except Exception as exc:
                what = (
                    f"{exc} It was emitted by run(None)"  # says the node, what, and where to
                    if isinstance(exc, ValuePickleError)
                    else f"Node {self.node.name!r} (the source) raised {type(exc).__name__}: {exc} in run(None)"
                )
                error = NodeError(self.node.name, "None", f"{what}, after emitting {base + len(items)} items.")
                error.__cause__ = exc
                # Raised once the items before the failing call are delivered, as in a sequential
                # run; what that call emitted never left it (its prints did).
                self.failed = error
                stop.append(True)
                del items[req.done :]
            finally:
                req.finished.set()

    def unbind(self) -> None:
        self._quit = True  # a thread still calling the source stops after the call it is in
        thread = self._thread
        if thread is not None and thread.is_alive():
            thread.join(self.join_seconds)
        for attr in ("emit", "close"):
            self.node.__dict__.pop(attr, None)


class PartitionSizer:
    """Chooses how many source items go in each partition.

    A task costs a few milliseconds to schedule and move, and the caller's own
    work per round takes CPU from the workers on a small machine, so a
    partition should carry about ``target`` seconds of work. When the source's size is known,
    partitions shrink towards the end (guided scheduling: what is left over
    twice the workers), so the last partitions end together, but never below
    ``least`` seconds of work. The cost per item is measured from finished
    tasks; the first partitions are small and run one per worker to measure it.

    With many workers the target grows (``per_task`` seconds of the
    scheduler's and the caller's work per task, times twice the workers), so
    that neither keeps workers waiting: the scaling model in BENCHMARKS.md.

    Examples
    --------
    >>> sizer = PartitionSizer(None, n_workers=4, total=10_000)
    >>> [sizer.next(0) for _ in range(3)]  # until a task's cost is known
    [1, 32, 32]
    >>> sizer.per_item = 0.001  # 1 ms an item: 0.2 s is 200 items
    >>> sizer.next(0), sizer.next(9_600), sizer.next(9_990)
    (200, 50, 25)
    >>> PartitionSizer(None, n_workers=100, total=None).seconds  # 100 workers: 0.8 s a partition
    0.8

    ``spread``: over how many holders a partition's items are dealt (a keyed
    node's, one per worker): the first partitions are that many times larger.

    >>> keyed = PartitionSizer(None, n_workers=8, total=3_000, spread=8)
    >>> [keyed.next(0) for _ in range(3)]
    [1, 256, 256]
    """

    target, least = 0.2, 0.025
    #: Seconds of scheduling and caller work per task (measured: 2-5 ms on a 2-core machine).
    per_task = 0.004
    #: ``largest``: now that rounds run on every worker at once, more of them are back
    #: together waiting their turn, and the caller's peak grew with the partition size
    #: (W6: 129 MB at 1M items, 226 MB at 10M with 100,000; 124 MB at 10M with 30,000).
    smallest, largest, first = 16, 30_000, 32
    #: Seconds of the source's own calls after which a partition is cut (a live source).
    source_seconds = 0.1

    def __init__(self, fixed: int | None, n_workers: int, total: int | None, spread: int = 1) -> None:
        self.fixed = fixed
        self.n_workers = n_workers
        self.total = total
        # A keyed node's holders each get a share of every partition: the first ones carry
        # `first` items for each of them, or its holders' steps are too small to keep them busy.
        self.first = self.first * max(1, spread)
        self.per_item: float | None = None
        self._seconds = self._items = 0.0
        self._uncalibrated = 0  # partitions cut before the cost was known

    @property
    def seconds(self) -> float:
        """Seconds of work a partition carries: ``target``, or more where the workers are many.

        A task costs the scheduler and the caller about ``per_task`` seconds;
        kept at half their capacity, W workers need ``2 * W * per_task``
        seconds of work per task.
        """
        return max(self.target, 2 * self.n_workers * self.per_task)

    @property
    def calibrated(self) -> bool:
        return bool(self.fixed) or self.per_item is not None

    def next(self, pulled: int = 0) -> int:
        """The size of the next partition, ``pulled`` source items having been cut so far."""
        if self.fixed:
            return self.fixed
        if self.per_item is None:
            # Until a task's cost is known: one item first, so that nodes taking seconds
            # an item show progress after one item, then `first` (smaller steps cost
            # fast pipelines a round trip each: measured +15% on W3).
            self._uncalibrated += 1
            return 1 if self._uncalibrated == 1 else self.first
        want = self.seconds / self.per_item
        if self.total and self.n_workers > 1:
            # Not below `least`, nor so small that the caller's work per round (a few ms)
            # cannot keep up with this many workers.
            least = max(self.least, self.per_task * self.n_workers)
            left = max(self.total - pulled, 0)
            want = min(want, max(math.ceil(left / (2 * self.n_workers)), least / self.per_item))
        return int(min(max(want, self.smallest), self.largest))

    def observe(self, n_items: int, results: dict[int, Segment]) -> None:
        if self.fixed or n_items == 0:
            return
        seconds = sum(r.seconds for r in results.values())
        if self.per_item is None and n_items < self.smallest and seconds < self.least:
            # A partition of an item or two that ran fast says little of an item's cost
            # (a first call's fixed costs dominate, and partitions came out too small:
            # measured 10 rounds for W1 instead of 6); a slow one does say it.
            return
        # Weighted by items, decaying: a small first task's fixed costs fade at once.
        self._seconds = 0.5 * self._seconds + seconds
        self._items = 0.5 * self._items + n_items
        self.per_item = max(self._seconds / self._items, 1e-7)
