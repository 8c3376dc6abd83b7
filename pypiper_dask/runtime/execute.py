"""The run loop: pull the source, keep a window of rounds in flight, deliver them in order."""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Generator
from functools import partial
from typing import Any

import cloudpickle

from ..compiler.plan import Plan
from ..compiler.tasks import TaskNames, TaskSpec, round_tasks
from ..errors import NodeError, NodeModuleError, PipelineError, ValuePickleError
from ..log import HiddenStateReport, SilentSource
from ..model.node import Node, arm_setup_emits
from ..model.snapshot import load_node
from ..ordering import Segment
from ..worker import Chunk, NodeFailure, capture_stdout, freezing
from ..worker.values import error_text
from .backends import Backend, DataLost, HolderLost
from .checkpoint import CheckpointRun
from .output import Output, PipelineResult
from .poison import LossCount, find_poison, find_poison_in_rounds
from .recovery import DEFAULT_SNAPSHOT_EVERY, Recovery
from .tracebacks import without_stub_carets

#: How many times partitions lost with a worker are sent again before giving up.
MAX_RESENDS = 5

#: Source items out at once (cut, not yet delivered), whatever the window: the caller
#: keeps each partition until it is delivered, and holds finished ones in order.
MAX_ITEMS_OUT = 300_000

__all__ = ["PartitionSizer", "SourceReader", "drain", "iter_execute", "node_error"]


