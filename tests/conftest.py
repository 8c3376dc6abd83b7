"""Shared fixtures: real clusters (a LocalCluster, and `dask scheduler`/`dask worker` processes)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
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
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=":0"
        ) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        yield client


@pytest.fixture(scope="session")
def local_client():
    """Shared by the tests that leave the cluster as they found it."""
    with two_worker_client() as client:
        yield client


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


@pytest.fixture(scope="session")
def external_cluster(tmp_path_factory):
    """Real `dask scheduler` and two `dask worker` processes on 127.0.0.1; yields the address."""
    folder = tmp_path_factory.mktemp("external")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    scheduler, address = start_scheduler(folder, env)
    procs = [scheduler]
    try:
        for _ in range(2):
            procs.append(
                subprocess.Popen(
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
            )
        from distributed import Client

        with Client(address, set_as_default=False) as client:
            client.wait_for_workers(2, timeout=60)
        yield address
    finally:
        for proc in reversed(procs):
            _kill_tree(proc)


def dask_processes() -> list[psutil.Process]:
    """Dask worker/scheduler/nanny processes descended from this test process."""
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            cmd = " ".join(child.cmdline())
        except psutil.Error:
            continue
        if "multiprocessing" in cmd or "dask" in cmd or "distributed" in cmd:
            found.append(child)
    return found


#: Fixtures that start a cluster: a test using one is a cluster test.
CLUSTER_FIXTURES = {"local_client", "external_cluster"}


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
