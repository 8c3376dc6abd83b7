"""stream(), submit(), open()/close() and live sources (issue 13)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import io
import os
import subprocess
import sys
import time

import pytest

from pypiper_dask import Pipeline
from tests import nodes as N
from tests.conftest import ROOT, _wait_for, dask_processes


def printed(fn, *args, **kwargs):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        value = fn(*args, **kwargs)
    return out.getvalue(), value


def fan_out(size: int = 60):
    return N.Gen("gen", size=size, per_call=2) | [N.Map("sq", op="sq") | N.Running("total"), N.Map("inc", op="inc")]


@pytest.fixture
def no_cluster_left():
    """Call it to wait until every dask process the test started has ended."""
    before = {p.pid for p in dask_processes()}

    def check(timeout: float = 20.0) -> None:
        _wait_for(lambda: {p.pid for p in dask_processes()} <= before, timeout, "the cluster's processes to end")

    return check


# -- stream() -------------------------------------------------------------------------------


@pytest.mark.timeout(120)
@pytest.mark.parametrize("where", [{"n_threads": 1}, {"n_threads": 2, "partition_size": 7}], ids=["1", "2"])
def test_stream_yields_every_leaf_item_in_the_sequential_order(where):
    text, _ = printed(Pipeline(fan_out(), n_threads=1).run)
    streamed_text, pairs = printed(lambda: list(Pipeline(fan_out(), **where).stream()))
    assert streamed_text == ""  # the leaves' items are yielded, not printed
    assert "".join(f"{item}\n" for _, item in pairs) == text
    assert {leaf for leaf, _ in pairs} == {"total", "inc"}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("n_threads", [1, 2])
def test_prints_of_nodes_still_reach_stdout_in_their_place(n_threads):
    graph = N.Gen("gen", size=6, loud=True) | N.Slow("m", seconds=0)
    text, _ = printed(Pipeline(graph, n_threads=1).run)
    want = [line for line in text.splitlines() if "call at" in line]
    got, pairs = printed(lambda: list(Pipeline(graph, n_threads=n_threads, partition_size=2).stream()))
    assert got.splitlines() == want
    assert [item for _, item in pairs] == list(range(6))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("n_threads", [1, 2])
def test_breaking_out_of_an_endless_stream_cancels_and_closes_the_cluster(n_threads, no_cluster_left):
    source = N.Endless("endless")
    start = time.monotonic()
    got = []
    for _leaf, item in Pipeline(source | N.Slow("m", seconds=0), n_threads=n_threads).stream():
        got.append(item)
        if len(got) == 5:
            break
    assert got == [0, 1, 2, 3, 4]
    assert time.monotonic() - start < 60
    no_cluster_left()
    assert source.pos >= 5  # the caller's source: the state it reached (in the process)


@pytest.mark.timeout(120)
@pytest.mark.cluster
def test_an_error_in_the_loop_and_a_dropped_iterator_cancel_too(no_cluster_left):
    with pytest.raises(ZeroDivisionError):
        for _ in Pipeline(N.Endless("endless") | N.Slow("m", seconds=0), n_threads=2).stream():
            raise ZeroDivisionError
    no_cluster_left()
    stream = Pipeline(N.Endless("endless") | N.Slow("m", seconds=0), n_threads=2).stream()
    next(stream)
    del stream  # garbage-collected: the generator closes
    no_cluster_left()


@pytest.mark.timeout(120)
@pytest.mark.cluster
def test_first_item_comes_before_the_end():
    graph = N.Gen("gen", size=40) | N.Slow("slow", seconds=0.1)  # about 4 s of work on one worker
    with Pipeline(graph, n_threads=2) as pipeline:  # the cluster's start is not the stream's
        start = time.monotonic()
        stream = pipeline.stream()
        first = next(stream)
        first_after = time.monotonic() - start
        rest = list(stream)
        total = time.monotonic() - start
    assert first == ("slow", 0) and len(rest) == 39
    assert first_after < total / 2, (first_after, total)


# -- submit() -------------------------------------------------------------------------------


@pytest.mark.timeout(120)
@pytest.mark.parametrize("n_threads", [1, 2])
def test_submit_returns_at_once_and_its_result_equals_run(n_threads):
    graph = N.Gen("gen", size=30) | N.Slow("slow", seconds=0.03)
    want = Pipeline(graph, n_threads=1, quiet=True).run()
    handle = Pipeline(graph, n_threads=n_threads, quiet=True).submit()
    assert not handle.done()  # returned before the run's 0.9 s of work
    result = handle.result(timeout=100)
    assert handle.done() and handle.state == "finished"
    assert dict(result) == dict(want)
    assert handle.progress == (30, 30)
    assert "finished" in handle._repr_html_()


SUBMITTED = """
import time
from pypiper_dask import Node, Pipeline

class Gen(Node):
    def setup(self, size):
        self.pos = 0
    def run(self, data):
        if self.pos == self.size:
            self.close()
            return
        self.emit(self.pos)
        self.pos += 1

class Slow(Node):
    def run(self, data):
        time.sleep(0.002)
        self.emit(data)

if __name__ == "__main__":
    Pipeline(Gen("gen", size=300) | Slow("slow"), n_threads={n_threads}).submit()
    print("submitted", flush=True)
