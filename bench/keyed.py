"""T12 of shared/docs/bench.md: keyed stateful nodes (``python -m bench --keyed``).

- **S6**: 3,000 items over 64 keys (``x % 64``); a keyed stateful node sleeps
  2 ms per item, then emits its key's running sum. At 1, 2, 4 and 8 workers
  (``--quick``: 1 and 2), and the same node without ``key()`` at the largest
  count (one holder: ≤ 1/8 by construction). Efficiency: the items' nominal
  sleep (6 s) ÷ (wall × workers). Where each worker waited comes from the
  per-key instances themselves (``result.keyed``): each records its process,
  when its first call started and how long its calls took, so the table shows
  each worker's first call after ``run()`` and its busy share.
- **W8**: 2,000 items over 64 keys, a keyed node doing W2's ~2 ms loop per item
  and keeping a per-key count; against serial and ``Pool(2)`` over the same
  per-key work after a hand-written group-by, same run, at 2 workers.

Writes ``bench/keyed.json`` and the ``keyed`` section of ``--out``.
"""

from __future__ import annotations

import multiprocessing
import os
import statistics
import time
from collections import defaultdict
from functools import partial
from typing import Any

from bench import run as R
from bench import workloads as W
from bench.third import _log, interleaved, local_cluster, speedups, warm_workers
from pypiper_dask import Node, Pipeline

S6_N, S6_KEYS, S6_MS = 3000, 64, 2.0
W8_N, W8_KEYS = 2000, 64


class KeyedSleepSum(Node):
    """S6's node: per key, sleep 2 ms an item, then emit the key's running sum.

    Each instance also notes its process, its first call's start and its calls' seconds (for the per-worker table).
    """

    def setup(self, ms: float = S6_MS):
        self.ms = ms
        self.total = 0
        self.pid = 0
        self.first = 0.0
        self.busy = 0.0

    def key(self, x):
        return x % S6_KEYS

    def run(self, x):
        start = time.time()
        if not self.pid:
            self.pid, self.first = os.getpid(), start
        time.sleep(self.ms / 1000)
        self.total += x
        self.emit(self.total)
        self.busy += time.time() - start


class SleepSum(KeyedSleepSum):
    """The same node without ``key()``: one instance, one holder, every item in turn."""

    key = None  # type: ignore[assignment]


def s6_graph(keyed: bool = True, n: int = S6_N) -> Any:
    node = (KeyedSleepSum if keyed else SleepSum)("keyed", stateless=False)
    return W.OURS["Source"]("source", size=n) | node


def s6_expected(n: int = S6_N, keyed: bool = True) -> dict[str, list]:
    totals: dict[int, int] = defaultdict(int)
    out = []
    for x in range(n):
        k = x % S6_KEYS if keyed else 0
        totals[k] += x
        out.append(totals[k])
    return {"keyed": out}


def per_worker(result: Any, started: float, wall: float, workers: int) -> dict:
    """Each process's first call after ``run()`` and busy share, from the per-key instances."""
    procs: dict[int, dict] = {}
    for node in result.keyed("keyed").values():
        p = procs.setdefault(node.pid, {"first": node.first, "busy": 0.0, "keys": 0})
        p["first"] = min(p["first"], node.first)
        p["busy"] += node.busy
        p["keys"] += 1
    rows = sorted(
        (
            {"pid": pid, "first": p["first"] - started, "share": p["busy"] / wall, "keys": p["keys"]}
            for pid, p in procs.items()
        ),
        key=lambda r: r["first"],
    )
    return {"rows": rows, "ran_nothing": workers - len(rows)}


def run_s6(client: Any, workers: int, reps: int, keyed: bool = True) -> dict:
    expected = s6_expected(keyed=keyed)
    nominal = S6_N * S6_MS / 1000
    walls, exact, table = [], True, None
    for _ in range(reps):
        pipeline = Pipeline(s6_graph(keyed), client=client, quiet=True, progress=False)
        started = time.time()
        t0 = time.perf_counter()
        result = pipeline.run()
        wall = time.perf_counter() - t0
        walls.append(wall)
        exact = exact and dict(result) == expected
        if keyed:
            table = per_worker(result, started, wall, workers)
    median = statistics.median(walls)
    return {
        "workers": workers,
        "keyed": keyed,
        "walls": walls,
        "median": median,
        "efficiency": nominal / (median * workers),
        "exact": exact,
        "per_worker": table,
    }


# -- W8 ----------------------------------------------------------------------------------------


class KeyedCount(Node):
    """W8's node: W2's ~2 ms loop per item, and a per-key count."""

    def setup(self, loops: int):
        self.loops = loops
        self.count = 0

    def key(self, x):
        return x % W8_KEYS

    def run(self, x):
        W.spin(x, self.loops)
        self.count += 1
        self.emit((x % W8_KEYS, self.count))


def w8_graph(loops: int) -> Any:
    return W.OURS["Source"]("source", size=W8_N) | KeyedCount("keyed", stateless=False, loops=loops)


def w8_key_work(items: list[int], loops: int) -> list[tuple[int, int, int]]:
    """One key's work, as a Pool task gets it: ``(position, key, count)`` for each of its items."""
    return [(x, x % W8_KEYS, i + 1) for i, x in enumerate(items) if W.spin(x, loops) is not None]


def w8_serial(loops: int) -> dict[str, list]:
    counts: dict[int, int] = defaultdict(int)
    out = []
    for x in range(W8_N):
        W.spin(x, loops)
        counts[x % W8_KEYS] += 1
        out.append((x % W8_KEYS, counts[x % W8_KEYS]))
    return {"keyed": out}


