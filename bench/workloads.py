"""The workloads of shared/docs/bench.md: nodes, serial versions, expected outputs.

Everything is top-level so multiprocessing and Dask can pickle it by reference.
"""

from __future__ import annotations

import itertools
import os
import time
from dataclasses import dataclass, field
from typing import Any

from pypiper_dask import Node

# -- the CPU-bound stage of W2 ---------------------------------------------------------

LOOPS = {"n": 20_000}  # calibrated by calibrate() so that spin() takes ~2 ms


def spin(x: int, loops: int) -> int:
    acc = x
    for i in range(loops):
        acc = (acc * 31 + i) % 1_000_003
    return acc


def calibrate(target: float = 0.002, into: dict | None = None) -> int:
    """Loops of ``spin`` that take ``target`` seconds here; stored in ``into`` (W2's ``LOOPS`` by default)."""
    loops = 20_000
    for _ in range(3):
        start = time.perf_counter()
        for x in range(20):
            spin(x, loops)
        per_call = (time.perf_counter() - start) / 20
        loops = max(100, int(loops * target / per_call))  # 100: T9's 0.5 ms unit on a slow machine
    (LOOPS if into is None else into)["n"] = loops
    return loops


# -- nodes (pyPiper API; the same classes run on pyPiper and on pypiper_dask) -------------


def make_nodes(base: type) -> dict[str, type]:
    """Node classes for the workloads, subclassing ``base`` (pyPiper's or our Node)."""

    class Source(base):
        def setup(self, size):
            self.size = size
            self.pos = 0

        def run(self, data):
            if self.pos < self.size:
                self.emit(self.pos)
                self.pos += 1
            else:
                self.close()

    class Square(base):
        def run(self, data):
            self.emit(data * data)

    class AddOne(base):
        def run(self, data):
            self.emit(data + 1)

    class Double(base):
        def run(self, data):
            self.emit(data * 2)

    class Spin(base):
        def setup(self, loops):
            self.loops = loops

        def run(self, data):
            self.emit(spin(data, self.loops))

    class SumAll(base):
        def setup(self):
            self.batch_size = base.BATCH_SIZE_ALL

        def run(self, data):
            self.emit(sum(data))

    class RunningSum(base):
        def setup(self):
            self.total = 0

        def run(self, data):
            self.total += data
            self.emit(self.total)

    return {c.__name__: c for c in (Source, Square, AddOne, Double, Spin, SumAll, RunningSum)}


OURS = make_nodes(Node)


@dataclass
class Workload:
    id: str
    n: int
    what: str
    leaves: tuple[str, ...]
    stateful: tuple[str, ...] = field(default_factory=tuple)


WORKLOADS = {
    "W1": Workload("W1", 200_000, "square → add one", ("add_one",)),
    "W2": Workload("W2", 2_000, "~2 ms pure-Python loop → add one", ("add_one",)),
    "W3": Workload("W3", 100_000, "square → BATCH_SIZE_ALL sum", ("sum",)),
    "W4": Workload("W4", 100_000, "square → stateful running sum", ("running",), ("running",)),
    "W5": Workload("W5", 100_000, "source → [double, square]", ("double", "square")),
    "W7": Workload("W7", 10, "square", ("square",)),
}


def size(wid: str) -> int:
    """The workload's N; ``PYPIPER_DASK_BENCH_N`` overrides it (the tests' small runs)."""
    override = os.environ.get("PYPIPER_DASK_BENCH_N")
    return int(override) if override else WORKLOADS[wid].n


def graph(wid: str, nodes: dict[str, type], n: int | None = None) -> Any:
    """The workload's node graph, built from ``nodes`` (ours or pyPiper's)."""
    count = n or size(wid)
    src = nodes["Source"]("source", size=count)
    if wid == "W1":
        return src | nodes["Square"]("square") | nodes["AddOne"]("add_one")
    if wid == "W2":
        return src | nodes["Spin"]("spin", loops=LOOPS["n"]) | nodes["AddOne"]("add_one")
    if wid == "W3":
        return src | nodes["Square"]("square") | nodes["SumAll"]("sum")
    if wid == "W4":
        running = nodes["RunningSum"]("running")
        if nodes is OURS:
            running.stateless = False
        return src | nodes["Square"]("square") | running
    if wid == "W5":
        return src | [nodes["Double"]("double"), nodes["Square"]("square")]
    if wid == "W7":
        return src | nodes["Square"]("square")
    raise KeyError(wid)


# -- serial versions and per-item functions for Pool / dask.bag -------------------------------


def sq(x: int) -> int:
    return x * x


def inc(x: int) -> int:
    return x + 1


def dbl(x: int) -> int:
    return x * 2


def w1_item(x: int) -> int:
    return x * x + 1


def w2_item(x: int) -> int:
    return spin(x, LOOPS["n"]) + 1


def w2_item_loops(x: int, loops: int) -> int:
    return spin(x, loops) + 1


def w5_item(x: int) -> tuple[int, int]:
    return x * 2, x * x


