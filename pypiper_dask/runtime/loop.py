"""The run loop's rules as a state machine: events in, actions out, no I/O.

Modelled on ``distributed/worker_state_machine.py``: :class:`RunState` holds
every round of a run and decides, for each event the driver
(:mod:`pypiper_dask.runtime.execute`) feeds it, what happens next. It calls no
backend, no node and no clock of its own, so the rules below are unit-tested
in milliseconds (``tests/test_loop.py``), beside the kill trials that check
them on real clusters.

The rules:

* **Window.** At most ``window`` rounds are out at once (two a worker until
  the partition size is calibrated), and at most ``2 * window`` are waiting to
  be delivered: a slow round idles no worker, and memory stays bounded.
* **Order.** Rounds are delivered in index order, whatever order they come
  back in. A round a node failed in is raised when its turn comes, so the rounds
  before it are delivered first, as the sequential run's output was; where its
  tasks brought back what they produced before the failing call, that goes out
  too (a :class:`Deliver` of the failed round, which the driver ends by raising
  the failure), so the output before an error is the sequential run's.
* **Unordered** (``ordered=False``). A round is delivered as soon as it is back
  (the rounds back at once in index order; a failed one ends the run when it is
  seen); a sequential stage's holder still runs its steps in index order, so a
  stateful node sees its items in source order. Delivered rounds stay *ahead*
  until every round before them is delivered: the restore point and the rounds
  kept for replay move in index order, as in the ordered run. New rounds go at
  most ``4 * window`` past the first round not delivered (the holders keep
  ``4 * window + 8`` steps' results for a round sent again). Once a node has
  closed, delivery is in order again: the rounds after a close must not go out.
* **Resend.** A round lost with its worker (its partition, or a task's result)
  is sent again from the chunk the caller kept, ahead of new source rounds and
  within the window. After ``max_resends`` losses of one round the driver probes
  for the item that kills workers (:class:`Probe`).
* **Replay.** A lost holder (a sequential stage's worker died) brings every
  holder back from the restore point (:class:`Restore`); the rounds since go
  again in order, those already delivered only to bring the state back (their
  output is dropped, not delivered twice). A replayed round that fails where the
  first run did not fails the run at once.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..errors import StateLostError
from ..ordering import Segment
from ..worker import Chunk, NodeFailure

__all__ = [
    "Action",
    "Cancel",
    "DataLost",
    "Deliver",
    "Fail",
    "HolderLost",
    "Killed",
    "Observe",
    "Probe",
    "Restore",
    "Round",
    "RoundState",
    "RunState",
    "Submit",
]


class DataLost(Exception):
    """A round's input or a task's result went with its worker; the caller sends the round again."""


class HolderLost(DataLost):
    """A sequential stage's holder went with its worker; ``error`` is raised if it cannot be restored."""

    def __init__(self, error: StateLostError) -> None:
        super().__init__(str(error))
        self.error = error


class Killed(DataLost):
    """A round's task killed every worker that ran it (the scheduler gave up); ``error`` says so.

    Not sent again: its items are probed for the one that kills (:class:`Probe`).
    """

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


class RoundState(enum.Enum):
    """Where a round is."""

    QUEUED = "queued"  # to be submitted (again): lost, or replayed onto restored holders
    OUT = "out"  # submitted, not back
    BACK = "back"  # its results are back; it waits for its turn
    FAILED = "failed"  # a node raised in it; raised when its turn comes
    DELIVERED = "delivered"


@dataclass(eq=False)
class Round:
    """One partition of source items through the stages (``origin`` 0), or a sequential stage's flush.

    ``handle`` is the backend's, while the round is out. ``results`` are its
    segments by stage once back; ``failure`` the node failure it came back with
    (``results`` then hold what each stage produced before it, if known).
    """

    index: int
    origin: int
    chunk: Chunk | None
    state: RoundState = RoundState.QUEUED
    handle: Any = None
    results: dict[int, Segment] | None = None
    failure: NodeFailure | None = None

    @property
    def back(self) -> bool:
        return self.state in (RoundState.BACK, RoundState.FAILED)

    @property
    def size(self) -> int:
        return len(self.chunk) if self.chunk is not None else 0


