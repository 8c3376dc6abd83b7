"""Sequential stages that survive their worker: consistent cuts, and replay from the last one.

Every so often (``snapshot_every``: source items and seconds) the run loop
makes a source round a *cut*: each sequential stage's holder snapshots its
state right after that round's step, and the snapshot comes back to the
caller with the step's result (:mod:`pypiper_dask.worker.snapshots`). A cut
becomes the *restore point* once its round is delivered: every round before
it is delivered too, and every stage's snapshot has arrived.

The caller keeps the rounds delivered since the restore point (their source
partitions: a source cannot be re-run). When the worker of a holder dies,
every holder is created again on a live worker from the restore point's
snapshots, and the rounds since are sent again in order: those already
delivered only to bring the stages back to where they were (their output and
prints are dropped, not delivered twice), the others as usual. The nodes'
state and output are therefore exactly those of an undisturbed run; the
``run`` calls since the restore point happen again (side effects: at least
once).

Before the first cut the restore point is the start: the holders as the plan
has them. A stage whose state cannot be pickled is reported once; the run
goes on without cuts and keeps nothing for replay, and a lost holder is a
:class:`~pypiper_dask.errors.StateLostError` as before.
"""

from __future__ import annotations

import time
from typing import Any

from ..compiler.plan import Plan
from ..errors import StateLostError
from ..log import logger
from ..ordering import Segment
from ..worker.snapshots import SnapshotError, node_blob

__all__ = ["DEFAULT_SNAPSHOT_EVERY", "Recovery", "cut_interval"]

#: ``snapshot_every`` when neither the pipeline nor a node sets it: a cut at least every
#: this many source items and this many seconds, whichever comes first (BENCHMARKS.md
#: measures what it costs on W4).
#: 250_000 rather than 50_000: a BATCH_SIZE_ALL node's state is everything it holds, and
#: snapshotting it every 50k items cost W3 (100k items) about 15% (2026-11-26).
DEFAULT_SNAPSHOT_EVERY: tuple[int | None, float | None] = (250_000, 5.0)


def cut_interval(plan: Plan, every: tuple[int | None, float | None] | None) -> tuple[float, float]:
    """``(items, seconds)`` between cuts: the pipeline's ``every``, or less where a node asks for less.

    Cuts are taken for every sequential stage together (a consistent cut), so
    the most frequent wish wins. ``inf`` where nothing limits.

    Examples
    --------
    >>> from pypiper_dask.model import Node
    >>> from pypiper_dask.model.snapshot import Snapshot
    >>> from pypiper_dask.compiler.plan import compile_plan
    >>> class N(Node):
    ...     def run(self, data):
    ...         self.emit(data)
    >>> plan = compile_plan(Snapshot.from_graph(N("g") | N("s", stateless=False, snapshot_every=(None, 1))))
    >>> cut_interval(plan, (1000, 30.0))
    (1000, 1.0)
    """
    inf = float("inf")
    wishes = [every] if every is not None else []
    wishes += [w for s in plan.seq_stages if (w := plan.snapshot.info[s.node].snapshot_every) is not None]
    items = min((w[0] for w in wishes if w[0] is not None), default=inf)
    seconds = min((w[1] for w in wishes if w[1] is not None), default=inf)
    return items, seconds


