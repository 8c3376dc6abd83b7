"""What goes wrong — a node raises, a worker dies, Ctrl-C, no scheduler — and what the caller gets."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import traceback

import psutil
import pytest

from pypiper_dask import Node, NodeError, Pipeline, StateLostError
from pypiper_dask.errors import SchedulerError
from pypiper_dask.runtime import SyncTaskBackend
from tests import nodes as N
from tests.conftest import ROOT, dask_processes, two_worker_client


class Boom(Node):
    """Raises on one item; passes the rest on."""

    def setup(self, at: int = 5) -> None:
        self.at = at

    def run(self, data):
        if data == self.at or (isinstance(data, list) and self.at in data):
            raise ValueError(f"boom at {self.at}")
        self.emit(data)


class BoomSource(N.Gen):
    def run(self, data):
        if self.pos == 7:
            raise KeyError("source broke")
        super().run(data)


class Flaky(Node):
    """Fails the first call for each item; the retry succeeds."""

    def setup(self) -> None:
        self.failed = set()

    def run(self, data):
        if data not in self.failed:
            self.failed.add(data)
            raise ConnectionError(f"transient {data}")
        self.emit(data)


def graphs():
    """(where, graph, node that raises, item shown) for each place a node can raise."""
    big = 10**9  # the error must arrive long before such a stream ends
    yield "source", BoomSource("src", size=big) | N.Map("m"), "src", "None"
    yield "stateless chain", N.Gen("g", size=big) | N.Map("m", op="inc") | Boom("boom", at=6), "boom", "6"
    yield "stateful", N.Gen("g", size=big) | Boom("boom", at=5, stateless=False) | N.Map("m"), "boom", "5"
    yield (
        "barrier",
        N.Gen("g", size=20) | Boom("all", at=5, batch_size=Node.BATCH_SIZE_ALL),
        "all",
        "[0, 1, 2, 3, 4, 5, ...]",
    )
    yield "leaf", N.Gen("g", size=big) | Boom("leaf", at=9), "leaf", "9"


MODES = ["n_threads=1", "local cluster", "external cluster"]


def options(mode, request):
    if mode == "n_threads=1":
        return {"n_threads": 1}
    if mode == "local cluster":
        return {"client": request.getfixturevalue("local_client")}
    return {"client": request.getfixturevalue("external_cluster")}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", list(range(5)), ids=[g[0] for g in graphs()])
def test_a_node_that_raises_stops_the_run_with_its_name(case, mode, request):
    where, graph, node, item = list(graphs())[case]
    where_to = options(mode, request)  # a cluster fixture's start is not the run's
    start = time.monotonic()
    with pytest.raises(NodeError) as info:
        Pipeline(graph, quiet=True, **where_to).run()
    assert time.monotonic() - start < 30, "the error must not wait for the rest of the stream"
    err = info.value
    assert err.node == node
    assert f"Node {node!r}" in str(err)
    assert item in str(err)
    assert isinstance(err.__cause__, (ValueError, KeyError))
    if where != "source":
        # The traceback where the node ran is the cause's, shown once, with this file's line.
        assert not getattr(err, "__notes__", None)
        text = "".join(traceback.format_exception(err))
        assert text.count('raise ValueError(f"boom at {self.at}")') == 1, text
        assert f'File "{__file__}", line ' in text


class LockedError(Exception):
    """Cannot be pickled: it holds a lock."""

    def __init__(self, message):
        super().__init__(message)
        self.lock = threading.Lock()


class Locked(Node):
    def run(self, data):
        if data == 5:
            raise LockedError("cannot go at 5")
        self.emit(data)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["n_threads=1", "local cluster"])
@pytest.mark.parametrize("stateless", [True, False], ids=["stateless", "stateful"])
def test_an_exception_that_cannot_be_pickled_is_a_node_error_naming_its_type(mode, stateless, request):
    from pypiper_dask.worker.values import StandInError

    graph = N.Gen("g", size=10**9) | Locked("locked", stateless=stateless) | N.Map("m")
    with pytest.raises(NodeError) as info:
        Pipeline(graph, quiet=True, **options(mode, request)).run()
    err = info.value
    assert err.node == "locked"
    assert "Node 'locked' raised LockedError: cannot go at 5 on input 5." in str(err), err
    assert isinstance(err.__cause__, StandInError) and err.__cause__.type_name == "LockedError"
    text = "".join(traceback.format_exception(err))
    assert 'raise LockedError("cannot go at 5")' in text and "RuntimeError" not in text, text


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("policy", ["skip", "collect"])
def test_on_error_drops_and_reports_items(policy, mode, request, capsys):
    graph = N.Gen("g", size=40) | Boom("boom", at=13, on_error=policy) | N.Map("m", op="inc")
    result = Pipeline(graph, quiet=True, partition_size=7, **options(mode, request)).run()
    assert result["m"] == [i + 1 for i in range(40) if i != 13]
    assert [(e.node, e.item_repr) for e in result.errors] == [("boom", "13")]
    assert "ValueError: boom at 13" in result.errors[0].error
    assert result.errors[0].item == (13 if policy == "collect" else None)
    assert "1 item dropped by on_error" in repr(result)
    assert "node 'boom' dropped 1 item(s)" in capsys.readouterr().err


@pytest.mark.parametrize("mode", MODES[:2])
def test_retries_get_past_transient_failures(mode, request):
    graph = N.Gen("g", size=30) | Flaky("flaky", retries=1) | N.Map("m", op="inc")
    result = Pipeline(graph, quiet=True, **options(mode, request)).run()
    assert result["m"] == [i + 1 for i in range(30)]
    assert result.errors == []


class EmitsThenRaises(Node):
    """Emits its item, then raises at item ``at`` (the first ``fails`` calls with it)."""

    def setup(self, at: int, fails: int) -> None:
        self.failed: set = set()

    def run(self, data):
        self.emit(data)
        if data == self.at and len(self.failed) < self.fails:
            self.failed.add(len(self.failed))
            raise ValueError(f"after emitting {data}")


@pytest.mark.parametrize("mode", MODES[:2])
@pytest.mark.parametrize("how", ["retried", "skipped", "raised"])
def test_what_a_failing_call_emitted_goes_nowhere(how, mode, request):
    """A sequential run drops what a failing call emitted: so must a fused stage's leaf, which stores into its sink."""
    fails = 1 if how == "retried" else 10**6
    extra = {"retried": {"retries": 1}, "skipped": {"on_error": "skip"}, "raised": {}}[how]
    graph = N.Gen("g", size=40) | EmitsThenRaises("leaf", at=13, fails=fails, **extra)
    pipeline = Pipeline(graph, quiet=True, partition_size=7, **options(mode, request))
    if how == "raised":
        with pytest.raises(NodeError) as info:
            pipeline.run()
        assert info.value.partial["leaf"] == list(range(13))
        return
    assert pipeline.run()["leaf"] == [i for i in range(40) if how == "retried" or i != 13]


