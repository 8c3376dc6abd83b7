"""Where the workers wait: per-worker figures from Dask's task stream, and the caller's CPU.

``profiled_run`` runs a pipeline once under ``distributed.get_task_stream`` and
returns, per worker, its first task's start (relative to the first task
anywhere), its busy share (compute seconds ÷ the run's wall time) and its task
count, plus the rounds the run sent and the caller's CPU per round. The
functions that read the records (``worker_table``, ``count_rounds``) need no
cluster: the tests feed them synthetic records. ``worker_rows`` renders the
Markdown table, ``draw_workers`` a chart with a bar per worker.
"""

from __future__ import annotations

import re
import statistics
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

WORKERS_CHART = "bench/scaling-workers.png"
FULL_TABLE_UP_TO = 16  # more workers than this: one summary row instead of a row per worker
_NUMBERS = re.compile(r"^\d+[-_ ]|[-_ ]?\d+$")  # a thread name's leading index and trailing id


def compute_spans(record: dict) -> list[tuple[float, float]]:
    """The (start, stop) of each ``compute`` in one task-stream record (transfers and disk are not work)."""
    return [(ss["start"], ss["stop"]) for ss in record.get("startstops", ()) if ss.get("action") == "compute"]


def union_length(spans: Iterable[tuple[float, float]]) -> float:
    """Seconds covered by ``spans``, overlaps once: a task that waits inside while another runs is not twice busy.

    >>> union_length([(0.0, 1.0), (0.5, 1.5), (2.0, 2.5)])
    2.0
    """
    total, end = 0.0, None
    for a, b in sorted(spans):
        if end is None or a > end:
            total += b - a
            end = b
        elif b > end:
            total += b - end
            end = b
    return total


def count_rounds(records: Iterable[dict]) -> int:
    """The rounds a run sent: distinct integer indices among its task keys.

    Every task of a round is keyed ``(prefix, index)`` or ``(prefix, index, attempt)``
    (``compiler/tasks.py``), whatever its stage, so a resent round counts once.

    >>> count_rounds([{"key": ("a-x0", 0)}, {"key": ("b-x1", 0)}, {"key": ("a-x0", 1, 1)}, {"key": "spec"}])
    2
    """
    indices = set()
    for rec in records:
        key = rec.get("key")
        if isinstance(key, tuple) and len(key) >= 2 and isinstance(key[1], int):
            indices.add(key[1])
    return len(indices)


def worker_table(records: Iterable[dict], t0: float, t1: float, workers: Iterable[str] = ()) -> dict[str, Any]:
    """Per-worker figures of one run from its task-stream records.

    Parameters
    ----------
    records
        ``get_task_stream(...).data``: dicts with ``worker``, ``key`` and ``startstops``.
    t0, t1
        ``time.time()`` just before ``run()`` and just after it returned.
    workers
        Every worker of the cluster, so that one that ran nothing is listed too.

    Returns
    -------
    dict
        ``wall``; ``first_task`` (seconds from ``t0`` to the first task anywhere);
        ``rounds``; ``tasks``; ``workers``: a row per worker address, sorted by
        first start, with ``first`` (seconds after the first task anywhere; None
        if it ran nothing), ``busy`` (seconds in which it computed at least one
        task: overlapping tasks count once), ``share`` (busy ÷ wall),
        ``tasks`` and ``spans`` (compute intervals relative to the first task,
        for the chart); ``spread``: the largest first start and the smallest and
        largest busy share.

    Examples
    --------
    >>> recs = [
    ...     {"worker": "a", "key": ("s-x0", 0), "startstops": [{"action": "compute", "start": 10.0, "stop": 10.5}]},
    ...     {"worker": "b", "key": ("s-x0", 1), "startstops": [{"action": "compute", "start": 10.25, "stop": 10.75}]},
    ... ]
    >>> t = worker_table(recs, 9.75, 11.0, ["a", "b", "c"])
    >>> [(w["worker"], w["first"], w["share"], w["tasks"]) for w in t["workers"]]
    [('a', 0.0, 0.4, 1), ('b', 0.25, 0.4, 1), ('c', None, 0.0, 0)]
    >>> t["spread"]["last_first"], t["idle_workers"], t["rounds"]
    (0.25, 1, 2)
    """
    records = list(records)
    wall = t1 - t0
    spans: dict[str, list[tuple[float, float]]] = {w: [] for w in workers}
    tasks: dict[str, int] = dict.fromkeys(spans, 0)
    for rec in records:
        found = compute_spans(rec)
        if not found:
            continue
        w = rec.get("worker", "?")
        spans.setdefault(w, []).extend(found)
        tasks[w] = tasks.get(w, 0) + 1
    starts = [a for s in spans.values() for a, _ in s]
    first_any = min(starts) if starts else None
    rows = []
    for w, s in spans.items():
        busy = union_length(s)
        rel = sorted((a - first_any, b - first_any) for a, b in s) if first_any is not None else []
        rows.append(
            {
                "worker": w,
                "first": rel[0][0] if rel else None,
                "busy": busy,
                "share": busy / wall if wall > 0 else None,
                "tasks": tasks.get(w, 0),
                "spans": [(round(a, 4), round(b, 4)) for a, b in rel],
            }
        )
    rows.sort(key=lambda r: (r["first"] is None, r["first"] or 0.0, r["worker"]))
    firsts = [r["first"] for r in rows if r["first"] is not None]
    shares = [r["share"] for r in rows if r["share"] is not None]
    return {
        "wall": wall,
        "first_task": first_any - t0 if first_any is not None else None,
        "rounds": count_rounds(records),
        "tasks": sum(tasks.values()),
        "idle_workers": sum(1 for r in rows if r["tasks"] == 0),
        "workers": rows,
        "spread": {
            "last_first": max(firsts) if firsts else None,
            "median_first": statistics.median(firsts) if firsts else None,
            "min_share": min(shares) if shares else None,
            "max_share": max(shares) if shares else None,
        },
    }


