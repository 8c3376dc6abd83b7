"""A sequential stage: one stateful, batched or ``BATCH_SIZE_ALL`` node fed every partition in order.

The node lives in a :class:`SeqHolder`: a plain object in the caller, a Dask
actor on a cluster. On a cluster the fused task above pushes each partition's
items to the holder, which runs the node on its own thread, in step order,
each step once. So a step never queues behind fused work on a busy worker,
and steps need not depend on each other (nothing of a step's output travels
to the next one). The caller collects a step's result from the holder
(:mod:`pypiper_dask.runtime.collect`) or, where other nodes read it, a task
named after the node does (:func:`run_seq`, seceding from its worker's
thread pool while it waits).
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ..model.node import Node, arm_setup_emits
from ..model.snapshot import load_node
from ..ordering import Marks, Segment, compact_ends, stripped
from .capture import capture_stdout
from .setups import set_up
from .snapshots import final_state, load_snapshot, take_snapshot
from .values import Items, NodeFailure, failed_above, freezing, retry_or_drop, stage_input

__all__ = [
    "SeqHolder",
    "SeqSpec",
    "SeqStep",
    "make_holder",
    "push_step",
    "run_flush",
    "run_seq",
    "run_state",
    "step_flush",
    "step_seq",
]


@dataclass(frozen=True)
class SeqSpec:
    """A sequential node as the compiler describes it to its holder."""

    name: str
    blob: bytes
    batch_size: int | float
    scope: str = ""  # whose per-process set-up it shares (see .setups)
    keyed: bool = False  # one instance per key (see .keyed)

    def __repr__(self) -> str:
        return f"<SeqSpec {self.name}>"


def make_holder(spec: SeqSpec, keep: int = 64, restore: bytes | None = None, start: int = 0, **shard: int) -> Any:
    """A holder for ``spec``: a :class:`SeqHolder`, or a keyed node's ``KeyedHolder`` (``shard``, ``shards``)."""
    if spec.keyed:
        from .keyed import KeyedHolder

        return KeyedHolder(spec, keep, restore, start, **shard)
    return SeqHolder(spec, keep, restore, start)


def _keyed(holder: Any) -> bool:
    """Is ``holder`` a keyed node's holders as its step tasks get them: ``(KeyRoute, holder, ...)``?"""
    return isinstance(holder, tuple)


