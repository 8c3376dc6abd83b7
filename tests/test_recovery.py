"""Stateful, batched and barrier nodes survive their worker: SIGKILL it mid-run, get the undisturbed output.

Each trial runs a program of ``tests/strategies.py`` (prints included) on a
cluster, kills the worker holding a sequential node at a moment drawn with
the program, and compares stdout, the result and the final state of the
caller's node objects with an undisturbed run. Fixed seeds here (hypothesis
derandomised); ``python -m bench --faults`` runs hundreds of such trials.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import random
import re
import signal
import threading
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis import strategies as st

from pypiper_dask import Node, NodeError, Pipeline, StateLostError
from pypiper_dask.model.node import PRIVATE
from pypiper_dask.runtime.recovery import DEFAULT_SNAPSHOT_EVERY
from tests import nodes as N
from tests.conftest import ReadyCluster
from tests.reference import reference_until_error
from tests.strategies import build, build_failing, failing_programs, has_closes, programs
from tests.test_checkpoint import check_stream_left_and_resumed
from tests.test_output_before_error import check_error

pytestmark = pytest.mark.cluster

random_in_background = pytest.mark.filterwarnings("ignore:Do not use the `random` module inside strategies")

#: Every source call sleeps this long, so that a run lasts long enough to be hit.
PAUSE = 0.002


def has_sequential(program) -> bool:
    def walk(specs) -> bool:
        for kind, params, sub in specs:
            if kind in ("batch", "all", "running", "take", "keyed") or params.get("stateless") is False or walk(sub):
                return True
        return False

    return walk(program[1])


def paced(program, size: int, pause: float):
    source, kids = program
    return {**source, "size": size, "pause": pause}, kids


def state(node) -> dict:
    """The user's attributes of a node."""
    return {k: v for k, v in vars(node).items() if k not in PRIVATE}


def states(graph) -> dict[str, dict]:
    """The user's attributes of every node: what a run leaves on the caller's objects."""
    return {n.name: state(n) for n in graph}


def ahead_of_closes(graph) -> set[str]:
    """The source and every stateful node with a node below it that may close.

    On a cluster these may run past a close (calls for later items, at most
    once each, their output discarded: the semantics page's "How often `run`
    is called"), so their final state can differ from a sequential run's,
    disturbed or not.
    """
    closing = (N.CloseAt, N.Take)

    def closes_below(node) -> bool:
        return any(isinstance(kid, closing) or closes_below(kid) for kid in graph.children(node))

    return {graph.root.name} | {n.name for n in graph if not n.stateless and closes_below(n)}


def run_all(graph, callback=None, **options):
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        result = Pipeline(graph, **options).run(update_callback=callback)
    keyed = {f"{name} (keyed)": {k: state(n) for k, n in nodes.items()} for name, nodes in result.keyed_nodes.items()}
    return buf.getvalue(), dict(result), {**states(graph), **keyed}


class Killer:
    """SIGKILLs the worker holding a sequential node once ``at`` source items were delivered.

    A point in the run, not a time: the run's progress callback (:meth:`callback`)
    waits there until the worker is killed, so the kill lands mid-run however
    fast the machine is. ``again``: then kills the worker of a re-created holder
    while the run replays onto it: :meth:`replay_hook` holds the run's first
    submission after the restore until that kill is done.
    """

    def __init__(self, client, at: int, rng: random.Random, again: bool = False, node: str = "") -> None:
        self.client, self.at, self.rng, self.again, self.node = client, at, rng, again, node
        self.kills: list[str] = []
        self.stop = threading.Event()
        self.reached = threading.Event()  # the run delivered `at` items
        self.killed = threading.Event()  # the first kill is done (or given up)
        self.replaying = threading.Event()  # the holders were re-created and the replay is going out
        self.killed_again = threading.Event()  # the second kill is done (or given up)
        self.thread = threading.Thread(target=self._run, daemon=True)

    def callback(self, done: int, total) -> None:
        """The run's update_callback: at ``at`` items, hold the run until the kill is done."""
        if done >= self.at and not self.reached.is_set():
            self.reached.set()
            self.killed.wait(60)

    @contextlib.contextmanager
    def replay_hook(self):
        """Hold the run's first submission after a restore until the second kill is done.

        A point in the run, not a time: the replayed round just sent is in flight when
        the re-created holder's worker dies, however fast the machine replays.
        """
        from pypiper_dask.runtime.backends import DistributedBackend
        from pypiper_dask.runtime.recovery import Recovery

        restore, submit = Recovery.restore, DistributedBackend.submit
        restored = threading.Event()

        def restoring(recovery, *args, **kwargs):
            restore(recovery, *args, **kwargs)
            restored.set()

        def submitting(backend, tasks):
            handle = submit(backend, tasks)
            if restored.is_set() and not self.replaying.is_set():
                self.replaying.set()
                self.killed_again.wait(60)
            return handle

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(Recovery, "restore", restoring)
            patch.setattr(DistributedBackend, "submit", submitting)
            yield

    def __enter__(self) -> Killer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(30)
        wait_gone(self.client, self.kills)

    def _kill_one(self, generation: int) -> bool:
        deadline = time.monotonic() + 30
        while not self.stop.is_set() and time.monotonic() < deadline:
            try:
                who = holders(self.client, generation, self.node)
                if who:
                    address = self.rng.choice(who)
                    pid = self.client.run(os.getpid, workers=[address])[address]
                    if generation == 0:
                        while not self.reached.wait(0.05):
                            if self.stop.is_set():
                                return False  # the run ended first
                    os.kill(pid, signal.SIGKILL)
                    self.kills.append(address)
                    return True
            except Exception:  # the cluster is between states: look again
                pass
            time.sleep(0.01)
        return False

    def _run(self) -> None:
        try:
            first = self._kill_one(0)
        finally:
            self.killed.set()
        if first and self.again:
            try:
                while not self.replaying.wait(0.05):
                    if self.stop.is_set():
                        return  # the run ended without a replay
                self._kill_one(1)
            finally:
                self.killed_again.set()


