"""Surviving a worker: ``python -m bench --recovery`` (figures) and ``python -m bench --faults N`` (soak).

``--recovery`` measures, on a 2-worker ``LocalCluster`` started before timing:
W4 (100k items, a stateful running sum) at several ``snapshot_every``
settings against none, and the time from SIGKILL of the worker holding a
stateful node to the run restoring it and delivering again. It writes the
``recovery`` section of BENCHMARKS.md. ``--faults N`` runs N kill trials of
random programs (``tests/test_recovery.py``'s trial, random seeds) and
prints how many matched the undisturbed run.
"""

from __future__ import annotations

import itertools
import logging
import os
import random
import signal
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bench import workloads as W

SETTINGS: list[tuple[str, Any]] = [
    ("none (snapshot_every=False)", False),
    ("default (250_000 items, 5 s)", None),
    ("every 10_000 items", (10_000, None)),
    ("every 1_000 items", (1_000, None)),
    ("every 0.05 s", (None, 0.05)),
]


def w4_times(client: Any, reps: int) -> list[dict]:
    from pypiper_dask import Pipeline

    expected = W.serial("W4")
    Pipeline(W.graph("W4", W.OURS), client=client, quiet=True).run()  # warm-up: imports, worker caches
    rows = []
    for label, every in SETTINGS:
        times, exact = [], True
        for _ in range(reps):
            options = {} if every is None else {"snapshot_every": every}
            start = time.perf_counter()
            out = dict(Pipeline(W.graph("W4", W.OURS), client=client, quiet=True, **options).run())
            times.append(time.perf_counter() - start)
            exact = exact and out == expected
        rows.append({"setting": label, "median": statistics.median(times), "exact": exact})
        print(f"W4 {label:32s} {rows[-1]['median']:.3f}s exact={exact}", file=sys.stderr)
    return rows