# -- the caller's CPU, by thread --------------------------------------------------------


def thread_cpu() -> dict[int, tuple[str, float]]:
    """CPU seconds of every thread of this process, by native id, with the thread's name."""
    import psutil

    names = {t.native_id: t.name for t in threading.enumerate()}
    return {t.id: (names.get(t.id, "other"), t.user_time + t.system_time) for t in psutil.Process().threads()}


def thread_groups(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]) -> dict[str, float]:
    """CPU seconds between two ``thread_cpu()`` by kind of thread (names without their numbers).

    ``MainThread`` is the caller's run loop; ``IO loop`` the event loop that the
    client shares with an in-process scheduler (and, with ``processes=False``, the
    workers' comms); ``Dask-...`` threads run tasks or (de)serialize.

    >>> thread_groups({1: ("MainThread", 1.0)}, {1: ("MainThread", 1.5), 2: ("3-Dask-Default-Threads-17_0", 0.25)})
    {'MainThread': 0.5, 'Dask-Default-Threads': 0.25}
    """
    out: dict[str, float] = {}
    for tid, (name, cpu) in after.items():
        spent = cpu - before.get(tid, (name, 0.0))[1]
        group = _NUMBERS.sub("", _NUMBERS.sub("", name)) or name
        out[group] = out.get(group, 0.0) + spent
    return {k: round(v, 4) for k, v in sorted(out.items(), key=lambda kv: -kv[1]) if v > 0}


def profiled_run(
    client: Any, run: Callable[[], Any], check: Callable[[Any], bool] | None = None, records: list | None = None
) -> dict[str, Any]:
    """``run()`` once under the task stream: the per-worker table and the caller's CPU per round.

    ``caller_cpu_per_round``: ``time.process_time()`` around ``run()`` ÷ rounds
    (with a ``LocalCluster`` in this process it includes the scheduler's thread);
    ``main_cpu_per_round``: the calling thread's alone (``time.thread_time()``);
    ``threads``: CPU seconds by kind of thread; ``tasks_per_second``: tasks the
    scheduler ran ÷ wall time. ``records``, if given, receives the raw task-stream records.
    """
    from distributed import get_task_stream

    workers = list(client.scheduler_info(n_workers=-1).get("workers", {}))
    threads_before = thread_cpu()
    with get_task_stream(client=client) as stream:
        p0, m0, t0 = time.process_time(), time.thread_time(), time.time()
        out = run()
        t1, p1, m1 = time.time(), time.process_time(), time.thread_time()
    table = worker_table(stream.data, t0, t1, workers)
    if records is not None:
        records.extend(stream.data)
    rounds = table["rounds"] or 1
    table |= {
        "exact": check(out) if check else None,
        "caller_cpu": p1 - p0,
        "caller_cpu_per_round": (p1 - p0) / rounds,
        "main_cpu_per_round": (m1 - m0) / rounds,
        "threads": thread_groups(threads_before, thread_cpu()),
        "tasks_per_second": table["tasks"] / table["wall"] if table["wall"] > 0 else None,
    }
    return table


# -- rendering ---------------------------------------------------------------------------


def _ms(seconds: float | None) -> str:
    return "—" if seconds is None else f"{1000 * seconds:.0f} ms"


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.0f}%"