@pytest.fixture
def external_killable(_external):
    """The session's external cluster (conftest.py's ReadyCluster): ``.client()`` before each run."""
    return _external


def kill_trials(n: int) -> Any:
    """A kill trial's hypothesis settings: ``n`` examples, the same each run, no shrinking (each is a cluster run)."""
    return settings(
        max_examples=n,
        derandomize=True,
        database=None,
        phases=[Phase.generate],
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )


def holders(client, generation: int = 0, node: str = "") -> list[str]:
    """Addresses of the workers holding a sequential node's actor of ``generation`` or later."""

    def find(dask_scheduler, generation=generation, node=node):
        return sorted(
            ws.address
            for ws in dask_scheduler.workers.values()
            for ts in ws.actors
            if (ts.key[2] if len(ts.key) > 2 else 0) >= generation and ts.key[0].startswith(node)
        )

    return client.run_on_scheduler(find)


def wait_gone(client, killed: list[str]) -> None:
    """Wait (30 s at most) until the scheduler has dropped the killed workers: the next run starts without them."""
    deadline = time.monotonic() + 30
    while killed and time.monotonic() < deadline:
        if not set(client.scheduler_info(n_workers=-1)["workers"]) & set(killed):
            return
        time.sleep(0.1)


#: Source items of a kill trial's program.
SIZE = 900


def trial(
    cluster, program, point: float, seed: int, snapshot_every, again: bool = False, partition_size: int = 20
) -> list[str]:
    """Run ``program`` on ``cluster`` with a kill; assert it matches an undisturbed in-process run.

    ``cluster``: a ReadyCluster (conftest.py), whose client comes with both workers ready
    (after an earlier kill: the replacement, or a fresh cluster), or a client of a fresh cluster.
    ``point`` (0 to 1.5): the kill comes once ``point / 1.5`` of the source's items
    were delivered (at most 90%).
    """
    client = cluster.client() if isinstance(cluster, ReadyCluster) else cluster
    want = run_all(build(paced(program, SIZE, 0.0)), n_threads=1)
    graph = build(paced(program, SIZE, PAUSE))
    at = int(min(point / 1.5, 0.9) * SIZE)
    killer = Killer(client, at, random.Random(seed), again)
    with killer, killer.replay_hook() if again else contextlib.nullcontext():
        got = run_all(
            graph, killer.callback, client=client, snapshot_every=snapshot_every, partition_size=partition_size
        )
    got[2][graph.root.name]["pause"] = 0.0  # the source's own pacing, not state
    if has_closes(program):  # a cluster run pulls the source (and stateful nodes) ahead of a close
        for name in ahead_of_closes(graph):
            del got[2][name], want[2][name]
            got[2].pop(f"{name} (keyed)", None), want[2].pop(f"{name} (keyed)", None)
    assert got[0] == want[0]
    assert got[1] == want[1]
    assert got[2] == want[2]
    return killer.kills


@random_in_background
@pytest.mark.timeout(360, method="thread")  # hypothesis would swallow a signal; room for fresh clusters
@kill_trials(1)  # more in `python -m bench --faults N`; kills of random programs below too
@given(
    programs(),
    st.floats(0.0, 1.5),
    st.integers(0, 2**16),
    st.sampled_from([(150, None), (None, 0.3), DEFAULT_SNAPSHOT_EVERY]),
    st.sampled_from([7, 20, 60]),
)
def test_random_programs_survive_a_holder_kill_on_a_local_cluster(killable, program, point, seed, every, size):
    assume(has_sequential(program))
    trial(killable, program, point, seed, every, partition_size=size)