class _Restores(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.at: list[float] = []

    def emit(self, record: logging.LogRecord) -> None:
        if "restored every sequential node" in record.getMessage():
            self.at.append(time.monotonic())


def kill_to_moving(client: Any, trials: int) -> list[dict]:
    """Kill the holder's worker mid-run; seconds to the restore, and to the next delivery after it."""
    from pypiper_dask import Pipeline
    from pypiper_dask.log import logger

    rows = []
    n = 3_000_000
    for t in range(trials):
        client.wait_for_workers(2, timeout=60)
        client.run(os.getpid)
        restores = _Restores()
        logger.addHandler(restores)
        delivered: list[float] = []
        killed: list[float] = []

        def kill(killed: list[float] = killed) -> None:
            time.sleep(1.0)
            who = client.run_on_scheduler(
                lambda dask_scheduler: [ws.address for ws in dask_scheduler.workers.values() if ws.actors]
            )
            pid = client.run(os.getpid, workers=who[:1])[who[0]]
            killed.append(time.monotonic())
            os.kill(pid, signal.SIGKILL)

        threading.Thread(target=kill, daemon=True).start()
        try:
            out = Pipeline(W.graph("W4", W.OURS, n), client=client, quiet=True, progress=False).run(
                update_callback=lambda done, total, delivered=delivered: delivered.append(time.monotonic()),
                collect=False,
            )
        finally:
            logger.removeHandler(restores)
        if not killed or not restores.at:
            print(f"trial {t}: the run ended before the kill took effect", file=sys.stderr)
            continue
        after = [d for d in delivered if d > restores.at[0]]
        rows.append(
            {
                "detected": restores.at[0] - killed[0],
                "moving": (after[0] - killed[0]) if after else float("nan"),
                "items": out.counts["running"],
            }
        )
        print(f"trial {t}: {rows[-1]}", file=sys.stderr)
    return rows


def stateless_kills(client: Any, trials: int, n: int = 3_000_000) -> dict:
    """Kill a worker a third into a W1 run (no stateful node): its wall time against runs left alone.

    W1's partitions (30,000 ints, over 1 MiB) are sent to the workers ahead of their tasks, so
    the killed worker takes partitions with it that must go out again, to a worker still there.
    """
    from pypiper_dask import Pipeline

    def run(kill_at: int | None) -> dict:
        client.wait_for_workers(2, timeout=60)
        pids = sorted(client.run(os.getpid).values())
        delivered: list[float] = []
        killed: list[float] = []

        def callback(done: int, total: Any) -> None:
            delivered.append(time.monotonic())
            if kill_at is not None and done >= kill_at and not killed:
                os.kill(pids[0], signal.SIGKILL)  # a point in the run, not a time
                killed.append(delivered[-1])

        start = time.monotonic()
        out = Pipeline(W.graph("W1", W.OURS, n), client=client, quiet=True, progress=False).run(
            update_callback=callback, collect=False
        )
        after = [b - a for a, b in itertools.pairwise(delivered) if killed and a >= killed[0]]
        return {"wall": time.monotonic() - start, "pause": max(after, default=0.0), "items": out.counts["add_one"]}

    alone = [run(None) for _ in range(2)]
    killed = [run(n // 3) for _ in range(trials)]
    for row in killed:
        print(f"W1, a worker killed: {row}", file=sys.stderr)
    return {"n": n, "alone": statistics.median(r["wall"] for r in alone), "killed": killed}


def section(w4: list[dict], kills: list[dict], reps: int, stateless: dict | None = None) -> str:
    base = w4[0]["median"]
    lines = [
        "## Surviving a worker (python -m bench --recovery)",
        "",
        "Written by `python -m bench --recovery`: a 2-worker `LocalCluster` started before timing, "
        f"median of {reps}. W4 (100k items, square → stateful running sum) with the snapshots of "
        "`snapshot_every` against none:",
        "",
        "The machine has 2 cores shared with other work: differences of a few tens of percent "
        "between rows are noise (a snapshot of W4's state is a few hundred bytes).",
        "",
        "| snapshot_every | W4 median | vs none | output |",
        "|---|---|---|---|",
    ]
    for row in w4:
        lines.append(
            f"| {row['setting']} | {row['median']:.3f} s | {row['median'] / base - 1:+.0%} | "
            f"{'exact' if row['exact'] else 'WRONG'} |"
        )
    lines += [
        "",
        "SIGKILL of the worker holding the stateful node, 1 s into a 3M-item W4 run (default "
        "`snapshot_every`): seconds from the kill to the run restoring every sequential node from "
        "its last snapshot, and to the first partition delivered after that.",
        "",
        "| trial | kill → restored | kill → moving again | items (all 3M) |",
        "|---|---|---|---|",
    ]
    for i, row in enumerate(kills):
        lines.append(f"| {i} | {row['detected']:.2f} s | {row['moving']:.2f} s | {row['items']:,} |")
    if kills:
        lines.append(
            f"| median | {statistics.median(r['detected'] for r in kills):.2f} s | "
            f"{statistics.median(r['moving'] for r in kills):.2f} s | |"
        )
    if stateless:
        lines += [
            "",
            f"SIGKILL of a worker a third into a {stateless['n']:,}-item W1 run (no stateful node; its"
            " partitions, over 1 MiB each, are sent to the workers ahead of their tasks, so some are lost"
            " with it): the run's wall time against the same run left alone"
            f" ({stateless['alone']:.2f} s, median of 2), and the longest pause between two deliveries"
            " after the kill.",
            "",
            "| trial | wall | more than left alone | longest pause | items |",
            "|---|---|---|---|---|",
        ]
        for i, row in enumerate(stateless["killed"]):
            lines.append(
                f"| {i} | {row['wall']:.2f} s | {row['wall'] - stateless['alone']:+.2f} s | {row['pause']:.2f} s |"
                f" {row['items']:,} |"
            )
    return "\n".join(lines)


def main(args: Any) -> int:
    from distributed import Client, LocalCluster

    from bench.report import put_section

    reps = args.reps or 5
    if args.faults:
        return faults_on_fresh_clusters(args.faults)
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=":0"
        ) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        w4 = w4_times(client, reps)
        kills = kill_to_moving(client, 5)
        stateless = stateless_kills(client, 3)
    out = Path(args.out)
    old = out.read_text() if out.exists() else ""
    out.write_text(put_section(old, "recovery", section(w4, kills, reps, stateless)))
    print(f"wrote the recovery section of {out}", file=sys.stderr)
    return 0


class ClusterGone(Exception):
    """The soak's cluster did not get its killed worker back: not a trial's result."""


def faults_on_fresh_clusters(n: int) -> int:
    """:func:`faults` on a 2-worker cluster, started again whenever a killed worker does not come back.

    A nanny's new worker failed to arrive within 60 s once in a 100-trial soak
    (two kills within a second); every trial after it then failed waiting for
    it, which says nothing of the run under test. Such trials are counted apart.
    """
    from distributed import Client, LocalCluster

    done = wrong = lost = 0
    while done + wrong < n:
        with (
            LocalCluster(
                n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=":0"
            ) as cluster,
            Client(cluster, set_as_default=False) as client,
        ):
            try:
                ok, bad = faults(client, n - done - wrong, stop_when_gone=True)
            except ClusterGone as gone:
                lost += 1
                ok, bad = gone.args
            done, wrong = done + ok, wrong + bad
    print(
        f"faults: {done + wrong} kill trials, {done} matched the undisturbed run, {wrong} did not; "
        f"the cluster was started again {lost} time(s) when a killed worker did not come back"
    )
    return 1 if wrong else 0


def faults(client: Any, n: int, stop_when_gone: bool = False) -> Any:
    """``n`` kill trials of random programs; how many matched the undisturbed run."""
    import warnings

    import cloudpickle
    from hypothesis.errors import NonInteractiveExampleWarning

    from tests import nodes
    from tests.strategies import programs
    from tests.test_recovery import has_sequential, trial

    cloudpickle.register_pickle_by_value(nodes)
    rng = random.Random()
    passed = failed = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NonInteractiveExampleWarning)
        while passed + failed < n:
            program = programs().example()
            if not has_sequential(program):
                continue
            every = rng.choice([(150, None), (None, 0.3), (50_000, 5.0)])
            try:
                client.wait_for_workers(2, timeout=60)
            except Exception as exc:
                if stop_when_gone:
                    raise ClusterGone(passed, failed) from exc
                raise
            delay, seed, size = rng.uniform(0, 1.5), rng.randrange(2**16), rng.choice([7, 20, 60])
            try:
                trial(client, program, delay, seed, every, partition_size=size)
                passed += 1
            except Exception as exc:
                if stop_when_gone and type(exc).__name__ == "WorkerStartTimeoutError":
                    raise ClusterGone(passed, failed) from exc
                failed += 1
                # Everything a rerun needs: trial(client, program, delay, seed, every, partition_size=size).
                print(
                    f"FAILED: program={program!r} delay={delay!r} seed={seed} every={every} size={size}: "
                    f"{type(exc).__name__}: {str(exc)[:300]}",
                    file=sys.stderr,
                )
            print(f"{passed + failed}/{n} trials, {failed} failed", file=sys.stderr)
    if stop_when_gone:
        return passed, failed
    print(f"faults: {passed + failed} kill trials, {passed} matched the undisturbed run, {failed} did not")
    return 1 if failed else 0
