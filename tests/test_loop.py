"""The run loop's rules, on the state machine alone: no cluster, no backend, milliseconds.

The kill trials (tests/test_recovery.py, ``python -m bench --faults``) check
the same rules on real clusters.
"""

from __future__ import annotations

import pytest

from pypiper_dask.compiler.plan import compile_plan
from pypiper_dask.errors import StateLostError
from pypiper_dask.model import Node
from pypiper_dask.model.snapshot import Snapshot
from pypiper_dask.ordering import Closed, Segment
from pypiper_dask.runtime.loop import (
    Cancel,
    DataLost,
    Deliver,
    Fail,
    HolderLost,
    Observe,
    Probe,
    Restore,
    RoundState,
    RunState,
    Submit,
)
from pypiper_dask.runtime.recovery import Recovery
from pypiper_dask.worker import Chunk, NodeFailure


class Pass(Node):
    def run(self, data):
        self.emit(data)


def plan_of(stateful: bool):
    graph = Pass("gen") | Pass("a") | Pass("s", stateless=not stateful)
    return compile_plan(Snapshot.from_graph(graph))


def machine(stateful=False, snapshots=None, window=4, n_workers=2, max_resends=5, ordered=True):
    plan = plan_of(stateful)
    recovery = Recovery(plan, snapshots, able=True)
    seq = tuple(s.id for s in plan.seq_stages)
    return RunState(
        recovery, window=window, n_workers=n_workers, seq_stages=seq, max_resends=max_resends, ordered=ordered
    )


def results(state: RunState) -> dict[int, Segment]:
    # One segment per stage of the plan, as a round's results carry.
    return {i: Segment(1) for i in range(len(state.recovery.plan.stages))}


def pull(state: RunState, n: int = 1) -> list:
    rounds = []
    for _ in range(n):
        action = state.pulled(Chunk(list(range(3))))
        assert isinstance(action, Submit)
        rounds.append(action.round)
    return rounds


def failure(item: str = "1") -> NodeFailure:
    return NodeFailure("a", item, ValueError("boom"), "Traceback: boom\n")


def delivered(state: RunState) -> list[int]:
    out = []
    for action in state.deliverable():
        if isinstance(action, Fail):
            out.append("fail")
            break
        assert isinstance(action, Deliver)
        out.append(action.round.index)
        state.was_delivered(action.round)
    return out


def test_rounds_are_delivered_in_order_whatever_order_they_come_back_in():
    state = machine()
    r0, r1, r2 = pull(state, 3)
    assert state.returned(r2, results(state)) == [Observe(r2)]
    assert delivered(state) == []
    state.returned(r0, results(state))
    assert delivered(state) == [0]
    state.returned(r1, results(state))
    assert delivered(state) == [1, 2]


def test_the_window_is_two_rounds_a_worker_until_calibrated():
    state = machine(window=8, n_workers=2)
    pull(state, 4)
    assert not state.may_pull(calibrated=False)
    assert state.may_pull(calibrated=True)
    pull(state, 4)
    assert not state.may_pull(calibrated=True)


def test_the_reorder_buffer_is_bounded():
    state = machine(window=2, n_workers=2)
    rounds = pull(state, 2)
    state.returned(rounds[1], results(state))  # round 0 lags: 1 waits, one round out
    pull(state, 1)
    state.returned(rounds[1], results(state))
    later = pull(state, 1)
    state.returned(later[0], results(state))
    assert len(state.waiting) == 4 and not state.may_pull(calibrated=True)  # 2 * window waiting


def test_a_node_failure_is_raised_after_the_rounds_before_it_are_delivered():
    state = machine()
    r0, r1, r2 = pull(state, 3)
    state.returned(r1, failure())
    assert r1.state is RoundState.FAILED
    assert not state.may_pull(calibrated=True)  # nothing new after a failure
    state.returned(r2, results(state))
    assert delivered(state) == []  # round 0 is not back
    state.returned(r0, results(state))
    assert delivered(state) == [0, "fail"]


def test_a_failed_round_delivers_what_came_before_its_failure_and_nothing_after_it():
    """Issue 19 item 2: the failed round's partial output goes out in its turn; the driver raises after it."""
    state = machine()
    r0, r1, r2 = pull(state, 3)
    failed = failure()
    failed.segments = results(state)  # what each stage produced before the failing call
    state.returned(r1, failed)
    assert r1.state is RoundState.FAILED and r1.results is failed.segments
    state.returned(r2, results(state))
    state.returned(r0, results(state))
    actions = state.deliverable()
    assert actions == [Deliver(r0), Deliver(r1)]  # round 2, after the failure, is not delivered
    assert actions[1].round.failure is failed
    assert state.failed is False and 2 in state.waiting


