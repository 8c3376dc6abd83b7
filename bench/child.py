"""Measurements that need a process of their own: ``python -m bench.child KIND ...``.

* ``pypiper WID N_THREADS``: pyPiper 0.5.3 runs a workload, printing its leaves
  (pyPiper's children print straight to the inherited stdout); the time of
  ``run()`` goes to stderr as JSON.
* ``stream N``: W6, pypiper_dask at ``n_threads=2``, ``quiet=True``,
  ``run(collect=False)``; reports the caller's RSS after imports and its peak.
* ``stream-iter N``: W6 through ``Pipeline.stream()`` at ``n_threads=2``; the
  same report as ``stream``.
* ``tiny``: W7 from ``Pipeline(...)`` to ``run()`` returning, cluster start and
  stop included, imports excluded.
"""

from __future__ import annotations

import json
import sys
import threading
import time


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _peak_mb() -> float:
    """This process's peak RSS (VmHWM). Not ru_maxrss: Linux keeps that across execve,
    so a child would report the peak of the process that started it."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return _rss_mb()


def pypiper(wid: str, n_threads: int, loops: int) -> None:
    import pyPiper

    from bench import workloads

    workloads.LOOPS["n"] = loops
    g = workloads.graph(wid, workloads.make_nodes(pyPiper.Node))
    pipeline = pyPiper.Pipeline(g, n_threads=n_threads, quiet=False)
    start = time.perf_counter()
    pipeline.run()
    seconds = time.perf_counter() - start
    sys.stdout.flush()
    print(json.dumps({"seconds": seconds}), file=sys.stderr)


def stream(n: int, through_stream: bool = False) -> None:
    import distributed  # noqa: F401 - imports are not what W6 measures

    from bench import workloads
    from pypiper_dask import Pipeline

    nodes = workloads.OURS
    start_rss = _rss_mb()
    peak = [start_rss]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss_mb())
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    pipeline = Pipeline(nodes["Source"]("source", size=n) | nodes["AddOne"]("add_one"), n_threads=2, quiet=True)
    if through_stream:
        count = sum(1 for _ in pipeline.stream())
        assert count == n, count
        result = None
    else:
        result = pipeline.run(collect=False)
    seconds = time.perf_counter() - t0
    done.set()
    sampler.join()
    maxrss = _peak_mb()
    assert result is None or result.counts["add_one"] == n, result.counts
    print(
        json.dumps(
            {
                "n": n,
                "seconds": seconds,
                "start_mb": start_rss,
                "peak_mb": max(peak[0], maxrss),
                "sampled_mb": peak[0],
                "maxrss_mb": maxrss,
            }
        )
    )


def tiny() -> None:
    import distributed  # noqa: F401 - imports excluded from T5

    from bench import workloads
    from pypiper_dask import Pipeline

    start = time.perf_counter()
    result = Pipeline(workloads.graph("W7", workloads.OURS), n_threads=2, quiet=True).run()
    seconds = time.perf_counter() - start
    assert dict(result) == workloads.serial("W7"), dict(result)
    print(json.dumps({"seconds": seconds}))


if __name__ == "__main__":
    kind, *args = sys.argv[1:]
    if kind == "pypiper":
        pypiper(args[0], int(args[1]), int(args[2]))
    elif kind == "stream":
        stream(int(args[0]))
    elif kind == "stream-iter":
        stream(int(args[0]), through_stream=True)
    elif kind == "tiny":
        tiny()
    else:
        raise SystemExit(f"unknown measurement {kind!r}")