def test_retries_need_a_stateless_node():
    from pypiper_dask import OptionError

    with pytest.raises(OptionError, match=r"Node 'f': retries=2 needs a stateless node"):
        Flaky("f", retries=2, stateless=False)
    with pytest.raises(OptionError, match=r"Node 'f': on_error must be one of"):
        Flaky("f", on_error="ignore")


# -- workers that die --------------------------------------------------------------------


class Spin(Node):
    def setup(self, loops: int = 100) -> None:
        self.loops = loops

    def run(self, data):
        x = 0
        for i in range(self.loops):
            x += i
        self.emit(data * 2)


@pytest.fixture
def fresh_cluster():
    """A cluster of its own: these tests kill its workers."""
    with two_worker_client() as client:
        yield client


class KillAt:
    """An ``update_callback`` that SIGKILLs a worker once ``at`` source items were delivered.

    A point in the run, not a time: the kill lands mid-run however fast the machine is.
    """

    def __init__(self, client, at: int) -> None:
        self.pid = sorted(client.run(os.getpid).values())[0]
        self.at, self.killed_at = at, None

    def __call__(self, done: int, total) -> None:
        if done >= self.at and self.killed_at is None:
            os.kill(self.pid, signal.SIGKILL)
            self.killed_at = done


@pytest.mark.cluster
@pytest.mark.timeout(120)
def test_worker_killed_mid_run_stateless_output_is_exact(fresh_cluster):
    # Partitions of 50,000 ints (about 1.8 MiB by Dask's estimate) are scattered to the
    # workers, so the killed worker takes partitions not yet run with it.
    n, size = 400_000, 50_000
    kill = KillAt(fresh_cluster, at=2 * size)
    pipeline = Pipeline(N.Gen("g", size=n) | Spin("spin"), client=fresh_cluster, quiet=True, partition_size=size)
    result = pipeline.run(update_callback=kill)
    assert kill.killed_at is not None and kill.killed_at < n
    assert result["spin"] == [2 * i for i in range(n)]


class _Lost:
    """A round's future lost with its worker."""

    status = "cancelled"