def test_a_failure_flushes_the_sequential_stages_and_its_output_waits_for_the_flushes():
    """A close before the failure flushed the stages below it in a sequential run: the flushes go at once."""
    state = machine(stateful=True)
    r0, _ = pull(state, 2)
    failed = failure()
    failed.segments = results(state)
    actions = state.returned(r0, failed)
    assert [type(a) for a in actions] == [Submit] and actions[0].round.origin != 0  # the stage's flush
    flush = actions[0].round
    assert state.n_source == 2 and not state.may_pull(calibrated=True) and state.input_ended() == []
    assert state.deliverable() == []  # the flush is not back
    state.returned(flush, results(state))
    assert state.deliverable() == [Deliver(flush), Deliver(r0)]  # the flush is kept, then the failed round
    assert 1 in state.waiting  # nothing after the failure


def test_rounds_lost_with_a_worker_go_again_before_new_source_rounds():
    state = machine()
    r0, r1, r2 = pull(state, 3)
    state.returned(r0, results(state))
    h1, h2 = r1.handle, r2.handle = "h1", "h2"
    actions = state.returned(r1, DataLost("gone"))
    assert actions == [Cancel([h1, h2])]  # the handles they had, not the None they have now
    assert r1.handle is None and r2.handle is None
    assert [r.index for r in state.resend] == [1, 2]
    assert not state.may_pull(calibrated=True)
    assert state.returned(r2, results(state)) == []  # a stale answer: r2 goes again
    again = state.resubmit(calibrated=True)
    assert again is not None and again.round is r1 and state.attempt(r1) == 1
    assert state.resubmit(calibrated=True).round is r2
    assert state.may_pull(calibrated=True)
    state.returned(r1, results(state))
    state.returned(r2, results(state))
    assert delivered(state) == [0, 1, 2]


def test_input_ends_with_each_sequential_stage_flushed_once_nothing_waits_to_go_again():
    state = machine(stateful=True)
    (r0,) = pull(state)
    state.returned(r0, DataLost("gone"))
    assert state.input_ended() == []  # round 0 must go again first
    state.resubmit(calibrated=True)
    flushes = state.input_ended()
    assert [a.round.origin for a in flushes] == list(state.seq_stages)
    assert state.n_source == 1
    for r in [r0, *(a.round for a in flushes)]:
        state.returned(r, results(state))
    assert delivered(state) == [0, 1] and state.finished


def test_a_round_lost_too_often_is_probed():
    state = machine(max_resends=2)
    (r0,) = pull(state)
    for _ in range(2):
        state.returned(r0, DataLost("gone"))
        state.resubmit(calibrated=True)
    actions = state.returned(r0, DataLost("gone"))
    assert isinstance(actions[-1], Probe) and actions[-1].rounds == [r0]
    assert state.suspects(actions[-1].rounds) == [r0]


def test_a_lost_holder_without_snapshots_is_state_lost():
    state = machine(stateful=True, snapshots=None)
    (r0,) = pull(state)
    error = StateLostError("s", "gone")
    actions = state.returned(r0, HolderLost(error))
    assert isinstance(actions[-1], Fail) and actions[-1].error is error


def test_a_lost_holder_replays_every_round_since_the_restore_point_and_delivers_none_twice():
    state = machine(stateful=True, snapshots=(10**9, None))  # snapshots on, no cut yet: the start is the point
    r0, r1, r2 = pull(state, 3)
    state.returned(r0, results(state))
    assert delivered(state) == [0]  # kept for replay
    state.returned(r2, results(state))
    actions = state.returned(r1, HolderLost(StateLostError("s", "gone")))
    assert actions == [Restore(actions[0].lost, 3)]
    assert [r.index for r in state.resend] == [0, 1, 2] and not state.waiting
    for _ in range(3):
        state.resubmit(calibrated=True)
    assert state.returned(r0, results(state)) == []  # delivered before: only brings the state back
    state.returned(r2, results(state))
    state.returned(r1, results(state))
    assert delivered(state) == [1, 2]


def test_a_replayed_round_that_fails_where_it_did_not_before_fails_the_run_at_once():
    state = machine(stateful=True, snapshots=(10**9, None))
    r0, r1 = pull(state, 2)
    state.returned(r0, results(state))
    assert delivered(state) == [0]
    state.returned(r1, HolderLost(StateLostError("s", "gone")))
    state.resubmit(calibrated=True)
    actions = state.returned(r0, failure())
    assert isinstance(actions[0], Fail)


