"""A demo pipeline: ``pypiper-dask demo`` (or ``python -m pypiper_dask.demo``).

It starts a local cluster of two worker processes (no set-up needed) and runs a
pyPiper-style pipeline: a source of numbers, ``square`` (which runs in
parallel, one task per partition of the numbers), ``running_total`` (stateful:
it sees every item once, in order) and ``summary`` (``BATCH_SIZE_ALL``: it
waits for all its input and is called once with every item). It prints the
plan, what the leaves produced, and the dashboard's address while the cluster
is open; from a terminal it keeps the cluster (and the dashboard) open until
you press Enter.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from typing import Any

from . import Node, Pipeline

__all__ = ["Generate", "RunningTotal", "Square", "Summary", "add_arguments", "build", "main", "run_demo"]


class Generate(Node):
    """The source: 0, 1, ..., size-1."""

    def setup(self, size: int) -> None:
        self.pos = 0

    def run(self, data: Any) -> None:
        if self.pos < self.size:
            self.emit(self.pos)
            self.pos += 1
        else:
            self.close()


class Square(Node):
    def run(self, data: int) -> None:
        self.emit(data * data)


class RunningTotal(Node):
    """Stateful: one instance sees every item, in order, wherever it runs."""

    def setup(self) -> None:
        self.total = 0
        self.stateless = False

    def run(self, data: int) -> None:
        self.total += data
        self.emit(self.total)


class Summary(Node):
    """Waits for all its input: called once, with every item, after its input ends."""

    def setup(self) -> None:
        self.batch_size = Node.BATCH_SIZE_ALL

    def run(self, data: list) -> None:
        self.emit(f"{len(data)} squares, the largest {max(data)}")


def build(size: int = 100_000) -> Pipeline:
    """The demo's graph: gen | square | [running_total, summary]."""
    return Generate("gen", size=size) | Square("square") | [RunningTotal("running_total"), Summary("summary")]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The demo's options, on ``parser`` (``pypiper-dask demo`` and ``python -m pypiper_dask.demo``)."""
    from .cli import positive_int

    parser.add_argument(
        "--n-threads", type=positive_int, default=2, metavar="N", help="worker processes to start (1: in this process)"
    )
    parser.add_argument("--size", type=positive_int, default=100_000, metavar="N", help="items the source emits")
    parser.add_argument(
        "--keep-open",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="after the run, keep the cluster and its dashboard open until Enter is pressed "
        "(default: when run from a terminal)",
    )


def run_demo(n_threads: int = 2, size: int = 100_000, keep_open: bool | None = None) -> int:
    """Run the demo and print what it did; with ``keep_open`` wait for Enter before closing the cluster.

    ``keep_open=None``: keep it open when stdin and stdout are a terminal, so a
    run from a script, a test or CI never waits.
    """
    if keep_open is None:
        keep_open = sys.stdin.isatty() and sys.stdout.isatty()
    totals = RunningTotal("running_total")
    graph = Generate("gen", size=size) | Square("square") | [totals, Summary("summary")]
    pipeline = Pipeline(graph, n_threads=n_threads, quiet=True)
    print(pipeline)
    print()
    with pipeline:  # n_threads > 1: the cluster starts here and stays until the end of the block
        link = pipeline.dashboard_link  # logged as the cluster starts
        began = time.perf_counter()
        result = pipeline.run()
        took = time.perf_counter() - began
        (summary,) = result["summary"]
        print(f"Done in {took:.1f} s: {result!r}")
        print(f"  running_total: {len(result['running_total'])} running totals, the last {result['running_total'][-1]}")
        print(f"  summary: {summary}")
        where = "as its copy on the cluster did" if link else "its last running total"
        print(f"  the RunningTotal object in this process ended with total = {totals.total}, {where}")
        if link and keep_open:
            print(f"The cluster stays open: see the run at {link}. Press Enter to close it.", flush=True)
            with contextlib.suppress(EOFError):  # stdin closed: nobody to wait for
                input()
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m pypiper_dask.demo``: the same as ``pypiper-dask demo``."""
    from .cli import main as cli_main

    return cli_main(["demo", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