class SeqHolder:
    """Holds one sequential node and feeds it partition after partition.

    ``keep``: how many of its latest steps' results it keeps, so that a step
    sent again (its partition was lost with another worker) gets the first
    result instead of feeding the node twice.

    ``restore``: a snapshot (:mod:`.snapshots`) to start from instead of the
    node as the spec has it, and ``start`` the number of the first step it
    runs then (the one after the step the snapshot was taken at).
    """

    #: Seconds a step's task waits for the items the fused task above pushed
    #: before it sends them itself (a push lost with its worker).
    collect_wait = 5.0

    def __init__(self, spec: SeqSpec, keep: int = 64, restore: bytes | None = None, start: int = 0) -> None:
        self.name = spec.name
        self.scope = spec.scope
        self.ready = False  # setup_worker() is called before its first step, where a failure is reported
        self.batch_size = spec.batch_size
        self.pending: list = []
        self.closed = False  # the node called close()
        self.upstream_closed = False  # a node above it closed: no more input
        if restore is None:
            self.node = load_node(spec.blob)
        else:
            self.node, self.pending, self.closed, self.upstream_closed = load_snapshot(restore)
        self._buf: list = []
        self._bind()
        arm_setup_emits(self.node)
        self._steps_from(start, keep)

    def _steps_from(self, start: int, keep: int) -> None:
        """Take steps (see :meth:`step`) from number ``start`` on, keeping the latest ``keep`` results."""
        self.keep = keep
        self._next = start
        self._calls: dict[int, Any] = {}
        self._pumping = False
        self._thread: ThreadPoolExecutor | None = None
        self._failed: Exception | None = None
        self._arrivals: dict[int, Any] = {}  # step -> asyncio.Event, for a collect waiting on a push
        self._logs: dict[int, Any] = {}  # step -> what came with its push for the caller (see step)

    def _bind(self) -> None:
        def close() -> None:
            self.closed = True

        # On a cluster what it emits leaves its actor: it must pickle (also in the caller, alike).
        self.node.emit = freezing(self._buf.append, self.node, to="out of its actor")
        self.node.close = close

    def _call(self, data: Any, seg: Segment, marks: Marks) -> None:
        was_closed = self.closed
        try:
            self.node.run(data)
        except Exception as exc:
            retry_or_drop(self.node, self.name, data, exc, self._buf.clear, seg)
        if self._buf:
            seg.outs[0].extend(self._buf)
            self._buf.clear()
        if self.closed and not was_closed:
            marks.closed(self.name)

    def process(self, items: Any, upstream_closed: bool = False, snap: bool = False) -> Segment:
        """Feed one partition's items, in order; each input item is one unit of the result.

        ``snap``: put a snapshot of the state after this step in ``seg.snap``.
        """
        seg = Segment(1)
        ends: list[int] = []
        seg.ends = ends
        self._set_up()
        if self.upstream_closed or self.closed:
            if snap:
                seg.snap = self.snapshot()
            return seg  # the caller skips these items too
        self._bind()  # its values are checked again at the start of every partition
        out = seg.outs[0]
        marks = Marks(seg, lambda: (len(ends), len(out)), lambda: self.name)
        with capture_stdout(marks.printed):
            start = time.perf_counter()
            try:
                self._feed(items, seg, marks, ends)
            except NodeFailure as failed:
                # What this step produced before the failing call goes with the failure.
                seg.ends = compact_ends(ends)
                seg.n_in = len(items)
                raise failed.detached().with_partial(seg, own=True) from None
            seg.seconds = time.perf_counter() - start
        if upstream_closed:
            self.upstream_closed = True
        seg.ends = compact_ends(ends)
        seg.n_in = len(items)
        if snap:
            seg.snap = self.snapshot()
        return seg

    def _feed(self, items: Any, seg: Segment, marks: Marks, ends: list[int]) -> None:
        """Call the node on ``items``, whole batches at a time; ``ends``: values out after each input unit."""
        out, pending, k = seg.outs[0], self.pending, self.batch_size
        if k == 1:
            for value in items:
                self._call(value, seg, marks)
                ends.append(len(out))
                if self.closed:
                    break
        else:
            # Whole slices: only the item that completes a batch has events.
            i, n = 0, len(items)
            while i < n and not self.closed:
                part = items[i:] if k == Node.BATCH_SIZE_ALL else items[i : i + int(k) - len(pending)]
                i += len(part)
                pending.extend(part)
                if len(pending) < k:  # also every BATCH_SIZE_ALL slice: k is infinite
                    ends.extend(itertools.repeat(len(out), len(part)))
                    continue
                ends.extend(itertools.repeat(len(out), len(part) - 1))
                batch = tuple(pending)
                pending.clear()
                self._call(batch, seg, marks)
                ends.append(len(out))

    def flush(self, snap: bool = False) -> Segment:
        """The input has ended: run what is still pending (the last batch); one unit."""
        seg = Segment(1)
        out = seg.outs[0]
        self._set_up()
        if self.pending and not self.closed:
            data = list(self.pending) if self.batch_size == Node.BATCH_SIZE_ALL else tuple(self.pending)
            self.pending.clear()
            marks = Marks(seg, lambda: (0, len(out)), lambda: self.name)
            with capture_stdout(marks.printed):
                try:
                    self._call(data, seg, marks)
                except NodeFailure as failed:
                    seg.ends = []  # the one unit is the failing call: its prints, no values
                    raise failed.detached().with_partial(seg, own=True) from None
        seg.ends = [len(out)]
        if snap:
            seg.snap = self.snapshot()
        return seg

    def _set_up(self) -> None:
        if not self.ready:
            self.ready = True
            set_up(self.node, self.scope)  # raises the node's failure

    def state(self) -> bytes:
        """The node as it is now, pickled without the engine's bindings (see :func:`.snapshots.final_state`)."""
        with self._unbound():
            return final_state(self.node)  # its code keeps its file names

    def snapshot(self) -> Any:
        """The holder's state now (bytes), or why it cannot be pickled (a ``SnapshotError``)."""
        with self._unbound():
            return take_snapshot(self.name, self.node, self.pending, self.closed, self.upstream_closed)

    @contextlib.contextmanager
    def _unbound(self) -> Iterator[None]:
        """The node without the engine's ``emit``/``close`` (they are not its state), bound again after."""
        for attr in ("emit", "close"):
            self.node.__dict__.pop(attr, None)
        try:
            yield
        finally:
            self._bind()

    def fail(self, failure: NodeFailure) -> Segment:
        """A step whose input is a node's failure above: the holder is called no more.

        Unless its input had ended already (a node above closed): it is still
        flushed then, as a sequential run flushed it at that close.
        """
        if self.upstream_closed or self.closed:
            return Segment(1)
        raise failure

    def process_failed(self, items: Any, upstream_closed: bool, failure: NodeFailure) -> Segment:
        """A step whose input is what a stage above produced before ``failure``: fed, then the failure passed on.

        Raises the failure carrying this step's segment (or this node's own
        failure, if it raised first); the holder is called no more.
        """
        seg = self.process(items, upstream_closed)
        raise failure.with_partial(seg, own=False)

    async def step(self, number: int, method: str, *args: Any, log: Any = None, with_log: bool = False) -> Any:
        """Run ``method(*args)`` as this holder's step ``number``: in number order, each once.

        Called over the network (an actor method): calls may arrive in any
        order, and the same step may arrive twice. Each runs on the holder's
        own thread once every step before it has run; a repeated step gets
        the first call's result.

        ``log``: with a push, what the caller needs besides the step's result
        (the pushing fused task's segment without the items; a keyed node's
        holder also gets where its items were in the partition); a
        ``"collect"`` ``with_log`` answers ``(result, log)``, so the caller
        can collect a step without a task of its own and without fetching
        that task's items (see :mod:`pypiper_dask.runtime.collect`).
        """
        import asyncio

        loop = asyncio.get_running_loop()
        if number < self._next and number not in self._calls:
            raise RuntimeError(f"Node {self.name!r}: step {number} was asked for again after it was forgotten.")
        if method == "collect":  # the step's items were pushed (see push_step): wait for them a while
            if number not in self._calls:
                arrived = self._arrivals.setdefault(number, asyncio.Event())
                try:
                    await asyncio.wait_for(arrived.wait(), self.collect_wait)
                except (TimeoutError, asyncio.TimeoutError):
                    return None  # not here: the caller sends them itself
                finally:
                    self._arrivals.pop(number, None)
            result = await asyncio.shield(self._calls[number][0])
            return (result, self._logs.get(number)) if with_log else result
        if number not in self._calls:
            args = tuple(a.items if isinstance(a, Items) else a for a in args)
            self._calls[number] = (loop.create_future(), method, args)
            if log is not None:
                self._logs[number] = log
            if number in self._arrivals:
                self._arrivals[number].set()
            if not self._pumping:
                await self._pump(loop)
        return await asyncio.shield(self._calls[number][0])

    async def _pump(self, loop: Any) -> None:
        """Run the registered steps that are next in order, one at a time."""
        if self._thread is None:
            self._thread = ThreadPoolExecutor(1, thread_name_prefix=f"pypiper-{self.name}")
        self._pumping = True
        try:
            while self._next in self._calls and not self._calls[self._next][0].done():
                future, method, args = self._calls[self._next]
                if self._failed is not None:  # the node raised: it is called no more
                    future.set_exception(self._failed)
                else:
                    try:
                        future.set_result(await loop.run_in_executor(self._thread, getattr(self, method), *args))
                    except Exception as exc:
                        if isinstance(exc, NodeFailure):
                            exc.detached()  # it goes back over the network
                        if not isinstance(exc, NodeFailure) or exc.partial is None:
                            self._failed = exc
                        elif exc.partial.failure is not None:  # its own node's: the steps after it fail with it
                            self._failed = NodeFailure(exc.node, exc.item, exc.error, exc.tb)
                        # else a failure above, passed on after this step's items: it may still be flushed
                        future.set_exception(exc)
                self._next += 1
                for old in [n for n in self._calls if n < self._next - self.keep]:
                    del self._calls[old]
                    self._logs.pop(old, None)
        finally:
            self._pumping = False