@pytest.mark.parametrize("closes_in", [0, 2])
def test_a_node_that_closed_is_skipped_by_the_rounds_after(closes_in):
    state = machine()
    rounds = pull(state, 4)
    res = results(state)
    res[0].marks.append((0, 0, Closed("a")))
    state.returned(rounds[closes_in], res)
    assert "a" not in state.closed_before(rounds[closes_in])
    assert all("a" in state.closed_before(r) for r in rounds[closes_in + 1 :])


def test_a_round_whose_task_killed_every_worker_is_probed_not_sent_again():
    from pypiper_dask.errors import PipelineError
    from pypiper_dask.runtime.loop import Killed

    state = machine()
    _r0, r1 = pull(state, 2)
    error = PipelineError("killed its worker again and again")
    actions = state.returned(r1, Killed(error))
    assert isinstance(actions[0], Cancel) and actions[0].handles is None
    assert isinstance(actions[1], Probe) and actions[1].rounds == [r1] and actions[1].error is error
    assert not state.resend


# -- ordered=False ---------------------------------------------------------------------


def test_unordered_rounds_are_delivered_as_they_come_back():
    state = machine(ordered=False)
    r0, r1, r2 = pull(state, 3)
    state.returned(r2, results(state))
    assert delivered(state) == [2]
    assert state.delivered == 0 and set(state.ahead) == {2}  # round 0 still holds the record back
    state.returned(r1, results(state))
    state.returned(r0, results(state))
    assert delivered(state) == [0, 1]  # those back at once go in index order
    assert state.delivered == 3 and not state.ahead and not state.waiting


def test_unordered_delivery_records_rounds_for_replay_in_index_order():
    state = machine(stateful=True, snapshots=(10**9, None), ordered=False)
    r0, r1, r2 = pull(state, 3)
    state.returned(r2, results(state))
    state.returned(r1, results(state))
    assert delivered(state) == [1, 2]
    assert state.recovery.kept == []  # a round is kept for replay once the rounds before it are
    state.returned(r0, results(state))
    assert delivered(state) == [0]
    assert [r.index for r in state.recovery.kept] == [0, 1, 2]


def test_unordered_a_slow_round_holds_back_no_other_round_but_the_run_stays_bounded():
    state = machine(window=2, n_workers=2, ordered=False)
    (slow,) = pull(state, 1)
    n = 1
    while state.may_pull(calibrated=True):
        (r,) = pull(state, 1)
        state.returned(r, results(state))
        assert delivered(state) == [r.index]
        n += 1
    # Ordered, the reorder buffer stops new rounds at 2 * window waiting; here the rounds
    # ahead of the slow one are out, and new ones stop at 4 * window past it.
    assert n == 4 * state.window and len(state.waiting) == 1
    state.returned(slow, results(state))
    assert delivered(state) == [0] and state.delivered == n and state.may_pull(calibrated=True)


def test_unordered_a_node_failure_is_raised_when_it_comes_back():
    state = machine(ordered=False)
    r0, r1, r2 = pull(state, 3)
    state.returned(r2, results(state))
    state.returned(r1, failure())
    assert delivered(state) == ["fail"]  # round 2 is after it: not delivered
    state = machine(ordered=False)
    r0, r1, r2 = pull(state, 3)
    state.returned(r1, failure())
    state.returned(r0, results(state))
    assert delivered(state) == [0, "fail"]


def test_unordered_delivery_is_in_order_again_once_a_node_closed():
    state = machine(ordered=False)
    r0, r1, _r2, r3 = pull(state, 4)
    res = results(state)
    res[0].marks.append((0, 0, Closed("a")))
    state.returned(r1, res)
    state.returned(r3, results(state))
    assert delivered(state) == []  # round 0 first: what comes after the close must not go out before it
    state.returned(r0, results(state))
    assert delivered(state) == [0, 1]


def test_unordered_a_lost_holder_replays_the_rounds_delivered_ahead_without_delivering_them_again():
    state = machine(stateful=True, snapshots=(10**9, None), ordered=False)
    r0, r1, r2 = pull(state, 3)
    state.returned(r2, results(state))
    assert delivered(state) == [2]
    actions = state.returned(r1, HolderLost(StateLostError("s", "gone")))
    assert actions == [Restore(actions[0].lost, 3)]
    assert [r.index for r in state.resend] == [0, 1, 2]  # round 2's step again: the holder needs it
    for _ in range(3):
        state.resubmit(calibrated=True)
    state.returned(r0, results(state))
    assert delivered(state) == [0]
    assert state.returned(r2, results(state)) == []  # delivered before: only brings the state back
    assert delivered(state) == []
    state.returned(r1, results(state))
    assert delivered(state) == [1]
    assert state.delivered == 3 and not state.ahead and not state.waiting
    assert [r.index for r in state.recovery.kept] == [0, 1, 2]
