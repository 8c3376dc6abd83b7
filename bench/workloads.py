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


def calibrate(target: float = 0.002) -> int:
    loops = 20_000
    for _ in range(3):
        start = time.perf_counter()
        for x in range(20):
            spin(x, loops)
        per_call = (time.perf_counter() - start) / 20
        loops = max(1000, int(loops * target / per_call))
    LOOPS["n"] = loops
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
