"""The third round of shared/docs/bench.md: T9, T10, T11 and T13, each a mode of its own.

- ``python -m bench --skew``: T9, the skewed CPU load (1,000 and 4,000 items of
  0.5-3.5 ms of pure-Python loop) at 2 workers with a client passed in, against
  serial and ``Pool(2).map(chunksize=25)`` in the same run.
- ``python -m bench --many``: T10, S1 (3,000 items x 2 ms sleep) at 16, 32 and 64
  single-threaded workers: by default the scheduler in its own process and the
  workers as threads of another (``--threads``: a ``LocalCluster(processes=False)``,
  ``--processes``: a ``LocalCluster`` of processes); efficiency, each worker's
  first task and busy share, the caller's CPU per round, the scheduler's CPU
  per task and its tasks per second.
- ``python -m bench --own-cluster``: T11, S1 at 8 workers and W2 at 2 on
  ``dask scheduler`` and ``dask worker ADDRESS --nthreads 1`` processes started
  here, the pipeline given the address, against a ``LocalCluster`` of the same
  count, alternating.
- ``python -m bench --numpy``: T13, framed FFTs of synthetic audio and a stateful
  running mean at 2 workers against serial and ``Pool(2)``, with the workers'
  peak RSS and the same loop's time in a worker against a plain process.

``--quick`` makes each a smoke run. Every output is checked against the serial
one. Each mode writes ``bench/<mode>.json`` beside ``--out`` and replaces its
own marked section of ``--out``; ``--from-json PATH`` re-renders from saved figures.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import multiprocessing.pool
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

from bench import run as R
from bench import workloads as W
from bench.workers import profiled_run, summary_line, worker_section

MANY = (16, 32, 64)


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _error(exc: BaseException) -> str:
    text = str(exc).splitlines()[0][:160] if str(exc) else ""
    return f"error: {type(exc).__name__}: {text}"


def timed(fn: Callable[[], Any], expected: Any) -> tuple[float | None, str]:
    """(seconds, "exact" | "wrong output") of one call of ``fn``, or (None, the error)."""
    try:
        start = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - start
    except Exception as exc:  # a failing system is reported, not fatal to the run
        return None, _error(exc)
    return seconds, "exact" if out == expected else "wrong output"


def stats(runs: list[tuple[float | None, str]]) -> dict:
    """Median, min and max of the exact runs, and every run's verdict."""
    exact = [s for s, v in runs if v == "exact" and s is not None]
    bad = sorted({v for _, v in runs if v != "exact"})
    return {
        "times": [s for s, _ in runs],
        "median": statistics.median(exact) if exact else None,
        "min": min(exact) if exact else None,
        "max": max(exact) if exact else None,
        "verdict": "exact" if not bad else "; ".join(bad),
    }


def interleaved(systems: dict[str, Callable[[], Any]], expected: Any, reps: int, log: Callable, label: str) -> dict:
    """Each system ``reps`` times, round-robin, so a noisy moment hits them all; ``stats`` by name."""
    runs: dict[str, list] = {name: [] for name in systems}
    for rep in range(reps):
        for name, fn in systems.items():
            runs[name].append(timed(fn, expected))
        log(f"{label} rep {rep + 1}: " + "; ".join(f"{k} {_s(v[-1][0])} {v[-1][1]}" for k, v in runs.items()))
    return {name: stats(r) for name, r in runs.items()}


def _s(x: float | None) -> str:
    return "failed" if x is None else f"{x:.3f}s"


THREAD_WORKER_CONFIG = {"distributed.worker.profile.enabled": False}


def local_cluster(workers: int, processes: bool = True) -> Any:
    """Single-threaded workers on 127.0.0.1 over tcp (inproc:// would skip the serialization a cluster pays).

    Workers as threads share one process: each one's statistical profiler (a
    thread sampling every thread's stack every 10 ms) and memory monitor would
    then run ``workers`` times over in that process, so they are turned off there.
    """
    from distributed import LocalCluster

    options: dict[str, Any] = {} if processes else {"memory_limit": 0}
    with dask_config(None if processes else THREAD_WORKER_CONFIG):
        return LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=processes,
            protocol="tcp://",
            host="127.0.0.1",
            dashboard_address=":0",
            **options,
        )


def dask_config(settings: dict | None) -> Any:
    import dask

    return dask.config.set(settings) if settings else contextlib.nullcontext()


def warm_workers(client: Any) -> None:
    """Import the workloads and the engine's worker side on every worker, untimed.

    A warm-up pipeline alone reaches only the workers its tasks land on.
    """
    import importlib

    for module in ("bench.workloads", "pypiper_dask.worker"):
        client.run(importlib.import_module, module)


