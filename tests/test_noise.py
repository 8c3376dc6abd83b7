"""What a user sees of distributed's internals during a run: our lines, not its (issue 19 item 9)."""

from __future__ import annotations

import logging
import warnings

import pytest

from pypiper_dask import Node, Pipeline
from pypiper_dask.runtime.cluster import quiet_recovered_losses


class Big(Node):
    """Emits ``count`` items of ``mb`` megabytes each."""

    def setup(self, count: int, mb: int) -> None:
        self.pos = 0

    def run(self, data):
        if self.pos >= self.count:
            self.close()
            return
        self.emit(bytes([self.pos]) * (self.mb << 20))
        self.pos += 1


class Size(Node):
    def run(self, data):
        self.emit((data[0], len(data)))


@pytest.mark.cluster
@pytest.mark.timeout(180)
def test_large_items_do_not_travel_inside_the_task_graph(local_client):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # distributed's "Sending large graph of size ..." UserWarning
        result = Pipeline(Big("big", count=4, mb=20) | Size("size"), client=local_client, quiet=True).run()
    assert result["size"] == [(i, 20 << 20) for i in range(4)]


def test_losses_a_run_recovers_from_are_not_logged_while_it_runs(caplog):
    log = logging.getLogger("distributed.scheduler")
    line = "Removing worker 'tcp://w' caused the cluster to lose scattered data, which can't be recovered: {'k'}"
    with caplog.at_level(logging.ERROR, logger="distributed.scheduler"):
        with quiet_recovered_losses:
            log.error(line)
            log.error("another error")
        log.error(line + " (after the run)")
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["another error", line + " (after the run)"]
