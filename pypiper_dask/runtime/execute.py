"""The run loop's driver: carries out :class:`~pypiper_dask.runtime.loop.RunState`'s actions on a backend.

The rules (window, order, resend, replay) live in :mod:`.loop`, which does no
I/O; this module pulls the source, builds and submits tasks, waits, and
delivers output, checkpoint positions and progress.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any, cast

import cloudpickle

from ..compiler.plan import Plan
from ..compiler.tasks import TaskNames, TaskSpec, round_tasks
from ..errors import NodeError, NodeModuleError, ValuePickleError
from ..log import HiddenStateReport
from ..model.node import Node
from ..model.snapshot import load_node
from ..worker import NodeFailure
from ..worker.values import error_text
from .backends import Backend, InProcessBackend, TaskBackend
from .checkpoint import CheckpointRun
from .inprocess import set_up_here
from .loop import Cancel, Deliver, Fail, Observe, Probe, Restore, Round, RunState, Submit
from .output import Output, PipelineResult
from .poison import find_poison, find_poison_in_rounds
from .recovery import DEFAULT_SNAPSHOT_EVERY, Recovery
from .source import PartitionSizer, SourceReader
from .tracebacks import without_stub_carets

#: How many times partitions lost with a worker are sent again before giving up.
MAX_RESENDS = 5

#: Source items out at once (cut, not yet delivered), whatever the window: the caller
#: keeps each partition until it is delivered, and holds finished ones in order.
MAX_ITEMS_OUT = 300_000

__all__ = ["drain", "iter_execute", "node_error", "run_plan"]

Run = Generator[None, None, tuple[PipelineResult, dict[str, Node]]]


def node_error(failure: NodeFailure, partial: PipelineResult | None = None) -> NodeError:
    """The ``NodeError`` the caller raises; the node's exception is its cause, with the traceback where it ran.

    That traceback is printed once: as the cause's, or, where it did not come
    along with the exception (it could not be pickled), as a note.
    ``partial``: what the run delivered before the failure (the error's ``partial``).
    """
    err = failure.error
    if isinstance(err, ValuePickleError):  # raised by the node's emit: it says what was emitted, and where to
        message = f"{err} It was emitted on input {failure.item}."
    else:
        message = f"Node {failure.node!r} raised {error_text(err)} on input {failure.item}."
    error = NodeError(failure.node, failure.item, message)
    error.partial = partial
    if err is not None and err.__traceback__ is not None:
        without_stub_carets(err)
    else:
        error.add_note("Traceback where the node ran:\n" + failure.tb.rstrip())
    error.__cause__ = err
    return error


def drain(run: Generator[None, None, Any]) -> Any:
    """Run a pausing run generator to its end; what it returns."""
    while True:
        try:
            next(run)
        except StopIteration as stop:
            return stop.value


def run_plan(backend: Backend, plan: Plan, nodes: dict[str, Node] | None = None, **options: Any) -> Run:
    """Run ``plan`` on an entered ``backend``, pausing after each delivery; the result and the nodes as they ended.

    In the caller's process (:class:`InProcessBackend`) the nodes ``nodes``
    themselves run, depth first; elsewhere copies travel in the plan's snapshot.
    """
    if isinstance(backend, InProcessBackend):
        from .inprocess import iter_in_process

        for option in ("partition_size", "snapshot_every", "reached", "ordered"):
            options.pop(option, None)  # nothing is cut into partitions, nor lost; the caller's own nodes
        if nodes is None:
            nodes = {name: plan.snapshot.node(name) for name in plan.snapshot.order}
        try:
            result = yield from iter_in_process(plan.snapshot, nodes, **options)
        except NodeFailure as failure:
            raise node_error(failure) from failure.error
        snap = plan.snapshot
        return result, {n: nodes[n] for n in snap.order if n == snap.root or not snap.info[n].stateless}
    # Every backend but the in-process one runs tasks.
    return (yield from iter_execute(plan, cast(TaskBackend, backend), **options))


def iter_execute(
    plan: Plan,
    backend: TaskBackend,
    *,
    quiet: bool,
    collect: bool,
    partition_size: int | None,
    callback: Callable[[int, int | None], None] | None,
    snapshot_every: tuple[int | None, float | None] | None = DEFAULT_SNAPSHOT_EVERY,
    stream: list | None = None,
    reached: dict[str, Node] | None = None,
    checkpoint: CheckpointRun | None = None,
    ordered: bool = True,
) -> Run:
    """Run ``plan`` on an entered task backend, round by round, pausing after each delivery.

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
    ``ordered=False``: each round is delivered as soon as it is back (see
    :mod:`.loop`); not with ``checkpoint``.
    """
    driver = _Driver(
        plan, backend, quiet, collect, partition_size, callback, snapshot_every, stream, checkpoint, ordered
    )
    try:
        yield from driver.run()
    except BaseException as exc:
        backend.cancel()
        if reached is not None:
            driver.source.unbind()
            reached[plan.snapshot.root] = driver.source.node
        if isinstance(exc, NodeFailure):
            raise node_error(exc, driver.out.result()) from exc.error
        if isinstance(exc, NodeError) and exc.partial is None:  # the source's, raised where it runs
            exc.partial = driver.out.result()
        if isinstance(exc, NodeModuleError):  # a worker could not load a node: the message says why, its frames don't
            raise NodeModuleError(exc.module, str(exc)) from None
        raise
    return driver.finish()


class _Driver:
    """One run on a task backend: the state machine's actions carried out, and the output."""

    def __init__(
        self,
        plan: Plan,
        backend: TaskBackend,
        quiet: bool,
        collect: bool,
        partition_size: int | None,
        callback: Callable[[int, int | None], None] | None,
        snapshot_every: tuple[int | None, float | None] | None,
        stream: list | None,
        keep: CheckpointRun | None,
        ordered: bool = True,
    ) -> None:
        snap = plan.snapshot
        self.plan, self.backend, self.callback, self.stream, self.keep = plan, backend, callback, stream, keep
        resume = None if keep is None else keep.record
        node = snap.node(snap.root) if resume is None else load_node(resume.source)
        # On its own thread, so that a live source's wait holds back nothing it emitted; in this
        # one with a checkpoint, whose cuts take the source as it is after a partition's last call.
        self.source = SourceReader(node, to="to the workers", threaded=keep is None)
        set_up_here(node, plan.scope)  # the source runs here: its setup_worker() too
        self.total = snap.info[snap.root].size if isinstance(snap.info[snap.root].size, int) else None
        self.names = TaskNames(plan)
        self.out = Output(plan, quiet=quiet, collect=collect, stream=stream)
        self.hidden = HiddenStateReport()
        start = 0 if resume is None else resume.point + 1
        # Started first: it waits for a worker if the cluster has none yet, and then knows how many.
        backend.start(plan, self.names, None if resume is None else resume.states, start)
        keyed = any(s.keyed for s in plan.seq_stages)
        self.sizer = PartitionSizer(partition_size, backend.n_workers, self.total, backend.n_workers if keyed else 1)
        self.done = 0  # source items delivered
        self.mute_until = -1  # a resumed run: output through this many source items went out before
        if keep is not None and snapshot_every is None:
            snapshot_every = DEFAULT_SNAPSHOT_EVERY  # a checkpoint is written at cuts
        # A checkpoint takes cuts on any backend; recovery only where holders can be re-created.
        able = backend.can_restore or keep is not None
        self.recovery = Recovery(plan, snapshot_every, able=able, always=keep is not None)
        self.state = RunState(
            self.recovery,
            window=backend.window,
            n_workers=backend.n_workers,
            seq_stages=tuple(s.id for s in plan.seq_stages),
            start=start,
            max_items_out=MAX_ITEMS_OUT,
            max_resends=MAX_RESENDS,
            ordered=ordered or keep is not None,  # a checkpoint's position counts items in order
        )
        if keep is not None and resume is not None:
            self.source.emitted = resume.emitted
            self.done, self.mute_until = resume.items, keep.delivered_before
            if self.out.collect:
                self.out.values = {leaf: list(v) for leaf, v in resume.values.items()}
            self.out.counts = dict(resume.counts)
            self.out.splicer.errors = list(resume.errors)
            self.recovery.resume(resume.point, resume.states)

    def run(self) -> Generator[None, None, None]:
        """Rounds out, back and delivered until the input ends and every round is delivered."""
        state, source, out, keep = self.state, self.source, self.out, self.keep
        if self.callback:
            self.callback(self.done, self.total)
        if keep is not None and keep.record is None:
            keep.cut(-1, 0, self.recovery.states, out, source)  # the start: a resume before the first cut starts here
        while not state.finished:
            self._fill()
            if source.closed or out.splicer.exhausted:
                for flush in state.input_ended():
                    self._submit(flush)
            if state.finished:
                break
            self._collect()
            for action in state.deliverable():
                if isinstance(action, Fail):
                    self._fail(None, action.error)
                    continue
                assert isinstance(action, Deliver)
                if action.round.failure is not None:
                    self._fail(action.round, action.round.failure)
                    continue
                yield from self._deliver(action.round)
            yield  # a pause point: a stream's consumer takes what was delivered; a cancel lands here
        if source.failed is not None:
            # Every item before the source's failing call is delivered; its input did not end.
            out.splicer.finish(flushes=False)
            raise source.failed
        out.splicer.finish()
        if keep is not None and self.stream is None:
            keep.complete(out.result())
        yield
        if keep is not None and self.stream is not None:
            keep.complete(out.result())  # a stream's last items were taken at that pause

    def finish(self) -> tuple[PipelineResult, dict[str, Node]]:
        """The result, and the source and stateful nodes as they ended."""
        assert self.state.n_source is not None
        final_states = self.recovery.final_states()
        if final_states is None:
            final_states = self.backend.final_states(self.state.n_source)
        if self.callback:
            self.callback(self.done, self.total)
        self.source.unbind()
        final = {name: cloudpickle.loads(blob) for name, blob in final_states.items()}
        final[self.plan.snapshot.root] = self.source.node
        return self.out.result(), final

    # -- the actions -----------------------------------------------------------------

    def _fill(self) -> None:
        """Submit rounds to send again, then new source rounds, while the window allows."""
        state, source, sizer, keep = self.state, self.source, self.sizer, self.keep
        while True:
            again = state.resubmit(sizer.calibrated)
            if again is not None:
                self._submit(again)
                continue
            if source.closed or self.out.splicer.exhausted or not state.may_pull(sizer.calibrated):
                return
            if keep is not None and keep.want_source:
                keep.take_source(state.index, source.node, source.emitted)  # for a cut at the round before
            want = sizer.next(source.emitted)
            if source.emitted < self.mute_until:
                # Resumed: a partition ends where the output that went out before ends, so
                # the seam repeats only what was printed after the last position was written.
                want = min(want, self.mute_until - source.emitted)
            pulled = state.pulled(source.pull(want, sizer.source_seconds))
            if pulled is not None:
                # The chunk stays here until its round is delivered: if the worker holding
                # it dies, it is sent again (a source cannot be re-run).
                self._submit(pulled)
                if keep is not None and pulled.round.index in self.recovery.cuts:
                    keep.want_source = True
            if source.cut_by_time:
                return  # a live source: deliver what is back before pulling on

    def _tasks(self, r: Round, cut: bool = False) -> list[TaskSpec]:
        return round_tasks(
            self.plan,
            self.names,
            r.index,
            r.origin,
            r.chunk,
            n_source=self.state.n_source,
            attempt=self.state.attempt(r),  # a round sent again gets keys of its own
            closed=self.state.closed_before(r),  # a node that closed gets nothing more, wherever it runs
            cut=cut,
        )

    def _submit(self, action: Submit) -> None:
        action.round.handle = self.backend.submit(self._tasks(action.round, action.cut))

    def _collect(self) -> None:
        """Wait for rounds to come back, and feed what they came back with to the state."""
        state, source = self.state, self.source
        out = state.out
        # A live source is pulled again at once; else wait for a round to come back.
        pull_on = source.cut_by_time and state.n_source is None and not source.closed
        back = {id(h) for h in self.backend.wait([r.handle for r in out], 0.01 if pull_on else 60.0)}
        returned = [r for r in out if id(r.handle) in back]
        outcomes = self.backend.results_many([r.handle for r in returned])
        for r, outcome in zip(returned, outcomes, strict=True):
            for action in state.returned(r, outcome):
                self._act(action)

    def _act(self, action: Any) -> None:
        if isinstance(action, Submit):  # flushes sent at a node's failure
            self._submit(action)
        elif isinstance(action, Observe):
            r = action.round
            assert r.results is not None
            self.out.splicer.saw(r.results)
            for res in r.results.values():
                if res.suspects:
                    self.hidden.saw(res.suspects)
            if r.chunk is not None:
                self.sizer.observe(len(r.chunk), r.results)
        elif isinstance(action, Cancel):
            self.backend.cancel(action.handles)
        elif isinstance(action, Restore):
            self.recovery.restore(self.backend, action.lost, action.n_rounds)  # cancels everything in flight
        elif isinstance(action, Probe):
            raise self._probe(action) from action.cause
        elif isinstance(action, Fail):
            raise action.error
        else:
            raise AssertionError(f"not an action of the collect step: {action!r}")

    def _probe(self, action: Probe) -> BaseException:
        """The node and item that kill every worker running them (see :mod:`.poison`), else the loss's error."""
        deaths = MAX_RESENDS + 1
        found = find_poison(self.backend, self.state.suspects(action.rounds), deaths)
        if found is None and self.recovery.on and self.plan.seq_stages:
            rounds = [(r.index, self._tasks(r)) for r in action.rounds]
            found = find_poison_in_rounds(self.backend, self.recovery.states, self.recovery.point + 1, rounds, deaths)
        return found if found is not None else action.error

    def _fail(self, r: Round | None, failure: BaseException) -> None:
        """A node failed in round ``r``: deliver what came before the failing call (if known), then raise.

        Unless the walk of the rounds before (and of ``r``'s output) closed every
        path first: a sequential run stopped there and never made the failing
        call, so the run goes on as if ``r`` were delivered.
        """
        splicer = self.out.splicer
        try:
            if r is not None and r.results:
                if r.origin == 0:
                    splicer.round(r.results, r.chunk)  # raises the failure where it is reached
                else:
                    splicer.flush(r.origin, r.results)
            splicer.finish()  # no flush comes now: what waited for one goes out (r's flush is walked here)
        except NodeFailure:
            if self.keep is not None and self.stream is None and r is not None and r.origin == 0:
                # Printed: a resume repeats no more than the partition that straddles this position.
                self.keep.delivered(self.done + splicer.units_out)
            raise
        if not splicer.stopped:
            raise failure
        if r is not None:
            r.results = {}
            self.state.was_delivered(r)

    def _deliver(self, r: Round) -> Generator[None, None, None]:
        """Print, yield or keep ``r``'s output; record it for replay, and in the checkpoint."""
        out, keep = self.out, self.keep
        assert r.results is not None
        if r.origin == 0:
            assert r.chunk is not None
            # Resumed: what went out before the checkpoint's kill is computed, not printed.
            out.mute = self.done + len(r.chunk) <= self.mute_until
            out.splicer.round(r.results, r.chunk)
            out.mute = False
            self.done += len(r.chunk)
            if self.callback:
                self.callback(self.done, self.total)
        else:
            out.splicer.flush(r.origin, r.results)
        is_point = self.state.was_delivered(r)
        if keep is None or r.origin != 0:
            return
        if self.stream is not None:
            # "Delivered" is what the consumer took: it takes this partition's items at this
            # pause, and a cut or position written before it would skip them if it left here.
            yield
        if is_point:
            keep.cut(r.index, self.done, self.recovery.states, out, self.source)
        if not out.splicer.waiting:
            keep.delivered(self.done)