def ours(graph: Callable[[], Any], client: Any) -> dict:
    from pypiper_dask import Pipeline

    return dict(Pipeline(graph(), quiet=True, progress=False, client=client).run())


def profile(client: Any, graph: Callable[[], Any], expected: Any, pipeline_client: Any = None) -> dict:
    """One untimed run under the task stream (``bench.workers.profiled_run``), or the error."""
    try:
        return profiled_run(client, lambda: ours(graph, pipeline_client or client), check=lambda out: out == expected)
    except Exception as exc:
        return {"error": _error(exc)}


def speedups(r: dict, serial: str = "serial", pool: str = "Pool(2)", ours_name: str = "pypiper_dask") -> dict:
    """Speedups over serial (medians) and ours as a share of Pool's; None where a run was not exact."""
    s, p, o = r[serial]["median"], r[pool]["median"], r[ours_name]["median"]
    out = {"pool": s / p if s and p else None, "ours": s / o if s and o else None}
    out["of_pool"] = out["ours"] / out["pool"] if out["ours"] and out["pool"] else None
    return out


# -- T9 ---------------------------------------------------------------------------------------


def run_skew(reps: int, quick: bool, log: Callable = _log) -> dict:
    """T9 at each size: serial, ``Pool(2).map(chunksize=25)`` and pypiper_dask on a 2-worker client."""
    from distributed import Client

    loops = W.calibrate(0.0005, W.SKEW_UNIT)
    log(f"T9 unit calibrated: {loops} loops ≈ 0.5 ms")
    sizes = (1000,) if quick else W.SKEW_N
    data: dict[str, Any] = {"mode": "skew", "quick": quick, "reps": reps, "loops": loops, "machine": R.machine()}
    data["sizes"] = {}
    item = partial(W.skew_item, loops=loops)
    with (
        multiprocessing.get_context("fork").Pool(2) as pool,  # forked before any cluster thread exists
        local_cluster(2) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        client.wait_for_workers(2, timeout=60)
        warm_workers(client)
        ours(partial(W.skew_graph, 50, loops), client)  # warm-up: imports on the workers
        for n in sizes:
            expected = W.skew_serial(n, loops)
            systems = {
                "serial": partial(W.skew_serial, n, loops),
                "Pool(2)": lambda n=n: {"leaf": pool.map(item, range(n), chunksize=25)},
                "pypiper_dask": partial(ours, partial(W.skew_graph, n, loops), client),
            }
            r = interleaved(systems, expected, reps, log, f"T9 n={n}")
            found = {"runs": r, "speedup": speedups(r)}
            found["profile"] = profile(client, partial(W.skew_graph, n, loops), expected)
            if "error" not in found["profile"]:
                log(f"T9 n={n} per worker: {summary_line(found['profile'])}")
            data["sizes"][str(n)] = found
    return data


def section_skew(data: dict) -> str:
    lines = [
        "## T9: the skewed CPU load at two workers (python -m bench --skew)",
        "",
        f"{_when(data)} Item `x` runs `((x * 7919) % 7 + 1)` units of a pure-Python loop ({data['loops']} iterations"
        " ≈ 0.5 ms, calibrated in this run); source → that node → a leaf. pypiper_dask on a 2-worker `LocalCluster`"
        " (single-threaded processes) passed in as a client; `Pool(2).map(chunksize=25)`; serial a plain loop."
        f" Median of {data['reps']}, interleaved; every output checked against serial. T9: pypiper_dask's speedup"
        " ≥ 0.95 × Pool(2)'s.",
        "",
        "| items | serial | Pool(2) | pypiper_dask | Pool's speedup | ours | ours ÷ Pool's | T9 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    tables = {}
    for n, f in data["sizes"].items():
        r, sp = f["runs"], f["speedup"]
        lines.append(
            f"| {int(n):,} | {_cellt(r['serial'])} | {_cellt(r['Pool(2)'])} | {_cellt(r['pypiper_dask'])} |"
            f" {_x(sp['pool'])} | {_x(sp['ours'])} | {_x(sp['of_pool'], '')} | {_holds(sp['of_pool'], 0.95)} |"
        )
        tables[f"{int(n):,} items"] = f["profile"]
    return "\n".join([*lines, "", *worker_section(tables, "Per worker (one more, untimed, run)")]) + "\n"


# -- T10 ------------------------------------------------------------------------------------


def scheduler_rate(client: Any, tasks: int) -> float:
    """Tasks per second the scheduler and workers manage for ``tasks`` no-op tasks from ``client.map``."""
    start = time.perf_counter()
    futures = client.map(_noop, range(tasks), pure=False)
    client.gather(futures)
    seconds = time.perf_counter() - start
    del futures
    return tasks / seconds


def _noop(x: int) -> int:
    return x


LAYOUTS = {
    "split": "`dask scheduler` in its own process, the workers as threads of one other process"
    " (`python -m bench.thread_workers`), the caller alone in its own",
    "threads": "a `LocalCluster(processes=False)`: scheduler, workers (threads) and caller in one process",
    "processes": "a `LocalCluster` of worker processes, its scheduler in the caller's process",
}


@contextlib.contextmanager
def many_cluster(count: int, layout: str, log: Callable) -> Iterator[tuple[Any, dict]]:
    """A client on ``count`` single-threaded workers laid out as ``layout``, and the pids to watch."""
    from distributed import Client

    if layout == "split":
        with (
            own_cluster(count, log, timeout=300, threads=True) as own,
            Client(own["address"], set_as_default=False) as client,
        ):
            yield client, {"scheduler": own["scheduler_pid"], "workers": own["worker_pids"][0]}
        return
    with local_cluster(count, layout == "processes") as cluster, Client(cluster, set_as_default=False) as client:
        client.wait_for_workers(count, timeout=300)
        yield client, {}


def run_many(
    reps: int, quick: bool, layout: str = "split", counts: tuple[int, ...] | None = None, log: Callable = _log
) -> dict:
    """T10: S1 at each worker count on its own cluster; efficiency, the per-worker table, the limits.

    With the split layout the scheduler's and the workers' processes are apart
    from the caller's: their CPU seconds during the profiled run give the
    scheduler's CPU per task and the caller's (``time.process_time()``) per round.
    """
    from bench import scale

    counts = counts or ((16,) if quick else MANY)
    n, sleep = W.SCALE_N, dict(W.SLEEP)
    nominal = W.nominal_sleep("S1", n, sleep)
    expected = W.scale_serial("S1", n)
    data: dict[str, Any] = {
        "mode": "many",
        "quick": quick,
        "reps": reps,
        "layout": layout,
        "n": n,
        "nominal": nominal,
        "machine": R.machine(),
        "counts": {},
    }
    graph = partial(W.scale_graph, "S1", n, sleep)
    for count in counts:
        found: dict[str, Any] = {}
        start = time.perf_counter()
        try:
            with many_cluster(count, layout, log) as (client, pids):
                found["start_s"] = time.perf_counter() - start
                warm_workers(client)
                ours(partial(W.scale_graph, "S1", 200, sleep), client)  # warm-up
                runs = []
                for rep in range(reps):
                    runs.append(timed(partial(ours, graph, client), expected))
                    log(f"T10 W={count} rep {rep + 1}: {_s(runs[-1][0])} {runs[-1][1]}")
                found["pypiper_dask"] = scale.summarize(runs, nominal, count)
                before = {k: _proc_cpu(pid) for k, pid in pids.items()}
                found["profile"] = profile(client, graph, expected)
                found["cpu_s"] = {k: _proc_cpu(pid) - before[k] for k, pid in pids.items()}
                found["scheduler_noop_per_s"] = scheduler_rate(client, 1000 if quick else 4000)
        except Exception as exc:
            found["error"] = _error(exc)
        p = found.get("profile", {})
        if p and "error" not in p:
            log(f"T10 W={count} per worker: {summary_line(p)}")
            log(f"T10 W={count} CPU: caller's threads {p['threads']}; other processes {found.get('cpu_s')}")
        with multiprocessing.pool.ThreadPool(count) as threads:
            tp = [scale.attempt(partial(scale.sys_threads, "S1", threads, n, sleep), expected) for _ in range(reps)]
        found["ThreadPool"] = scale.summarize(tp, nominal, count)
        log(
            f"T10 W={count}: efficiency {_num(found.get('pypiper_dask', {}).get('efficiency'))},"
            f" ThreadPool {_num(found['ThreadPool']['efficiency'])}; {found.get('error', '')}"
        )
        data["counts"][str(count)] = found
    return data


def section_many(data: dict) -> str:
    layout = data.get("layout", "processes" if data.get("processes") else "threads")
    lines = [
        "## T10: many workers (python -m bench --many)",
        "",
        f"{_when(data)} S1: {data['n']:,} items sleeping 2 ms each ({data['nominal']:.1f} s of sleep) → a leaf,"
        f" single-threaded workers, a client passed in. Layout `{layout}`: {LAYOUTS[layout]}. Workers that are"
        " threads run without Dask's per-worker profiler and memory monitor (in one process each would run once"
        " per worker). Efficiency = (nominal sleep ÷ workers) ÷ wall, best of"
        f" {data['reps']}; a `ThreadPool` of the same size on the same items for what the machine allows."
        " Caller CPU / round: `time.process_time()` around `run()` ÷ rounds (the caller's process: with a"
        " `LocalCluster` it holds the scheduler too, with threads the workers too); main thread: the caller's run"
        " loop alone. Scheduler CPU / task: the scheduler process's CPU seconds in the profiled run ÷ its tasks"
        " (split layout only). Tasks/s: the run's tasks ÷ its wall; no-op: `client.map` of trivial tasks on the"
        " same cluster, the scheduler's own rate on this machine.",
        "",
        "| workers | start | efficiency (best) | ThreadPool | rounds | tasks/s | no-op tasks/s |"
        " caller CPU / round | main thread / round | scheduler CPU / task | first tasks within | busy range | T10 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    tables = {}
    for count, f in data["counts"].items():
        if "error" in f and "pypiper_dask" not in f:
            lines.append(f"| {count} | **{f['error']}** |" + " |" * 12)
            continue
        p, e = f.get("profile", {}), f["pypiper_dask"]
        ok = "error" not in p
        eff = e["efficiency"]
        sched = f.get("cpu_s", {}).get("scheduler")
        lines.append(
            f"| {count} | {f['start_s']:.1f} s | {_num(eff)} ({_s(e['best'])}) |"
            f" {_num(f['ThreadPool']['efficiency'])} |"
            f" {p.get('rounds', '—')} | {_num(p.get('tasks_per_second'), fmt='.0f')} |"
            f" {_num(f.get('scheduler_noop_per_s'), fmt='.0f')} |"
            f" {_ms1(p.get('caller_cpu_per_round'))} | {_ms1(p.get('main_cpu_per_round'))} |"
            f" {_ms1(sched / p['tasks'], 2) if sched is not None and ok and p['tasks'] else '—'} |"
            f" {_ms1(p['spread']['last_first'], 0) if ok else '—'} |"
            f" {_range(p) if ok else '—'} | {_holds(eff, 0.8)} |"
        )
        if ok:
            tables[f"{count} workers"] = p
    lines += ["", "CPU seconds during the profiled run, the caller's process by thread and the others':", ""]
    for count, f in data["counts"].items():
        threads = f.get("profile", {}).get("threads")
        if threads:
            others = "".join(f"; {k} process {v:.2f}" for k, v in f.get("cpu_s", {}).items())
            lines.append(
                f"- {count} workers: " + ", ".join(f"{k} {v:.2f}" for k, v in list(threads.items())[:6]) + others
            )
    return "\n".join([*lines, "", *worker_section(tables, "Per worker (the profiled run)")]) + "\n"


# -- T11 --------------------------------------------------------------------------------------


@contextlib.contextmanager
def own_cluster(workers: int, log: Callable = _log, timeout: float = 180.0, threads: bool = False) -> Iterator[dict]:
    """``dask scheduler`` and ``workers`` × ``dask worker ADDRESS --nthreads 1``, as a user starts them.

    With ``threads``, the workers are threads of one process instead
    (``python -m bench.thread_workers ADDRESS N``). Yields ``{"address",
    "scheduler_pid", "worker_pids", "start_s"}``. Each command runs in its own
    session; on exit each of those process groups gets SIGTERM, then SIGKILL.
    """
    dask = shutil.which("dask") or str(Path(sys.executable).with_name("dask"))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(R.ROOT), os.environ.get("PYTHONPATH")])))
    procs: list[subprocess.Popen] = []
    tmp = tempfile.mkdtemp(prefix="bench-own-")
    start = time.perf_counter()
    try:
        file = Path(tmp) / "scheduler.json"
        common = {"env": env, "cwd": tmp, "start_new_session": True, "stdout": subprocess.DEVNULL}
        log_file = open(Path(tmp) / "log", "w")  # noqa: SIM115 - closed below
        procs.append(
            subprocess.Popen(
                [
                    dask,
                    "scheduler",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    "0",
                    "--no-dashboard",
                    "--scheduler-file",
                    str(file),
                ],
                stderr=log_file,
                **common,
            )
        )
        while not file.exists() or not file.read_text().strip():
            if procs[0].poll() is not None or time.perf_counter() - start > timeout:
                raise RuntimeError(f"dask scheduler did not start: {(Path(tmp) / 'log').read_text()[-500:]}")
            time.sleep(0.1)
        address = json.loads(file.read_text())["address"]
        commands = (
            [[sys.executable, "-m", "bench.thread_workers", address, str(workers)]]
            if threads
            else [[dask, "worker", address, "--nthreads", "1", "--no-dashboard", "--host", "127.0.0.1"]] * workers
        )
        for command in commands:
            procs.append(subprocess.Popen(command, stderr=log_file, **common))
        from distributed import Client

        with Client(address, set_as_default=False) as probe:
            try:
                probe.wait_for_workers(workers, timeout=timeout)
            except Exception as exc:
                raise RuntimeError(f"{exc}; their log: {(Path(tmp) / 'log').read_text()[-500:]}") from exc
        info = {
            "address": address,
            "scheduler_pid": procs[0].pid,
            "worker_pids": [p.pid for p in procs[1:]],
            "start_s": time.perf_counter() - start,
        }
        log(f"own cluster at {address}: {workers} workers in {info['start_s']:.1f} s")
        yield info
    finally:
        for p in reversed(procs):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
        for p in reversed(procs):
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=10)
        with contextlib.suppress(Exception):
            log_file.close()
        shutil.rmtree(tmp, ignore_errors=True)