class Recovery:
    """One run's cuts, the rounds kept for replay, and the stateful nodes' final states.

    ``every``: the pipeline's ``snapshot_every`` (``None``: no cuts). ``able``:
    the backend can re-create holders (a cluster); elsewhere no cut is taken.
    """

    def __init__(
        self, plan: Plan, every: tuple[int | None, float | None] | None, able: bool, always: bool = False
    ) -> None:
        self.plan = plan
        self.stages = plan.seq_stages
        # ``always``: a checkpoint wants cuts, with or without sequential stages.
        self.on = able and (bool(self.stages) or always) and (every is not None or self._nodes_ask())
        self.items_every, self.seconds_every = cut_interval(plan, every)
        self.cuts: set[int] = set()  # source rounds that are cuts
        self.point = -1  # the restore point: a delivered cut (-1: the start)
        self.states: dict[int, bytes | None] = {s.id: None for s in self.stages}  # at the point (None: as planned)
        self.arriving: dict[int, dict[int, bytes]] = {}  # cut round -> stage -> snapshot, not delivered yet
        self.kept: list[Any] = []  # rounds delivered since the point, in order
        self.final: dict[str, bytes] = {}  # stateful node -> its state after its own flush
        self.broken: str | None = None  # why there are no cuts
        self.restores = 0
        self._asked = -1  # the last source round asked about
        self._items = 0
        self._since = time.monotonic()

    def resume(self, point: int, states: dict[int, bytes | None]) -> None:
        """Start from a checkpoint's cut: ``point`` is its round, ``states`` the stages' snapshots there."""
        self.point = self._asked = point
        self.states = dict(states)

    def _nodes_ask(self) -> bool:
        return any(self.plan.snapshot.info[s.node].snapshot_every is not None for s in self.stages)

    # -- what the run loop calls -------------------------------------------------------

    def cut(self, index: int, n_items: int) -> bool:
        """Is source round ``index`` (``n_items`` items) a cut? Decided when it is first submitted."""
        if not self.on or index <= self._asked:
            return self.on and index in self.cuts
        self._asked = index
        self._items += n_items
        if self._items >= self.items_every or time.monotonic() - self._since >= self.seconds_every:
            self._items, self._since = 0, time.monotonic()
            self.cuts.add(index)
        return index in self.cuts

    def saw(self, index: int, origin: int, results: dict[int, Segment]) -> None:
        """A round's results are back: keep the snapshots they carry."""
        for stage in self.stages:
            res = results.get(stage.id)
            if res is None or res.snap is None:
                continue
            snap, res.snap = res.snap, None  # the caller keeps one copy, here
            if isinstance(snap, SnapshotError):
                if origin == 0:
                    self._break(str(snap))
                continue
            if origin == 0:
                if self.on and index in self.cuts:
                    self.arriving.setdefault(index, {})[stage.id] = snap
            elif origin == stage.id:
                self.final[stage.node] = node_blob(snap)

    def delivered(self, r: Any) -> None:
        """Round ``r`` was delivered: it becomes the restore point (a cut), or is kept for replay."""
        if not self.on:
            return
        if r.index in self.cuts and len(self.arriving.get(r.index, ())) == len(self.stages):
            self.point = r.index
            self.states = dict(self.arriving.pop(r.index, {}))  # none: no sequential stage
            self.kept.clear()
            for old in [i for i in self.arriving if i < r.index]:
                del self.arriving[old]
            return
        r.results = r.handle = None  # only its partition is needed again
        self.kept.append(r)

    def replay(self, lost: Any, pending: list[Any]) -> list[Any]:
        """A holder's worker died: the rounds to send again once every holder is restored.

        ``pending``: the rounds submitted or waiting to be, delivered or not
        (a replay in progress). Those to send again are the kept rounds, then
        every round not delivered, in order; each one's earlier results are
        forgotten. Raises the loss's :class:`StateLostError` when there is
        nothing to restore from.
        """
        error: StateLostError = lost.error
        if not self.on:
            if self.broken is not None:
                error.add_note(f"It had no snapshot: {self.broken}")
            raise error
        again = self.replay_all(pending)
        for r in again:
            r.results = r.failure = None
        return again

    def replay_all(self, pending: list[Any]) -> list[Any]:
        """The kept rounds, then those of ``pending`` not delivered, in order: every round since the restore point."""
        kept = {id(r) for r in self.kept}  # a replay in progress: its rounds are kept ones
        # A round of an earlier replay may still be out when a later cut became the point:
        # the holders restored there are past it.
        rest = (r for r in pending if id(r) not in kept and r.index > self.point)
        return [*self.kept, *sorted(rest, key=lambda x: x.index)]

    def restore(self, backend: Any, lost: Any, n_rounds: int) -> None:
        """Re-create every holder from the restore point (``n_rounds`` rounds then go again)."""
        backend.restore(self.states, self.point + 1)
        self.restores += 1
        self.arriving.clear()  # the replay takes them again
        logger.info(
            "the worker holding node %r died; restored every sequential node %s and sending %d partition(s) again",
            lost.error.node,
            "from the start" if self.point < 0 else f"from its snapshot after partition {self.point}",
            n_rounds,
        )

    def final_states(self) -> dict[str, bytes] | None:
        """Each stateful node's final state, if every one came back with its flush."""
        wanted = [s.node for s in self.stages if not s.stateless]
        if all(n in self.final for n in wanted):
            return {n: self.final[n] for n in wanted}
        return None

    # -- internals ---------------------------------------------------------------------

    def _break(self, why: str) -> None:
        if self.broken is None:
            logger.warning(
                "%s; the run goes on without snapshots, and fails with StateLostError if that node's "
                "worker (or any sequential node's) dies",
                why,
            )
            self.broken = why
        self.on = False
        self.kept.clear()
        self.arriving.clear()