@random_in_background
@pytest.mark.timeout(360, method="thread")
@kill_trials(2)
@given(programs(), st.floats(0.0, 1.5), st.integers(0, 2**16))
def test_random_programs_survive_a_holder_kill_on_an_external_cluster(external_killable, program, point, seed):
    assume(has_sequential(program))
    trial(external_killable, program, point, seed, (200, 0.5))


SHAPES = {
    "stateful": ("running", {}),
    "batch_size=5": ("batch", {"batch_size": 5, "stateless": True}),
    "BATCH_SIZE_ALL": ("all", {"stateless": None}),
}


@pytest.mark.timeout(240)  # room for a fresh cluster when a replacement worker is late
@pytest.mark.parametrize("shape", list(SHAPES))
def test_each_kind_of_sequential_node_survives_a_kill(killable, shape):
    kind, params = SHAPES[shape]
    program = (
        {"size": 0, "per_call": 2, "loud": True},
        [("map", {"op": "inc"}, [(kind, params, [("echo", {"stateless": True}, [])])])],
    )
    kills = trial(killable, program, 0.6, 1, (100, None))
    assert kills, "the run ended before the kill: nothing was tested"


@pytest.mark.timeout(240)  # room for a fresh cluster when a replacement worker is late
def test_a_kill_during_the_replay(killable, caplog):
    program = (
        {"size": 0, "per_call": 1, "loud": False},
        [("echo", {"stateless": False}, [("batch", {"batch_size": 3, "stateless": False}, [])])],
    )
    with caplog.at_level(logging.INFO, logger="pypiper_dask"):
        kills = trial(killable, program, 1.0, 2, (10**9, None), again=True)  # no cut: the replay starts at 0
    assert len(kills) == 2
    assert caplog.text.count("restored every sequential node") == 2


@pytest.mark.timeout(240)  # room for a fresh cluster when a replacement worker is late
def test_a_long_replay_is_sent_within_the_window(killable, caplog, monkeypatch):
    """A kill late in a run without cuts replays ~80 rounds: sent as the window allows, not at once.

    Sent at once, a holder ran the pushed steps far ahead of their own tasks and had forgotten
    a step's result when its task came to collect it (11 of 20 trials of this program failed).
    """
    from pypiper_dask.runtime.backends import DistributedBackend

    most = []
    submit = DistributedBackend.submit

    def counting(self, tasks):
        handle = submit(self, tasks)
        most.append((len(self.live), self.window))
        return handle

    monkeypatch.setattr(DistributedBackend, "submit", counting)
    program = (
        {"size": 0, "per_call": 2, "loud": True},
        [
            ("all", {"stateless": None}, []),
            ("filter", {"mod": 3}, [("filter", {"mod": 2}, [("explode", {"n": 2}, [("running", {}, [])])])]),
        ],
    )
    with caplog.at_level(logging.INFO, logger="pypiper_dask"):
        kills = trial(killable, program, 1.0, 7, (10**9, None), partition_size=7)  # after 600 items: 85 rounds
    assert kills
    replayed = [int(m) for m in re.findall(r"sending (\d+) partition\(s\) again", caplog.text)]
    assert replayed and replayed[0] > 40, "the kill came too early to replay many rounds"
    live, window = max(most)
    assert live <= 2 * window + 2  # the reorder buffer's bound, and one flush round per sequential node


class Locked(Node):
    """A batched node that holds a lock once it has run: its state cannot be pickled."""

    def run(self, data):
        self.lock = threading.Lock()
        self.emit(len(data))


@pytest.mark.timeout(240)  # room for a fresh cluster when a replacement worker is late
def test_a_state_that_cannot_be_pickled_warns_once_and_the_run_goes_on(killable, caplog):
    graph = N.Gen("g", size=3000) | Locked("locked", batch_size=3)
    result = Pipeline(graph, client=killable.client(), quiet=True, snapshot_every=(100, None)).run()
    assert result["locked"] == [3] * 1000
    warned = [r for r in caplog.records if "cannot be snapshotted" in r.getMessage()]
    assert len(warned) == 1
    assert "Node 'locked' cannot be snapshotted: its attribute 'lock' holds lock" in warned[0].getMessage()