def _proc_cpu(pid: int | None = None) -> float:
    """CPU seconds (user and system) of process ``pid``, this one by default."""
    import psutil

    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def _counting(spent: list[float], pid: int, graph: Callable[[], Any], client: Any) -> dict:
    """``ours(graph, client)``, adding the scheduler process's CPU seconds meanwhile to ``spent[0]``."""
    before = _proc_cpu(pid)
    try:
        return ours(graph, client)
    finally:
        spent[0] += _proc_cpu(pid) - before


def run_own_cluster(reps: int, quick: bool, log: Callable = _log) -> dict:
    """T11: S1 and W2 on a hand-started cluster (address string and a client) against a ``LocalCluster``."""
    from distributed import Client

    W.calibrate()
    log(f"W2 calibrated: {W.LOOPS['n']} loops ≈ 2 ms")
    sleep = dict(W.SLEEP)
    configs = [("S1", 4 if quick else 8, 1000 if quick else W.SCALE_N), ("W2", 2, 500 if quick else W.size("W2"))]
    data: dict[str, Any] = {"mode": "own-cluster", "quick": quick, "reps": reps, "machine": R.machine()}
    data["loops"], data["configs"] = W.LOOPS["n"], {}
    for wid, count, n in configs:
        if wid == "S1":
            graph, expected = partial(W.scale_graph, "S1", n, sleep), W.scale_serial("S1", n)
            warm = partial(W.scale_graph, "S1", 100, sleep)
            ideal = W.nominal_sleep("S1", n, sleep) / count
        else:
            graph, expected = partial(W.graph, "W2", W.OURS, n), W.serial("W2", n)
            warm = partial(W.graph, "W2", W.OURS, 50)
            start = time.perf_counter()
            W.serial("W2", n)
            ideal = (time.perf_counter() - start) / count  # serial ÷ workers, measured now
        found: dict[str, Any] = {"workers": count, "n": n, "ideal": ideal}
        try:
            with (
                own_cluster(count, log) as own,
                Client(own["address"], set_as_default=False) as own_client,
                local_cluster(count) as cluster,
                Client(cluster, set_as_default=False) as local,
            ):
                local.wait_for_workers(count, timeout=120)
                warm_workers(own_client)
                warm_workers(local)
                found["own_start_s"] = own["start_s"]
                for c in (own["address"], own_client, local):  # warm-up: imports on every worker
                    ours(warm, c)
                spent = [0.0]  # the own scheduler's CPU seconds during its runs only
                systems = {
                    "own cluster, address": partial(_counting, spent, own["scheduler_pid"], graph, own["address"]),
                    "own cluster, client": partial(_counting, spent, own["scheduler_pid"], graph, own_client),
                    "LocalCluster, client": partial(ours, graph, local),
                }
                r = interleaved(systems, expected, reps, log, f"T11 {wid} W={count}")
                found["scheduler_cpu_s"] = spent[0]
                found["runs"] = r
                found["profile"] = {
                    "own cluster, address": profile(own_client, graph, expected, own["address"]),
                    "LocalCluster, client": profile(local, graph, expected),
                }
        except Exception as exc:
            found["error"] = _error(exc)
            log(f"T11 {wid}: {found['error']}")
        data["configs"][wid] = found
    return data


