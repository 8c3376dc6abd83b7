"""``python -m bench --streaming``: the figures of streaming, open clusters and live sources.

Writes the ``streaming`` section of BENCHMARKS.md (other sections are kept):

* time to the first item from ``stream()`` on W2 at ``n_threads=2`` against the
  whole run and against a cluster's start-up (target: under one partition's
  work after start-up);
* W6 (1M and 4M items) through ``stream()``: the caller's peak RSS (flat);
* a second ``run()`` inside ``with Pipeline(..., n_threads=2)`` against the
  first (target: the cluster's start-up gone);
* a live source (one reading every 20 ms, for ``--live-seconds``): the delay
  from a reading's emit to its delivery, median and 95th percentile (target
  p95 ≤ 0.5 s).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import workloads as W
from pypiper_dask import Node, Pipeline

ROOT = Path(__file__).resolve().parent.parent


class Readings(Node):
    """A live source: one ``time.time()`` reading every ``every`` seconds, for ``seconds``."""

    def setup(self, seconds: float, every: float = 0.02) -> None:
        self.seconds, self.every, self.start = seconds, every, None

    def run(self, data: Any) -> None:
        if self.start is None:
            self.start = time.time()
        time.sleep(self.every)
        now = time.time()
        if now - self.start > self.seconds:
            self.close()
        else:
            self.emit(now)


class Pass(Node):
    def run(self, data: Any) -> None:
        self.emit(data)


def _first_and_total(items: Any) -> tuple[float, float, int]:
    start = time.perf_counter()
    first = None
    count = 0
    for _ in items:
        if first is None:
            first = time.perf_counter() - start
        count += 1
    assert first is not None
    return first, time.perf_counter() - start, count


def first_item_w2() -> dict:
    """W2 at n_threads=2 through stream(): when the first item and the last came.

    Once with the cluster's start-up (a plain ``stream()``), once inside
    ``with`` (the cluster already up): the second shows the engine's own delay.
    """
    W.LOOPS["n"] = W.calibrate()
    cold_first, cold_total, count = _first_and_total(Pipeline(W.graph("W2", W.OURS), n_threads=2).stream())
    assert count == W.size("W2"), count
    with Pipeline(W.graph("W2", W.OURS), n_threads=2) as p:
        warm_first, warm_total, count = _first_and_total(p.stream())
    assert count == W.size("W2"), count
    return {
        "first_s": cold_first,
        "total_s": cold_total,
        "warm_first_s": warm_first,
        "warm_total_s": warm_total,
        "items": count,
    }


def kept_cluster(reps: int = 3) -> dict:
    """W7 (10 items): a run that starts its cluster, against runs inside ``with``."""
    cold = []
    for _ in range(reps):
        start = time.perf_counter()
        Pipeline(W.graph("W7", W.OURS), n_threads=2, quiet=True).run()
        cold.append(time.perf_counter() - start)
    warm = []
    with Pipeline(W.graph("W7", W.OURS), n_threads=2, quiet=True) as p:
        p.run()  # the first run inside: the cluster is up already
        for _ in range(reps):
            start = time.perf_counter()
            p.run()
            warm.append(time.perf_counter() - start)
    return {"cold_s": statistics.median(cold), "warm_s": statistics.median(warm)}


def live(seconds: float) -> dict:
    delays = []
    for _, emitted in Pipeline(Readings("feed", seconds=seconds) | Pass("leaf"), n_threads=2).stream():
        delays.append(time.time() - emitted)
    delays.sort()
    return {
        "readings": len(delays),
        "median_s": statistics.median(delays),
        "p95_s": delays[int(0.95 * (len(delays) - 1))],
        "max_s": delays[-1],
    }


def w6_stream(n: int) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "bench.child", "stream-iter", str(n)], capture_output=True, text=True, cwd=ROOT
    )
    if out.returncode:
        raise RuntimeError(out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


def section(figures: dict) -> str:
    f, k, lv = figures["first"], figures["kept"], figures["live"]
    w6 = figures["w6"]
    growth = (w6[1]["peak_mb"] - w6[1]["start_mb"]) / max(w6[0]["peak_mb"] - w6[0]["start_mb"], 1e-9)
    return "\n".join(
        [
            "## Streaming, a kept cluster, live sources (`python -m bench --streaming`)",
            "",
            f"Measured {figures['date']} on this machine ({figures['cores']} cores), `n_threads=2`.",
            "",
            "| measure | figure | target |",
            "|---|---|---|",
            f"| W2 (2,000 items of 2 ms) through `stream()`, cluster started by the run: first item / last | "
            f"{f['first_s']:.2f} s / {f['total_s']:.2f} s | — |",
            f"| the same inside `with` (cluster up): first item / last | {f['warm_first_s']:.3f} s / "
            f"{f['warm_total_s']:.2f} s | under one partition's work (0.2 s; the first partition holds 1 item) |",
            f"| W6 through `stream()`, caller's peak RSS over start: {w6[0]['n']:,} / {w6[1]['n']:,} items | "
            f"{w6[0]['peak_mb'] - w6[0]['start_mb']:.0f} MB / {w6[1]['peak_mb'] - w6[1]['start_mb']:.0f} MB "
            f"(×{growth:.2f} for {w6[1]['n'] // w6[0]['n']}× the items) | flat |",
            f"| W7, a run that starts its cluster / a run inside `with` | {k['cold_s']:.2f} s / {k['warm_s']:.2f} s "
            "| the start-up gone |",
            f"| live source, a reading every 20 ms for {figures['live_seconds']:.0f} s: emit → delivery, "
            f"median / p95 / max | {lv['median_s']:.3f} s / {lv['p95_s']:.3f} s / {lv['max_s']:.3f} s "
            f"({lv['readings']} readings) | p95 ≤ 0.5 s |",
        ]
    )


def main(args: Any) -> int:
    import datetime
    import os

    from bench.report import put_section

    figures: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cores": os.cpu_count(),
        "live_seconds": args.live_seconds,
    }
    figures["first"] = first_item_w2()
    print("first item:", figures["first"], file=sys.stderr)
    figures["kept"] = kept_cluster()
    print("kept cluster:", figures["kept"], file=sys.stderr)
    figures["live"] = live(args.live_seconds)
    print("live:", figures["live"], file=sys.stderr)
    sizes = (1_000_000, 4_000_000)
    figures["w6"] = [w6_stream(n) for n in sizes]
    print("W6 stream:", figures["w6"], file=sys.stderr)
    out = Path(args.out)
    text = out.read_text() if out.exists() else ""
    out.write_text(put_section(text, "streaming", section(figures)))
    (ROOT / "bench" / "streaming.json").write_text(json.dumps(figures, indent=1) + "\n")
    print(f"wrote the streaming section of {out}", file=sys.stderr)
    return 0