def serial(wid: str, n: int | None = None) -> dict[str, list]:
    """The reference output: a plain generator chain, no nodes."""
    xs = range(n or size(wid))
    if wid == "W1":
        return {"add_one": list(inc(y) for y in (sq(x) for x in xs))}
    if wid == "W2":
        return {"add_one": list(inc(y) for y in (spin(x, LOOPS["n"]) for x in xs))}
    if wid == "W3":
        return {"sum": [sum(sq(x) for x in xs)]}
    if wid == "W4":
        return {"running": list(itertools.accumulate(sq(x) for x in xs))}
    if wid == "W5":
        return {"double": [dbl(x) for x in xs], "square": [sq(x) for x in xs]}
    if wid == "W7":
        return {"square": [sq(x) for x in xs]}
    raise KeyError(wid)


# -- the scaling workloads S1-S5 (shared/docs/bench.md, "Scaling past two workers") ----------
#
# Items sleep instead of computing: a sleeping task holds its worker without a core, so
# 8 single-threaded workers on a 2-core machine show the waiting the engine causes.


@dataclass
class ScaleWorkload:
    id: str
    what: str
    leaves: tuple[str, ...]
    skew: bool = False


SCALE_N = 3000
SLEEP = {"ms": 2.0, "long_ms": 40.0, "every": 50}  # S2: one item in `every` sleeps long_ms

SCALE_WORKLOADS = {
    "S1": ScaleWorkload("S1", "sleep → leaf", ("leaf",)),
    "S2": ScaleWorkload("S2", "sleep (1 in 50: 40 ms) → leaf", ("leaf",), skew=True),
    "S3": ScaleWorkload("S3", "sleep → stateful running sum", ("running",)),
    "S4": ScaleWorkload("S4", "sleep → batch_size=10 sum", ("batch",)),
    "S5": ScaleWorkload("S5", "sleep → [BATCH_SIZE_ALL sum, leaf]", ("sum", "leaf")),
}


def sleep_ms(x: int, skew: bool, ms: float, long_ms: float, every: int) -> float:
    """Item ``x``'s nominal sleep in milliseconds."""
    return long_ms if skew and x % every == 0 else ms


def nominal_sleep(sid: str, n: int, sleep: dict | None = None) -> float:
    """The items' total nominal sleep in seconds (S1 at N=3000: 6 s; S2: 60 × 40 ms + 2940 × 2 ms)."""
    s = sleep or SLEEP
    skew = SCALE_WORKLOADS[sid].skew
    return sum(sleep_ms(x, skew, s["ms"], s["long_ms"], s["every"]) for x in range(n)) / 1000


def sleep_item(x: int, skew: bool, ms: float, long_ms: float, every: int) -> int:
    """Sleep for item ``x`` and return it (the per-item function of dask.bag and the ThreadPool)."""
    time.sleep(sleep_ms(x, skew, ms, long_ms, every) / 1000)
    return x


def batch_sums(items: Any, size: int = 10) -> list[int]:
    """Sums of consecutive ``size``-item batches (the last may be shorter)."""
    items = list(items)
    return [sum(items[i : i + size]) for i in range(0, len(items), size)]


class Sleep(Node):
    """Sleeps for each item (``sleep_ms``), then emits it unchanged."""

    def setup(self, skew=False, ms=2.0, long_ms=40.0, every=50):
        self.skew, self.ms, self.long_ms, self.every = skew, ms, long_ms, every

    def run(self, data):
        time.sleep(sleep_ms(data, self.skew, self.ms, self.long_ms, self.every) / 1000)
        self.emit(data)


class Leaf(Node):
    """Emits each item unchanged."""

    def run(self, data):
        self.emit(data)


class ScaleRunningSum(Node):
    """A stateful running sum: one instance sees every item, in order."""

    def setup(self):
        self.total = 0
        self.stateless = False

    def run(self, data):
        self.total += data
        self.emit(self.total)


class BatchSum(Node):
    """Sums each batch of 10 items."""

    def setup(self):
        self.batch_size = 10

    def run(self, data):
        self.emit(sum(data))


class SumEverything(Node):
    """One sum of every item (``BATCH_SIZE_ALL``)."""

    def setup(self):
        self.batch_size = Node.BATCH_SIZE_ALL

    def run(self, data):
        self.emit(sum(data))


def scale_graph(sid: str, n: int = SCALE_N, sleep: dict | None = None) -> Any:
    """S1-S5 as a pypiper_dask node graph."""
    s = sleep or SLEEP
    src = OURS["Source"]("source", size=n)
    slept = src | Sleep("sleep", skew=SCALE_WORKLOADS[sid].skew, ms=s["ms"], long_ms=s["long_ms"], every=s["every"])
    if sid in ("S1", "S2"):
        return slept | Leaf("leaf")
    if sid == "S3":
        return slept | ScaleRunningSum("running")
    if sid == "S4":
        return slept | BatchSum("batch")
    if sid == "S5":
        return slept | [SumEverything("sum"), Leaf("leaf")]
    raise KeyError(sid)