"""


@pytest.mark.timeout(120)
@pytest.mark.parametrize("n_threads", [1, pytest.param(2, marks=pytest.mark.cluster)])
def test_a_script_that_ends_after_submit_waits_for_the_run(tmp_path, n_threads):
    script = tmp_path / "submitted.py"
    script.write_text(SUBMITTED.format(n_threads=n_threads))
    done = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=100,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    # At n_threads=1 the run prints from its own thread: its first lines may come before "submitted".
    assert lines.count("submitted") == 1, done.stdout[-500:]
    lines.remove("submitted")
    assert lines == [str(i) for i in range(300)], done.stdout[-500:]
    assert "waiting for 1 submitted run(s) to finish" in done.stderr


@pytest.mark.timeout(120)
def test_submit_raises_the_runs_error_from_result():
    handle = Pipeline(N.Gen("gen", size=5) | N.Ledger("fail", fail_at=3), n_threads=1, quiet=True).submit()
    with pytest.raises(Exception, match="fail fails at 3"):
        handle.result(timeout=60)
    assert handle.state == "failed"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("n_threads", [1, 2])
def test_cancel_stops_the_run_and_leaves_nothing_running(n_threads, no_cluster_left):
    source = N.Endless("endless", sleep=0.001)
    handle = Pipeline(source | N.Slow("m", seconds=0), n_threads=n_threads, quiet=True).submit()
    _wait_for(lambda: handle.progress[0] > 10, 60, "some progress")
    assert handle.cancel()
    assert handle.done() and handle.state == "cancelled"
    with pytest.raises(concurrent.futures.CancelledError):
        handle.result()
    no_cluster_left()
    assert not handle.cancel()  # already over


@pytest.mark.timeout(60)
def test_a_handle_is_awaitable():
    async def main():
        return await Pipeline(N.Gen("gen", size=5) | N.Slow("m", seconds=0), n_threads=1, quiet=True).submit()

    assert asyncio.run(main())["m"] == list(range(5))


# -- open() / close() ------------------------------------------------------------------------


@pytest.mark.timeout(120)
@pytest.mark.cluster
def test_with_keeps_one_cluster_across_runs_streams_and_submits(no_cluster_left):
    graph = fan_out()
    want = printed(Pipeline(graph, n_threads=1, quiet=True).run)[1]
    with Pipeline(graph, n_threads=2, quiet=True) as p:
        link = p.dashboard_link
        assert link and link in p._repr_html_()
        address = p._held.client.scheduler.address
        first = p.run()
        second = p.run()
        assert p._held.client.scheduler.address == address  # no cluster started for it
        pairs = list(p.stream())
        third = p.submit().result(timeout=60)
        assert p.dashboard_link == link  # the same cluster all along
    assert dict(first) == dict(second) == dict(third) == dict(want)
    assert len(pairs) == sum(len(v) for v in want.values())
    no_cluster_left()
    assert Pipeline(graph, n_threads=2).dashboard_link is None


def test_open_is_a_no_op_in_the_process():
    p = Pipeline(fan_out(), n_threads=1, quiet=True)
    assert p.open() is p and p.dashboard_link is None
    p.close()


@pytest.mark.timeout(120)
def test_n_threads_with_a_default_client_says_which_cluster_runs(local_client, capfd):
    with local_client.as_current():
        from distributed import Client

        with Client(local_client.scheduler.address, set_as_default=True):
            Pipeline(N.Gen("gen", size=3) | N.Slow("m", seconds=0), n_threads=2, quiet=True).run()
    err = capfd.readouterr().err
    assert "starts a local cluster of its own, not the active default client's" in err
    assert "client=distributed.default_client()" in err


# -- live sources and progress ---------------------------------------------------------------


@pytest.mark.timeout(120)
@pytest.mark.cluster
def test_a_live_source_is_delivered_while_it_goes_on():
    # Told by order, not by a delay: items come out while the source still has readings to take.
    yielded, emitted = [], []
    pipeline = Pipeline(N.Stamped("feed", size=150, every=0.02) | N.Slow("m", seconds=0), n_threads=2)
    for _, (_pos, at) in pipeline.stream():
        yielded.append(time.time())
        emitted.append(at)
    assert len(yielded) == 150
    assert yielded[0] < emitted[-1], "nothing came out before the source's last reading"
    early = sum(y < emitted[-1] for y in yielded)
    assert early >= 100, f"only {early} of 150 readings came out before the source's last one"


@pytest.mark.timeout(120)
@pytest.mark.cluster
def test_slow_nodes_show_progress_after_the_first_item():
    seen: list = []

    def callback(done, total):
        seen.append((time.monotonic(), done))  # the first call: the cluster is up, the run starts

    Pipeline(N.Gen("gen", size=12) | N.Slow("slow", seconds=0.3), n_threads=2, quiet=True).run(update_callback=callback)
    assert seen[-1][1] == 12
    # One item first (0.3 s), not a 32-item partition (about 5 s on two workers).
    assert next(done for _t, done in seen if done) == 1


def test_no_bar_is_drawn_over_a_users_callback(capfd):
    Pipeline(N.Gen("gen", size=3) | N.Slow("slow", seconds=0.01), n_threads=1, quiet=True).run(
        update_callback=lambda done, total: None
    )
    assert "it/s" not in capfd.readouterr().err and "item/s" not in capfd.readouterr().err