class HolderAt:
    """A holder that is a Dask actor, as tasks get it: its worker's address and its key.

    Not the actor's future nor its :class:`distributed.Actor` proxy: a task
    with either among its arguments depends on the actor, and the scheduler
    places it on the holder's worker. A task makes its own proxy from this.
    """

    __slots__ = ("address", "key")

    def __init__(self, address: str, key: Any) -> None:
        self.address, self.key = address, key

    def __reduce__(self):
        return (HolderAt, (self.address, self.key))

    def __repr__(self) -> str:
        return f"<holder {self.key!r} at {self.address}>"

    def proxy(self) -> Any:
        from distributed.actor import Actor

        return Actor(SeqHolder, self.address, self.key)


def _actor(holder: Any) -> Any:
    """What a task calls a holder's methods on: the holder itself where it lives in this worker, else a proxy."""
    if not isinstance(holder, HolderAt):
        return holder
    here = _HolderHere.find(holder)
    return here if here is not None else holder.proxy()


class _HolderHere:
    """A holder that is an actor of the worker this task runs in, called without the network.

    distributed sends an actor call from a task to its own worker out over
    TCP and back (every step's collect does, on the holder's worker).
    Measured with trivial nodes at 2 workers, the workers' CPU a round:
    1.4 ms without a stateful node, 4.6-5.0 ms with one, 4.0-4.5 ms with
    this (issue 18). Here the call runs on the worker's event loop as
    ``actor_execute`` runs it, and its
    arguments and answer are copied (pickled) as the call's messages would
    have copied them: the holder keeps each step's answer for a step sent
    again, and the task changes what it gets back.
    """

    __slots__ = ("actor", "loop")

    def __init__(self, actor: Any, loop: Any) -> None:
        self.actor, self.loop = actor, loop

    @classmethod
    def find(cls, holder: HolderAt) -> _HolderHere | None:
        from distributed import get_worker

        try:
            worker = get_worker()
        except ValueError:  # not in a worker's task
            return None
        actor = worker.state.actors.get(holder.key) if worker.address == holder.address else None
        return None if actor is None else cls(actor, worker.loop.asyncio_loop)  # type: ignore[attr-defined]

    def step(self, *args: Any, **kwargs: Any) -> _Answer:
        """The holder's :meth:`SeqHolder.step` (a coroutine) on its worker's event loop; its answer to come."""
        import asyncio

        args, kwargs = _sent((args, kwargs))
        return _Answer(asyncio.run_coroutine_threadsafe(self.actor.step(*args, **kwargs), self.loop))


