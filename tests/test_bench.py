"""The benchmark's own checks, at small N (the benchmark itself is not part of the test run)."""

from __future__ import annotations

import multiprocessing

import pytest

from bench import report, run
from bench import workloads as W

SMALL = "300"


@pytest.fixture(autouse=True)
def small(monkeypatch):
    monkeypatch.setenv("PYPIPER_DASK_BENCH_N", SMALL)
    W.LOOPS["n"] = 50  # W2's loop, made cheap


@pytest.mark.parametrize("wid", ["W1", "W2", "W3", "W4", "W5", "W7"])
def test_every_in_process_system_matches_serial(wid):
    expected = W.serial(wid)
    assert len(next(iter(expected.values()))) in (1, int(SMALL))
    for system in (run.sys_floor, run.sys_serial):
        assert system(wid)[1] == expected, system.__name__
    assert run.sys_ours(wid, n_threads=1)[1] == expected


@pytest.mark.cluster
@pytest.mark.timeout(180)
def test_cluster_systems_match_serial(local_client):
    with multiprocessing.get_context("fork").Pool(2) as pool:
        for wid in ["W1", "W3", "W4", "W5"]:
            expected = W.serial(wid)
            assert run.sys_pool(wid, pool)[1] == expected
            assert run.sys_bag(wid, local_client, False)[1] == expected
            assert run.sys_bag(wid, local_client, True)[1] == expected
            assert run.sys_ours(wid, client=local_client)[1] == expected


@pytest.mark.timeout(120)
def test_pypiper_is_checked_not_trusted():
    seconds, out = run.sys_pypiper("W1", 1)
    assert out == W.serial("W1") and seconds > 0
    _, fan_out = run.sys_pypiper("W5", 1)
    assert fan_out in (W.serial("W5"), "order differs")  # set order at n_threads=1


def test_measure_marks_wrong_output():
    expected = {"leaf": [1, 2, 3]}
    assert run.measure(lambda: (0.1, {"leaf": [1, 2, 3]}), expected, 2)["verdict"] == "exact"
    assert run.measure(lambda: (0.1, {"leaf": [1, 2]}), expected, 1)["verdict"] == "wrong output"
    assert run.measure(lambda: (0.1, "order differs"), expected, 1)["verdict"] == "order differs"


def test_targets_read_the_measurements():
    def r(m, verdict="exact"):
        return {"median": m, "min": m, "max": m, "verdict": verdict}

    results = {w: {s: r(1.0) for s in run.SYSTEMS} for w in ["W1", "W2", "W3", "W4", "W5", "W7"]}
    results["W2"]["serial"] = r(4.0)
    results["W2"]["pypiper_dask n=2 client"] = r(2.0)  # 2.0x: T1 holds with a client...
    results["W2"]["pypiper_dask n=2 +cluster"] = r(3.0)  # ...but 1.33x with start/stop does not
    rows = {
        row[0]: row
        for row in report.targets(
            results,
            [0.5],
            [
                {"n": 1, "seconds": 1, "start_mb": 50, "peak_mb": 100},
                {"n": 10, "seconds": 5, "start_mb": 50, "peak_mb": 105},
            ],
        )
    }
    assert rows["T1"][3] is False and "2.00× with a client" in rows["T1"][2]
    assert rows["T4"][3] is True and rows["T5"][3] is True
    results["W1"]["pypiper_dask n=1"] = r(1.0, "wrong output")
    assert report.targets(results, [0.5], [{"n": 1, "seconds": 1, "start_mb": 50, "peak_mb": 100}] * 2)[1][3] is False
