"""Checkpoints: ``python -m bench --checkpoint``.

On a 2-worker ``LocalCluster`` started before timing (what ``n_threads=2``
starts), it measures W1 and W4 run with ``run(checkpoint=...)`` (a local file)
against without, at the default ``snapshot_every`` and at every 10_000 items,
and the time a resumed W4 takes: a run stopped at about half way (an
exception from its ``update_callback``) resumed from its checkpoint, and a
complete checkpoint returning its stored result. It writes the
``checkpoint`` section of BENCHMARKS.md.
"""

from __future__ import annotations

import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import workloads as W

SETTINGS: list[tuple[str, Any]] = [
    ("no checkpoint", None),
    ("checkpoint, default snapshot_every", ()),
    ("checkpoint, every 10_000 items", (10_000, None)),
]


class Stop(Exception):
    pass


def overhead(client: Any, wid: str, reps: int, where: Path) -> list[dict]:
    from pypiper_dask import Pipeline

    expected = W.serial(wid)
    Pipeline(W.graph(wid, W.OURS), client=client, quiet=True).run()  # warm-up: imports, worker caches
    rows = []
    for label, every in SETTINGS:
        times, exact = [], True
        for rep in range(reps):
            options = {"snapshot_every": every} if every else {}
            kw = {} if every is None else {"checkpoint": str(where / f"{wid}-{rep}-{len(rows)}"), "overwrite": True}
            start = time.perf_counter()
            out = dict(Pipeline(W.graph(wid, W.OURS), client=client, quiet=True, **options).run(**kw))
            times.append(time.perf_counter() - start)
            exact = exact and out == expected
        rows.append({"workload": wid, "setting": label, "median": statistics.median(times), "exact": exact})
        print(f"{wid} {label:36s} {rows[-1]['median']:.3f}s exact={exact}", file=sys.stderr)
    return rows


def resume(client: Any, reps: int, where: Path) -> list[dict]:
    """W4 stopped half way, then resumed: seconds to the first new delivery and to the end; a complete one."""
    from pypiper_dask import Pipeline

    wid = "W4"
    n = W.size(wid)
    expected = W.serial(wid)
    rows = []
    for rep in range(reps):
        path = str(where / f"resume-{rep}")

        def stop(done: int, total: int | None) -> None:
            if done >= n // 2:
                raise Stop

        start = time.perf_counter()
        with contextlib.suppress(Stop):
            Pipeline(W.graph(wid, W.OURS), client=client, quiet=True, snapshot_every=(10_000, None)).run(
                stop, checkpoint=path
            )
        stopped_after = time.perf_counter() - start
        seen: list[tuple[float, int]] = []
        t0 = time.perf_counter()
        out = Pipeline(W.graph(wid, W.OURS), client=client, quiet=True, snapshot_every=(10_000, None)).run(
            lambda done, total, seen=seen: seen.append((time.perf_counter(), done)), checkpoint=path
        )
        end = time.perf_counter()
        first_done = seen[0][1] if seen else 0  # the callback starts at the cut
        moving = next((t for t, d in seen if d > first_done), end) - t0
        t1 = time.perf_counter()
        again = Pipeline(W.graph(wid, W.OURS), client=client, quiet=True).run(checkpoint=path)
        complete = time.perf_counter() - t1
        rows.append(
            {
                "stopped": stopped_after,
                "from": first_done,
                "moving": moving,
                "resumed": end - t0,
                "complete": complete,
                "exact": dict(out) == expected and dict(again) == expected,
            }
        )
        print(f"resume {rep}: {rows[-1]}", file=sys.stderr)
    return rows


def section(rows: list[dict], resumes: list[dict], reps: int) -> str:
    lines = [
        "## Checkpoints (python -m bench --checkpoint)",
        "",
        "Written by `python -m bench --checkpoint`: a 2-worker `LocalCluster` started before timing "
        f"(what `n_threads=2` starts), median of {reps}, `quiet=True`, `collect=True`; the checkpoint "
        "is a local file (`run(checkpoint=..., overwrite=True)`). A cut is written at each "
        "`snapshot_every` (with the collected items so far), and the delivered position after every "
        "partition.",
        "",
        "The machine has 2 cores shared with other work: differences of a few tens of percent "
        "between rows are noise. These runs take a fraction of a second, so the extra time (each cut "
        "pickles the collected items so far, and the position file is rewritten after every "
        "partition) shows as a large percentage.",
        "",
        "| workload | setting | median | vs none | extra | output |",
        "|---|---|---|---|---|---|",
    ]
    base: dict[str, float] = {}
    for row in rows:
        base.setdefault(row["workload"], row["median"])
        lines.append(
            f"| {row['workload']} | {row['setting']} | {row['median']:.3f} s | "
            f"{row['median'] / base[row['workload']] - 1:+.0%} | "
            f"{(row['median'] - base[row['workload']]) * 1000:+.0f} ms | {'exact' if row['exact'] else 'WRONG'} |"
        )
    lines += [
        "",
        "Resuming W4 (100k items, `snapshot_every=(10_000, None)`), stopped once half its items were "
        "delivered (an exception from `update_callback`): the cut it resumed from, seconds from "
        "`run()` to the first new partition delivered and to the end, and a second `run()` on the "
        "complete checkpoint (returns the stored result, prints nothing).",
        "",
        "| trial | stopped run | resumed from item | run() → moving | resumed run | complete checkpoint | output |",
        "|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(resumes):
        lines.append(
            f"| {i} | {r['stopped']:.2f} s | {r['from']:,} | {r['moving']:.2f} s | {r['resumed']:.2f} s | "
            f"{r['complete'] * 1000:.0f} ms | {'exact' if r['exact'] else 'WRONG'} |"
        )
    return "\n".join(lines)


def main(args: Any) -> int:
    from distributed import Client, LocalCluster

    from bench.report import put_section

    reps = args.reps or (1 if args.quick else 3)
    with (
        tempfile.TemporaryDirectory() as tmp,
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=":0"
        ) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        where = Path(tmp)
        rows = overhead(client, "W1", reps, where) + overhead(client, "W4", reps, where)
        resumes = resume(client, reps, where)
    out = Path(args.out)
    old = out.read_text() if out.exists() else ""
    out.write_text(put_section(old, "checkpoint", section(rows, resumes, reps)))
    print(f"wrote the checkpoint section of {out}", file=sys.stderr)
    return 0
