"""CPU-bound scaling on a machine with many cores: ``python -m bench.cpu 4,8,15``.

The issue's 16-core measurement: W2 (2,000 items of a ~2 ms pure-Python loop
→ add one), the same with one item in 50 costing 20 times as much, and W2
followed by a trivial stateful running sum, each on a ``LocalCluster`` of W
single-threaded workers (a client passed in) against ``multiprocessing.Pool(W)``
on the same items; every output checked against serial. Prints a table and,
with ``--json PATH``, writes the figures.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import multiprocessing
import sys
import time
from functools import partial
from typing import Any

from bench import workloads as W
from pypiper_dask import Node, Pipeline

N = 2000
SKEW_EVERY, SKEW_TIMES = 50, 20


def loops_for(x: int, skew: bool) -> int:
    return W.LOOPS["n"] * (SKEW_TIMES if skew and x % SKEW_EVERY == 0 else 1)


def work(x: int, loops: int, skew: bool) -> int:
    return W.spin(x, loops * (SKEW_TIMES if skew and x % SKEW_EVERY == 0 else 1)) + 1


class Work(Node):
    def setup(self, loops, skew):
        self.loops, self.skew = loops, skew

    def run(self, data):
        self.emit(work(data, self.loops, self.skew))


def expected(kind: str) -> list:
    out = [work(x, W.LOOPS["n"], kind == "skewed") for x in range(N)]
    return list(itertools.accumulate(out)) if kind == "stateful" else out


def ours(kind: str, client: Any) -> tuple[float, list]:
    g = W.OURS["Source"]("source", size=N) | Work("work", loops=W.LOOPS["n"], skew=kind == "skewed")
    leaf = "work"
    if kind == "stateful":
        g = g | W.ScaleRunningSum("running")
        leaf = "running"
    start = time.perf_counter()
    result = Pipeline(g, quiet=True, client=client, progress=False).run()
    return time.perf_counter() - start, result[leaf]


def pool(kind: str, p: Any, workers: int) -> tuple[float, list]:
    start = time.perf_counter()
    out = list(
        p.imap(partial(work, loops=W.LOOPS["n"], skew=kind == "skewed"), range(N), chunksize=max(1, N // (4 * workers)))
    )
    if kind == "stateful":
        out = list(itertools.accumulate(out))
    return time.perf_counter() - start, out


def main(argv: list[str] | None = None) -> int:
    from distributed import Client, LocalCluster

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workers", help="worker counts, comma-separated")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    W.calibrate()
    want, serial = {}, {}
    for kind in ("plain", "skewed", "stateful"):
        start = time.perf_counter()
        want[kind] = expected(kind)
        serial[kind] = time.perf_counter() - start
    rows = []
    for workers in [int(w) for w in args.workers.split(",")]:
        with (
            multiprocessing.get_context("fork").Pool(workers) as p,
            LocalCluster(
                n_workers=workers,
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                dashboard_address=":0",
                silence_logs=logging.ERROR,
            ) as cluster,
            Client(cluster) as client,
        ):
            ours("plain", client)  # warm-up
            for kind in want:
                for system, fn in (
                    ("pypiper_dask", partial(ours, kind, client)),
                    ("Pool", partial(pool, kind, p, workers)),
                ):
                    times = []
                    for _ in range(args.reps):
                        seconds, out = fn()
                        if out != want[kind]:
                            raise AssertionError(f"{system} {kind} at {workers} workers: wrong output")
                        times.append(seconds)
                    best = min(times)
                    row = {
                        "workers": workers,
                        "kind": kind,
                        "system": system,
                        "seconds": best,
                        "speedup": serial[kind] / best,
                    }
                    rows.append(row)
                    print(
                        f"{workers:3d} {kind:9s} {system:13s} {best:7.3f}s  {row['speedup']:5.2f}x serial",
                        flush=True,
                    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"serial": serial, "loops": W.LOOPS["n"], "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
