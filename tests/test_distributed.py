"""Distributed execution: one output for every n_threads, partition size and cluster."""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys
import textwrap

import pytest
from dask.utils import key_split
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pypiper_dask import Node, Pipeline
from pypiper_dask.compiler import key_label
from tests import nodes as N
from tests.conftest import ROOT, dask_processes
from tests.reference import reference_run
from tests.strategies import build, failing_programs, programs
from tests.test_output_before_error import check_failing_program

pytestmark = pytest.mark.cluster

# distributed's background threads draw from the global `random` module while
# hypothesis generates a program; hypothesis takes that for the strategy's doing.
random_in_background = pytest.mark.filterwarnings("ignore:Do not use the `random` module inside strategies")


def run_text(pipeline: Pipeline, **kwargs):
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        result = pipeline.run(**kwargs)
    return buf.getvalue(), dict(result)


@random_in_background
@pytest.mark.timeout(300, method="thread")  # hypothesis would swallow a signal
@settings(
    max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(programs(reuse=True, names=True))
def test_random_pipelines_on_an_external_cluster(external_cluster, program):
    want = reference_run(build(program))
    got = run_text(Pipeline(build(program), client=external_cluster, partition_size=5))
    assert got == want


def test_n_threads_2_starts_and_closes_its_own_cluster():
    before = {p.pid for p in dask_processes()}
    program = (
        {"size": 60, "per_call": 2, "loud": True},
        [
            (
                "echo",
                {"stateless": False},
                [("batch", {"batch_size": 4, "stateless": True}, []), ("map", {"op": "sq"}, [])],
            ),
            ("take", {"n": 9}, [("all", {"stateless": None}, [])]),
        ],
    )
    want = reference_run(build(program))
    got = run_text(Pipeline(build(program), n_threads=2, partition_size=4))
    assert got == want
    assert {p.pid for p in dask_processes()} <= before


def test_stateful_node_sees_100k_items_in_order_and_state_comes_back(local_client):
    check = N.InOrder("in_order")
    Pipeline(N.Gen("gen", size=100_000) | check, client=local_client, quiet=True).run()
    assert check.expected == 100_000


def test_stateful_node_on_own_cluster_final_state(tmp_path):
    total = N.Running("total")
    result = Pipeline(N.Gen("gen", size=5000) | N.Map("sq", op="sq") | total, n_threads=2, quiet=True).run()
    assert total.count == 5000 and total.total == sum(i * i for i in range(5000))
    assert result["total"][-1] == (5000, total.total)


def test_task_stream_names_every_node(local_client):
    graph = N.Gen("gen", size=500) | [
        N.Map("square-it", op="sq") | N.Running("run-total"),
        N.Batch("in-fours", batch_size=4),
        N.Map("plain", op="inc"),
    ]
    from distributed import get_task_stream

    with get_task_stream(client=local_client) as ts:
        Pipeline(graph, client=local_client, quiet=True, partition_size=50).run()
    prefixes = {key_split(t["key"]) for t in ts.data}
    for name in ["square-it", "run-total", "in-fours", "plain"]:
        assert any(key_label(name) in p.split("+") for p in prefixes), (name, prefixes)


def test_every_key_a_run_sends_splits_to_node_names(local_client, monkeypatch):
    """The dashboard's rows are ``key_split`` of each key: specs and partitions too, not ``FusedSpec``/``Chunk``."""
    keys = []

    def keyed(method):
        def call(*args, **kwargs):
            out = method(*args, **kwargs)
            values = out.values() if isinstance(out, dict) else out if isinstance(out, list) else [out]
            keys.extend(f.key for f in values)
            return out

        return call

    for method in ("scatter", "submit"):
        monkeypatch.setattr(local_client, method, keyed(getattr(local_client, method)))
    graph = N.Gen("gen-in", size=3000) | [
        N.Map("square-it", op="sq") | N.Running("run-total"),
        N.Batch("in-fours", batch_size=4),
        N.Map("plain", op="inc"),
    ]
    from pypiper_dask.runtime.backends import DistributedBackend

    monkeypatch.setattr(DistributedBackend, "scatter_from", 1)  # every partition sent ahead of its task
    monkeypatch.setattr(DistributedBackend, "inline_spec", 0)  # every spec sent to the workers
    Pipeline(graph, client=local_client, quiet=True, partition_size=1000).run()
    names = {"gen-in", "square-it", "run-total", "in-fours", "plain"}
    shown = {key_split(k).replace("\u2011", "-") for k in keys}
    assert all(set(row.split("+")) <= names for row in shown), shown
    assert {"gen-in", "square-it+plain", "run-total", "in-fours"} <= shown  # partitions under the source


SEED_SCRIPT = """
from pypiper_dask import Node, Pipeline

class Generate(Node):
    def setup(self):
        self.pos = 0
        self.stateless = False

    def run(self, data):
        if self.pos < self.size:
            self.emit(self.pos)
            self.pos = self.pos + 1
        else:
            self.close()

class Square(Node):
    def run(self, data):
        self.emit(data**2)

class Printer(Node):
    def setup(self):
        self.batch_size = Node.BATCH_SIZE_ALL

    def run(self, data):
        print(data)

pipeline = Pipeline(Generate("gen", size=10) | Square("square"), n_threads=N)
pipeline.run()
pipeline = Pipeline(Generate("gen", size=10) | Square("square") | Printer("print"), n_threads=N)
pipeline.run()
"""


def test_seed_script_without_main_guard_runs_at_n_threads_2(tmp_path):
    outputs = {}
    for n in (1, 2):
        script = tmp_path / f"seed_{n}.py"
        script.write_text(textwrap.dedent(SEED_SCRIPT).replace("n_threads=N", f"n_threads={n}"))
        done = subprocess.run(
            [sys.executable, str(script)],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
            env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        )
        assert done.returncode == 0, done.stderr
        outputs[n] = done.stdout
    assert outputs[2] == outputs[1]
    assert outputs[1] == "".join(f"{i * i}\n" for i in range(10)) + str([i * i for i in range(10)]) + "\n"


def test_default_client_is_used_when_nothing_is_given(local_client):
    from distributed import Client, get_task_stream

    with Client(local_client.scheduler.address, set_as_default=True) as default, get_task_stream(client=default) as ts:
        _text, _ = run_text(Pipeline(N.Gen("gen", size=20) | N.Map("via-default", op="inc"), quiet=True))
    assert any(key_split(t["key"]).startswith(key_label("via-default")) for t in ts.data)


def test_worker_prints_reach_the_caller_in_order(local_client):
    class Loud(Node):
        def run(self, data):
            print("loud", data)
            self.emit(data)

    text, _ = run_text(Pipeline(N.Gen("gen", size=300) | Loud("loud"), client=local_client, partition_size=7))
    assert text == "".join(f"loud {i}\n{i}\n" for i in range(300))


# -- a node that raises at a drawn item (issue 19 item 2) -----------------------------------------


@random_in_background
@pytest.mark.timeout(300, method="thread")  # hypothesis would swallow a signal
@settings(
    # 2: test_recovery's kill trials run more failing programs on a local cluster
    max_examples=2,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(failing_programs(reuse=True, names=True, keyed=True), st.sampled_from([None, 2, 7]))
def test_random_programs_with_a_failing_node_on_a_local_cluster(local_client, failing, partition_size):
    program, where, ledger = failing
    check_failing_program(
        program, where, ledger, lambda g: Pipeline(g, client=local_client, partition_size=partition_size)
    )


@random_in_background
@pytest.mark.timeout(300, method="thread")  # hypothesis would swallow a signal
@settings(
    max_examples=3, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(failing_programs(reuse=True, names=True, keyed=True))
def test_random_programs_with_a_failing_node_on_an_external_cluster(external_cluster, failing):
    program, where, ledger = failing
    check_failing_program(program, where, ledger, lambda g: Pipeline(g, client=external_cluster, partition_size=5))