class _ClientAfterALoss:
    """A client whose round was lost with a worker, and whose scheduler lists the workers left."""

    def __init__(self, alive: list[str]) -> None:
        self.alive = alive

    def gather(self, futures):
        from distributed.client import FutureCancelledError

        raise FutureCancelledError(("spin-0", 3), "lost dependencies")

    def scheduler_info(self, n_workers: int = 5) -> dict:
        return {"workers": {address: {} for address in self.alive}}


def test_partitions_of_a_round_lost_with_a_worker_are_sent_to_the_workers_left():
    # A partition scattered to a dead worker's address waits for distributed's connect
    # timeout (30 s): the run above stalled that long after each kill.
    from pypiper_dask.runtime.backends import DistributedBackend, _Round
    from pypiper_dask.runtime.loop import DataLost

    backend = DistributedBackend(client=_ClientAfterALoss(["tcp://b:1", "tcp://c:1"]))
    backend.plan = Pipeline(N.Gen("g", size=3) | Spin("spin")).plan
    backend.workers = ["tcp://a:1", "tcp://b:1"]  # a: the one that died
    lost = _Round()
    lost.fetch[0] = _Lost()
    [outcome] = backend.results_many([lost])
    assert isinstance(outcome, DataLost)
    assert backend.workers == ["tcp://b:1", "tcp://c:1"]
    assert backend._next_worker() == "tcp://b:1"


class _ScatterClient(_ClientAfterALoss):
    """A scatter to a worker the scheduler no longer runs times out, as distributed's does."""

    class scheduler:
        address = "tcp://127.0.0.1:8786"

    def __init__(self, alive: list[str]) -> None:
        super().__init__(alive)
        self.calls: list[tuple] = []

    def scatter(self, data, workers=None, timeout=None, **kwargs):
        self.calls.append((workers, timeout))
        if workers is not None and workers[0] not in self.alive:
            raise TimeoutError("No valid workers found")
        return {key: f"future of {key}" for key in data}


def test_a_partition_for_a_worker_that_died_goes_to_one_still_running(monkeypatch):
    from pypiper_dask.runtime.backends import DistributedBackend

    monkeypatch.setattr("time.sleep", lambda seconds: None)
    client = _ScatterClient(["tcp://127.0.0.1:2", "tcp://127.0.0.1:3"])
    backend = DistributedBackend(client=client)
    backend.workers = ["tcp://127.0.0.1:1", "tcp://127.0.0.1:2"]  # 1 died after it was chosen
    assert backend._scatter("k", [1, 2], "tcp://127.0.0.1:1") == ("future of k", "tcp://127.0.0.1:2")
    # Given up on after scatter_timeout (distributed would wait 30 s), then one that runs.
    assert client.calls == [(["tcp://127.0.0.1:1"], backend.scatter_timeout), (["tcp://127.0.0.1:2"], 1.0)]
    assert backend.scatter_timeout <= 1.0
    # No worker chosen: any one, waited for as long as distributed waits.
    client.calls.clear()
    backend._scatter("k2", [3])
    assert client.calls == [(None, None)]


@pytest.mark.cluster
@pytest.mark.timeout(120)
def test_stateful_node_whose_worker_dies_without_snapshots_fails_fast_and_names_it(fresh_cluster):
    # Kill the worker that holds the actor: learn where it is from the scheduler. (With
    # snapshots, the default, the node is restored instead: tests/test_recovery.py.)
    graph = N.Gen("g", size=10**9) | Spin("spin", loops=2000) | N.Running("total")
    pipeline = Pipeline(graph, client=fresh_cluster, quiet=True, snapshot_every=False)
    killed = {}

    def kill_actor_worker() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            who = fresh_cluster.run_on_scheduler(
                lambda dask_scheduler: [ws.address for ws in dask_scheduler.workers.values() if ws.actors]
            )
            if who:
                pid = fresh_cluster.run(os.getpid, workers=who)[who[0]]
                time.sleep(0.5)
                killed["at"] = time.monotonic()
                os.kill(pid, signal.SIGKILL)
                return
            time.sleep(0.05)

    threading.Thread(target=kill_actor_worker, daemon=True).start()
    with pytest.raises(StateLostError, match=r"Node 'total' lived on worker .* its state was lost") as info:
        pipeline.run()
    assert time.monotonic() - killed["at"] < 10
    assert info.value.node == "total"


# -- Ctrl-C, unreachable scheduler, loopback ---------------------------------------------------

