"""Run every workload on every system in one run; write BENCHMARKS.md and a chart.

``python -m bench`` (about 5 minutes) or ``python -m bench --quick`` (under 2);
``python -m bench --scale`` for the scaling workloads S1-S5 alone (bench/scale.py);
``python -m bench --recovery`` and ``--faults N`` for surviving a worker (bench/recovery.py);
``python -m bench --checkpoint`` for checkpoints (bench/checkpoint.py);
``--skew``, ``--many``, ``--own-cluster`` and ``--numpy`` for T9, T10, T11 and T13 (bench/third.py);
``--keyed`` for keyed nodes (bench/keyed.py); ``--heavy`` for per-process set-up (bench/heavy.py).
Ratios, not absolute times, are what the targets state: every system runs on
the same machine, back to back, and every output is checked against serial.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import operator
import os
import platform
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from bench import workloads as W

ROOT = Path(__file__).resolve().parent.parent
TIMED = ["W1", "W2", "W3", "W4", "W5", "W7"]
SYSTEMS = [
    "floor",
    "serial",
    "pyPiper n=1",
    "pyPiper n=2",
    "dask.bag (lists)",
    "dask.bag (list subclass)",
    "Pool(2)",
    "pypiper_dask n=1",
    "pypiper_dask n=2 client",
    "pypiper_dask n=2 +cluster",
]


# -- systems: each returns (seconds, {leaf: items}) -------------------------------------


def sys_serial(wid: str) -> tuple[float, dict]:
    start = time.perf_counter()
    out = W.serial(wid)
    return time.perf_counter() - start, out


def sys_floor(wid: str) -> tuple[float, dict]:
    """The same Node objects, driven by the smallest hand-written loop."""
    g = W.graph(wid, W.OURS)
    nodes = {n.name: n for n in g}
    src = nodes["source"]
    stop: list = []
    src.close = partial(stop.append, True)
    items: list = []
    src.emit = items.append
    start = time.perf_counter()
    if wid in ("W1", "W2", "W3", "W4", "W7"):
        chain = [c for c in g if c is not src]
        if wid == "W3":
            chain = chain[:1]
        bufs = [[] for _ in chain]
        for node, buf in zip(chain, bufs, strict=True):
            node.emit = buf.append
        first, last = chain[0], chain[-1]
        if len(chain) == 2:
            b0, out = bufs
            mid = chain[1]
            while not stop:
                src.run(None)
                for x in items:
                    first.run(x)
                    for y in b0:
                        mid.run(y)
                    b0.clear()
                items.clear()
        else:
            out = bufs[0]
            while not stop:
                src.run(None)
                for x in items:
                    last.run(x)
                items.clear()
        if wid == "W3":
            total: list = []
            nodes["sum"].emit = total.append
            nodes["sum"].run(out)
            out = total
        result = {W.WORKLOADS[wid].leaves[0]: out}
    else:  # W5: fan-out to two leaves
        d, s = nodes["double"], nodes["square"]
        dout: list = []
        sout: list = []
        d.emit, s.emit = dout.append, sout.append
        while not stop:
            src.run(None)
            for x in items:
                d.run(x)
                s.run(x)
            items.clear()
        result = {"double": dout, "square": sout}
    return time.perf_counter() - start, result


def sys_pypiper(wid: str, n_threads: int) -> tuple[float, dict | str]:
    """pyPiper in a child process, leaves printed; its printed items are checked."""
    done = subprocess.run(
        [sys.executable, "-m", "bench.child", "pypiper", wid, str(n_threads), str(W.LOOPS["n"])],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    seconds = json.loads(done.stderr.strip().splitlines()[-1])["seconds"]
    lines = [int(x) for x in done.stdout.split()]
    expected = W.serial(wid)
    if wid == "W5":  # sequential order: each item's double, then its square
        in_order = [v for pair in zip(*expected.values(), strict=True) for v in pair]
    else:
        in_order = next(iter(expected.values()))
    if lines == in_order:
        return seconds, expected
    if sorted(lines) == sorted(in_order):
        return seconds, "order differs"
    return seconds, f"wrong ({len(lines)} items printed, {len(in_order)} expected)"


def _fresh(partition: Any, nonce: str) -> Any:
    return partition


class PList(list):
    """A list subclass: distributed pickles it whole instead of item by item."""


def sys_bag(wid: str, client: Any, subclass: bool) -> tuple[float, dict]:
    """dask.bag: ``from_sequence`` and ``map``; a fold for W3/W4.

    The "list subclass" variant returns each partition as a list subclass and
    gathers the partitions, so none crosses a process boundary as a plain list
    (which distributed serializes item by item).
    """
    import dask.bag as db

    n = W.size(wid)
    parts = min(20 if wid == "W2" else 8, n)

    def run(*bags: Any) -> list[list]:
        if not subclass:
            return [list(b.compute(scheduler=client.get)) for b in bags]
        outs = []
        for b in bags:
            futures = client.compute(b.map_partitions(PList).to_delayed())
            outs.append([x for part in client.gather(futures) for x in part])
        return outs

    start = time.perf_counter()
    # A fresh name each time: the same keys could return a previous repetition's results.
    b = db.from_sequence(range(n), npartitions=parts).map_partitions(_fresh, uuid.uuid4().hex)
    if wid == "W1":
        out = {"add_one": run(b.map(W.sq).map(W.inc))[0]}
    elif wid == "W2":
        out = {"add_one": run(b.map(partial(W.w2_item_loops, loops=W.LOOPS["n"])))[0]}
    elif wid == "W3":
        out = {"sum": [b.map(W.sq).sum().compute(scheduler=client.get)]}
    elif wid == "W4":
        out = {"running": run(b.map(W.sq).accumulate(operator.add))[0]}
    elif wid == "W5":
        dbl, sq = run(b.map(W.dbl), b.map(W.sq))
        out = {"double": dbl, "square": sq}
    else:
        out = {"square": run(b.map(W.sq))[0]}
    return time.perf_counter() - start, out


def sys_pool(wid: str, pool: Any) -> tuple[float, dict]:
    n = W.size(wid)
    chunk = max(1, n // 8) if wid != "W2" else 25
    start = time.perf_counter()
    if wid == "W1":
        out = {"add_one": list(pool.imap(W.w1_item, range(n), chunksize=chunk))}
    elif wid == "W2":
        out = {"add_one": list(pool.imap(partial(W.w2_item_loops, loops=W.LOOPS["n"]), range(n), chunksize=chunk))}
    elif wid == "W3":
        out = {"sum": [sum(pool.imap(W.sq, range(n), chunksize=chunk))]}
    elif wid == "W4":
        out = {"running": list(itertools.accumulate(pool.imap(W.sq, range(n), chunksize=chunk)))}
    elif wid == "W5":
        pairs = list(pool.imap(W.w5_item, range(n), chunksize=chunk))
        out = {"double": [p[0] for p in pairs], "square": [p[1] for p in pairs]}
    else:
        out = {"square": list(pool.imap(W.sq, range(n), chunksize=chunk))}
    return time.perf_counter() - start, out


def sys_ours(wid: str, **options: Any) -> tuple[float, dict]:
    from pypiper_dask import Pipeline

    g = W.graph(wid, W.OURS)
    start = time.perf_counter()
    result = Pipeline(g, quiet=True, progress=False, **options).run()
    return time.perf_counter() - start, dict(result)


def sys_ours_cold(wid: str) -> tuple[float, dict]:
    return sys_ours(wid, n_threads=2)


# -- the harness --------------------------------------------------------------------------


def measure(fn: Callable[[], tuple[float, Any]], expected: dict, reps: int) -> dict:
    times, verdict = [], "exact"
    for _ in range(reps):
        seconds, out = fn()
        if isinstance(out, str):
            verdict = out
        elif out != expected:
            verdict = "wrong output"
        times.append(seconds)
    return {"median": statistics.median(times), "min": min(times), "max": max(times), "verdict": verdict}


def heavy_node_bytes(client: Any) -> list[dict]:
    """Bytes over loopback per run for a node holding 50 MB, against the partition count."""
    import psutil

    from pypiper_dask import Node, Pipeline

    class Heavy(Node):
        def setup(self):
            self.blob = os.urandom(50 * 2**20)

        def run(self, data):
            self.emit(data + len(self.blob))

    rows = []
    n = 20_000
    for partitions in (4, 16, 64):
        g = W.OURS["Source"]("source", size=n) | Heavy("heavy")
        before = psutil.net_io_counters(pernic=True)["lo"].bytes_sent
        Pipeline(g, client=client, quiet=True, progress=False, partition_size=n // partitions).run()
        sent = psutil.net_io_counters(pernic=True)["lo"].bytes_sent - before
        rows.append({"partitions": partitions, "mb": sent / 2**20})
    return rows


def child_json(*args: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "bench.child", *args], capture_output=True, text=True, cwd=ROOT, timeout=900
    )
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="pypiper_dask benchmark (shared/docs/bench.md)")
    parser.add_argument("--quick", action="store_true", help="one repetition, W6 at 1M/2M: under two minutes")
    parser.add_argument("--reps", type=int, default=None, help="repetitions per measurement (default 3)")
    parser.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"))
    parser.add_argument(
        "--scale",
        action="store_true",
        help="only S1-S5 at 2, 4 and 8 workers and the revised T1 (bench.md, 'Scaling past two workers'):"
        " replaces that section of --out; about 7 minutes, --quick about 4",
    )
    parser.add_argument(
        "--from-json", metavar="PATH", help="with --scale: rewrite the section and chart from saved figures"
    )
    parser.add_argument(
        "--streaming",
        action="store_true",
        help="only stream()'s first item and memory, a kept cluster and a live source's delay: replaces "
        "that section of --out; about a minute",
    )
    parser.add_argument("--live-seconds", type=float, default=25.0, help="with --streaming: the live source's run")
    parser.add_argument(
        "--workers",
        default=None,
        help="with --scale: the worker counts, comma-separated (default 2,4,8; a machine with more cores: 4,8,15);"
        " with --many: default 16,32,64 (--quick: 16)",
    )
    parser.add_argument(
        "--workloads",
        default=None,
        help="with --scale: only these of S1-S5, comma-separated (--workloads S1: the per-worker table alone)",
    )
    parser.add_argument("--no-t1", action="store_true", help="with --scale: leave out the revised T1 (W2 at 2)")
    parser.add_argument(
        "--skew",
        action="store_true",
        help="only T9: the skewed CPU load at 2 workers against serial and Pool(2) (bench/third.py);"
        " ~2 min, --quick ~30 s",
    )
    parser.add_argument(
        "--many",
        action="store_true",
        help="only T10: S1 at 16, 32 and 64 workers (threads of one process, the scheduler in another), the caller's"
        " CPU per round, the scheduler's per task and its tasks per second; ~2 min, --quick ~40 s",
    )
    parser.add_argument(
        "--processes", action="store_true", help="with --many: a LocalCluster of worker processes instead"
    )
    parser.add_argument(
        "--threads", action="store_true", help="with --many: a LocalCluster(processes=False), all in one process"
    )
    parser.add_argument(
        "--own-cluster",
        action="store_true",
        help="only T11: S1 (8 workers) and W2 (2 workers) on `dask scheduler` + `dask worker` processes against a"
        " LocalCluster of the same count; ~3 min, --quick ~1 min",
    )
    parser.add_argument(
        "--numpy",
        action="store_true",
        help="only T13: framed FFTs of synthetic audio then a running mean, at 2 workers against serial and Pool(2),"
        " with the workers' peak RSS; ~2 min, --quick ~40 s",
    )
    parser.add_argument(
        "--keyed",
        action="store_true",
        help="only T12: S6 (a keyed node sleeping 2 ms an item) at 1-8 workers and W8 (CPU, 64 keys) at 2 against"
        " Pool(2); ~2 min, --quick ~40 s",
    )
    parser.add_argument(
        "--recovery",
        action="store_true",
        help="only snapshot overhead on W4 and kill-to-moving time (bench/recovery.py): replaces that section",
    )
    parser.add_argument(
        "--checkpoint",
        action="store_true",
        help="only checkpoint overhead on W1 and W4 and time to resume (bench/checkpoint.py): replaces that section",
    )
    parser.add_argument(
        "--faults", type=int, metavar="N", default=0, help="N kill trials of random programs; prints how many matched"
    )
    parser.add_argument(
        "--heavy",
        action="store_true",
        help="only issue 22's per-process set-up: a node whose setup_worker() takes 1 s and holds 200 MB, 4 workers,"
        " 2,000 items, against the same node without it: set-ups, bytes moved, wall; ~1 min, --quick ~30 s",
    )
    args = parser.parse_args(argv)
    if args.heavy:
        from bench import heavy

        return heavy.main(args)
    if args.keyed:
        from bench import keyed

        return keyed.main(args)
    if args.checkpoint:
        from bench import checkpoint

        return checkpoint.main(args)
    if args.recovery or args.faults:
        from bench import recovery

        return recovery.main(args)
    if args.skew or args.many or args.own_cluster or args.numpy:
        from bench import third

        return third.main(args)
    if args.from_json and not args.scale:
        parser.error("--from-json needs --scale")
    if args.scale:
        from bench import scale

        return scale.main(args)
    if args.streaming:
        from bench import streaming

        return streaming.main(args)
    reps = args.reps or (1 if args.quick else 3)

    import multiprocessing

    from distributed import Client, LocalCluster

    loops = W.calibrate()
    print(f"W2 calibrated: {loops} loops ≈ 2 ms", file=sys.stderr)
    results: dict[str, dict[str, dict]] = {w: {} for w in TIMED}
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=":0"
        ) as cluster,
        Client(cluster) as client,
        multiprocessing.get_context("fork").Pool(2) as pool,
    ):
        for wid in TIMED:
            expected = W.serial(wid)
            runs = {
                "floor": partial(sys_floor, wid),
                "serial": partial(sys_serial, wid),
                "pyPiper n=1": partial(sys_pypiper, wid, 1),
                "pyPiper n=2": partial(sys_pypiper, wid, 2),
                "dask.bag (lists)": partial(sys_bag, wid, client, False),
                "dask.bag (list subclass)": partial(sys_bag, wid, client, True),
                "Pool(2)": partial(sys_pool, wid, pool),
                "pypiper_dask n=1": partial(sys_ours, wid, n_threads=1),
                "pypiper_dask n=2 client": partial(sys_ours, wid, client=client),
                "pypiper_dask n=2 +cluster": partial(sys_ours_cold, wid),
            }
            for name in SYSTEMS:
                if wid == "W7" and name in ("floor", "pyPiper n=1"):
                    continue
                r = measure(runs[name], expected, reps)
                results[wid][name] = r
                print(f"{wid} {name:28s} {r['median']:8.3f}s  {r['verdict']}", file=sys.stderr)
        heavy = heavy_node_bytes(client)
    tiny = [child_json("tiny")["seconds"] for _ in range(reps)]
    sizes = (1_000_000, 2_000_000) if args.quick else (1_000_000, 10_000_000)
    stream = [child_json("stream", str(n)) for n in sizes]
    from bench.report import write_report

    write_report(
        Path(args.out), results, heavy, tiny, stream, loops=loops, reps=reps, quick=args.quick, machine=machine()
    )
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


def machine() -> dict:
    import dask
    import distributed

    try:
        from importlib.metadata import version

        import pyPiper  # noqa: F401

        pypiper_version = version("pypiper")
    except Exception:
        pypiper_version = "not installed"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import psutil

    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "dask": dask.__version__,
        "distributed": distributed.__version__,
        "pyPiper": pypiper_version,
    }


if __name__ == "__main__":
    sys.exit(main())
