"""A cluster with no worker when a run starts: wait for one within a bound, then a clear error."""

from __future__ import annotations

import logging
import os
import signal
import time

import pytest

from pypiper_dask import Pipeline, PipelineError
from tests import nodes as N
from tests.conftest import _kill_tree, start_scheduler

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(180)]


@pytest.fixture
def bare_scheduler(tmp_path):
    """A real `dask scheduler` with no worker; yields its address."""
    proc, address = start_scheduler(tmp_path)
    try:
        yield address
    finally:
        _kill_tree(proc)


@pytest.mark.parametrize("stateful", [False, True], ids=["stateless", "stateful"])
def test_a_scheduler_without_workers_is_named_in_a_pipeline_error(bare_scheduler, stateful, monkeypatch, caplog):
    from pypiper_dask.runtime.backends import DistributedBackend

    monkeypatch.setattr(DistributedBackend, "wait_for_first_worker", 2.0)
    graph = N.Gen("gen", size=10) | N.Running("total") if stateful else N.Gen("gen", size=10) | N.Map("sq")
    with caplog.at_level(logging.WARNING, logger="pypiper_dask"), pytest.raises(PipelineError) as info:
        Pipeline(graph, client=bare_scheduler, quiet=True).run()
    assert bare_scheduler in str(info.value) and "No worker is connected" in str(info.value)
    assert f"no worker is connected to the Dask scheduler at {bare_scheduler}" in caplog.text


def test_a_kept_cluster_whose_workers_died_runs_on_their_replacements():
    graph = N.Gen("gen", size=200) | N.Map("sq") | N.Running("total")
    want = dict(Pipeline(graph, n_threads=1, quiet=True).run())
    with Pipeline(graph, n_threads=2, quiet=True) as p:
        assert dict(p.run()) == want
        client = p._held.client
        pids = client.run(os.getpid)
        for pid in pids.values():
            os.kill(pid, signal.SIGKILL)
        time.sleep(0.5)  # as a user would: the nannies are still starting new workers
        assert dict(p.run()) == want
