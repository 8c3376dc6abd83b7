"""Scaling past two workers: ``python -m bench --scale`` (``--quick`` for a short run).

Workloads S1-S5 of shared/docs/bench.md, whose items sleep instead of computing,
on pypiper_dask, dask.bag and a ``ThreadPool`` at 2, 4 and 8 single-threaded
workers; one ``LocalCluster`` per worker count, started before timing and shared
by the systems at that count. Efficiency = (the items' nominal total sleep ÷
workers) ÷ wall time; 1.0 is perfect. Every output is checked against the serial
one; a wrong one is marked and not counted. Also the revised T1: W2 with a client
at 2 workers against ``Pool(2)`` in the same run. The figures go to
``bench/scale.json``, the section of BENCHMARKS.md and ``bench/scaling.png``.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import math
import multiprocessing
import multiprocessing.pool
import operator
import sys
import time
import uuid
from collections.abc import Callable
from functools import partial
from typing import Any

from bench import run as R
from bench import workloads as W

WORKERS = (2, 4, 8)
SCALE_SYSTEMS = ("pypiper_dask", "dask.bag", "ThreadPool")
CHUNKSIZE = 4  # the ThreadPool's: small, so S2's long items spread evenly


def _sleeper(sid: str, sleep: dict) -> Callable[[int], int]:
    return partial(W.sleep_item, skew=W.SCALE_WORKLOADS[sid].skew, **sleep)


def _plist_batch_sums(partition: Any) -> R.PList:
    return R.PList(W.batch_sums(partition))


def _error(exc: BaseException) -> str:
    return f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"


# -- systems: each returns (seconds, {leaf: items}) -------------------------------------


def sys_ours(sid: str, client: Any, n: int, sleep: dict) -> tuple[float, dict]:
    """pypiper_dask on a client passed in; partition size automatic."""
    from pypiper_dask import Pipeline

    g = W.scale_graph(sid, n, sleep)
    start = time.perf_counter()
    result = Pipeline(g, quiet=True, progress=False, client=client).run()
    return time.perf_counter() - start, dict(result)


def sys_bag(sid: str, client: Any, partitions: int, n: int, sleep: dict) -> tuple[float, dict]:
    """dask.bag on the same cluster, partitions returned as a list subclass.

    S3 is ``accumulate``; S4 sums each 10 items within a partition, so its
    partitions are a multiple of 10 items long; S5 computes the sum and the
    partitions in one graph, so each item sleeps once.
    """
    import dask.bag as db

    def gather(delayed: list) -> list:
        return client.gather(client.compute(delayed))

    def flat(parts: list) -> list:
        return [x for part in parts for x in part]

    start = time.perf_counter()
    if sid == "S4":
        per = math.ceil(math.ceil(n / partitions) / 10) * 10
        b = db.from_sequence(range(n), partition_size=per)
    else:
        b = db.from_sequence(range(n), npartitions=partitions)
    # A fresh name each time: the same keys could return a previous repetition's results.
    slept = b.map_partitions(R._fresh, uuid.uuid4().hex).map(_sleeper(sid, sleep))
    if sid in ("S1", "S2"):
        out = {"leaf": flat(gather(slept.map_partitions(R.PList).to_delayed()))}
    elif sid == "S3":
        out = {"running": flat(gather(slept.accumulate(operator.add).map_partitions(R.PList).to_delayed()))}
    elif sid == "S4":
        out = {"batch": flat(gather(slept.map_partitions(_plist_batch_sums).to_delayed()))}
    elif sid == "S5":
        parts = slept.map_partitions(R.PList)
        *items, total = gather([*parts.to_delayed(optimize_graph=False), parts.sum().to_delayed(optimize_graph=False)])
        out = {"sum": [total], "leaf": flat(items)}
    else:
        raise KeyError(sid)
    return time.perf_counter() - start, out


def sys_threads(sid: str, pool: Any, n: int, sleep: dict) -> tuple[float, dict]:
    """``ThreadPool(W).imap`` on the same sleeping items: sleep releases the GIL, so this is the ideal."""
    start = time.perf_counter()
    items = pool.imap(_sleeper(sid, sleep), range(n), chunksize=CHUNKSIZE)
    if sid in ("S1", "S2"):
        out = {"leaf": list(items)}
    elif sid == "S3":
        out = {"running": list(itertools.accumulate(items))}
    elif sid == "S4":
        out = {"batch": W.batch_sums(items)}
    elif sid == "S5":
        xs = list(items)
        out = {"sum": [sum(xs)], "leaf": xs}
    else:
        raise KeyError(sid)
    return time.perf_counter() - start, out


# -- the harness --------------------------------------------------------------------------


def attempt(fn: Callable[[], tuple[float, Any]], expected: dict) -> tuple[float | None, str]:
    """One timed run: (seconds, "exact"), or the time and what was wrong, or (None, the error)."""
    try:
        seconds, out = fn()
    except Exception as exc:  # a failing system is reported, not fatal to the run
        return None, _error(exc)
    return seconds, "exact" if out == expected else "wrong output"


def summarize(runs: list[tuple[float | None, str]], nominal: float, workers: int) -> dict:
    """Best exact time of ``runs`` and its efficiency; a system with no exact run gets no efficiency."""
    exact = [s for s, v in runs if v == "exact" and s is not None]
    bad = sorted({v for _, v in runs if v != "exact"})
    best = min(exact) if exact else None
    return {
        "times": [s for s, _ in runs],
        "verdicts": [v for _, v in runs],
        "best": best,
        "efficiency": nominal / workers / best if best else None,
        "verdict": "exact" if not bad else "; ".join(bad),
    }


def task_profile(client: Any, sid: str, n: int, sleep: dict) -> dict:
    """One untimed pypiper_dask run under the task stream: where the workers wait.

    Busy share: the compute time of the tasks named after the sleeping node ÷
    (workers × wall time), i.e. how much of the workers' time went to the
    items' sleep (plus a task's own overhead). Other tasks are listed by kind,
    not counted: an engine's task may wait inside (a stateful one, for its turn).
    ``per_worker``: each worker's first task, busy share and tasks, and the
    caller's CPU per round (``bench.workers.profiled_run``).
    """
    from bench.workers import profiled_run

    workers = len(client.scheduler_info(n_workers=-1).get("workers", {}))
    records: list = []
    expected = W.scale_serial(sid, n)
    table = profiled_run(
        client, lambda: sys_ours(sid, client, n, sleep)[1], check=lambda out: out == expected, records=records
    )
    t0 = 0.0
    kinds: dict[str, list] = collections.defaultdict(list)
    first_any = None
    for rec in records:
        key = rec["key"][0] if isinstance(rec["key"], tuple) else rec["key"]
        kind = str(key).rsplit("-", 1)[0][:40]
        for ss in rec.get("startstops", ()):
            if ss["action"] == "compute":
                kinds[kind].append((ss["start"], ss["stop"]))
                first_any = ss["start"] if first_any is None else min(first_any, ss["start"])
    if first_any is not None:  # times from run() starting, as before
        t0 = first_any - table["first_task"]
    spans = [s for v in kinds.values() for s in v]
    sleeping = sum(b - a for k, v in kinds.items() if "sleep" in k for a, b in v)
    wall = table["wall"]
    return {
        "wall": wall,
        "exact": table["exact"],
        "busy_share": sleeping / (workers * wall) if spans else None,
        "first_start": table["first_task"],
        "after_last": wall - (max(b for _, b in spans) - t0) if spans else None,
        "kinds": {
            k: {"tasks": len(v), "mean_ms": 1000 * sum(b - a for a, b in v) / len(v)} for k, v in sorted(kinds.items())
        },
        "per_worker": table,
    }


def cpu_seconds() -> dict[str, float]:
    """The machine's busy CPU seconds so far, this process tree's, and the hypervisor's steal.

    Ours counts the living descendants (the cluster's workers) and, through
    ``children_*``, those that ended and were waited for.
    """
    import psutil

    machine = psutil.cpu_times()
    me = psutil.Process()
    own = me.cpu_times()
    ours = own.user + own.system + own.children_user + own.children_system
    for child in me.children(recursive=True):
        try:
            t = child.cpu_times()
        except psutil.Error:
            continue
        ours += t.user + t.system
    busy = machine.user + machine.nice + machine.system + getattr(machine, "irq", 0) + getattr(machine, "softirq", 0)
    return {"machine": busy, "ours": ours, "steal": getattr(machine, "steal", 0.0), "wall": time.monotonic()}


def cpu_elsewhere(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """CPU seconds the rest of the machine used between two ``cpu_seconds()`` (a noisy-neighbour gauge)."""
    return {
        "wall": after["wall"] - before["wall"],
        "ours": after["ours"] - before["ours"],
        "others": max(0.0, (after["machine"] - before["machine"]) - (after["ours"] - before["ours"])),
        "steal": after["steal"] - before["steal"],
    }


def measure_workers(
    workers: int,
    reps: int,
    n: int,
    sleep: dict,
    pool2: Any = None,
    t1_reps: int = 0,
    log: Callable = print,
    sids: tuple[str, ...] = tuple(W.SCALE_WORKLOADS),
) -> dict:
    """Every workload and system at one worker count, on one cluster started before timing.

    Repetitions go round the workloads (rep 1 of S1..S5, then rep 2), so a noisy
    moment hits all of them. With ``pool2``, the revised T1 runs on this cluster too.
    """
    from distributed import Client, LocalCluster

    parts = (2 * workers, 4 * workers, 8 * workers)
    raw: dict[str, dict[str, Any]] = {
        sid: {"pypiper_dask": [], "ThreadPool": [], "dask.bag": {p: [] for p in parts}} for sid in sids
    }
    result: dict[str, Any] = {"workers": workers, "bag_partitions": list(parts)}
    before = cpu_seconds()
    with (
        LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=":0"
        ) as cluster,
        Client(cluster, set_as_default=False) as client,
        multiprocessing.pool.ThreadPool(workers) as threads,
    ):
        client.wait_for_workers(workers, timeout=60)
        if pool2 is not None:
            result["t1"] = revised_t1(client, pool2, t1_reps, log)
        # Warm-up, untimed: imports and the first contact with every worker.
        from bench.third import warm_workers

        warm_workers(client)
        attempt(partial(sys_ours, "S1", client, min(n, 200), sleep), W.scale_serial("S1", min(n, 200)))
        attempt(partial(sys_bag, "S1", client, workers, min(n, 200), sleep), W.scale_serial("S1", min(n, 200)))
        for rep in range(reps):
            for sid in sids:
                expected = W.scale_serial(sid, n)
                runs = raw[sid]
                runs["pypiper_dask"].append(attempt(partial(sys_ours, sid, client, n, sleep), expected))
                for p in parts:
                    runs["dask.bag"][p].append(attempt(partial(sys_bag, sid, client, p, n, sleep), expected))
                runs["ThreadPool"].append(attempt(partial(sys_threads, sid, threads, n, sleep), expected))
                ours = runs["pypiper_dask"][-1]
                log(
                    f"W={workers} rep {rep + 1} {sid} pypiper_dask {_secs(ours[0])} {ours[1]}; "
                    + " ".join(f"bag/{p} {_secs(runs['dask.bag'][p][-1][0])}" for p in parts)
                    + f"; ThreadPool {_secs(runs['ThreadPool'][-1][0])}"
                )
        result["profile"] = {}
        for sid in sids:
            try:
                result["profile"][sid] = task_profile(client, sid, n, sleep)
            except Exception as exc:
                result["profile"][sid] = {"error": _error(exc)}
                log(f"W={workers} {sid} per worker: {result['profile'][sid]['error']}")
                continue
            log_workers(f"W={workers} {sid}", result["profile"][sid]["per_worker"], log, rows=sid == sids[0])
        result["cpu"] = cpu_elsewhere(before, cpu_seconds())  # before the cluster's processes end
        log(
            f"W={workers}: {result['cpu']['wall']:.0f} s; CPU seconds: this benchmark {result['cpu']['ours']:.0f},"
            f" other processes {result['cpu']['others']:.1f}, stolen {result['cpu']['steal']:.1f}"
        )
    systems: dict[str, dict] = {}
    for sid, runs in raw.items():
        nominal = W.nominal_sleep(sid, n, sleep)
        by_parts = {p: summarize(r, nominal, workers) for p, r in runs["dask.bag"].items()}
        exact = [p for p, s in by_parts.items() if s["best"] is not None]
        best = min(exact, key=lambda p: by_parts[p]["best"]) if exact else None
        bag = dict(by_parts[best if best else parts[0]])
        bag["partitions"] = {str(p): s for p, s in by_parts.items()}
        bag["best_partitions"] = best
        systems[sid] = {
            "pypiper_dask": summarize(runs["pypiper_dask"], nominal, workers),
            "dask.bag": bag,
            "ThreadPool": summarize(runs["ThreadPool"], nominal, workers),
        }
    result["systems"] = systems
    return result


def revised_t1(client: Any, pool: Any, reps: int, log: Callable = print) -> dict:
    """W2 at ``n_threads=2``: a client passed in (and a cluster of its own) against ``Pool(2)`` and serial."""
    expected = W.serial("W2")
    out: dict[str, Any] = {"loops": W.LOOPS["n"], "n": W.size("W2")}
    runs = {
        "serial": partial(R.sys_serial, "W2"),
        "Pool(2)": partial(R.sys_pool, "W2", pool),
        "pypiper_dask n=2 client": partial(R.sys_ours, "W2", client=client),
        "pypiper_dask n=2 +cluster": partial(R.sys_ours_cold, "W2"),
    }
    for name, fn in runs.items():
        try:
            out[name] = R.measure(fn, expected, reps)
        except Exception as exc:
            out[name] = {"median": None, "min": None, "max": None, "verdict": _error(exc)}
        log(f"T1 W2 {name:28s} {_secs(out[name]['median'])} {out[name]['verdict']}")
    return out


def log_workers(label: str, table: dict, log: Callable, rows: bool = True) -> None:
    """Print a run's per-worker summary and, with ``rows``, a line per worker."""
    from bench.workers import summary_line

    log(f"{label} per worker: {summary_line(table)}")
    if rows:
        for r in table["workers"]:
            first = "  idle" if r["first"] is None else f"{r['first']:6.3f}s"
            log(f"    {r['worker']:>24s} first task {first}  busy {100 * (r['share'] or 0):3.0f}%  tasks {r['tasks']}")


def _secs(seconds: float | None) -> str:
    return "  failed" if seconds is None else f"{seconds:7.3f}s"


def run_scale(
    reps: int,
    *,
    quick: bool,
    n: int = W.SCALE_N,
    sleep: dict | None = None,
    workers: tuple[int, ...] = WORKERS,
    t1: bool = True,
    t1_reps: int | None = None,
    log: Callable = print,
    sids: tuple[str, ...] = tuple(W.SCALE_WORKLOADS),
) -> dict:
    """Measure everything; the JSON-ready figures that ``report.write_scale_report`` renders."""
    sleep = dict(sleep or W.SLEEP)
    data: dict[str, Any] = {
        "quick": quick,
        "reps": reps,
        "n": n,
        "sleep": sleep,
        "workers": list(workers),
        "workloads": list(sids),
        "nominal": {sid: W.nominal_sleep(sid, n, sleep) for sid in W.SCALE_WORKLOADS},
        "machine": R.machine(),
        "runs": {},
    }
    t1 = t1 and 2 in workers  # T1 runs on the 2-worker cluster only
    if t1:
        W.calibrate()
        log(f"W2 calibrated: {W.LOOPS['n']} loops ≈ 2 ms")
    # Pool(2) forks before any cluster exists (no threads to copy).
    with multiprocessing.get_context("fork").Pool(2) if t1 else contextlib.nullcontext() as pool2:
        for count in workers:
            with_t1 = t1 and count == 2
            found = measure_workers(
                count, reps, n, sleep, pool2 if with_t1 else None, t1_reps or max(reps, 1), log=log, sids=sids
            )
            if "t1" in found:
                data["t1"] = found.pop("t1")
            data["runs"][str(count)] = found
    return data


def main(args: Any) -> int:
    """``python -m bench --scale``: measure (or re-read ``--from-json``), then write the section and chart."""
    import json
    from pathlib import Path

    from bench.report import write_scale_report

    out = Path(args.out)
    figures = out.parent / "bench" / "scale.json"
    if args.from_json:
        data = json.loads(Path(args.from_json).read_text())
    else:
        reps = args.reps or (1 if args.quick else 2)
        workers = tuple(int(w) for w in str(getattr(args, "workers", None) or "2,4,8").split(","))
        sids = tuple((getattr(args, "workloads", None) or ",".join(W.SCALE_WORKLOADS)).split(","))
        unknown = [sid for sid in sids if sid not in W.SCALE_WORKLOADS]
        if unknown:
            raise SystemExit(f"--workloads: unknown {unknown}; known: {list(W.SCALE_WORKLOADS)}")
        data = run_scale(
            reps,
            quick=args.quick,
            workers=workers,
            t1=not getattr(args, "no_t1", False),
            t1_reps=args.reps or (1 if args.quick else 3),
            log=_log,
            sids=sids,
        )
        figures.parent.mkdir(parents=True, exist_ok=True)
        figures.write_text(json.dumps(data, indent=1) + "\n")
        print(f"wrote {figures}", file=sys.stderr)
    write_scale_report(out, data)
    print(f"wrote the scaling section of {out}", file=sys.stderr)
    return 0


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