def w8_pool(pool: Any, loops: int) -> dict[str, list]:
    groups: dict[int, list[int]] = defaultdict(list)
    for x in range(W8_N):  # the hand-written group-by
        groups[x % W8_KEYS].append(x)
    done = pool.map(partial(w8_key_work, loops=loops), list(groups.values()))
    ordered = sorted(row for rows in done for row in rows)  # back in source order
    return {"keyed": [(k, c) for _, k, c in ordered]}


def w8_ours(client: Any, loops: int) -> dict[str, list]:
    return dict(Pipeline(w8_graph(loops), client=client, quiet=True, progress=False).run())


def run_keyed(reps: int, quick: bool, log: Any = _log) -> dict:
    from distributed import Client

    data: dict[str, Any] = {"mode": "keyed", "quick": quick, "reps": reps, "machine": R.machine(), "s6": [], "w8": {}}
    counts = (1, 2) if quick else (1, 2, 4, 8)
    for workers in counts:
        with local_cluster(workers) as cluster, Client(cluster, set_as_default=False) as client:
            client.wait_for_workers(workers, timeout=120)
            warm_workers(client)
            client.run(__import__, "bench.keyed")
            Pipeline(s6_graph(n=200), client=client, quiet=True, progress=False).run()  # warm-up
            found = run_s6(client, workers, reps)
            data["s6"].append(found)
            log(f"S6 keyed at {workers}: {found['median']:.2f} s, eff. {found['efficiency']:.2f}, ok {found['exact']}")
            if workers == counts[-1]:
                plain = run_s6(client, workers, 1, keyed=False)
                data["s6_unkeyed"] = plain
                log(f"S6 without key() at {workers}: {plain['median']:.2f} s, efficiency {plain['efficiency']:.2f}")
    loops = W.calibrate()
    data["w8"]["loops"] = loops
    expected = w8_serial(loops)
    with (
        multiprocessing.get_context("fork").Pool(2) as pool,
        local_cluster(2) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        client.wait_for_workers(2, timeout=120)
        warm_workers(client)
        client.run(__import__, "bench.keyed")
        w8_ours(client, loops)  # warm-up
        systems = {
            "serial": partial(w8_serial, loops),
            "Pool(2)": partial(w8_pool, pool, loops),
            "pypiper_dask": partial(w8_ours, client, loops),
        }
        r = interleaved(systems, expected, reps, log, "W8")
        data["w8"]["runs"] = r
        data["w8"]["speedup"] = speedups(r)
    return data


def _ms(seconds: float) -> str:
    return f"{1000 * seconds:.0f} ms"


def section_keyed(data: dict) -> str:
    m = data["machine"]
    size = "A `--quick` smoke run" if data["quick"] else "Full size"
    lines = [
        "### Keyed stateful nodes (T12)",
        "",
        f"{size} ({m['date']}; {m['cpu']}, {m['cores']} cores; dask {m['dask']}); `python -m bench --keyed`, "
        f"median of {data['reps']}.",
        "",
        f"S6: {S6_N:,} items over {S6_KEYS} keys, a keyed node sleeping {S6_MS:g} ms an item "
        "(nominal 6 s); efficiency = 6 s ÷ (wall × workers). Target at 8 workers: ≥ 0.8.",
        "",
        "| workers | wall | efficiency | exact |",
        "|---|---|---|---|",
    ]
    for r in data["s6"]:
        lines.append(f"| {r['workers']} | {r['median']:.2f} s | {r['efficiency']:.2f} | {r['exact']} |")
    plain = data.get("s6_unkeyed")
    if plain:
        lines.append(
            f"| {plain['workers']}, the node without `key()` | {plain['median']:.2f} s | {plain['efficiency']:.2f} |"
            f" {plain['exact']} |"
        )
    lines += [
        "",
        "Where each worker waited (from the per-key instances: each notes its process, its first call and its "
        "calls' seconds): first call after `run()`, busy share of the wall time, keys held.",
        "",
        "| workers | process | first call | busy | keys |",
        "|---|---|---|---|---|",
    ]
    for r in data["s6"]:
        table = r["per_worker"]
        for row in table["rows"]:
            lines.append(
                f"| {r['workers']} | {row['pid']} | {_ms(row['first'])} | {100 * row['share']:.0f}% | {row['keys']} |"
            )
        if table["ran_nothing"]:
            lines.append(f"| {r['workers']} | {table['ran_nothing']} ran nothing | | | |")
    w8 = data["w8"]
    runs, sp = w8["runs"], w8["speedup"]
    lines += [
        "",
        f"W8: {W8_N:,} items over {W8_KEYS} keys, ~2 ms of pure-Python loop per item in the keyed node "
        "(a per-key count), at 2 workers; `Pool(2)` maps the same per-key work over a hand-written group-by. "
        "Target: ≥ 0.9× `Pool(2)`'s speedup.",
        "",
        "| system | median | speedup over serial |",
        "|---|---|---|",
    ]
    for name in ("serial", "Pool(2)", "pypiper_dask"):
        r = runs[name]
        speed = "1.00×" if name == "serial" else f"{sp['pool' if name == 'Pool(2)' else 'ours'] or 0:.2f}×"
        lines.append(f"| {name} | {r['median'] or 0:.3f} s ({r['verdict']}) | {speed} |")
    if sp["of_pool"]:
        lines.append(f"\npypiper_dask reached {sp['of_pool']:.2f}× `Pool(2)`'s speedup.")
    return "\n".join(lines)


def main(args: Any) -> int:
    from bench.report import measured_section

    reps = args.reps or (1 if args.quick else 3)
    measured_section(args, "keyed", lambda: run_keyed(reps, args.quick), section_keyed)
    return 0