def section_own(data: dict) -> str:
    lines = [
        "## T11: a user's own cluster (python -m bench --own-cluster)",
        "",
        f"{_when(data)} `dask scheduler` and `dask worker ADDRESS --nthreads 1` processes started by the benchmark"
        " as a user starts them (each worker its own command, under its nanny), against a `LocalCluster` of the"
        " same count (single-threaded processes), both up at once and used alternately. Own cluster: the pipeline"
        " given the address string (it connects a client each run, included in the time) and given a client."
        f" Median of {data['reps']}; efficiency = ideal ÷ time, the ideal being nominal sleep ÷ workers (S1) or"
        " serial ÷ workers (W2, serial timed in this run). T11: own ≤ 1.05 × LocalCluster.",
        "",
        "| workload | workers | own, address | own, client | LocalCluster | own ÷ Local (address) |"
        " scheduler CPU / task | T11 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    tables = {}
    for wid, f in data["configs"].items():
        if "runs" not in f:
            lines.append(f"| {wid} | {f['workers']} | **{f.get('error')}** |" + " |" * 5)
            continue
        r = f["runs"]
        own, local = r["own cluster, address"]["median"], r["LocalCluster, client"]["median"]
        ratio = own / local if own and local else None
        prof = f["profile"]["own cluster, address"]
        tasks = prof.get("tasks") if "error" not in prof else None
        # The scheduler's CPU over the timed runs ÷ their tasks (profiled run's tasks × runs on the own scheduler).
        per_task = f["scheduler_cpu_s"] / (tasks * 2 * data["reps"]) if tasks else None
        lines.append(
            f"| {wid} ({f['n']:,} items) | {f['workers']} | {_effc(r['own cluster, address'], f['ideal'])} |"
            f" {_effc(r['own cluster, client'], f['ideal'])} | {_effc(r['LocalCluster, client'], f['ideal'])} |"
            f" {_num(ratio)} | {_ms1(per_task, 2)} | {_holds(None if ratio is None else 1 / ratio, 1 / 1.05)} |"
        )
        for name, p in f["profile"].items():
            tables[f"{wid}, {name}"] = p
    return "\n".join([*lines, "", *worker_section(tables, "Per worker (one more, untimed, run each)")]) + "\n"


# -- T13 --------------------------------------------------------------------------------------


def _rss() -> dict:
    import resource

    import psutil

    return {
        "rss_mb": psutil.Process().memory_info().rss / 2**20,
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def _malloc_env() -> dict:
    return {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")}


#: Items per task of the ``client.map`` anchors of T13.
NUMPY_CHUNKS = (25, 50)


def _client_map(client: Any, n: int, k: int) -> dict:
    """T13's features as plain ``client.map`` tasks of ``k`` items, the running mean in the caller."""
    futures = client.map(W.features_batch, [range(i, min(i + k, n)) for i in range(0, n, k)], pure=False)
    return {"mean": W.running_means(v for f in futures for v in f.result())}


def _cpu_split(client: Any, fn: Callable[[], Any]) -> dict:
    """CPU seconds of one call of ``fn``: in this process and in all workers together."""
    workers, caller = client.run(_proc_cpu), _proc_cpu()
    fn()
    caller, after = _proc_cpu() - caller, client.run(_proc_cpu)
    return {"caller": caller, "workers": sum(after[w] - workers[w] for w in workers)}


def run_numpy(reps: int, quick: bool, log: Callable = _log) -> dict:
    """T13: serial, ``Pool(2).imap`` + the running mean in the caller, pypiper_dask on 2 workers; RSS, per-item."""

    n = 100 if quick else W.NUMPY_N
    expected = W.numpy_serial(n)
    data: dict[str, Any] = {"mode": "numpy", "quick": quick, "reps": reps, "n": n, "audio": dict(W.AUDIO)}
    data["machine"] = R.machine()
    feats = partial(W.audio_features, **W.AUDIO)
    loop_n = 30 if quick else 100
    # The cluster the library starts for n_threads=2 (its workers' malloc settings included),
    # kept for the whole measurement and passed to each run as a client.
    from pypiper_dask.runtime.cluster import open_client

    with (
        multiprocessing.get_context("fork").Pool(2) as pool,
        contextlib.ExitStack() as stack,
    ):
        client = open_client(stack, None, 2)
        client.wait_for_workers(2, timeout=60)
        warm_workers(client)
        data["worker_malloc_env"] = next(iter(client.run(_malloc_env).values()))
        ours(partial(W.numpy_graph, 10), client)  # warm-up
        systems = {
            "serial": partial(W.numpy_serial, n),
            "Pool(2)": lambda: {"mean": W.running_means(pool.imap(feats, range(n), chunksize=8))},
            "pypiper_dask": partial(ours, partial(W.numpy_graph, n), client),
            # Dask's own floor on the same cluster: the features alone, the mean in the caller.
            "pypiper_dask, features only": lambda: {
                "mean": W.running_means(ours(partial(W.numpy_features_graph, n), client)["features"])
            },
            **{f"client.map, {k} a task": partial(_client_map, client, n, k) for k in NUMPY_CHUNKS},
        }
        r = interleaved(systems, expected, reps, log, f"T13 n={n}")
        data["runs"], data["speedup"] = r, speedups(r)
        data["anchors"] = {name: speedups(r, ours_name=name)["of_pool"] for name in list(systems)[3:]}
        # Where the CPU goes in one more run of each (the caller's process holds the scheduler
        # and the nannies): on two cores every CPU-second of overhead is a worker's.
        data["cpu"] = {name: _cpu_split(client, systems[name]) for name in list(systems)[2:]}
        data["workers_rss"] = client.run(_rss)
        data["profile"] = profile(client, partial(W.numpy_graph, n), expected)
        # The same loop of audio_features: in this process, in a Pool process and in a Dask worker.
        per_item: dict[str, list] = {"plain process": [], "Pool(2) process": [], "Dask worker": []}
        for _ in range(max(reps, 2)):
            per_item["plain process"].append(W.audio_loop(loop_n) / loop_n)
            per_item["Pool(2) process"].append(pool.apply(W.audio_loop, (loop_n,)) / loop_n)
            per_item["Dask worker"].append(client.submit(W.audio_loop, loop_n, pure=False).result() / loop_n)
        data["per_item"] = {k: min(v) for k, v in per_item.items()}
        data["workers_rss_after_loop"] = client.run(_rss)
    items = ", ".join(f"{k} {1000 * v:.2f} ms" for k, v in data["per_item"].items())
    peaks = ", ".join(f"{v['peak_mb']:.0f} MB" for v in data["workers_rss"].values())
    log(
        f"T13: speedup ours {_x(data['speedup']['ours'])} Pool {_x(data['speedup']['pool'])};"
        f" per item {items}; workers' peak RSS {peaks}; of Pool's: "
        + ", ".join(f"{k} {_num(v)}" for k, v in data["anchors"].items())
    )
    return data


def section_numpy(data: dict) -> str:
    r, sp, a = data["runs"], data["speedup"], data["audio"]
    peaks = ", ".join(f"{v['peak_mb']:.0f} MB" for v in data["workers_rss"].values())
    per = data["per_item"]
    plain = per["plain process"]
    lines = [
        "## T13: allocation-heavy numpy (python -m bench --numpy)",
        "",
        f"{_when(data)} {data['n']} clips of {a['seconds']:g} s at {a['rate']} Hz (a tone plus seeded noise),"
        f" framed ({a['frame']} samples, hop {a['hop']}), windowed, `rfft`, mean log magnitude: arrays of"
        f" {_audio_mb(a)} per item in the fused stage; then a stateful running mean. pypiper_dask on a 2-worker"
        " cluster the library starts for `n_threads=2` (kept, passed in as a client);"
        " `Pool(2).imap(chunksize=8)` with the running mean in the caller;"
        f" serial a plain loop. Median of {data['reps']}, interleaved; every output checked against serial."
        " T13: ours ≥ 0.95 × Pool(2)'s speedup.",
        "",
        "| serial | Pool(2) | pypiper_dask | Pool's speedup | ours | ours ÷ Pool's | T13 |",
        "|---|---|---|---|---|---|---|",
        f"| {_cellt(r['serial'])} | {_cellt(r['Pool(2)'])} | {_cellt(r['pypiper_dask'])} | {_x(sp['pool'])} |"
        f" {_x(sp['ours'])} | {_x(sp['of_pool'], '')} | {_holds(sp['of_pool'], 0.95)} |",
        "",
        "The same loop of the feature function, per item (best of the repetitions): "
        + ", ".join(f"{k} {1000 * v:.2f} ms ({v / plain:.2f}×)" for k, v in per.items())
        + f". The workers' malloc environment: `{data.get('worker_malloc_env')}`. The workers' peak RSS after the"
        f" timed runs: {peaks}.",
    ]
    if "anchors" in data:  # results written before the anchors were measured have none
        lines += ["", *_numpy_anchors(data)]
    return "\n".join([*lines, "", *worker_section({"pypiper_dask": data["profile"]}, "Per worker")]) + "\n"


def _audio_mb(a: dict) -> str:
    """The sizes of one clip's signal and of its frames (float64), as the section states them."""
    samples = int(a["seconds"] * a["rate"])
    frames = (samples - a["frame"]) // a["hop"] + 1
    return f"{8 * samples / 2**20:.1f} MB (the signal) and {8 * frames * a['frame'] / 2**20:.1f} MB (the frames)"


def _numpy_anchors(data: dict) -> list[str]:
    """T13's Dask anchors on the same cluster, and where each run's CPU went."""
    r, cpu = data["runs"], data["cpu"]
    work = r["serial"]["median"]
    lines = [
        "Dask's floor on the same cluster, same run: the features alone (the mean in the caller), as our"
        " pipeline without its stateful node and as plain `client.map` tasks; and the CPU seconds of one"
        " more run of each, in the caller's process (the scheduler and the nannies are there) and in the"
        f" two workers together, against the serial run's {_s(work)} of work.",
        "",
        "| run | median | ÷ Pool's speedup | caller CPU | workers' CPU | CPU over the work |",
        "|---|---|---|---|---|---|",
    ]
    for name, c in cpu.items():
        share = data["speedup"]["of_pool"] if name == "pypiper_dask" else data["anchors"].get(name)
        over = c["caller"] + c["workers"] - work if work else None
        lines.append(
            f"| {name} | {_cellt(r[name])} | {_num(share)} | {_s(c['caller'])} | {_s(c['workers'])} | {_s(over)} |"
        )
    return lines


# -- formatting and the entry point ----------------------------------------------------------


def _when(data: dict) -> str:
    m = data["machine"]
    size = "A `--quick` smoke run" if data["quick"] else "Full size"
    return f"{size} ({m['date']}; {m['cpu']}, {m['cores']} cores; dask {m['dask']})."


def _num(x: float | None, fmt: str = ".2f") -> str:
    return "—" if x is None else format(x, fmt)


def _x(x: float | None, unit: str = "×") -> str:
    return "—" if x is None else f"{x:.2f}{unit}"


def _ms1(seconds: float | None, digits: int = 1) -> str:
    return "—" if seconds is None else f"{1000 * seconds:.{digits}f} ms"


def _range(p: dict) -> str:
    s = p["spread"]
    return "—" if s["min_share"] is None else f"{100 * s['min_share']:.0f}–{100 * s['max_share']:.0f}%"


def _cellt(r: dict) -> str:
    if r["median"] is None:
        return f"**{r['verdict']}**"
    text = f"{r['median']:.3f} s"
    if r["max"] - r["min"] > 0.0005:
        text += f" ({r['min']:.3f}–{r['max']:.3f})"
    return text + ("" if r["verdict"] == "exact" else f" **{r['verdict']}**")


def _effc(r: dict, ideal: float) -> str:
    if r["median"] is None:
        return f"**{r['verdict']}**"
    return f"{r['median']:.3f} s (eff. {ideal / r['median']:.2f})" + (
        "" if r["verdict"] == "exact" else " **" + r["verdict"] + "**"
    )


def _holds(x: float | None, bound: float) -> str:
    return "—" if x is None else "yes" if x >= bound else "**no**"


SECTIONS = {"skew": section_skew, "many": section_many, "own-cluster": section_own, "numpy": section_numpy}


def main(args: Any) -> int:
    """Run the selected modes (or re-render ``--from-json``); write their JSON and sections."""
    from bench.report import measured_section

    modes = [m for m, on in (("skew", args.skew), ("many", args.many), ("own-cluster", args.own_cluster),
                             ("numpy", args.numpy)) if on]  # fmt: skip
    reps = args.reps or (1 if args.quick else 3)

    def measure(mode: str) -> dict:
        if mode == "skew":
            return run_skew(reps, args.quick)
        if mode == "many":
            counts = tuple(int(w) for w in args.workers.split(",")) if args.workers else None
            layout = "processes" if args.processes else "threads" if args.threads else "split"
            return run_many(reps, args.quick, layout=layout, counts=counts)
        if mode == "own-cluster":
            return run_own_cluster(reps, args.quick)
        return run_numpy(reps, args.quick)

    for mode in modes:
        if args.from_json and json.loads(Path(args.from_json).read_text()).get("mode") != mode:
            continue  # figures of another mode
        measured_section(args, mode, lambda mode=mode: measure(mode), SECTIONS[mode])
    return 0
