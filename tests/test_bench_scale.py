"""The checks of ``python -m bench --scale`` at tiny N (the benchmark itself is not part of the test run)."""

from __future__ import annotations

import json
import multiprocessing.pool

import pytest

from bench import report, run, scale
from bench import workloads as W

N = 40
TINY = {"ms": 1.0, "long_ms": 3.0, "every": 7}  # S2: items 0, 7, 14, ... sleep 3 ms


@pytest.mark.timeout(30)
def test_nominal_sleep_is_what_bench_md_states():
    assert W.nominal_sleep("S1", 3000) == pytest.approx(6.0)
    assert W.nominal_sleep("S2", 3000) == pytest.approx(60 * 0.040 + 2940 * 0.002)
    assert W.nominal_sleep("S2", N, TINY) == pytest.approx((6 * 3.0 + 34 * 1.0) / 1000)
    assert W.scale_serial("S4", 25) == {"batch": [45, 145, 110]}  # the last batch is short


@pytest.mark.timeout(30)
def test_threadpool_and_in_process_pipeline_match_serial():
    with multiprocessing.pool.ThreadPool(2) as threads:
        for sid in W.SCALE_WORKLOADS:
            expected = W.scale_serial(sid, N)
            assert scale.sys_threads(sid, threads, N, TINY)[1] == expected, sid
    from pypiper_dask import Pipeline

    for sid in W.SCALE_WORKLOADS:
        assert dict(Pipeline(W.scale_graph(sid, N, TINY), n_threads=1, quiet=True).run()) == W.scale_serial(sid, N)


@pytest.mark.cluster
@pytest.mark.timeout(60)
def test_cluster_systems_match_serial(local_client):
    for sid in W.SCALE_WORKLOADS:
        expected = W.scale_serial(sid, N)
        assert scale.sys_ours(sid, local_client, N, TINY)[1] == expected, sid
        for partitions in (3, 8):  # S4 at 3: partitions of 20 items, 10-item sums inside each
            assert scale.sys_bag(sid, local_client, partitions, N, TINY)[1] == expected, (sid, partitions)


@pytest.mark.timeout(30)
def test_wrong_or_failed_runs_are_marked_not_counted():
    def boom():
        raise RuntimeError("engine broke\nmore")

    expected = {"leaf": [0, 1]}
    assert scale.attempt(lambda: (0.5, {"leaf": [0, 1]}), expected) == (0.5, "exact")
    assert scale.attempt(lambda: (0.1, {"leaf": [1, 0]}), expected) == (0.1, "wrong output")
    assert scale.attempt(boom, expected) == (None, "error: RuntimeError: engine broke")
    s = scale.summarize([(2.0, "exact"), (0.1, "wrong output"), (None, "error: X")], nominal=6.0, workers=2)
    assert s["best"] == 2.0 and s["efficiency"] == pytest.approx(1.5)
    assert s["verdict"] == "error: X; wrong output"
    none = scale.summarize([(0.1, "wrong output")], nominal=6.0, workers=2)
    assert none["best"] is None and none["efficiency"] is None