def summary_line(table: dict) -> str:
    """One line: wall, rounds, the workers' first starts and busy shares, the caller's CPU per round."""
    s = table["spread"]
    return (
        f"wall {table['wall']:.2f} s, {table['rounds']} rounds, {table['tasks']} tasks"
        f" ({table.get('tasks_per_second') or 0:.0f}/s); first task {_ms(table['first_task'])} after run();"
        f" workers start within {_ms(s['last_first'])} (median {_ms(s['median_first'])}),"
        f" {table['idle_workers']} ran nothing; busy {_pct(s['min_share'])}–{_pct(s['max_share'])};"
        f" caller CPU {1000 * table.get('caller_cpu_per_round', 0.0):.1f} ms/round"
        f" (its main thread {1000 * table.get('main_cpu_per_round', 0.0):.1f})"
    )


def worker_rows(label: str, table: dict) -> list[str]:
    """Markdown rows ``| label | worker | first task | busy | tasks |``; past 16 workers one summary row."""
    rows = table["workers"]
    if len(rows) > FULL_TABLE_UP_TO:
        s = table["spread"]
        tasks = [r["tasks"] for r in rows]
        return [
            f"| {label} | {len(rows)} workers ({table['idle_workers']} ran nothing) |"
            f" 0–{_ms(s['last_first'])} (median {_ms(s['median_first'])}) |"
            f" {_pct(s['min_share'])}–{_pct(s['max_share'])} | {min(tasks)}–{max(tasks)} |"
        ]
    out = []
    for i, r in enumerate(rows):
        name = r["worker"].rsplit(":", 1)[-1] if ":" in r["worker"] else r["worker"]
        out.append(f"| {label if i == 0 else ''} | :{name} | {_ms(r['first'])} | {_pct(r['share'])} | {r['tasks']} |")
    return out


def worker_section(tables: dict[str, dict], title: str = "Per worker") -> list[str]:
    """A Markdown block: a summary line per run, then the per-worker table of every run."""
    lines = [f"#### {title}", ""]
    for label, table in tables.items():
        if "error" in table:
            lines.append(f"- {label}: **{table['error']}**")
        else:
            lines.append(f"- {label}: {summary_line(table)}{'' if table.get('exact', True) else ' **wrong output**'}")
    lines += [
        "",
        "First task: its start after the first task anywhere; busy: compute seconds ÷ the run's wall time.",
        "",
        "| run | worker (port) | first task | busy | tasks |",
        "|---|---|---|---|---|",
    ]
    for label, table in tables.items():
        if "error" not in table:
            lines += worker_rows(label, table)
    return lines


def draw_workers(path: Path, tables: dict[str, dict], title: str = "") -> None:
    """A panel per run, a bar per worker: idle before its first task (grey), then its compute spans.

    The busy share is written at each bar's end, so one worker doing everything shows at a glance.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tables = {k: v for k, v in tables.items() if "error" not in v}
    if not tables:
        return
    fig, axes = plt.subplots(
        len(tables), 1, figsize=(9, 1.2 + sum(0.16 * max(4, len(t["workers"])) for t in tables.values())), squeeze=False
    )
    for ax, (label, t) in zip(axes[:, 0], tables.items(), strict=True):
        end = max([b for r in t["workers"] for _, b in r["spans"]] + [t["wall"] - (t["first_task"] or 0)])
        for y, r in enumerate(t["workers"]):
            if r["first"] is None:
                ax.broken_barh([(0, end)], (y - 0.4, 0.8), facecolors="#dddddd")
                ax.text(end, y, " idle", va="center", fontsize=6)
                continue
            if r["first"] > 0:
                ax.broken_barh([(0, r["first"])], (y - 0.4, 0.8), facecolors="#dddddd")
            ax.broken_barh([(a, b - a) for a, b in r["spans"]], (y - 0.4, 0.8), facecolors="tab:blue")
            ax.text(end, y, f" {_pct(r['share'])}", va="center", fontsize=6)
        if t["first_task"] is not None:  # the run's end: a gap before it is the caller's tail
            ax.axvline(t["wall"] - t["first_task"], color="black", linewidth=0.8, linestyle=":")
        ax.set_yticks([])
        ax.set_ylim(-0.6, len(t["workers"]) - 0.4)
        ax.invert_yaxis()
        ax.set_xlim(0, end * 1.08)
        ax.set_ylabel(label, fontsize=7, rotation=0, ha="right", va="center")
        ax.tick_params(axis="x", labelsize=7)
    axes[-1, 0].set_xlabel(
        "seconds after the first task anywhere (grey: idle before its first task; dotted: run() returns; %: busy share)"
    )
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
