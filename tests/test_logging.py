"""The library's own messages go to the ``pypiper_dask`` logger; distributed's INFO chatter stays off."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from pypiper_dask import Node, Pipeline
from tests import nodes as N


class Nap(Node):
    """Sleeps a millisecond an item: a run that lasts a while on two workers."""

    def run(self, data):
        time.sleep(0.001)
        self.emit(data)


@pytest.mark.cluster
@pytest.mark.timeout(120)
def test_two_runs_from_two_threads_leak_no_distributed_info_logs(capfd):
    results: dict = {}

    def run(name: str, size: int, node: Node) -> None:
        results[name] = Pipeline(N.Gen("g", size=size) | node, n_threads=2, quiet=True, progress=False).run()

    # Started together, the shorter run closes its cluster while the longer one still runs
    # (distributed's own silence_logs then turned INFO back on for the other: 19 lines, seen).
    threads = [threading.Thread(target=run, args=(name, size, Nap("nap"))) for name, size in [("a", 800), ("b", 1500)]]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results["a"]["nap"]) == 800 and len(results["b"]["nap"]) == 1500
    err = capfd.readouterr().err
    assert " - INFO - " not in err, err[:2000]
    assert err.count("pypiper_dask: dashboard at http://127.0.0.1:") == 2


@pytest.mark.cluster
@pytest.mark.timeout(60)
def test_the_logger_is_silenced_the_standard_way(capfd):
    ours = logging.getLogger("pypiper_dask")
    old = ours.level
    ours.setLevel(logging.WARNING)
    try:
        Pipeline(N.Gen("g", size=3) | N.Map("m"), n_threads=2, quiet=True, progress=False).run()
    finally:
        ours.setLevel(old)
    captured = capfd.readouterr()
    assert "dashboard at" not in captured.err
    assert captured.out == ""  # stdout stays the nodes' own
