"""A live source that emits in bursts (issue 19, item 7): a burst's readings come out before the silence ends.

The source's ``run(None)`` waits for its next reading; what it emitted before
must not wait with it: each reading is yielded before the next burst is read
(6 s later), which a busy machine cannot make flake, and which main failed by
construction (a burst's last readings came out with the next burst). The
bursts start only once the first item came out (the cluster is up and warm).
"""

from __future__ import annotations

import itertools
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
    yielded = []  # (emitted at, yielded at)
    for _, item in Pipeline(graph, n_threads=n_threads, progress=False).stream():
        if item == "warm":
            gate.touch()
            continue
        yielded.append((item, time.time()))
    assert len(yielded) == 6
    bursts = [yielded[i : i + 3] for i in range(0, 6, 3)]
    for burst, after in itertools.pairwise(bursts):
        next_read = min(emitted for emitted, _ in after)
        late = [round(at - next_read, 2) for _, at in burst if at >= next_read]
        assert not late, f"yielded {late} s after the next burst was read"
    delays = [at - emitted for emitted, at in yielded]
    assert max(delays) < SILENCE, [round(d, 2) for d in delays]