def fake_data(ours: dict, bag: float = 0.7, t1: tuple[float, float] = (2.0, 2.1)) -> dict:
    """--scale figures with pypiper_dask's times ``ours[(sid, workers)]``; others at fixed efficiencies."""
    runs = {}
    for count in scale.WORKERS:
        systems = {}
        for sid in W.SCALE_WORKLOADS:
            nominal = W.nominal_sleep(sid, 3000)
            b = scale.summarize([(nominal / count / bag, "exact")], nominal, count)
            b |= {"partitions": {}, "best_partitions": 4 * count}
            systems[sid] = {
                "pypiper_dask": scale.summarize([(ours[sid, count], "exact")], nominal, count),
                "dask.bag": b,
                "ThreadPool": scale.summarize([(nominal / count / 0.95, "exact")], nominal, count),
            }
        profile = {"S1": {"wall": 1.0, "exact": True, "busy_share": 0.8, "first_start": 0.02, "after_last": 0.01}}
        profile["S1"]["kinds"] = {"sleep+leaf": {"tasks": 68, "mean_ms": 96.0}}
        cpu = {"wall": 60.0, "ours": 50.0, "others": 1.5, "steal": 0.0}
        runs[str(count)] = {"workers": count, "systems": systems, "profile": profile, "cpu": cpu}

    def m(x):
        return {"median": x, "min": x, "max": x, "verdict": "exact"}

    return {
        "quick": True,
        "reps": 1,
        "n": 3000,
        "sleep": dict(W.SLEEP),
        "workers": list(scale.WORKERS),
        "nominal": {sid: W.nominal_sleep(sid, 3000) for sid in W.SCALE_WORKLOADS},
        "machine": {"date": "today", "cpu": "cpu", "cores": 2, "python": "3", "dask": "d"},
        "runs": runs,
        "t1": {
            "loops": 1000,
            "n": 2000,
            "serial": m(4.0),
            "Pool(2)": m(t1[1]),
            "pypiper_dask n=2 client": m(t1[0]),
            "pypiper_dask n=2 +cluster": m(t1[0] + 0.5),
        },
    }


@pytest.mark.timeout(30)
def test_targets_read_the_figures():
    # Efficiency 0.95 everywhere (S2's nominal is larger), stages at 1.05× S1: T7, T8, T1 hold.
    good = {(sid, c): W.nominal_sleep(sid, 3000) / c / 0.95 for sid in W.SCALE_WORKLOADS for c in scale.WORKERS}
    for sid in ("S3", "S4", "S5"):
        for c in scale.WORKERS:
            good[sid, c] = good["S1", c] * 1.05
    rows = {r[0]: r for r in report.scale_targets(fake_data(good, t1=(2.0, 2.05)))}
    assert rows["T7"][3] is True and "0.95 at 8 workers (dask.bag's best 0.70)" in rows["T7"][2]
    assert rows["T8"][3] is True and "S3 1.05×" in rows["T8"][2]
    assert rows["T1 (revised)"][3] is True and rows["T1 (revised), +cluster"][3] is True
    # A stateful stage 1.2× S1 at 8 workers breaks T8; ours below dask.bag at 8 breaks T7; T1 at 0.9 of Pool's.
    bad = dict(good)
    bad["S1", 8] = W.nominal_sleep("S1", 3000) / 8 / 0.6
    bad["S3", 8] = bad["S1", 8] * 1.2
    rows = {r[0]: r for r in report.scale_targets(fake_data(bad, bag=0.7, t1=(2.0, 1.8)))}
    assert rows["T7"][3] is False and rows["T8"][3] is False and rows["T1 (revised)"][3] is False


@pytest.mark.timeout(30)
def test_section_is_replaced_not_repeated_and_kept_by_the_full_report(tmp_path):
    out = tmp_path / "BENCHMARKS.md"
    out.write_text("# Benchmarks\n\nthe full run's text\n")
    data = fake_data({(sid, c): 1.0 for sid in W.SCALE_WORKLOADS for c in scale.WORKERS})
    report.write_scale_report(out, data)
    first = out.read_text()
    report.write_scale_report(out, data)
    text = out.read_text()
    assert text == first and text.count("<!-- scale -->") == 1 and text.count("<!-- /scale -->") == 1
    assert text.startswith("# Benchmarks\n\nthe full run's text\n")
    assert "## Scaling past two workers (python -m bench --scale)" in text
    assert "| S1 sleep → leaf (6.00 s of sleep) | pypiper_dask | 3.00 (1.00 s) |" in text
    assert (tmp_path / report.SCALE_CHART).stat().st_size > 0
    assert "8 workers: 1.5 in 60 s (50) / 0.0" in text and "went to other processes" not in text
    # Other figures: the section changes in place, the rest stays.
    data["runs"]["8"]["systems"]["S1"]["pypiper_dask"] = scale.summarize([(0.1, "wrong output")], 6.0, 8)
    report.write_scale_report(out, data)
    changed = out.read_text()
    assert changed.count("<!-- scale -->") == 1 and "**wrong output**" in changed
    assert changed.startswith("# Benchmarks\n\nthe full run's text\n")
    # The full benchmark rewrites the file and keeps the section.
    kept = report.keep_sections(changed, "# Benchmarks\n\nnew full run\n")
    assert kept.startswith("# Benchmarks\n\nnew full run\n")
    assert report.sections(kept) == report.sections(changed)
    assert report.keep_sections(kept, kept) == kept


