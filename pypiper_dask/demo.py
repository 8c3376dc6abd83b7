"""A demo pipeline: ``python -m pypiper_dask.demo [--n-threads N]``.

It starts a local cluster of two worker processes (no set-up needed), runs a
pyPiper-style pipeline with a fused stateless chain, a stateful node on an
actor and a ``BATCH_SIZE_ALL`` barrier, and prints what the leaves produced.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from . import Node, Pipeline

__all__ = ["Generate", "RunningTotal", "Square", "Summary", "build", "main"]


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
    """A barrier: called once with every item after its input ends."""

    def setup(self) -> None:
        self.batch_size = Node.BATCH_SIZE_ALL

    def run(self, data: list) -> None:
        print(f"summary: {len(data)} squares, largest {max(data)}")


def build(size: int = 100_000) -> Pipeline:
    """The demo's graph: gen | square | [running_total, summary]."""
    return Generate("gen", size=size) | Square("square") | [RunningTotal("running_total"), Summary("summary")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-threads", type=int, default=2, help="worker processes to start (1: in-process)")
    parser.add_argument("--size", type=int, default=100_000, help="items the source emits")
    args = parser.parse_args(argv)
    totals = RunningTotal("running_total")
    graph = Generate("gen", size=args.size) | Square("square") | [totals, Summary("summary")]
    pipeline = Pipeline(graph, n_threads=args.n_threads, quiet=True)
    print(pipeline)
    result = pipeline.run()
    print(result)
    print(f"running total after {len(result['running_total'])} items: {result['running_total'][-1]}")
    print(f"the caller's stateful node holds the same: {totals.total}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