# -- actions: what the driver does ---------------------------------------------------


@dataclass
class Submit:
    """Build ``round``'s tasks and submit them; ``cut``: its sequential stages snapshot after it."""

    round: Round
    cut: bool = False


@dataclass
class Observe:
    """``round``'s results are new: size partitions by them, note hidden state, learn what closed."""

    round: Round


@dataclass
class Deliver:
    """Print, yield or keep ``round``'s output; then tell the state it was delivered.

    A failed round's (``round.failure``): its output up to the failing call, then
    the failure is raised (unless a sequential run had stopped before it).
    """

    round: Round


@dataclass
class Cancel:
    """Cancel the tasks of the rounds these backend handles are of (every round out, if ``None``).

    Handles, not rounds: a round sent again has a new one by the time this is carried out.
    """

    handles: list[Any] | None = None


@dataclass
class Restore:
    """Re-create every holder from the restore point; ``n_rounds`` then go again."""

    lost: HolderLost
    n_rounds: int


@dataclass
class Probe:
    """Resending stopped helping: look for the item that kills workers in ``rounds``, else raise ``error``.

    ``cause``: the last loss.
    """

    rounds: list[Round]
    error: BaseException
    cause: DataLost


@dataclass
class Fail:
    """End the run with ``error``."""

    error: BaseException


Action = Submit | Observe | Deliver | Cancel | Restore | Probe | Fail


