"""The per-worker figures of the benchmark, from synthetic task-stream records (no cluster)."""

from __future__ import annotations

import pytest

from bench import report, workers
from bench import workloads as W


def record(worker: str, index: int, start: float, stop: float, prefix: str = "sleep+leaf-ab0") -> dict:
    return {
        "worker": worker,
        "key": (prefix, index),
        "startstops": [{"action": "compute", "start": start, "stop": stop}],
    }


def one_busy_worker(t0: float = 1000.0) -> list[dict]:
    """Rounds 0-11 on worker A back to back from 0.02 s; B, C and D start at 0.8 s, as issue 18 measured."""
    recs = [record("tcp://h:1", i, t0 + 0.02 + 0.06 * i, t0 + 0.08 + 0.06 * i) for i in range(12)]
    for j, w in enumerate(("tcp://h:2", "tcp://h:3", "tcp://h:4")):
        recs += [record(w, 12 + 2 * j + k, t0 + 0.8 + 0.1 * k, t0 + 0.9 + 0.1 * k) for k in range(2)]
    recs.append({"worker": "tcp://h:2", "key": "spec", "startstops": [{"action": "transfer", "start": t0, "stop": t0}]})
    return recs


@pytest.mark.timeout(30)
def test_worker_table_shows_one_busy_worker():
    t0 = 1000.0
    table = workers.worker_table(
        one_busy_worker(t0), t0, t0 + 1.2, ["tcp://h:1", "tcp://h:2", "tcp://h:3", "tcp://h:4", "tcp://h:5"]
    )
    rows = {r["worker"]: r for r in table["workers"]}
    assert table["rounds"] == 18 and table["tasks"] == 18 and table["idle_workers"] == 1
    assert table["first_task"] == pytest.approx(0.02)
    assert rows["tcp://h:1"]["first"] == 0.0 and rows["tcp://h:1"]["tasks"] == 12
    assert rows["tcp://h:1"]["share"] == pytest.approx(0.72 / 1.2)
    assert rows["tcp://h:3"]["first"] == pytest.approx(0.78) and rows["tcp://h:3"]["share"] == pytest.approx(0.2 / 1.2)
    assert rows["tcp://h:5"] == {"worker": "tcp://h:5", "first": None, "busy": 0, "share": 0.0, "tasks": 0, "spans": []}
    assert table["workers"][0]["worker"] == "tcp://h:1"  # sorted by first start, idle last
    assert table["workers"][-1]["worker"] == "tcp://h:5"
    assert table["spread"]["last_first"] == pytest.approx(0.78)
    assert table["spread"]["min_share"] == 0.0 and table["spread"]["max_share"] == pytest.approx(0.6)


@pytest.mark.timeout(30)
def test_rounds_count_a_resent_round_once_and_every_stage_together():
    recs = [record("a", 0, 0, 1, "sq-x0"), record("a", 0, 1, 2, "sum-x1"), record("b", 1, 0, 1, "sq-x0")]
    recs.append(record("b", 1, 1, 2, "sq-x0") | {"key": ("sq-x0", 1, 1)})  # the resend of round 1
    assert workers.count_rounds(recs) == 2
    assert workers.worker_table(recs, 0, 2)["tasks"] == 4


@pytest.mark.timeout(30)
def test_worker_rows_and_chart(tmp_path):
    t0 = 1000.0
    table = workers.worker_table(one_busy_worker(t0), t0, t0 + 1.2, [f"tcp://h:{i}" for i in range(1, 6)])
    table |= {"caller_cpu_per_round": 0.004, "main_cpu_per_round": 0.001, "tasks_per_second": 15.0}
    rows = workers.worker_rows("S1, 5 workers", table)
    assert rows[0] == "| S1, 5 workers | :1 | 0 ms | 60% | 12 |"
    assert rows[-1] == "|  | :5 | — | 0% | 0 |"
    line = workers.summary_line(table)
    assert "18 rounds" in line and "within 780 ms" in line and "1 ran nothing" in line and "busy 0%–60%" in line
    assert "caller CPU 4.0 ms/round" in line
    block = workers.worker_section({"S1, 5 workers": table, "broken": {"error": "error: X"}})
    assert "- broken: **error: X**" in block and "| run | worker (port) | first task | busy | tasks |" in block
    # Past 16 workers: one summary row.
    many = workers.worker_table(one_busy_worker(t0), t0, t0 + 1.2, [f"tcp://h:{i}" for i in range(1, 21)])
    (row,) = workers.worker_rows("S1, 20 workers", many)
    assert row == "| S1, 20 workers | 20 workers (16 ran nothing) | 0–780 ms (median 780 ms) | 0%–60% | 0–12 |"
    chart = tmp_path / "workers.png"
    workers.draw_workers(chart, {"S1, 5 workers": table, "S1, 20 workers": many}, "title")
    assert chart.stat().st_size > 0


