"""A live source that emits in bursts (issue 19, item 7): a burst's readings come out before the next is read.

The source's ``run(None)`` waits for its next reading; what it emitted before
must not wait with it. Here the source reads its next burst only once the
consumer has had every reading of the one before (it waits for a file the
consumer writes), so a run that holds a burst back until the next one never
ends its wait: the source gives up after a minute and says so. Nothing is
timed, so a busy machine cannot make this flake; main failed it by
construction (a burst's last readings came out with the next burst).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import cloudpickle
import pytest

from pypiper_dask import Node, Pipeline

cloudpickle.register_pickle_by_value(sys.modules[__name__])

#: Seconds the source waits for the consumer to have a burst before it gives up.
PATIENCE = 60.0


class Bursts(Node):
    """Bursts of three readings; before each burst after the first, waits for ``gates/<burst>`` to exist."""

    def setup(self, gates, bursts=3):
        self.bursts, self.calls = bursts, 0

    def run(self, data):
        reading = self.calls
        self.calls += 1
        if reading >= 3 * self.bursts:
            self.close()
            return
        burst = reading // 3
        if reading % 3 == 0 and burst:
            gate = Path(self.gates) / str(burst)
            deadline = time.monotonic() + PATIENCE
            while not gate.exists() and time.monotonic() < deadline:
                time.sleep(0.01)
            if not gate.exists():
                self.emit(f"burst {burst - 1} was held back")
                self.close()
                return
        self.emit((burst, reading))


class Pass(Node):
    def run(self, data):
        self.emit(data)


@pytest.mark.timeout(3 * PATIENCE)
@pytest.mark.parametrize("n_threads", [1, 2])
def test_each_burst_is_yielded_before_the_next_is_read(n_threads, tmp_path):
    graph = Bursts("bursts", gates=str(tmp_path)) | Pass("pass")
    yielded = []
    for _, item in Pipeline(graph, n_threads=n_threads, progress=False).stream():
        yielded.append(item)
        if isinstance(item, tuple) and item[1] % 3 == 2:  # a burst's last reading: let the next one come
            (tmp_path / str(item[0] + 1)).touch()
    assert yielded == [(b, r) for b in range(3) for r in range(3 * b, 3 * b + 3)]