INTERRUPTED = """
import sys, time
from pypiper_dask import Node, Pipeline

class Slow(Node):
    def setup(self):
        self.pos = 0
    def run(self, data):
        time.sleep(0.01)
        self.pos += 1
        self.emit(self.pos)

class Same(Node):
    def run(self, data):
        if data == 1:
            print("running", flush=True)  # the caller prints it once the first partition is back
        self.emit(data)

Pipeline(Slow("slow") | Same("same"), n_threads=2, quiet=True).run()
"""


def worker_processes(parent: psutil.Process) -> list[psutil.Process]:
    found = []
    for child in parent.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if "spawn_main" in " ".join(child.cmdline()):
                found.append(child)
    return found


@pytest.mark.cluster
@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("when", "how"),
    [("while it runs", "script"), ("while the cluster starts", "script"), ("while the cluster starts", "cli")],
)
def test_ctrl_c_cancels_closes_the_cluster_and_reraises(tmp_path, when, how):
    script = tmp_path / "interrupted.py"
    if how == "script":
        script.write_text(textwrap.dedent(INTERRUPTED))
        command = [sys.executable, str(script)]
    else:
        text = textwrap.dedent(INTERRUPTED).replace("Pipeline(Slow", "pipeline = Pipeline(Slow").replace(".run()", "")
        script.write_text(text)
        command = [sys.executable, "-m", "pypiper_dask.cli", "run", f"{script}:pipeline", "--n-threads", "2", "--quiet"]
    # A session of its own: Ctrl-C in a terminal signals the whole foreground process group,
    # the cluster's worker processes too, and so does os.killpg here.
    proc = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        start_new_session=True,
    )
    children: set[psutil.Process] = set()
    try:
        parent = psutil.Process(proc.pid)
        deadline = time.monotonic() + 60
        if when == "while the cluster starts":
            # The first worker process exists once the cluster has begun to start (it imports for a
            # second or more before the cluster is up; multiprocessing's resource tracker comes first).
            while not worker_processes(parent) and time.monotonic() < deadline:
                time.sleep(0.01)
            children.update(parent.children(recursive=True))
            os.killpg(proc.pid, signal.SIGINT)
        else:
            assert proc.stdout is not None
            assert proc.stdout.readline() == "running\n"  # the cluster is up and the run under way
            children.update(parent.children(recursive=True))
            assert len(children) >= 2, "the cluster's worker processes never started"
            os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    # Stopped: held back while the cluster started, raised once it was up (it was: it is closed).
    assert "running" not in out, "the run went on after Ctrl-C"
    if how == "cli":
        assert proc.returncode == 130 and err.rstrip().endswith("pypiper-dask: interrupted"), err
    else:
        assert proc.returncode != 0
        # The caller's KeyboardInterrupt, and not the workers' tracebacks (some 70 lines for two).
        assert err.rstrip().endswith("KeyboardInterrupt"), err
    assert "Dask Worker process" not in err and "reaping stray process" not in err, err
    assert len(err.splitlines()) < 45, err  # the caller's own traceback (~30 lines), not ~70 of workers'
    _, alive = psutil.wait_procs(children, timeout=15)
    assert not alive, f"left running: {alive}"