@pytest.mark.timeout(30)
def test_full_report_keeps_the_scale_section(tmp_path):
    out = tmp_path / "BENCHMARKS.md"
    report.write_scale_report(out, fake_data({(sid, c): 1.0 for sid in W.SCALE_WORKLOADS for c in scale.WORKERS}))
    section = report.sections(out.read_text())[report.SCALE]

    def r(x):
        return {"median": x, "min": x, "max": x, "verdict": "exact"}

    results = {w: {s: r(1.0) for s in run.SYSTEMS} for w in ["W1", "W2", "W3", "W4", "W5", "W7"]}
    stream = [{"n": 1, "seconds": 1, "start_mb": 50, "peak_mb": 100}] * 2
    machine = {"date": "d", "cpu": "c", "cores": 2, "memory_gb": 1, "python": "3", "dask": "d"}
    machine |= {"distributed": "d", "pyPiper": "p"}
    for _ in range(2):
        report.write_report(out, results, [], [0.5], stream, loops=1, reps=1, quick=True, machine=machine)
        text = out.read_text()
        assert text.startswith("# Benchmarks\n") and "## Targets" in text
        assert report.sections(text) == {report.SCALE: section}


@pytest.mark.timeout(30)
def test_from_json_rewrites_the_section(tmp_path):
    saved = tmp_path / "scale.json"
    saved.write_text(json.dumps(fake_data({(sid, c): 1.0 for sid in W.SCALE_WORKLOADS for c in scale.WORKERS})))
    out = tmp_path / "BENCHMARKS.md"
    assert run.main(["--scale", "--from-json", str(saved), "--out", str(out)]) == 0
    assert out.read_text().count("## Scaling past two workers") == 1
    # A busy neighbour (half of 2 cores for a minute) is called out.
    busy = json.loads(saved.read_text())
    busy["runs"]["4"]["cpu"]["others"] = 60.0
    saved.write_text(json.dumps(busy))
    assert run.main(["--scale", "--from-json", str(saved), "--out", str(out)]) == 0
    text = out.read_text()
    assert text.count("## Scaling past two workers") == 1 and "Up to 50% of the machine's CPU" in text


@pytest.mark.cluster
@pytest.mark.timeout(90)
def test_a_tiny_scale_run_end_to_end():
    logged: list[str] = []
    data = scale.run_scale(1, quick=True, n=N, sleep=TINY, workers=(2,), t1=False, log=logged.append)
    cells = data["runs"]["2"]["systems"]
    for sid in W.SCALE_WORKLOADS:
        for system in scale.SCALE_SYSTEMS:
            assert cells[sid][system]["verdict"] == "exact", (sid, system, cells[sid][system])
            assert cells[sid][system]["efficiency"] > 0
        assert data["runs"]["2"]["profile"][sid]["exact"] is True
    assert cells["S1"]["dask.bag"]["best_partitions"] in (4, 8, 16)
    # A line per workload, the CPU figures, a per-worker summary per workload and a line per worker for S1.
    assert len(logged) == 2 * len(W.SCALE_WORKLOADS) + 1 + 2
    assert sum("per worker:" in line for line in logged) == len(W.SCALE_WORKLOADS)
    table = data["runs"]["2"]["profile"]["S1"]["per_worker"]
    assert len(table["workers"]) == 2 and table["rounds"] >= 1 and table["caller_cpu_per_round"] >= 0
    assert sum(w["tasks"] for w in table["workers"]) == table["tasks"] > 0
    assert data["runs"]["2"]["cpu"]["ours"] > 0
    json.dumps(data)  # the figures are saved as JSON
    section = report.scale_section(data)
    assert "| S3 sleep → stateful running sum" in section and "#### Each worker, S1" in section