@dataclass
class RunState:
    """Every round of one run, and the rules that move them. See the module's docstring.

    ``recovery`` is the run's :class:`~pypiper_dask.runtime.recovery.Recovery`
    (cuts, kept rounds, restore point); ``seq_stages`` the sequential stages'
    ids in preorder (each gets a flush round once input ends); ``start`` the
    first round's index (a resumed run's).
    """

    recovery: Any
    window: int
    n_workers: int
    seq_stages: tuple[int, ...] = ()
    start: int = 0
    max_items_out: int = 300_000
    max_resends: int = 5
    ordered: bool = True
    index: int = field(init=False)  # the next new round's
    delivered: int = field(init=False)  # rounds before this one were delivered
    ahead: dict[int, Round] = field(default_factory=dict, init=False)  # delivered, a round before is not
    n_source: int | None = field(default=None, init=False)  # source rounds, once input ended
    waiting: dict[int, Round] = field(default_factory=dict, init=False)  # submitted, not delivered
    resend: deque[Round] = field(default_factory=deque, init=False)  # to submit again, in order
    losses: dict[int, int] = field(default_factory=dict, init=False)  # round -> times lost
    closed_at: dict[str, int] = field(default_factory=dict, init=False)  # node -> the first round it closed in

    def __post_init__(self) -> None:
        self.index = self.delivered = self.start

    # -- submitting ------------------------------------------------------------------

    @property
    def out(self) -> list[Round]:
        return [r for r in self.waiting.values() if r.state is RoundState.OUT]

    @property
    def failed(self) -> bool:
        return any(r.state is RoundState.FAILED for r in self.waiting.values())

    @property
    def items_out(self) -> int:
        # Delivered rounds ahead keep their partition too, until the rounds before them are delivered.
        return sum(r.size for r in self.waiting.values()) + sum(r.size for r in self.ahead.values())

    @property
    def finished(self) -> bool:
        return self.n_source is not None and not self.waiting and not self.resend

    def resubmit(self, calibrated: bool) -> Submit | None:
        """A round to send again now, if the window allows one."""
        if not self.resend or len(self.out) >= self._window(calibrated):
            return None
        # Also after a node failed (the rounds before it must come back first), and past the
        # reorder buffer's bound when every round waiting is after it: nothing can leave before it.
        if len(self.waiting) < 2 * self.window or self.resend[0].index < min(self.waiting, default=self.index):
            return self._submit(self.resend.popleft())
        return None

    def may_pull(self, calibrated: bool) -> bool:
        """Is there room for a new source round (and does the input go on)?"""
        return (
            not self.resend
            and len(self.out) < self._window(calibrated)
            and len(self.waiting) < 2 * self.window
            and self.index - self.delivered < 4 * self.window  # unordered: within the holders' kept steps
            and not self.failed
            and self.n_source is None
            and self.items_out < self.max_items_out
        )

    def pulled(self, chunk: Chunk) -> Submit | None:
        """The source gave ``chunk``: a new round, unless it holds nothing at all."""
        if not (chunk.items or chunk.prints):
            return None
        r = Round(self.index, 0, chunk)
        self.index += 1
        return self._submit(r)

    def input_ended(self) -> list[Submit]:
        """The source is done: each sequential stage's flush round, in preorder (once nothing is left to resend).

        A stage's flush feeds the stages below before theirs.
        """
        if self.n_source is not None or self.failed or self.resend:
            return []
        self.n_source = self.index
        flushes = []
        for stage in self.seq_stages:
            flushes.append(self._submit(Round(self.index, stage, None)))
            self.index += 1
        return flushes

    def _flush_now(self) -> list[Action]:
        """A node failed: no source round comes after those out, so each sequential stage's flush goes now.

        A stage whose input a node closed before the failure was flushed there in a
        sequential run: the failed round's output waits for these (see :meth:`deliverable`).
        """
        if self.n_source is not None or self.resend:
            return []
        self.n_source = self.index
        flushes: list[Action] = []
        for stage in self.seq_stages:
            flushes.append(self._submit(Round(self.index, stage, None)))
            self.index += 1
        return flushes

    def closed_before(self, r: Round) -> frozenset[str]:
        """The nodes that closed in a round before ``r``: its tasks skip them."""
        return frozenset(n for n, i in self.closed_at.items() if i < r.index)

    def attempt(self, r: Round) -> int:
        """How many times ``r`` was lost: a round sent again gets task keys of its own."""
        return self.losses.get(r.index, 0)

    def _window(self, calibrated: bool) -> int:
        # Small rounds first, their cost per item sizes the partitions: two a worker, so that
        # each has its next one queued when the first comes back (one a worker left each
        # idle for a round trip, 0.07-0.14 s of S1's first 0.3 s at 8 workers).
        return self.window if calibrated else min(self.window, 2 * self.n_workers)

    def _submit(self, r: Round) -> Submit:
        r.state = RoundState.OUT
        r.results = r.failure = None
        self.waiting[r.index] = r
        return Submit(r, r.origin == 0 and self.recovery.cut(r.index, r.size))

    # -- what comes back -------------------------------------------------------------

    def returned(self, r: Round, outcome: dict[int, Segment] | BaseException) -> list[Action]:
        """``r`` came back with ``outcome``: its segments, a node's failure, or a loss."""
        if r.state is not RoundState.OUT or self.waiting.get(r.index) is not r:
            return []  # sent again since (a loss earlier in the same batch): this answer is stale
        if isinstance(outcome, NodeFailure):
            r.state, r.failure = RoundState.FAILED, outcome
            r.results = outcome.segments or None  # what came before the failing call
            # A replay failed where the first run did not: nothing can be delivered in its place.
            return [Fail(outcome)] if self._went_out(r.index) else self._flush_now()
        if isinstance(outcome, Killed):
            return [Cancel(), Probe([r], outcome.error, outcome)]
        if isinstance(outcome, DataLost):
            return self._lost(outcome)
        if isinstance(outcome, BaseException):
            return [Fail(outcome)]
        r.state, r.results = RoundState.BACK, outcome
        self.recovery.saw(r.index, r.origin, outcome)
        if self._went_out(r.index):  # a replayed round: its output went out the first time
            r.results, r.handle = {}, None
            self._advance()  # unordered: it may have held the rounds before it back from the replay's record
            return []
        for res in outcome.values():
            for node in res.closed:
                self.closed_at[node] = min(self.closed_at.get(node, r.index), r.index)
        return [Observe(r)]

    def _lost(self, exc: DataLost) -> list[Action]:
        pending = [*self.waiting.values(), *self.ahead.values(), *self.resend]
        if isinstance(exc, HolderLost):
            # Every holder comes back from its last snapshot; the rounds since go again.
            try:
                lost = self.recovery.replay(exc, pending)
            except StateLostError as error:
                return [Cancel(), Fail(error)]
        else:
            # Every round not back goes again from its kept chunk; a sequential stage's
            # holder answers a step it already ran with its first result.
            lost = self.out
        for r in lost:
            self.losses[r.index] = self.losses.get(r.index, 0) + 1
        if lost and max(self.losses[r.index] for r in lost) > self.max_resends:
            # Sent again too often without getting through: not a worker's bad luck.
            said = exc.error if isinstance(exc, HolderLost) else exc
            return [Cancel(), Probe(self.recovery.replay_all(pending), said, exc)]
        actions: list[Action]
        if isinstance(exc, HolderLost):
            actions = [Restore(exc, len(lost))]  # which cancels everything out
            self.waiting.clear()  # what is not sent again was from before the restore point
            self.resend = deque(lost)
        else:
            actions = [Cancel([r.handle for r in lost if r.handle is not None])]
            for r in lost:
                self.waiting.pop(r.index, None)
            self.resend = deque(sorted([*lost, *self.resend], key=lambda x: x.index))
        for r in lost:
            r.handle, r.state = None, RoundState.QUEUED
        return actions

    def suspects(self, rounds: Iterable[Round]) -> list[Round]:
        """Of ``rounds``, the source rounds lost most often, in order: where to probe first."""
        rounds = list(rounds)
        top = max((self.losses.get(r.index, 0) for r in rounds), default=0)
        return sorted(
            (r for r in rounds if r.chunk is not None and r.origin == 0 and self.losses.get(r.index, 0) == top),
            key=lambda r: r.index,
        )

    # -- delivering ------------------------------------------------------------------

    def deliverable(self) -> list[Action]:
        """The rounds to deliver now: in order (or, unordered, every round back); a failed one ends the list.

        A failed round with the output before its failure is delivered (the
        driver raises the failure after it); without, its error is raised.
        """
        # Replayed rounds leave in order too: while one lags, the rounds after it count
        # against the window, so a holder never runs more steps ahead than it keeps.
        while self.waiting and self._went_out(first := min(self.waiting)) and self.waiting[first].back:
            del self.waiting[first]
        if self.ordered or self.closed_at:
            turn = self.delivered
            ready = []
            while True:
                if turn in self.ahead:
                    turn += 1
                    continue
                r = self.waiting.get(turn)
                if r is None or not r.back:
                    break
                ready.append(r)
                turn += 1
        else:
            ready = [r for i, r in sorted(self.waiting.items()) if r.back and not self._went_out(i)]
        actions: list[Action] = []
        for r in ready:
            if r.failure is not None and r.results:
                # The flushes sent at the failure first (out of turn: they are only kept until
                # a close in the walk splices them in); one that failed has nothing to give.
                flushes = sorted(
                    (f for f in self.waiting.values() if f.origin != 0 and f is not r), key=lambda f: f.index
                )
                if not all(f.back for f in flushes):
                    break
                for f in flushes:
                    del self.waiting[f.index]
                    if f.failure is None:
                        f.state = RoundState.DELIVERED
                        actions.append(Deliver(f))
            del self.waiting[r.index]
            if r.failure is not None:
                actions.append(Deliver(r) if r.results else Fail(r.failure))
                break
            r.state = RoundState.DELIVERED
            actions.append(Deliver(r))
        return actions

    def was_delivered(self, r: Round) -> bool:
        """``r``'s output went out: is the restore point now ``r``, or a round delivered ahead of it?

        Each round, once every round before it is delivered too, becomes the
        restore point (a cut) or is kept for replay, in index order.
        """
        self.ahead[r.index] = r
        return self._advance()

    def _advance(self) -> bool:
        # A round ahead being replayed joins the record once it is back.
        point = False
        while (x := self.ahead.get(self.delivered)) is not None and x.state in (RoundState.DELIVERED, RoundState.BACK):
            del self.ahead[self.delivered]
            if self.waiting.get(x.index) is x:  # its replay is back: nothing waits for it now
                del self.waiting[x.index]
            self.delivered += 1
            self.recovery.delivered(x)
            point = point or self.recovery.point == x.index
        return point

    def _went_out(self, index: int) -> bool:
        """Was round ``index``'s output delivered (a replayed round's is not delivered again)?"""
        return index < self.delivered or index in self.ahead