class _Answer:
    """A call of :class:`_HolderHere`, answered as an actor's future is: ``result(timeout)``, a copy."""

    __slots__ = ("future",)

    def __init__(self, future: Any) -> None:
        self.future = future

    def result(self, timeout: float | None = None) -> Any:
        import concurrent.futures

        try:
            value = self.future.result(timeout)
        except concurrent.futures.TimeoutError:  # not the built-in one before Python 3.11
            raise TimeoutError(f"no answer in {timeout} s") from None
        except Exception as exc:
            try:
                copy = _sent(exc)
            except Exception:  # it cannot be pickled: raised as it is
                copy = exc
            raise copy from None
        return _sent(value)


def _sent(value: Any) -> Any:
    """``value`` as it arrives from another process: pickled and unpickled as distributed sends it."""
    from distributed.protocol import pickle

    return pickle.loads(pickle.dumps(value))


def push_step(
    holder: Any,
    number: int,
    items: list,
    upstream_closed: bool,
    snap: bool = False,
    node: str | None = None,
    log: Segment | None = None,
) -> bool:
    """Hand a partition to a holder that is an actor as its step ``number``, not waiting for it; whether it did.

    The fused task above calls this as it ends; the step's result is
    collected by the caller or by the step's own task, which sends the items
    itself if this message never arrived. ``log``: the fused task's segment
    without its items, kept by the holder for the caller (see :meth:`SeqHolder.step`).
    ``node``: the holder's node, named if the items cannot be pickled.
    ``holder`` is ``None`` while its actor is still being made, and a
    :class:`SeqHolder` runs in this process: nothing is pushed to either. A
    keyed node's holders (``(KeyRoute, HolderAt, ...)``) each get their share.
    """
    if isinstance(holder, SeqHolder):
        return False
    if _keyed(holder):
        from .keyed import push_keyed

        push_keyed(holder, number, items, upstream_closed, snap, log)  # (each share checked as it is pickled)
        return True
    sent = Items(items, node)  # a value that cannot be pickled fails here, naming its node, pushed or not
    if holder is None:
        return False
    _actor(holder).step(number, "process", sent, upstream_closed, snap, log=log)
    return True


_task = threading.local()  # .seceded: this thread left its worker's pool (it runs no other task after)


def _remote(holder: Any, number: int, method: str, *args: Any) -> Any:
    """Run a step on a holder that is a Dask actor, and wait for it.

    The holder runs it on its own thread; usually it already has (the fused
    task above pushed the items), so the answer is quick. If not, this task
    leaves its worker's thread pool while it waits, so the slot goes to fused work.
    """
    import asyncio

    from distributed import secede

    answer = _actor(holder).step(number, method, *args)
    try:
        return answer.result(timeout=0.01)
    except (TimeoutError, asyncio.TimeoutError):  # one class from Python 3.11 on
        if not getattr(_task, "seceded", False):  # seceding twice raises KeyError in distributed
            secede()
            _task.seceded = True
        return answer.result()