@pytest.mark.timeout(30)
def test_thread_groups_strip_numbers():
    before = {1: ("MainThread", 1.0), 2: ("IO loop", 0.5)}
    after = {1: ("MainThread", 1.25), 2: ("IO loop", 1.5), 3: ("Dask-Offload_0", 0.25), 4: ("Dask-Offload_1", 0.25)}
    assert workers.thread_groups(before, after) == {"IO loop": 1.0, "Dask-Offload": 0.5, "MainThread": 0.25}


@pytest.mark.timeout(30)
def test_the_scale_section_shows_the_per_worker_table(tmp_path):
    from bench import scale
    from tests.test_bench_scale import fake_data

    data = fake_data({(sid, c): 1.0 for sid in W.SCALE_WORKLOADS for c in scale.WORKERS})
    t0 = 1000.0
    for c in scale.WORKERS:
        table = workers.worker_table(one_busy_worker(t0), t0, t0 + 1.2, [f"tcp://h:{i}" for i in range(1, c + 1)])
        table |= {"caller_cpu_per_round": 0.004, "main_cpu_per_round": 0.001, "tasks_per_second": 15.0}
        data["runs"][str(c)]["profile"]["S1"]["per_worker"] = table
    out = tmp_path / "BENCHMARKS.md"
    report.write_scale_report(out, data)
    text = out.read_text()
    assert "#### Each worker, S1" in text and "| S1, 8 workers | :1 | 0 ms | 60% | 12 |" in text
    assert "| S1 | 8 | 1.00 s |" in text and "| 780 ms | 0–60% | 4 | 18 | 4.0 ms |" in text
    assert (tmp_path / workers.WORKERS_CHART).stat().st_size > 0


@pytest.mark.timeout(30)
def test_overlapping_tasks_on_one_worker_are_busy_once():
    # A stateful task that waits inside while the worker runs another: busy 2 s of 2, not 2.5.
    recs = [record("a", 0, 10.0, 11.0), record("a", 0, 10.5, 12.0, "running-x1")]
    (row,) = workers.worker_table(recs, 10.0, 12.0)["workers"]
    assert row["busy"] == pytest.approx(2.0) and row["share"] == pytest.approx(1.0) and row["tasks"] == 2
    recs = [record("a", 0, 10.0, 10.5), record("a", 1, 10.25, 10.75), record("a", 2, 11.0, 11.5)]
    assert workers.worker_table(recs, 10.0, 12.0)["workers"][0]["share"] == pytest.approx((0.75 + 0.5) / 2)


def _table(count: int) -> dict:
    t0 = 1000.0
    table = workers.worker_table(one_busy_worker(t0), t0, t0 + 1.2, [f"tcp://h:{i}" for i in range(1, count + 1)])
    return table | {"caller_cpu_per_round": 0.004, "main_cpu_per_round": 0.001, "tasks_per_second": 15.0}


