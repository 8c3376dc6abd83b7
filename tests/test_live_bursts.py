"""A live source that emits in bursts (issue 19, item 7): a burst's readings come out before the silence ends.

The source's ``run(None)`` waits for its next reading; what it emitted before
must not wait with it. The bound is loose (2 s against 6 s of silence) so a
busy machine cannot make it flake, and the bursts start only once the first
item came out (the cluster is up and warm).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import cloudpickle
import pytest

from pypiper_dask import Node, Pipeline

cloudpickle.register_pickle_by_value(sys.modules[__name__])

SILENCE = 6.0


class Bursts(Node):
    """Emits "warm", waits for ``gate`` to exist, then bursts of three readings (``time.time()``) ``silence`` apart."""

    def setup(self, gate, bursts=2, silence=SILENCE):
        self.bursts, self.silence, self.calls = bursts, silence, 0

    def run(self, data):
        self.calls += 1
        if self.calls == 1:
            self.emit("warm")
            return
        if self.calls == 2:
            deadline = time.monotonic() + 60
            while not Path(self.gate).exists() and time.monotonic() < deadline:
                time.sleep(0.01)
        reading = self.calls - 2  # 0, 1, 2 | 3, 4, 5 | ...
        if reading >= 3 * self.bursts:
            time.sleep(self.silence)  # silent after the last burst too, then done
            self.close()
            return
        if reading % 3 == 0 and reading:
            time.sleep(self.silence)  # the silence before the next burst
        self.emit(time.time())


class Pass(Node):
    def run(self, data):
        self.emit(data)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("n_threads", [1, 2])
def test_each_reading_of_a_burst_is_yielded_before_the_silence_ends(n_threads, tmp_path):
    gate = tmp_path / "warm"
    graph = Bursts("bursts", gate=str(gate)) | Pass("pass")
    delays = []
    for _, item in Pipeline(graph, n_threads=n_threads, progress=False).stream():
        if item == "warm":
            gate.touch()
            continue
        delays.append(time.time() - item)
    assert len(delays) == 6
    assert max(delays) < 2.0, [round(d, 2) for d in delays]