@pytest.mark.timeout(240)  # room for a fresh cluster when a replacement worker is late
def test_without_snapshots_a_holder_kill_is_state_lost(killable):
    client = killable.client()
    graph = N.Gen("g", size=60_000, pause=0.001) | N.Running("total")
    killer = Killer(client, 500, random.Random(0), node="total-")  # this run's holder, not an old one
    with killer, pytest.raises(StateLostError, match=r"Node 'total' lived on"):
        Pipeline(graph, client=client, quiet=True, snapshot_every=False, partition_size=50).run(
            update_callback=killer.callback
        )
    assert killer.kills


def test_a_replay_leaves_out_rounds_from_before_the_restore_point():
    """A round of an earlier replay still out when a later cut became the point is not sent to holders past it."""
    from types import SimpleNamespace

    from pypiper_dask.compiler.plan import compile_plan
    from pypiper_dask.model.snapshot import Snapshot
    from pypiper_dask.runtime.recovery import Recovery

    plan = compile_plan(Snapshot.from_graph(N.Gen("g", size=3) | N.Running("r")))
    recovery = Recovery(plan, (10, None), able=True)
    rounds = {i: SimpleNamespace(index=i, results=None, failure=None) for i in range(10)}
    recovery.point, recovery.kept = 5, [rounds[6], rounds[7]]
    pending = [rounds[4], rounds[7], rounds[9], rounds[8]]  # 4: an old replay still out; 7: kept, replaying
    assert [r.index for r in recovery.replay_all(pending)] == [6, 7, 8, 9]


# -- kills combined with a node's failure, and with a stream left early (issue 19) -----------------


@random_in_background
@pytest.mark.timeout(360, method="thread")
@kill_trials(2)
@given(failing_programs(), st.floats(0.0, 1.0), st.integers(0, 2**16))
def test_random_programs_with_a_failing_node_survive_a_holder_kill(killable, failing, point, seed):
    """A holder killed before a node raises: what the run delivers before the failing call is still the reference's."""
    program, where, ledger = failing
    assume(has_sequential(program))
    text, values, exc = reference_until_error(build_failing(paced(program, SIZE, 0.0), where, ledger))
    assume(exc is not None)  # the node does raise (the draw may give an item it never receives)
    # The source items pulled when the failing call came (a run in the caller leaves its
    # source there): every round before the one holding the last of them is delivered
    # before the error, so a kill there always lands. Drawn items fail early: small rounds.
    counted = build_failing(paced(program, SIZE, 0.0), where, ledger)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(NodeError):
        Pipeline(counted, n_threads=1, quiet=True).run()
    before, partition = counted.root.pos, 2
    assume(before > 2 * partition)
    client = killable.client()
    graph = build_failing(paced(program, SIZE, PAUSE), where, ledger)
    buf, error, result = io.StringIO(), None, None
    killer = Killer(client, int(point * (before - partition)), random.Random(seed))
    with killer, contextlib.redirect_stdout(buf):
        try:
            result = Pipeline(graph, client=client, partition_size=partition).run(update_callback=killer.callback)
        except NodeError as raised:
            error = raised
    assert killer.kills, "the run ended before the kill"
    check_error(error, exc)
    assert buf.getvalue() == text
    assert dict(result if error is None else error.partial) == values


@random_in_background
@pytest.mark.timeout(360, method="thread")
@kill_trials(2)
@given(programs(reuse=True, names=True), st.floats(0.0, 1.0), st.floats(0.1, 1.0), st.integers(0, 2**16))
def test_random_streams_left_after_a_holder_kill_resume_with_nothing_lost(
    killable, tmp_path_factory, program, kill, leave, seed
):
    """The consumer of a checkpointed stream sees a holder's worker die, leaves later, and resumes: nothing lost."""
    assume(has_sequential(program))
    program = paced(program, 300, PAUSE)
    total = len(list(Pipeline(build(program), n_threads=1).stream()))
    assume(total > 2)
    leave_at = max(2, int(leave * total))
    kill_at = int(kill * (leave_at - 1))
    clients: list = []  # each run's: the resumed one's may be a fresh cluster's (see ReadyCluster)
    killed: list[str] = []

    def make(graph):
        clients.append(killable.client())
        return Pipeline(graph, client=clients[-1], partition_size=20)

    def kill_a_holder(taken: int) -> None:
        if taken == kill_at:  # a point in the run: the consumer's, while the run waits for it
            client = clients[0]
            address = random.Random(seed).choice(holders(client))
            os.kill(client.run(os.getpid, workers=[address])[address], signal.SIGKILL)
            killed.append(address)

    check_stream_left_and_resumed(program, leave_at, make, tmp_path_factory.mktemp("ck"), kill_a_holder)
    assert killed, "the stream ended before the kill"
    if clients[-1] is clients[0]:  # the same cluster: its scheduler drops the dead worker before it may close
        wait_gone(clients[0], killed)