@pytest.mark.timeout(30)
def test_the_third_round_sections_render_from_figures():
    from bench import third

    machine = {"date": "today", "cpu": "cpu", "cores": 2, "dask": "d"}

    def r(x):
        return third.stats([(x, "exact")])

    runs = {"serial": r(2.0), "Pool(2)": r(1.0), "pypiper_dask": r(1.6)}
    skew = {"quick": True, "reps": 1, "loops": 900, "machine": machine}
    skew["sizes"] = {"1000": {"runs": runs, "speedup": third.speedups(runs), "profile": _table(2)}}
    text = third.section_skew(skew)
    assert "| 1,000 | 2.000 s | 1.000 s | 1.600 s | 2.00× | 1.25× | 0.62 | **no** |" in text
    assert "| 1,000 items | :1 | 0 ms | 60% | 12 |" in text

    summary = {"best": 0.5, "efficiency": 0.75, "verdict": "exact"}
    many = {"quick": True, "reps": 1, "layout": "split", "n": 3000, "nominal": 6.0, "machine": machine}
    many["counts"] = {
        "16": {
            "start_s": 3.0,
            "pypiper_dask": summary,
            "ThreadPool": summary,
            "profile": _table(16) | {"threads": {"IO loop": 0.5}},
            "cpu_s": {"scheduler": 0.36, "workers": 1.0},
            "scheduler_noop_per_s": 900.0,
        },
        "64": {"error": "error: RuntimeError: no", "ThreadPool": summary},
    }
    text = third.section_many(many)
    assert "| 16 | 3.0 s | 0.75 (0.500s) | 0.75 | 18 | 15 | 900 | 4.0 ms | 1.0 ms | 20.00 ms | 780 ms |" in text
    assert "| 64 | **error: RuntimeError: no** |" in text and "scheduler process 0.36" in text

    own = {"quick": True, "reps": 1, "machine": machine}
    own_runs = {"own cluster, address": r(1.05), "own cluster, client": r(1.0), "LocalCluster, client": r(1.0)}
    own["configs"] = {
        "S1": {
            "workers": 8,
            "n": 3000,
            "ideal": 0.75,
            "runs": own_runs,
            "scheduler_cpu_s": 0.72,
            "profile": {"own cluster, address": _table(8), "LocalCluster, client": _table(8)},
        },
        "W2": {"workers": 2, "n": 2000, "ideal": 1.0, "error": "error: X"},
    }
    text = third.section_own(own)
    assert "| S1 (3,000 items) | 8 | 1.050 s (eff. 0.71) | 1.000 s (eff. 0.75) | 1.000 s (eff. 0.75) | 1.05 |" in text
    assert "| 20.00 ms | yes |" in text and "| W2 | 2 | **error: X** |" in text

    numpy = {"quick": True, "reps": 1, "n": 100, "audio": dict(W.AUDIO), "machine": machine}
    numpy |= {"runs": runs, "speedup": third.speedups(runs), "profile": _table(2)}
    numpy |= {"per_item": {"plain process": 0.01, "Pool(2) process": 0.01, "Dask worker": 0.015}}
    numpy |= {"worker_malloc_env": {"MALLOC_TRIM_THRESHOLD_": "65536"}, "workers_rss": {"a": {"peak_mb": 91.0}}}
    text = third.section_numpy(numpy)
    assert "Dask worker 15.00 ms (1.50×)" in text and "peak RSS after the timed runs: 91 MB" in text
    assert "Dask's floor" not in text  # figures written before the anchors were measured

    # The anchors: Dask's floor on the same cluster, and where each run's CPU went.
    numpy["runs"] = runs | {"client.map, 25 a task": r(0.6)}
    numpy["anchors"] = {"client.map, 25 a task": 0.97}
    numpy["cpu"] = {
        "pypiper_dask": {"caller": 0.11, "workers": 1.5},
        "client.map, 25 a task": {"caller": 0.07, "workers": 1.4},
    }
    text = third.section_numpy(numpy)
    serial = runs["serial"]["median"]
    assert f"| client.map, 25 a task | 0.600 s | 0.97 | 0.070s | 1.400s | {1.47 - serial:.3f}s |" in text


def test_the_recovery_section_shows_a_stateless_kill_against_the_run_left_alone():
    from bench import recovery

    w4 = [{"setting": "none (snapshot_every=False)", "median": 0.15, "exact": True}]
    kills = [{"detected": 0.5, "moving": 0.8, "items": 3_000_000}]
    stateless = {"n": 3_000_000, "alone": 1.9, "killed": [{"wall": 3.2, "pause": 1.3, "items": 3_000_000}]}
    text = recovery.section(w4, kills, 5, stateless)
    assert "| 0 | 0.50 s | 0.80 s | 3,000,000 |" in text
    assert "left alone (1.90 s, median of 2)" in text
    assert "| 0 | 3.20 s | +1.30 s | 1.30 s | 3,000,000 |" in text
    assert "W1 run" not in recovery.section(w4, kills, 5)  # written before the stateless kills were measured