def scale_serial(sid: str, n: int = SCALE_N) -> dict[str, list]:
    """S1-S5's expected output (the sleeps change no item, so nothing sleeps here)."""
    xs = range(n)
    if sid in ("S1", "S2"):
        return {"leaf": list(xs)}
    if sid == "S3":
        return {"running": list(itertools.accumulate(xs))}
    if sid == "S4":
        return {"batch": batch_sums(xs)}
    if sid == "S5":
        return {"sum": [sum(xs)], "leaf": list(xs)}
    raise KeyError(sid)


# -- T9: the skewed CPU load (shared/docs/bench.md, "Third round") ---------------------------

SKEW_N = (1000, 4000)
SKEW_UNIT = {"n": 5_000}  # loops of spin() for ~0.5 ms, calibrated once per run (calibrate(0.0005, SKEW_UNIT))


def skew_units(x: int) -> int:
    """Item ``x``'s work in units of ~0.5 ms: 1 to 7, ~4 on average."""
    return (x * 7919) % 7 + 1


def skew_item(x: int, loops: int) -> int:
    """Item ``x``'s pure-Python loop: ``skew_units(x)`` units of ``loops`` iterations."""
    return spin(x, loops * skew_units(x))


class SkewSpin(Node):
    """Runs ``skew_item`` on each item."""

    def setup(self, loops=5_000):
        self.loops = loops

    def run(self, data):
        self.emit(skew_item(data, self.loops))


def skew_graph(n: int, loops: int) -> Any:
    """source → the skewed loop → a leaf."""
    return OURS["Source"]("source", size=n) | SkewSpin("skew", loops=loops) | Leaf("leaf")


def skew_serial(n: int, loops: int) -> dict[str, list]:
    return {"leaf": [skew_item(x, loops) for x in range(n)]}


# -- T13: allocation-heavy numpy (framed FFTs of synthetic audio, then a running mean) --------

NUMPY_N = 400
AUDIO = {"seconds": 5.0, "rate": 16_000, "frame": 512, "hop": 256}


def audio_features(x: int, seconds: float = 3.0, rate: int = 16_000, frame: int = 512, hop: int = 256) -> Any:
    """Clip ``x`` (a tone plus seeded noise), framed and windowed, its mean log magnitude spectrum.

    Each call allocates arrays of a few hundred KB (the signal, the frames, the
    spectrum): what makes a worker's malloc settings matter.
    """
    import numpy as np

    rng = np.random.default_rng(x)
    t = np.arange(int(seconds * rate)) / rate
    signal = np.sin(2 * np.pi * (110 + (x % 24) * 20) * t) + 0.1 * rng.standard_normal(t.size)
    frames = np.lib.stride_tricks.sliding_window_view(signal, frame)[::hop] * np.hanning(frame)
    return np.log1p(np.abs(np.fft.rfft(frames, axis=1))).mean(axis=0)


def audio_loop(n: int, start: int = 0) -> float:
    """Seconds ``n`` calls of ``audio_features`` take in the calling process (a worker's or a plain one)."""
    begin = time.perf_counter()
    for x in range(start, start + n):
        audio_features(x, **AUDIO)
    return time.perf_counter() - begin


class Features(Node):
    """Each clip's feature vector (``audio_features``)."""

    def setup(self, seconds=3.0, rate=16_000, frame=512, hop=256):
        self.audio = {"seconds": seconds, "rate": rate, "frame": frame, "hop": hop}

    def run(self, data):
        self.emit(audio_features(data, **self.audio))


class RunningMean(Node):
    """Stateful: the running mean of every vector so far, emitted as a tuple of floats."""

    def setup(self):
        self.total = None
        self.count = 0
        self.stateless = False

    def run(self, data):
        self.total = data.copy() if self.total is None else self.total + data
        self.count += 1
        self.emit(tuple((self.total / self.count).tolist()))


def running_means(vectors: Any) -> list[tuple]:
    """The running mean of ``vectors`` as ``RunningMean`` emits it (the serial and Pool side)."""
    out, total = [], None
    for count, v in enumerate(vectors, 1):
        total = v.copy() if total is None else total + v
        out.append(tuple((total / count).tolist()))
    return out


def numpy_graph(n: int) -> Any:
    """source → features (fused) → the stateful running mean."""
    return OURS["Source"]("source", size=n) | Features("features", **AUDIO) | RunningMean("mean")


def numpy_features_graph(n: int) -> Any:
    """source → features, without the stateful node (the running mean is the caller's)."""
    return OURS["Source"]("source", size=n) | Features("features", **AUDIO)


def features_batch(xs: Any) -> list:
    """``audio_features`` of each of ``xs``: one task of the plain ``client.map`` anchor."""
    return [audio_features(x, **AUDIO) for x in xs]


def numpy_serial(n: int) -> dict[str, list]:
    return {"mean": running_means(audio_features(x, **AUDIO) for x in range(n))}