class SourceReader:
    """Calls the source's ``run(None)`` until it closes, a partition at a time.

    ``to``: where its items go in other processes (each must pickle, see
    :func:`~pypiper_dask.worker.freezing`); ``None``: they stay in this one.
    """

    def __init__(self, node: Node, to: str | None = None) -> None:
        self.node = node
        self.to = to
        self.emitted = 0
        self._stop: list = []  # non-empty once the source called close()
        # The engine rebinds emit/close on its own copy of the node.
        setattr(node, "close", partial(self._stop.append, True))  # noqa: B010
        arm_setup_emits(node)
        self.silent = SilentSource(node.name)
        self.cut_by_time = False  # the last partition was cut by time, not size

    @property
    def closed(self) -> bool:
        return bool(self._stop)

    def pull(self, n: int, seconds: float = math.inf) -> Chunk:
        """The next ``n`` or so items (a call may emit several), and what the source printed.

        A partition is also cut after ``seconds``, so a live source (one that
        waits for its readings) has its items delivered while it goes on;
        ``cut_by_time`` says whether this one was. ``Chunk.calls`` records
        where calls ended only once a call emitted several items; until then
        every item is a call of its own (a call that emits nothing ends no
        item), and the loop does no bookkeeping.
        """
        items: list = []
        prints: dict[int, str] = {}
        bounds: set[int] | None = None  # len(items) after each call, once needed
        stop, run = self._stop, self.node.run
        k = start = 0
        clock = time.monotonic
        last = clock()
        deadline = last + seconds
        mask = 0  # the clock is read when k & mask == 0: every call while calls are slow
        self.cut_by_time = False

        def record(text: str) -> None:
            # What a call prints comes before the items it emits.
            at = k - 1 if bounds is None else start
            prints[at] = prints.get(at, "") + text

        setattr(self.node, "emit", freezing(items.append, self.node, to=self.to))  # noqa: B010
        with capture_stdout(record):
            try:
                while not stop and len(items) < n:
                    before = len(items)
                    if bounds is None:
                        for k in range(len(items) + 1, n + 1):
                            run(None)
                            if stop or len(items) != k:
                                break
                            if not k & mask:
                                now = clock()
                                if now >= deadline:
                                    self.cut_by_time = True
                                    break
                                if now - last < 0.001 and mask < 1023:
                                    mask = mask << 1 | 1  # fast calls: read the clock less often
                                last = now
                        if self.cut_by_time:
                            break
                        if len(items) > k:  # that call emitted several items
                            bounds = set(range(1, k))
                            bounds.add(len(items))
                    else:
                        start = len(items)
                        run(None)
                        bounds.add(len(items))
                    if len(items) == before:  # a call that emitted nothing (rare but for a silent source)
                        self.silent.idle()
                    elif self.silent.calls:
                        self.silent.heard()
                    if bounds is not None and clock() >= deadline:
                        self.cut_by_time = True
                        break
            except Exception as exc:
                what = (
                    f"{exc} It was emitted by run(None)"  # says the node, what, and where to
                    if isinstance(exc, ValuePickleError)
                    else f"Node {self.node.name!r} (the source) raised {type(exc).__name__}: {exc} in run(None)"
                )
                raise NodeError(
                    self.node.name, "None", f"{what}, after emitting {self.emitted + len(items)} items."
                ) from exc
        self.emitted += len(items)
        return Chunk(items, prints, bounds)

    def unbind(self) -> None:
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

    Examples
    --------
    >>> sizer = PartitionSizer(None, n_workers=4, total=10_000)
    >>> [sizer.next(0) for _ in range(3)]  # until a task's cost is known
    [1, 32, 32]
    >>> sizer.per_item = 0.001  # 1 ms an item: 0.2 s is 200 items
    >>> sizer.next(0), sizer.next(9_600), sizer.next(9_990)
    (200, 50, 25)
    """

    target, least = 0.2, 0.025
    smallest, largest, first = 16, 100_000, 32
    #: Seconds of the source's own calls after which a partition is cut (a live source).
    source_seconds = 0.1

    def __init__(self, fixed: int | None, n_workers: int, total: int | None) -> None:
        self.fixed = fixed
        self.n_workers = n_workers
        self.total = total
        self.per_item: float | None = None
        self._seconds = self._items = 0.0
        self._uncalibrated = 0  # partitions cut before the cost was known

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
        want = self.target / self.per_item
        if self.total and self.n_workers > 1:
            # Not below `least`, nor so small that the caller's work per round (a few ms)
            # cannot keep up with this many workers.
            least = max(self.least, 0.004 * self.n_workers)
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


def node_error(failure: NodeFailure) -> NodeError:
    """The ``NodeError`` the caller raises; the node's exception is its cause, with the traceback where it ran.

    That traceback is printed once: as the cause's, or, where it did not come
    along with the exception (it could not be pickled), as a note.
    """
    err = failure.error
    if isinstance(err, ValuePickleError):  # raised by the node's emit: it says what was emitted, and where to
        message = f"{err} It was emitted on input {failure.item}."
    else:
        message = f"Node {failure.node!r} raised {error_text(err)} on input {failure.item}."
    error = NodeError(failure.node, failure.item, message)
    if err is not None and err.__traceback__ is not None:
        without_stub_carets(err)
    else:
        error.add_note("Traceback where the node ran:\n" + failure.tb.rstrip())
    error.__cause__ = err
    return error


class _Round:
    """A submitted round: its place in the order, what it was built from, and its results once back."""

    __slots__ = ("chunk", "failure", "handle", "index", "origin", "results")

    def __init__(self, index: int, origin: int, chunk: Chunk | None) -> None:
        self.index, self.origin, self.chunk = index, origin, chunk
        self.handle: Any = None
        self.results: dict[int, Segment] | None = None
        self.failure: NodeFailure | None = None  # a node raised: reported when this round's turn comes

    @property
    def back(self) -> bool:
        return self.results is not None or self.failure is not None


def drain(run: Generator[None, None, Any]) -> Any:
    """Run a pausing run generator to its end; what it returns."""
    while True:
        try:
            next(run)
        except StopIteration as stop:
            return stop.value


def iter_execute(
    plan: Plan,
    backend: Backend,
    *,
    quiet: bool,
    collect: bool,
    partition_size: int | None,
    callback: Callable[[int, int | None], None] | None,
    snapshot_every: tuple[int | None, float | None] | None = DEFAULT_SNAPSHOT_EVERY,
    stream: list | None = None,
    reached: dict[str, Node] | None = None,
    checkpoint: CheckpointRun | None = None,
) -> Generator[None, None, tuple[PipelineResult, dict[str, Node]]]:
    """Run ``plan`` on an entered backend, round by round, pausing after each delivery.

    Up to ``backend.window`` rounds are in flight; whenever *any* of them is
    back the window is filled again, and finished rounds wait in a reorder
    buffer (at most ``window`` more) until every round before them is
    delivered, so one slow partition idles no worker and memory stays bounded.

    The generator pauses after each turn of the loop (at least twice a
    second): nothing more is pulled from the source until it is resumed, and
    closing it there cancels what is in flight. With ``stream`` (a list) the
    leaves' items are appended to it as ``(leaf, item)`` in the sequential
    order instead of being printed or kept, for the consumer to take at a pause.
    A run that ends early (an error, a cancel) puts the source as it got
    there in ``reached``, for the caller's object.
    A holder lost with its worker is restored from its last snapshot
    (``snapshot_every``; see :mod:`~pypiper_dask.runtime.recovery`).
    With ``checkpoint`` each cut is also written there, with the delivered
    position after every partition, and a run resumes from the cut it holds
    (see :mod:`~pypiper_dask.runtime.checkpoint`).
    """
    snap = plan.snapshot
    keep = checkpoint
    resume = None if keep is None else keep.record
    source = SourceReader(snap.node(snap.root) if resume is None else load_node(resume["source"]), to="to the workers")
    total = snap.info[snap.root].size if isinstance(snap.info[snap.root].size, int) else None
    names = TaskNames(plan)
    out = Output(plan, quiet=quiet, collect=collect, stream=stream)
    splicer = out.splicer
    hidden = HiddenStateReport()
    sizer = PartitionSizer(partition_size, backend.n_workers, total)
    done = 0
    index = delivered = 0
    mute_until = -1  # a resumed run: output through this many source items went out before
    if keep is not None and snapshot_every is None:
        snapshot_every = DEFAULT_SNAPSHOT_EVERY  # a checkpoint is written at cuts
    able = hasattr(backend, "restore") or keep is not None  # a checkpoint takes cuts on any backend
    recovery = Recovery(plan, snapshot_every, able=able, always=keep is not None)
    if resume is not None:
        source.emitted = resume["emitted"]
        index = delivered = resume["point"] + 1
        done, mute_until = resume["items"], resume["delivered"]
        out.values = {leaf: list(v) for leaf, v in resume["values"].items()} if out.collect else out.values
        out.counts = dict(resume["counts"])
        splicer.errors = list(resume["errors"])
        recovery.resume(resume["point"], resume["states"])
        backend.start(plan, names, resume["states"], index)
    else:
        backend.start(plan, names)
    if callback:
        callback(done, total)
    if keep is not None and resume is None:
        keep.cut(-1, 0, recovery.states, out, source)  # the start: a resume before the first cut starts here
    losses = LossCount()
    waiting: dict[int, _Round] = {}  # submitted and not delivered yet, by index
    # Rounds to submit again (lost with a worker, or replayed onto restored holders), in
    # index order, ahead of new source rounds and within the same window: a holder keeps
    # its last results for a bounded number of steps, so a replay of a thousand rounds sent
    # at once had steps collected after the holder forgot them.
    resend: deque[_Round] = deque()
    n_source: int | None = None  # the number of source rounds, once the source is done

    closed_at: dict[str, int] = {}  # node -> the first round it closed in

    def tasks_of(r: _Round, cut: bool = False) -> list[TaskSpec]:
        # A node that closed in an earlier round gets nothing in this one, wherever it runs.
        closed = frozenset(n for n, i in closed_at.items() if i < r.index)
        return round_tasks(
            plan,
            names,
            r.index,
            r.origin,
            r.chunk,
            n_source=n_source,
            attempt=losses.counts.get(r.index, 0),  # a round sent again gets keys of its own
            closed=closed,
            cut=cut,
        )

    def submit(r: _Round) -> None:
        r.handle = backend.submit(tasks_of(r, r.origin == 0 and recovery.cut(r.index, len(r.chunk or ()))))
        waiting[r.index] = r

    def poison_in(again: list[_Round]) -> PipelineError | None:
        """The node and item that kill every worker running them, probed (see :mod:`.poison`)."""
        backend.cancel()
        deaths = MAX_RESENDS + 1
        found = find_poison(backend, losses.suspects(again), deaths)
        if found is None and recovery.on and plan.seq_stages:
            rounds = [(x.index, tasks_of(x)) for x in again]
            found = find_poison_in_rounds(backend, recovery.states, recovery.point + 1, rounds, deaths)
        return found

    try:
        while True:
            in_flight = [r for r in waiting.values() if not r.back]
            failed = any(r.failure for r in waiting.values())
            # One small round per worker first: their cost per item sizes the
            # partitions that fill the window, and no worker waits meanwhile.
            window = backend.window if sizer.calibrated else backend.n_workers
            while len(in_flight) < window:
                # Sent again also after a node failed (the rounds before it must come back
                # first), and past the reorder buffer's bound when every round waiting is
                # after it: nothing can leave before it does.
                if resend and (len(waiting) < 2 * backend.window or resend[0].index < min(waiting, default=index)):
                    r = resend.popleft()
                    submit(r)
                    in_flight.append(r)
                    continue
                if (
                    len(waiting) >= 2 * backend.window
                    or failed
                    or n_source is not None
                    or sum(len(r.chunk or ()) for r in waiting.values()) >= MAX_ITEMS_OUT
                    or source.closed
                    or splicer.exhausted
                ):
                    break
                if keep is not None and keep.want_source:
                    keep.take_source(index, source.node, source.emitted)  # for a cut at the round before
                chunk = source.pull(sizer.next(source.emitted), sizer.source_seconds)
                if chunk.items or chunk.prints:
                    # The chunk stays here until its round is delivered: if the worker
                    # holding it dies, it is sent again (a source cannot be re-run).
                    r = _Round(index, 0, chunk)
                    submit(r)
                    in_flight.append(r)
                    if keep is not None and index in recovery.cuts:
                        keep.want_source = True
                    index += 1
                if source.cut_by_time:
                    break  # a live source: deliver what is back before pulling on
            if n_source is None and not failed and not resend and (source.closed or splicer.exhausted):
                # The input is complete: end each sequential stage's input, in preorder,
                # so a stage's flush feeds the stages below before theirs.
                n_source = index
                for stage in plan.seq_stages:
                    r = _Round(index, stage.id, None)
                    submit(r)
                    in_flight.append(r)
                    index += 1
            if not waiting and not resend:
                break
            # A live source is pulled again at once; else wait for a round to come back.
            pull_on = source.cut_by_time and n_source is None and not source.closed
            back = {id(h) for h in backend.wait([r.handle for r in in_flight], 0.01 if pull_on else 60.0)}
            returned = [r for r in in_flight if id(r.handle) in back]
            for r, outcome in zip(returned, backend.results_many([r.handle for r in returned]), strict=True):
                try:
                    if isinstance(outcome, BaseException):
                        raise outcome
                    r.results = outcome
                except NodeFailure as exc:
                    # Rounds finish in any order: the sequential run fails at the first failing
                    # item, so this one is raised once every round before it is delivered.
                    r.failure = exc
                    if r.index < delivered:  # a replay (see below) failed where the first run did not
                        raise
                    continue
                except DataLost as exc:
                    pending = [*waiting.values(), *resend]
                    if isinstance(exc, HolderLost):
                        # Every holder comes back from its last snapshot; the rounds since go
                        # again, those already delivered only to bring the state back.
                        lost = recovery.replay(exc, pending)
                    else:
                        # Every round not back yet goes again from its kept chunk; a sequential
                        # stage's holder answers a step it already ran with its first result.
                        lost = [x for x in waiting.values() if not x.back]
                    losses.lost(lost)
                    # Sent again too often without getting through: not a worker's bad luck.
                    if max(losses.counts[x.index] for x in lost) > MAX_RESENDS:
                        poison = poison_in(recovery.replay_all(pending))
                        if poison is not None:
                            raise poison from exc
                        if isinstance(exc, HolderLost):
                            raise exc.error from exc
                        raise
                    if isinstance(exc, HolderLost):
                        recovery.restore(backend, exc, len(lost))  # cancels everything in flight
                        waiting.clear()  # what is not sent again was from before the restore point
                        resend = deque(lost)
                    else:
                        backend.cancel([x.handle for x in lost if x.handle is not None])
                        for x in lost:
                            waiting.pop(x.index, None)
                        resend = deque(sorted([*lost, *resend], key=lambda x: x.index))
                    for x in lost:
                        x.handle = None
                    break
                recovery.saw(r.index, r.origin, r.results)
                if r.index < delivered:  # a replayed round: its output went out the first time
                    r.results, r.handle = {}, None  # back, and left in order below (see the window)
                    continue
                splicer.saw(r.results)
                for res in r.results.values():
                    if res.suspects:
                        hidden.saw(res.suspects)
                    for node in res.closed:
                        closed_at[node] = min(closed_at.get(node, r.index), r.index)
                if r.chunk is not None:
                    sizer.observe(len(r.chunk), r.results)
            # Replayed rounds leave in order too: while one lags, the rounds after it count
            # against the window, so a holder never runs more steps ahead than it keeps.
            while waiting and (first := min(waiting)) < delivered and waiting[first].back:
                del waiting[first]
            while delivered in waiting and waiting[delivered].back:
                r = waiting.pop(delivered)
                delivered += 1
                if r.failure is not None:
                    raise r.failure
                assert r.results is not None
                if r.origin == 0:
                    assert r.chunk is not None
                    # Resumed: what went out before the checkpoint's kill is computed, not printed.
                    out.mute = done + len(r.chunk) <= mute_until
                    splicer.round(r.results, r.chunk)
                    out.mute = False
                    done += len(r.chunk)
                    if callback:
                        callback(done, total)
                else:
                    splicer.flush(r.origin, r.results)
                recovery.delivered(r)
                if keep is not None and r.origin == 0:
                    if recovery.point == r.index:
                        keep.cut(r.index, done, recovery.states, out, source)
                    if not splicer.waiting:
                        if stream is not None:
                            yield  # a stream's consumer takes this partition's items before it is recorded
                        keep.delivered(done)
            yield  # a pause point: a stream's consumer takes what was delivered; a cancel lands here
        splicer.finish()
        if keep is not None and stream is None:
            keep.complete(out.result())
        yield
        if keep is not None and stream is not None:
            keep.complete(out.result())  # a stream's last items were taken at that pause
        assert n_source is not None
        final_states = recovery.final_states()
        if final_states is None:
            final_states = backend.final_states(n_source)
    except BaseException as exc:
        backend.cancel()
        if reached is not None:
            source.unbind()
            reached[snap.root] = source.node
        if isinstance(exc, NodeFailure):
            raise node_error(exc) from exc.error
        if isinstance(exc, NodeModuleError):  # a worker could not load a node: the message says why, its frames don't
            raise NodeModuleError(exc.module, str(exc)) from None
        raise
    if callback:
        callback(done, total)
    source.unbind()
    final = {name: cloudpickle.loads(blob) for name, blob in final_states.items()}
    final[snap.root] = source.node
    return out.result(), final
