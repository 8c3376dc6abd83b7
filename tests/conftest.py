"""Shared fixtures: real clusters (a LocalCluster, `dask scheduler`/`dask worker` processes), a script runner."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import cloudpickle
import psutil
import pytest

from tests import nodes

# Workers (including ones started as separate `dask worker` processes) get the
# test node classes by value, so they need not import this package.
cloudpickle.register_pickle_by_value(nodes)

ROOT = Path(__file__).resolve().parent.parent

log = logging.getLogger("tests.clusters")


def run_script(
    tmp_path, source: str, timeout: float = 90, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run ``source`` as a script of its own, this checkout importable; its stdout and stderr as text.

    ``env``: the environment it starts from (this process's by default).
    """
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(source))
    return subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=tmp_path,
        env={**(os.environ if env is None else env), "PYTHONPATH": str(ROOT)},
    )


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def _kill_tree(proc: subprocess.Popen) -> None:
    try:
        parent = psutil.Process(proc.pid)
        family = [*parent.children(recursive=True), parent]
    except psutil.NoSuchProcess:
        return
    for p in family:
        p.terminate()
    _, alive = psutil.wait_procs(family, timeout=10)
    for p in alive:
        p.kill()


@contextlib.contextmanager
def two_worker_client():
    """A client of a 2-worker LocalCluster (single-threaded worker processes) on 127.0.0.1."""
    from distributed import Client

    with _two_worker_cluster() as cluster, Client(cluster, set_as_default=False) as client:
        yield client


@contextlib.contextmanager
def _two_worker_cluster():
    from pypiper_dask.runtime.cluster import local_cluster_class

    # The library's LocalCluster: the tests kill its workers, as a node that kills its process does.
    with local_cluster_class()(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=":0"
    ) as cluster:
        yield cluster


def _workers_ready(client, n: int, timeout: float) -> bool:
    """Whether ``n`` workers are up and each runs a task within ``timeout`` seconds.

    A nanny's new worker is listed before it can run tasks, and a killed one may still be
    listed for a moment: one task on each listed worker tells both apart.
    """
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        try:
            client.wait_for_workers(n, timeout=left)
            if len(client.run(os.getpid)) >= n:
                return True
        except Exception as exc:  # timed out, or a listed worker was gone: look again until the deadline
            log.debug("workers not ready yet: %r", exc)
        time.sleep(0.1)


class ReadyCluster:
    """A cluster shared by many tests, handed out only with all its workers ready to run tasks.

    Tests that SIGKILL workers leave it to the nanny to start a replacement, which on a busy
    machine can take longer than any fixed wait. :meth:`client` and :meth:`address` wait for
    the workers a bounded time and, if they do not all come, close this cluster and start a
    fresh one (logged with the reason), so a slow nanny never fails a test.

    ``start(stack)`` starts the cluster, registers its teardown on ``stack`` (an ExitStack)
    and returns what :class:`distributed.Client` connects to (a cluster or an address).
    """

    #: Seconds to wait for a used cluster's workers before starting a fresh cluster instead.
    WAIT = 30.0
    #: Seconds a fresh cluster's workers may take.
    FRESH_WAIT = 120.0

    def __init__(self, what: str, start, n_workers: int = 2) -> None:
        self.what, self._start_into, self.n_workers = what, start, n_workers
        self._stack: contextlib.ExitStack | None = None
        self._client = None
        self.restarts = 0

    def client(self):
        """A client of this cluster with all its workers ready (a fresh cluster if they were not)."""
        if self._client is not None:
            if _workers_ready(self._client, self.n_workers, self.WAIT):
                return self._client
            log.warning(
                "%s: %d workers not ready within %.0f s (a killed worker's replacement is late): starting a fresh one",
                self.what,
                self.n_workers,
                self.WAIT,
            )
            self.restarts += 1
            self.close()
        from distributed import Client

        stack = contextlib.ExitStack()
        try:
            target = self._start_into(stack)
            client = stack.enter_context(Client(target, set_as_default=False))
            if not _workers_ready(client, self.n_workers, self.FRESH_WAIT):
                raise TimeoutError(f"{self.what}: a fresh cluster's {self.n_workers} workers not ready in 120 s")
        except BaseException:
            stack.close()
            raise
        self._stack, self._client = stack, client
        return client

    def address(self) -> str:
        """The scheduler address of this cluster, its workers ready."""
        return self.client().scheduler.address

    def close(self) -> None:
        stack, self._stack, self._client = self._stack, None, None
        if stack is not None:
            stack.close()


def _start_local(stack: contextlib.ExitStack):
    return stack.enter_context(_two_worker_cluster())


