"""A cluster the run did not start is checked first: workers that cannot run its tasks fail it with one clear error."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import cloudpickle
import pytest

import pypiper_dask
from pypiper_dask import Pipeline, PipelineError, WorkerEnvironmentError
from pypiper_dask.runtime import worker_environment as W
from tests import nodes as N
from tests.conftest import ROOT, _kill_tree, _wait_for

#: A preload that makes a worker's environment one without pypiper_dask (this venv has it installed).
NO_PYPIPER_DASK = """
import sys
from importlib.abc import MetaPathFinder


class _Hide(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "pypiper_dask" or name.startswith("pypiper_dask."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, _Hide())
"""


def _start(folder: Path, name: str, worker_env: dict, preload: Path | None) -> tuple[list, Path]:
    """A `dask scheduler` and one `dask worker` (with ``worker_env``), started, not waited for."""
    base = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    sched_file = folder / f"{name}.json"
    procs = [
        subprocess.Popen(
            [
                *(sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0"),
                *("--dashboard-address", ":0", "--scheduler-file", str(sched_file)),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=base,
            cwd=folder,
        )
    ]
    worker = [sys.executable, "-m", "distributed.cli.dask_worker", "--scheduler-file", str(sched_file)]
    worker += ["--nthreads", "1", "--no-nanny", "--host", "127.0.0.1", "--no-dashboard"]
    if preload is not None:
        worker += ["--preload", str(preload)]
    procs.append(
        subprocess.Popen(
            worker, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**base, **worker_env}, cwd=folder
        )
    )
    return procs, sched_file


@pytest.fixture(scope="module")
def odd_clusters(tmp_path_factory):
    """Two real clusters of one worker each: one without pypiper_dask, one with another version of it."""
    folder = tmp_path_factory.mktemp("odd")
    (folder / "no_pypiper_dask.py").write_text(NO_PYPIPER_DASK)
    fake = folder / "fake" / "pypiper_dask"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text('__version__ = "9.9.9"\n')
    (fake / "worker.py").write_text("")
    procs: list = []
    try:
        started = {
            "bare": _start(folder, "bare", {}, folder / "no_pypiper_dask.py"),
            "other": _start(folder, "other", {"PYTHONPATH": str(folder / "fake")}, None),
        }
        procs = [p for ps, _ in started.values() for p in ps]
        from distributed import Client

        addresses = {}
        for kind, (_, sched_file) in started.items():
            _wait_for(lambda f=sched_file: f.exists() and f.stat().st_size > 0, 60, "the scheduler file")
            addresses[kind] = json.loads(sched_file.read_text())["address"]
            with Client(addresses[kind], set_as_default=False) as client:
                client.wait_for_workers(1, timeout=60)
        yield addresses
    finally:
        for proc in reversed(procs):
            _kill_tree(proc)


def _graph():
    return N.Gen("gen", size=5) | N.Map("sq") | N.Running("total")


def _worker_of(address: str) -> str:
    from distributed import Client

    with Client(address, set_as_default=False) as client:
        (worker,) = client.scheduler_info(n_workers=-1)["workers"]
    return worker


def test_the_probe_goes_by_value_and_runs_where_pypiper_dask_cannot_be_imported(tmp_path):
    (tmp_path / "no_pypiper_dask.py").write_text(NO_PYPIPER_DASK)
    (tmp_path / "probe.pkl").write_bytes(cloudpickle.dumps(W.worker_probe()))
    code = "import no_pypiper_dask, pickle; print(repr(pickle.load(open('probe.pkl', 'rb'))()))"
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60
    )
    assert done.returncode == 0, done.stderr
    found = eval(done.stdout)
    assert found["pypiper_dask"] is None and "No module named 'pypiper_dask'" in found["error"]
    assert found["dask"] == W.local_environment()["dask"]


def test_the_message_names_each_worker_what_differs_and_the_command():
    mine = {"python": "3.11.7", "dask": "2026.8.0", "distributed": "2026.8.0", "cloudpickle": "3.1.3"}
    mine["pypiper_dask"] = pypiper_dask.__version__
    bad = {
        "tcp://b:2": W.environment_problems(mine, dict(mine, pypiper_dask=None, error="ModuleNotFoundError: x")),
        "tcp://a:1": W.environment_problems(mine, dict(mine, pypiper_dask=None, error="ModuleNotFoundError: x")),
        "tcp://c:3": W.environment_problems(mine, dict(mine, distributed="2025.1.0", python="3.10.4")),
    }
    assert W._message("tcp://s:8786", 4, bad, mine).splitlines() == [
        "3 of 4 workers of the cluster at tcp://s:8786 cannot run this pipeline's tasks:",
        "  tcp://a:1, tcp://b:2: cannot import pypiper_dask (ModuleNotFoundError: x)",
        "  tcp://c:3: python 3.10.4 (here 3.11.7); distributed 2025.1.0 (here 2026.8.0)",
        "Fix: in the workers' environment, use Python 3.11 there, with python -m pip install "
        f'{ROOT} "distributed==2026.8.0"; then restart the workers.',
    ]
    assert issubclass(WorkerEnvironmentError, PipelineError)


class FakeClient:
    """What check_workers uses of a Client: run, scheduler_info and the scheduler's address."""

    def __init__(self, answers):
        self.answers = answers  # worker -> what the probe returns there (or the error it ended with)
        self.asked = []
        self.scheduler = type("Scheduler", (), {"address": "tcp://s:8786"})()

    def scheduler_info(self, n_workers=-1):
        return {"workers": {w: {} for w in self.answers}}

    def run(self, function, workers=None, on_error="raise"):
        assert on_error == "return"
        self.asked.append(workers)
        answer = function()
        return {w: answer if a is None else a for w, a in self.answers.items() if workers is None or w in workers}


def test_workers_are_asked_once_per_client_and_a_worker_that_left_is_not_a_problem():
    client = FakeClient({"tcp://a:1": None, "tcp://gone:2": OSError("connection reset")})
    W.check_workers(client)
    del client.answers["tcp://gone:2"]  # the scheduler let it go
    W.check_workers(client)
    assert client.asked == [None]  # all at first; then the same set: nobody to ask
    client.answers["tcp://new:3"] = None
    W.check_workers(client)
    assert client.asked == [None, ["tcp://new:3"]]  # only those not seen fit before
    client.answers["tcp://old:4"] = dict(W.local_environment(), dask="2020.1.0")
    with pytest.raises(WorkerEnvironmentError, match=r"tcp://old:4: dask 2020\.1\.0 \(here ") as caught:
        W.check_workers(client)
    assert list(caught.value.workers) == ["tcp://old:4"]
    assert str(caught.value).startswith("1 of 3 workers of the cluster at tcp://s:8786 cannot run")


@pytest.mark.cluster
@pytest.mark.timeout(120)
def test_a_fit_cluster_is_checked_once_per_client_and_set_of_workers(external_cluster, monkeypatch):
    from distributed import Client

    with Client(external_cluster, set_as_default=False) as client:
        calls = []
        real_run = client.run
        monkeypatch.setattr(client, "run", lambda *a, **k: calls.append(k.get("workers")) or real_run(*a, **k))
        W.check_workers(client)
        W.check_workers(client)
        assert calls == [None]  # all workers once, then nothing new to ask
        result = Pipeline(_graph(), client=client, quiet=True).run()
        assert result["total"][-1] == (5, sum(i * i for i in range(5)))
        assert calls == [None]


@pytest.mark.cluster
@pytest.mark.timeout(180)
@pytest.mark.parametrize("how", ["address", "client"])
def test_workers_without_pypiper_dask_fail_the_run_at_once_saying_what_to_install(odd_clusters, how):
    from distributed import Client

    address = odd_clusters["bare"]
    worker = _worker_of(address)
    with contextlib.ExitStack() as stack:
        client = address if how == "address" else stack.enter_context(Client(address, set_as_default=False))
        began = time.monotonic()
        with pytest.raises(WorkerEnvironmentError) as caught:
            Pipeline(_graph(), client=client, quiet=True).run()
        took = time.monotonic() - began
    assert took < 30, took  # no wait for tasks that never run
    assert str(caught.value).splitlines() == [
        f"1 of 1 workers of the cluster at {address} cannot run this pipeline's tasks:",
        f"  {worker}: cannot import pypiper_dask (ModuleNotFoundError: No module named 'pypiper_dask')",
        f"Fix: in the workers' environment, python -m pip install {ROOT}; then restart the workers.",
    ]
    assert caught.value.workers == {
        worker: ["cannot import pypiper_dask (ModuleNotFoundError: No module named 'pypiper_dask')"]
    }


@pytest.mark.cluster
@pytest.mark.timeout(180)
def test_workers_with_another_version_fail_the_run_naming_both_versions(odd_clusters):
    address = odd_clusters["other"]
    worker = _worker_of(address)
    with pytest.raises(WorkerEnvironmentError) as caught:
        Pipeline(_graph(), client=address, quiet=True).run()
    assert str(caught.value).splitlines()[1:] == [
        f"  {worker}: pypiper_dask 9.9.9 (here {pypiper_dask.__version__})",
        f"Fix: in the workers' environment, python -m pip install {ROOT}; then restart the workers.",
    ]


CLI_SCRIPT = """
from pypiper_dask import Node, Pipeline

class Gen(Node):
    def setup(self, size):
        self.pos = 0

    def run(self, data):
        if self.pos < self.size:
            self.emit(self.pos)
            self.pos += 1
        else:
            self.close()

pipeline = Pipeline(Gen("gen", size=5))
"""


@pytest.mark.cluster
@pytest.mark.timeout(180)
def test_the_cli_says_it_in_the_message_alone(odd_clusters, tmp_path):
    (tmp_path / "jobs.py").write_text(textwrap.dedent(CLI_SCRIPT))
    done = subprocess.run(
        [sys.executable, "-m", "pypiper_dask.cli", "run", "jobs.py:pipeline", "--scheduler", odd_clusters["bare"]],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines[0] == (
        f"pypiper-dask: WorkerEnvironmentError: 1 of 1 workers of the cluster at {odd_clusters['bare']} "
        "cannot run this pipeline's tasks:"
    )
    assert lines[-1].startswith("Fix: in the workers' environment, python -m pip install")