def run_seq(
    holder: Any, number: int, upstream: Segment | NodeFailure, sink: int, carry: int | None = None, snap: bool = False
) -> Segment | NodeFailure:
    """Feed one partition to a sequential stage (its step ``number``).

    ``carry``: the id of the fused stage above, when the caller does not fetch
    that stage's result (all its outputs cross into sequential stages) and
    this task brings back its log instead. ``snap``: the step's result
    carries a snapshot of the state after it (``seg.snap``). A failure (this
    node's, or one from above) is returned in place of the segment (see
    :func:`~.fused.run_fused`).
    """
    above = failed_above(upstream)
    if above is not None and above.partial is None:
        if _keyed(holder):
            for shard in holder[1:]:
                with contextlib.suppress(NodeFailure):
                    _remote(shard, number, "fail", above)
        elif not isinstance(holder, SeqHolder):
            # Take the step's place in the holder's order, failed: the steps after it
            # end at once instead of waiting for this one for ever.
            with contextlib.suppress(NodeFailure):
                _remote(holder, number, "fail", above)
        return above
    source = upstream if above is None else above.partial
    assert isinstance(source, Segment)  # a fused stage's result, or what it produced before a failure
    items, _, _ = stage_input(source, sink)
    closed = sink in source.blocked
    try:
        if above is not None:
            # What came before the failure above goes through this node too, as in a sequential run.
            bare = NodeFailure(above.node, above.item, above.error, above.tb)
            if isinstance(holder, SeqHolder):
                holder.process_failed(items, closed, bare)
            elif _keyed(holder):
                from .keyed import keyed_step

                # A keyed node's own failure comes back without its partial output (none is then delivered).
                raise bare.with_partial(keyed_step(holder[0], holder[1:], number, items, closed, False), own=False)
            else:
                _remote(holder, number, "process_failed", Items(items), closed, bare)
            raise AssertionError("process_failed returned")  # it always raises
        if isinstance(holder, SeqHolder):  # in the caller
            seg = holder.process(items, closed, snap)
        elif _keyed(holder):
            from .keyed import keyed_step

            seg = keyed_step(holder[0], holder[1:], number, items, closed, snap)
        else:
            # The fused task above pushed these items to the holder as it ended: collect the
            # step's result without sending them again, unless the push never arrived (or,
            # the holder not made yet when that task was sent, was never made).
            pushed = _remote(holder, number, "collect") if sink in source.pushed else None
            seg = pushed if pushed is not None else _remote(holder, number, "process", Items(items), closed, snap)
    except NodeFailure as failed:
        if carry is not None and failed.partial is not None:
            failed.partial.carried = (carry, stripped(source))
        return failed.detached()
    if carry is not None:
        seg.carried = (carry, stripped(source))  # (``upstream`` itself: nothing failed above)
    return seg


def run_flush(holder: Any, number: int, snap: bool = False) -> Segment | NodeFailure:
    """End a sequential stage's input (see :meth:`SeqHolder.flush`); a failure is returned, as by :func:`run_seq`."""
    try:
        if isinstance(holder, SeqHolder):
            return holder.flush(snap)
        if _keyed(holder):
            from .keyed import keyed_flush

            return keyed_flush(holder[1:], number, snap)
        return _remote(holder, number, "flush", snap)
    except NodeFailure as failed:
        return failed.detached()


def run_state(holder: Any, number: int) -> bytes:
    """The sequential node's final state, pickled, after its last step."""
    if isinstance(holder, SeqHolder):
        return holder.state()
    if _keyed(holder):
        from .keyed import keyed_state

        return keyed_state(holder[1:], number)
    return _remote(holder, number, "state")


# -- Pipeline.to_dask(): the holder carried through a chain of tasks -----------------------


class SeqStep:
    """A sequential stage's holder after one step, and what the step produced (or its failure)."""

    __slots__ = ("holder", "segment")

    def __init__(self, holder: SeqHolder, segment: Segment | NodeFailure) -> None:
        self.holder, self.segment = holder, segment


def step_seq(
    prev: SeqStep | SeqSpec, upstream: Segment, sink: int, carry: int | None = None, snap: bool = False
) -> SeqStep:
    """Feed one partition to the holder the previous step left (or a new one)."""
    holder = prev.holder if isinstance(prev, SeqStep) else make_holder(prev)
    return SeqStep(holder, run_seq(holder, 0, upstream, sink, carry))


def step_flush(prev: SeqStep | SeqSpec) -> SeqStep:
    """End the input of the holder the previous step left."""
    holder = prev.holder if isinstance(prev, SeqStep) else make_holder(prev)
    return SeqStep(holder, run_flush(holder, 0))
