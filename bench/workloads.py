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
