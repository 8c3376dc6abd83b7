"""The test suite's own cluster fixture: a ReadyCluster hands out a fresh cluster when workers do not come back."""

from __future__ import annotations

import logging
import time

import pytest

from tests.conftest import ReadyCluster, _two_worker_cluster


@pytest.mark.cluster
@pytest.mark.timeout(240)
def test_a_cluster_whose_worker_does_not_come_back_is_replaced_by_a_fresh_one(caplog, monkeypatch):
    started = []

    def start(stack):
        started.append(stack.enter_context(_two_worker_cluster()))
        return started[-1]

    cluster = ReadyCluster("a test's cluster", start)
    monkeypatch.setattr(cluster, "WAIT", 1.0)  # the worker below never comes back: no need to wait long
    try:
        first = cluster.client()
        started[0].scale(1)  # a worker gone for good, as if its nanny never brought it back
        deadline = time.monotonic() + 60
        while len(first.scheduler_info(n_workers=-1)["workers"]) > 1:
            assert time.monotonic() < deadline, "scale(1) did not remove a worker in 60 s"
            time.sleep(0.05)  # scale() returns before the scheduler has dropped the worker
        with caplog.at_level(logging.WARNING, logger="tests.clusters"):
            second = cluster.client()
        assert second is not first and len(started) == 2 and cluster.restarts == 1
        assert len(second.scheduler_info(n_workers=-1)["workers"]) == 2
        assert "2 workers not ready within 1 s" in caplog.text
        assert cluster.client() is second  # ready: the same cluster again
    finally:
        cluster.close()