@pytest.fixture(scope="session")
def _local_cluster():
    cluster = ReadyCluster("the shared LocalCluster", _start_local)
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def local_client(_local_cluster):
    """A client of the session's 2-worker LocalCluster, shared by the tests that leave it as they found it."""
    return _local_cluster.client()


@pytest.fixture(scope="module")
def killable():
    """A 2-worker LocalCluster for the tests that kill its workers: call ``.client()`` for each run.

    Not the cluster of ``local_client``: a replacement worker must not arrive during another
    test. One per module: ``.client()`` waits for the workers (or starts a fresh cluster); not
    one per session: closed after its module, a cluster that lost workers makes no background
    noise (distributed's threads drawing from `random`) while a later module's hypothesis test
    draws its examples.
    """
    cluster = ReadyCluster("the LocalCluster whose workers are killed", _start_local)
    try:
        yield cluster
    finally:
        cluster.close()


def start_scheduler(folder: Path, env: dict | None = None) -> tuple[subprocess.Popen, str]:
    """A real `dask scheduler` process on 127.0.0.1 (its files in ``folder``); it and its address."""
    sched_file = folder / "scheduler.json"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "distributed.cli.dask_scheduler",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--dashboard-address",
            ":0",
            "--scheduler-file",
            str(sched_file),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        cwd=folder,
    )
    try:
        _wait_for(lambda: sched_file.exists() and sched_file.stat().st_size > 0, 60, "the scheduler file")
    except BaseException:
        _kill_tree(proc)
        raise
    return proc, json.loads(sched_file.read_text())["address"]


def _start_external(folder: Path, stack: contextlib.ExitStack) -> str:
    """A `dask scheduler` and two `dask worker` processes on 127.0.0.1, ended by ``stack``; the address."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    scheduler, address = start_scheduler(folder, env)
    stack.callback(_kill_tree, scheduler)
    for _ in range(2):
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "distributed.cli.dask_worker",
                address,
                "--nthreads",
                "1",
                "--nworkers",
                "1",
                "--host",
                "127.0.0.1",
                "--no-dashboard",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
            cwd=folder,
        )
        stack.callback(_kill_tree, worker)  # ended before the scheduler: the stack unwinds in reverse
    return address


@pytest.fixture(scope="session")
def _external(tmp_path_factory):
    cluster = ReadyCluster(
        "the external cluster", lambda stack: _start_external(tmp_path_factory.mktemp("external"), stack)
    )
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def external_cluster(_external):
    """The address of real `dask scheduler` and two `dask worker` processes on 127.0.0.1, shared by the session."""
    return _external.address()


def dask_processes() -> list[psutil.Process]:
    """Dask worker/scheduler/nanny processes descended from this test process."""
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            cmd = " ".join(child.cmdline())
        except psutil.Error:
            continue
        if "resource_tracker" in cmd:  # multiprocessing's, one per process for its life once started
            continue
        if "multiprocessing" in cmd or "dask" in cmd or "distributed" in cmd:
            found.append(child)
    return found


#: Fixtures that start a cluster: a test using one is a cluster test.
CLUSTER_FIXTURES = {"local_client", "external_cluster", "killable", "_local_cluster", "_external"}


def _starts_a_cluster(params: dict) -> bool:
    """A parametrized case that runs on a cluster: ``n_threads`` of 2 or more, or a cluster mode."""
    for name, value in params.items():
        if isinstance(value, dict) and (value.get("n_threads", 1) or 1) > 1:
            return True
        if name == "n_threads" and isinstance(value, int) and value > 1:
            return True
        if isinstance(value, str) and "cluster" in value:
            return True
    return False


def pytest_collection_modifyitems(config, items):
    for item in items:
        callspec = getattr(item, "callspec", None)
        if CLUSTER_FIXTURES & set(getattr(item, "fixturenames", ())) or (
            callspec is not None and _starts_a_cluster(callspec.params)
        ):
            item.add_marker(pytest.mark.cluster)


@pytest.fixture(autouse=True)
def _clusters_only_under_the_marker(request, monkeypatch):
    """A test without the ``cluster`` marker may not start a cluster: ``-m "not cluster"`` then starts none."""
    if request.node.get_closest_marker("cluster") is not None:
        yield
        return
    import distributed

    def refuse(*args, **kwargs):
        raise AssertionError(f"{request.node.nodeid} starts a cluster: mark it with @pytest.mark.cluster")

    monkeypatch.setattr(distributed.LocalCluster, "__init__", refuse)
    monkeypatch.setattr(distributed.deploy.spec.SpecCluster, "__init__", refuse)
    yield