@pytest.mark.timeout(30)
def test_a_ctrl_c_during_a_call_into_distributed_is_raised_once_the_call_returns():
    # A KeyboardInterrupt raised inside distributed's sync() can leave its event loop's
    # thread stuck; the run loop's calls hold it and raise it when they return.
    from pypiper_dask.runtime.backends import DistributedBackend, _ctrl_c_after

    reached = []

    class Transport:
        @_ctrl_c_after
        def wait(self, handles, timeout):
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(100):  # the handler runs between these bytecodes, and raises nothing
                time.sleep(0.001)
            reached.append("the call's end")
            return []

    with pytest.raises(KeyboardInterrupt):
        Transport().wait([], 1.0)
    assert reached == ["the call's end"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back
    for name in ("submit", "wait", "results_many", "cancel", "final_states"):
        assert hasattr(getattr(DistributedBackend, name), "__wrapped__"), name


@pytest.mark.timeout(30)
def test_unreachable_scheduler_fails_within_the_time_limit():
    start = time.monotonic()
    with pytest.raises(SchedulerError, match=r"Could not reach the Dask scheduler at 'tcp://127.0.0.1:9' within 1.5 s"):
        Pipeline(N.Gen("g", size=3) | N.Map("m"), client="tcp://127.0.0.1:9", connect_timeout=1.5).run()
    assert time.monotonic() - start < 10
    assert issubclass(SchedulerError, ConnectionError)


class WhereAmI(Node):
    def run(self, data):
        from distributed import get_worker

        worker = get_worker()
        self.emit((worker.address, worker.scheduler.address))


@pytest.mark.cluster
def test_own_cluster_listens_on_loopback_only():
    before = {p.pid for p in dask_processes()}
    result = Pipeline(N.Gen("g", size=4) | WhereAmI("where"), n_threads=2, quiet=True).run()
    for worker, scheduler in result["where"]:
        assert worker.startswith("tcp://127.0.0.1:") and scheduler.startswith("tcp://127.0.0.1:")
    assert {p.pid for p in dask_processes()} <= before


@pytest.mark.cluster
@pytest.mark.timeout(120)
def test_tls_cluster_with_security():
    pytest.importorskip("cryptography")
    from distributed import LocalCluster
    from distributed.security import Security

    security = Security.temporary()
    with LocalCluster(
        n_workers=1,
        threads_per_worker=1,
        processes=False,
        protocol="tls",
        host="127.0.0.1",
        security=security,
        dashboard_address=":0",
    ) as cluster:
        assert cluster.scheduler_address.startswith("tls://")
        result = Pipeline(
            N.Gen("g", size=5) | N.Map("m", op="inc"), client=cluster.scheduler_address, security=security, quiet=True
        ).run()
        assert result["m"] == [1, 2, 3, 4, 5]
        with pytest.raises(SchedulerError) as lost:
            Pipeline(N.Gen("g", size=1) | N.Map("m"), client=cluster.scheduler_address, connect_timeout=2).run()
        assert "needs Pipeline(security=" in str(lost.value)


class LosesARoundAfterAFailure(SyncTaskBackend):
    """Rounds come back out of order: round 3 (a node's failure) first, then round 2, lost with its worker."""

    def __init__(self) -> None:
        super().__init__()
        self.window, self.n_workers = 4, 2
        self.first: dict[int, object] = {}

    def submit(self, tasks):
        index = tasks[0].key[1]
        result = super().submit(tasks)
        if index == 2 and 2 not in self.first:
            self.first[2] = result  # its first sending is lost
            return ("lost", 2)
        return result

    def wait(self, handles, timeout):
        held = [h for h in handles if h == ("lost", 2)]
        if held and len(handles) > len(held) and not getattr(self, "_held_once", False):
            self._held_once = True
            return [h for h in handles if h not in held]  # round 3's failure is back before round 2's loss
        return handles

    def results_many(self, handles):
        from pypiper_dask.runtime.loop import DataLost

        return [DataLost("lost with its worker") if h == ("lost", 2) else h for h in handles]


@pytest.mark.timeout(60)
def test_a_round_lost_after_a_later_one_failed_is_sent_again_and_the_failure_raised():
    """The lost round comes before the failed one: it must go again (the run once waited for ever)."""
    graph = N.Gen("g", size=40) | Boom("boom", at=35) | N.Map("m")
    with pytest.raises(NodeError, match="Node 'boom' raised"):
        Pipeline(graph, partition_size=10, quiet=True)._run_on(LosesARoundAfterAFailure())


class LosesTheFirstRoundLast(SyncTaskBackend):
    """Round 0 is lost with its worker after every later round, flushes included, came back."""

    def __init__(self) -> None:
        super().__init__()
        self.window, self.n_workers = 2, 1
        self.first: dict[int, object] = {}
        self.others_back = False

    def submit(self, tasks):
        index = tasks[0].key[1]
        if index in self.first:  # sent again: the first result, as a holder answers a step it ran
            return self.first[index]
        self.first[index] = super().submit(tasks)
        return ("held", 0) if index == 0 else self.first[index]

    def wait(self, handles, timeout):
        if ("held", 0) in handles and not self.others_back:
            self.others_back = len(self.first) == 6  # four source rounds and two flushes
            return [h for h in handles if h != ("held", 0)]
        return handles

    def results_many(self, handles):
        from pypiper_dask.runtime.loop import DataLost

        return [DataLost("lost with its worker") if h == ("held", 0) else h for h in handles]


@pytest.mark.timeout(60)
def test_a_lost_round_is_sent_again_when_the_rounds_after_it_fill_the_reorder_buffer():
    """Flush rounds take the buffer past its bound; the lost round before them must still go (it once hung)."""
    graph = N.Gen("g", size=40) | N.Batch("b", batch_size=3, stateless=True) | N.Running("r")
    want = Pipeline(graph, n_threads=1, quiet=True).run()
    backend = LosesTheFirstRoundLast()
    got = Pipeline(graph, partition_size=11, quiet=True)._run_on(backend)
    assert dict(got) == dict(want)
    assert backend.others_back  # the loss came after the flushes
