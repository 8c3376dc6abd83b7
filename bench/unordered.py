"""``python -m bench.unordered``: ordered against unordered delivery (issue 22, item 4), same run.

* S2 (shared/docs/bench.md: 3,000 items, one in 50 sleeps 40 ms, the rest
  2 ms) at 4 and 8 single-threaded workers, a client passed in: wall time and
  efficiency ((nominal sleep / workers) / wall), ``ordered=True`` and
  ``ordered=False`` taking turns, best and median of ``--reps``;
* a stream whose first partition is slow (item 0 sleeps ``--slow`` seconds,
  the other 2,999 items 2 ms): the time from ``stream()`` to its first item,
  and to its last, each way.

Items sleep rather than compute, so 8 workers on a 2-core machine wait rather
than share the cores (bench.md, "Scaling past two workers"). Every output is
checked against the serial one (as a multiset, for the unordered runs). The
figures go to ``bench/unordered.json``; BENCHMARKS.md's section is written from it by hand.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

from bench import workloads as W
from pypiper_dask import Node, Pipeline

ROOT = Path(__file__).resolve().parent.parent
N = W.SCALE_N


class SlowFirst(Node):
    """Item 0 sleeps ``slow`` seconds, every other item 2 ms."""

    def setup(self, slow: float = 2.0) -> None:
        self.slow = slow

    def run(self, data: Any) -> None:
        time.sleep(self.slow if data == 0 else 0.002)
        self.emit(data)


def s2(client: Any, ordered: bool) -> float:
    graph = W.scale_graph("S2", N)
    start = time.perf_counter()
    result = Pipeline(graph, quiet=True, client=client, progress=False, ordered=ordered).run()
    seconds = time.perf_counter() - start
    assert sorted(result["leaf"]) == list(range(N)), "wrong output"
    if ordered:
        assert result["leaf"] == list(range(N)), "out of order"
    return seconds


def slow_first(client: Any, ordered: bool, slow: float) -> tuple[float, float]:
    graph = W.OURS["Source"]("source", size=N) | SlowFirst("slow", slow=slow) | W.Leaf("leaf")
    start = time.perf_counter()
    first = None
    items = []
    for _, item in Pipeline(graph, client=client, progress=False, ordered=ordered).stream():
        if first is None:
            first = time.perf_counter() - start
        items.append(item)
    total = time.perf_counter() - start
    assert sorted(items) == list(range(N)), "wrong output"
    assert first is not None
    return first, total


def measure(workers: int, reps: int, slow: float, log: Any = print) -> dict:
    from distributed import Client, LocalCluster

    nominal = W.nominal_sleep("S2", N)
    out: dict = {"workers": workers, "nominal_s": nominal, "S2": {}, "slow_first": {}}
    with (
        LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        client.wait_for_workers(workers)
        s2(client, True)  # warm: imports on the workers
        times: dict[bool, list[float]] = {True: [], False: []}
        firsts: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
        for _ in range(reps):
            for ordered in (True, False):
                times[ordered].append(s2(client, ordered))
            for ordered in (True, False):
                firsts[ordered].append(slow_first(client, ordered, slow))
        for ordered in (True, False):
            key = "ordered" if ordered else "unordered"
            best, med = min(times[ordered]), statistics.median(times[ordered])
            out["S2"][key] = {
                "times": times[ordered],
                "best_s": best,
                "median_s": med,
                "efficiency_best": nominal / workers / best,
                "efficiency_median": nominal / workers / med,
            }
            f = firsts[ordered]
            out["slow_first"][key] = {
                "runs": f,
                "first_median_s": statistics.median(x[0] for x in f),
                "total_median_s": statistics.median(x[1] for x in f),
            }
            log(
                f"{workers} workers {key:9}: S2 best {best:.2f} s (eff {nominal / workers / best:.2f}), "
                f"median {med:.2f} s; slow first: first item {out['slow_first'][key]['first_median_s']:.3f} s, "
                f"last {out['slow_first'][key]['total_median_s']:.2f} s"
            )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="4,8")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--slow", type=float, default=2.0, help="seconds item 0 sleeps in the slow-first stream")
    parser.add_argument("--out", default=str(ROOT / "bench" / "unordered.json"))
    args = parser.parse_args()
    results = [measure(int(w), args.reps, args.slow) for w in args.workers.split(",")]
    Path(args.out).write_text(json.dumps({"slow_s": args.slow, "n": N, "runs": results}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
