"""``python -m bench --heavy``: the section and its verdicts, from saved figures (no cluster)."""

from __future__ import annotations

import pytest

from bench import heavy
from bench.report import put_section, sections


def _run(wall: float, setups: int, comm: int, lo: int) -> dict:
    return {
        "wall": wall,
        "exact": True,
        "setups": setups,
        "processes": setups,
        "teardowns": setups,
        "setup_window": [0.1, 1.2] if setups else None,
        "made": 0.0 if setups else None,
        "teardown_from": wall - 0.05 if setups else None,
        "comm_bytes": comm,
        "by_process": {"1": comm, "transfer_out": 960},
        "lo_bytes": lo,
    }


def figures(extra: float = 0.9, setups: int = 4, heavy_bytes: int = 300_000) -> dict:
    machine = {"date": "today", "cpu": "cpu", "cores": 2, "dask": "d"}
    data = {
        "quick": False,
        "reps": 3,
        "n": 2000,
        "workers": 4,
        "partitions": 40,
        "machine": machine,
        "load_before": [3.0, 2.5, 2.0],
        "runs": {
            "plain": [_run(w, 0, 170_000, 500_000) for w in (2.0, 2.2, 2.1)],
            "setup_worker": [_run(w + extra, setups, heavy_bytes, 800_000) for w in (2.0, 2.2, 2.1)],
        },
    }
    data["summary"] = heavy.summarize(data)
    return data


@pytest.mark.timeout(30)
def test_the_heavy_section_renders_from_figures():
    data = figures()
    s = data["summary"]
    assert s["setups_ok"] and s["bytes_ok"] and s["extra_ok"] and s["exact"]
    assert s["extra"] == pytest.approx(0.9) and s["extra_bytes"] == 130_000
    text = heavy.section_heavy(data)
    assert "| without `setup_worker()` | 2.10 s (2.00–2.20) | 0 (0), 0 (0), 0 (0) | 0, 0, 0 | 0.16 MiB |" in text
    assert "| 0.48 MiB (max 0.48 MiB) | True |" in text
    assert "Each pair (with − without, in run order): +0.90 s, +0.90 s, +0.90 s." in text
    assert "| with `setup_worker()` | 3.00 s (2.90–3.10) | 4 (4), 4 (4), 4 (4) | 4, 4, 4 | 0.29 MiB |" in text
    assert "not 40 partitions, not 2,000 items): yes." in text
    assert "+0.90 s for a set-up of 1 s on every worker at once; at most 1 s more: yes." in text
    assert "load average 3.0, 2.5, 2.0" in text and "median of 3" in text
    # Its own marked section, beside the others.
    page = put_section("# Benchmarks\n\n<!-- keyed -->\nk\n<!-- /keyed -->\n", "heavy", text)
    assert set(sections(page)) == {"keyed", "heavy"}


@pytest.mark.timeout(30)
def test_the_verdicts_say_no_when_a_target_is_missed():
    slow = figures(extra=1.4)["summary"]
    assert not slow["extra_ok"] and slow["setups_ok"]
    per_partition = figures(setups=40)
    assert not per_partition["summary"]["setups_ok"]
    assert "**no**" in heavy.section_heavy(per_partition)
    shipped = figures(heavy_bytes=4 * 200 * 2**20)["summary"]
    assert not shipped["bytes_ok"]


@pytest.mark.timeout(30)
def test_the_nodes_give_the_expected_output_and_note_their_set_up(tmp_path):
    from pypiper_dask import Pipeline

    log = tmp_path / "run.log"
    for loaded in (False, True):
        result = Pipeline(heavy.graph(loaded, 30, log=str(log)), n_threads=1, quiet=True).run()
        assert dict(result) == heavy.expected(30)
    notes = [line.split()[0] for line in log.read_text().splitlines()]
    assert notes == ["setup", "teardown"]  # once in the caller's process, for the loaded node only


@pytest.mark.timeout(30)
def test_bench_heavy_from_json_writes_its_section(tmp_path):
    import json

    from bench import run

    saved = tmp_path / "heavy.json"
    data = figures()
    del data["summary"]  # recomputed from the runs
    saved.write_text(json.dumps(data))
    out = tmp_path / "BENCHMARKS.md"
    out.write_text("# Benchmarks\n\n<!-- heavy -->\nold\n<!-- /heavy -->\n")
    assert run.main(["--heavy", "--from-json", str(saved), "--out", str(out)]) == 0
    text = out.read_text()
    assert "old" not in text and text.count("### Per-process set-up") == 1
    assert "at most 1 s more: yes" in text
