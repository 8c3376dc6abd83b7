"""Keyed stateful nodes: one instance per key, in every mode exactly as the sequential reference has them."""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import subprocess
import sys
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pypiper_dask import Node, NodeError, Pipeline
from pypiper_dask.model.keys import KEY_GROUPS, key_group, stable_hash
from pypiper_dask.runtime import SyncTaskBackend
from tests import nodes as N
from tests.reference import reference_run
from tests.strategies import build, has_closes, programs

random_in_background = pytest.mark.filterwarnings("ignore:Do not use the `random` module inside strategies")


def run_text(pipeline: Pipeline, **kwargs):
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        result = pipeline.run(**kwargs)
    return buf.getvalue(), result


def tasks_text(pipeline: Pipeline, partition_size):
    buf = io.StringIO()
    pipeline.partition_size = partition_size
    with contextlib.redirect_stdout(buf):
        result = pipeline._run_on(SyncTaskBackend())
    return buf.getvalue(), result


def per_key(result, name: str) -> dict:
    return {k: (n.count, n.total) for k, n in result.keyed(name).items()}


def reference_per_key(name: str) -> dict:
    return {k: (n.count, n.total) for k, n in reference_run.keyed[name].items()}


def graph(size=40, **keyed):
    return N.Gen("gen", size=size) | N.KeyedRunning("k", stateless=False, **keyed) | N.Echo("out")


# -- the rule, in the calling process and on the task path ----------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"batch_size": 3},
        {"batch_size": Node.BATCH_SIZE_ALL},
        {"close_after": 2},
        {"batch_size": 2, "close_after": 1, "loud": True, "text": True},
    ],
)
def test_a_keyed_node_is_one_instance_per_key(options):
    g = graph(**options)
    want_text, want = reference_run(g)
    for run in (lambda p: run_text(p), lambda p: tasks_text(p, 7)):
        text, result = run(Pipeline(g, n_threads=1))
        assert (text, dict(result)) == (want_text, want)
        assert per_key(result, "k") == reference_per_key("k")
    assert not hasattr(g.root, "nope")


def test_batches_are_per_key_and_all_is_a_group_by():
    g = N.Gen("gen", size=10) | N.KeyedRunning("k", stateless=False, keys=3, batch_size=Node.BATCH_SIZE_ALL)
    _, result = run_text(Pipeline(g, n_threads=1, quiet=True))
    # keys in order of their first item: 0 (0,3,6,9), 1 (1,4,7), 2 (2,5,8)
    assert result["k"] == [(1, 18), (1, 12), (1, 15)]
    g = N.Gen("gen", size=10) | N.KeyedRunning("k", stateless=False, keys=2, batch_size=3)
    _, result = run_text(Pipeline(g, n_threads=1, quiet=True))
    assert result["k"] == [(1, 6), (1, 9), (2, 20), (2, 25)]  # (0,2,4) (1,3,5) then the short ones


def test_close_ends_that_key_only():
    g = N.Gen("gen", size=12) | N.KeyedRunning("k", stateless=False, keys=3, close_after=2)
    _, result = run_text(Pipeline(g, n_threads=1, quiet=True))
    assert len(result["k"]) == 6  # two calls for each of the three keys
    assert per_key(result, "k") == {0: (2, 3), 1: (2, 5), 2: (2, 7)}


def test_the_callers_node_is_left_as_built_and_the_instances_are_in_the_result():
    node = N.KeyedRunning("k", stateless=False, keys=4)
    g = N.Gen("gen", size=20) | node
    for n_threads in (1, None):
        p = Pipeline(g, n_threads=n_threads or 1, quiet=True)
        _, result = run_text(p) if n_threads else tasks_text(p, 3)
        assert (node.count, node.total) == (0, 0)
        assert per_key(result, "k") == {0: (5, 40), 1: (5, 45), 2: (5, 50), 3: (5, 55)}
        assert list(result.keyed("k")) == [0, 1, 2, 3]
    with pytest.raises(KeyError, match="'gen' is not a keyed node of this run"):
        result.keyed("gen")


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(programs(keyed=True), st.sampled_from([None, 1, 3, 17]))
def test_random_keyed_programs_match_the_reference(program, partition_size):
    g = build(program)
    want = reference_run(g)
    assert run_text(Pipeline(g, n_threads=1))[0] == want[0]
    text, result = tasks_text(Pipeline(build(program)), partition_size)
    assert (text, dict(result)) == want


class BadKey(Node):
    def setup(self, what):
        self.what = what

    def key(self, data):
        if data == 3:
            if self.what == "raise":
                raise ValueError("no key for 3")
            if self.what == "unhashable":
                return [3]
            return threading.Lock()
        return data % 2

    def run(self, data):
        self.emit(data)


@pytest.mark.parametrize(
    ("what", "message"),
    [
        ("raise", r"ValueError: no key for 3"),
        ("unhashable", r"BadKeyError: key\(\) returned \[3\] of type list, which is not hashable"),
    ],
)
def test_a_bad_key_is_the_nodes_error_naming_the_item(what, message):
    g = N.Gen("gen", size=6) | BadKey("bad", what=what, stateless=False)
    for run in (lambda p: run_text(p), lambda p: tasks_text(p, 2)):
        with pytest.raises(NodeError, match=message) as caught:
            run(Pipeline(g, n_threads=1, quiet=True))
        assert caught.value.node == "bad" and "3" in str(caught.value)


# -- the key hash ------------------------------------------------------------------------------


def test_key_groups_are_the_same_in_every_process():
    keys = ["user-1", "ü", b"x", ("a", 1), frozenset({"p", "q"}), 7, 7.0, None, 2**70]
    here = [key_group(k) for k in keys]
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "from pypiper_dask.model.keys import key_group;"
        f"print([key_group(k) for k in {keys!r}])"
    )
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run(
            [sys.executable, "-c", code, os.getcwd()], env=env, capture_output=True, text=True, timeout=60
        )
        assert out.stdout.strip() == str(here), out.stderr
    assert stable_hash(1) == stable_hash(1.0) == stable_hash(True)
    assert all(0 <= g < KEY_GROUPS for g in here)
    assert [key_group(i) for i in range(64)] == list(range(64))  # small int keys spread evenly


# -- on clusters -----------------------------------------------------------------------------


@pytest.mark.cluster
@random_in_background
@pytest.mark.timeout(300, method="thread")
@settings(
    max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(programs(keyed=True, names=True), st.sampled_from([None, 2, 7]))
def test_random_keyed_programs_on_a_local_cluster(local_client, tmp_path_factory, program, partition_size):
    calls = tmp_path_factory.mktemp("calls")
    want_calls, got_calls = calls / "want", calls / "got"
    want = reference_run(build(program, calls=want_calls), calls=want_calls)
    text, result = run_text(
        Pipeline(build(program, calls=got_calls), client=local_client, partition_size=partition_size)
    )
    assert (text, dict(result)) == want
    if not has_closes(program):  # (a cluster may pull the source ahead of a close: calls discarded)
        assert sorted(N.read_calls(got_calls)) == sorted(N.read_calls(want_calls))  # each call once


@pytest.mark.cluster
@random_in_background
@pytest.mark.timeout(300, method="thread")
@settings(
    max_examples=2, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(programs(keyed=True))
def test_random_keyed_programs_on_an_external_cluster(external_cluster, program):
    want = reference_run(build(program))
    text, result = run_text(Pipeline(build(program), client=external_cluster, partition_size=5))
    assert (text, dict(result)) == want


@pytest.mark.cluster
@pytest.mark.timeout(120)
def test_keyed_state_and_errors_on_a_cluster(local_client):
    node = N.KeyedRunning("k", stateless=False, keys=64, loud=True)
    g = N.Gen("gen", size=300) | node | N.Echo("out")
    want = reference_run(g)
    text, result = run_text(Pipeline(g, client=local_client, partition_size=16))
    assert (text, dict(result)) == want
    assert per_key(result, "k") == reference_per_key("k")
    assert (node.count, node.total) == (0, 0)
    bad = N.Gen("gen", size=6) | BadKey("bad", what="unpicklable", stateless=False)
    with pytest.raises(NodeError, match=r"BadKeyError: key\(\) returned .*lock.* cannot be pickled"):
        run_text(Pipeline(bad, client=local_client, partition_size=2))


def test_final_instances_pickle():
    _, result = run_text(Pipeline(graph(size=9), n_threads=1, quiet=True))
    back = pickle.loads(pickle.dumps(result.keyed("k")))
    assert {k: n.total for k, n in back.items()} == {0: 9, 1: 12, 2: 15}


# -- recovery, checkpoints, streams --------------------------------------------------------


@pytest.mark.cluster
@random_in_background
@pytest.mark.timeout(300, method="thread")  # hypothesis would swallow a signal
@settings(
    max_examples=1,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
@given(programs(keyed=True), st.floats(0.0, 1.5), st.integers(0, 2**16))
def test_random_keyed_programs_survive_a_holder_kill(program, point, seed):
    from hypothesis import assume

    from tests.conftest import two_worker_client
    from tests.test_recovery import has_sequential, trial

    assume(has_sequential(program))
    with two_worker_client() as client:
        trial(client, program, point, seed, (150, None), partition_size=20)


@pytest.mark.cluster
@pytest.mark.timeout(180)
def test_a_killed_keyed_holder_is_restored_exactly():
    import random

    from tests.conftest import two_worker_client
    from tests.test_recovery import SIZE, Killer, run_all

    def g():
        return N.Gen("gen", size=SIZE, pause=0.002) | N.KeyedRunning("k", stateless=False, keys=16, loud=True)

    want = run_all(g(), n_threads=1)
    with two_worker_client() as client, Killer(client, SIZE // 3, random.Random(1), node="k") as killer:
        got = run_all(g(), killer.callback, client=client, snapshot_every=(100, None), partition_size=20)
    assert killer.kills
    got[2]["gen"]["pause"] = want[2]["gen"]["pause"]
    assert got == want


@pytest.mark.cluster
@pytest.mark.timeout(180)
def test_a_checkpoint_resumes_at_another_worker_count(tmp_path, local_client):
    path = tmp_path / "keyed.ckpt"

    def g():
        return N.Gen("gen", size=200) | N.KeyedRunning("k", stateless=False, keys=7, batch_size=3) | N.Echo("out")

    _, want = reference_run(g())
    seen = []
    with contextlib.redirect_stdout(io.StringIO()):
        for _, item in Pipeline(g(), n_threads=1, partition_size=10).stream(checkpoint=path):
            seen.append(item)
            if len(seen) == 25:
                break
        rest = [item for _, item in Pipeline(g(), client=local_client, partition_size=10).stream(checkpoint=path)]
    # The resume goes on from the per-key states of the cut, at two workers (the partition
    # the consumer left in may repeat at the seam, as the checkpoint's docs say).
    assert seen == want["out"][:25]
    assert rest == want["out"][len(want["out"]) - len(rest) :]
    assert len(seen) + len(rest) >= len(want["out"])


@pytest.mark.cluster
@pytest.mark.timeout(120)
def test_keyed_nodes_stream_submit_and_to_dask(local_client):
    import dask

    def g():
        return N.Gen("gen", size=50) | N.KeyedRunning("k", stateless=False, keys=5, batch_size=2)

    _, want = reference_run(g())
    p = Pipeline(g(), client=local_client, partition_size=4, quiet=True)
    assert [item for _, item in p.stream()] == want["k"]
    assert p.submit().result()["k"] == want["k"]
    (result,) = dask.compute(Pipeline(g(), partition_size=4).to_dask(), scheduler="sync")
    assert result["k"] == want["k"]


def test_the_plan_says_a_node_is_keyed():
    p = Pipeline(N.Gen("gen", size=3) | N.KeyedRunning("sessions", stateless=False), n_threads=2)
    text, page = str(p), p._repr_html_()
    assert "sessions (KeyedRunning, keyed)" in text
    assert "sessions: runs on one holder per worker, its keys dealt out among them, keyed by key(), 128 groups" in text
    assert "keyed by key(), 128 groups" in page


class Loaded(Node):
    """Keyed; loads its 'model' once per process, and skips items that fail (``on_error="collect"``)."""

    def setup(self, log):
        self.log = log
        self.seen = 0

    def setup_worker(self):
        with open(self.log, "a") as f:
            f.write(f"{os.getpid()}\n")
        self.model = object()

    def key(self, x):
        return x % 5

    def run(self, x):
        assert self.model is not None
        if x == 7:
            raise ValueError("seven")
        self.seen += 1
        self.emit((x % 5, self.seen))


@pytest.mark.parametrize("where", ["here", pytest.param("cluster", marks=pytest.mark.cluster)])
def test_keyed_instances_share_the_process_set_up_and_keep_on_error(where, tmp_path, request):
    log = tmp_path / "setups"
    options = {"n_threads": 1} if where == "here" else {"client": request.getfixturevalue("local_client")}
    g = N.Gen("gen", size=20) | Loaded("loaded", stateless=False, on_error="collect", log=str(log))
    with contextlib.redirect_stderr(io.StringIO()):
        result = Pipeline(g, quiet=True, partition_size=4, **options).run()
    want = [(x % 5, x // 5 + 1 - (x % 5 == 2 and x > 7)) for x in range(20) if x != 7]
    assert result["loaded"] == want
    assert [e.item for e in result.errors] == [7]
    pids = log.read_text().split()
    assert len(pids) == len(set(pids)) <= 2  # once per process, not per key
    assert all(not hasattr(n, "model") for n in result.keyed("loaded").values())  # the process's, not state


class Fragile(Node):
    """Keyed by ``x % keys``; its instance raises at item ``at`` (``where="run"``), or ``key()`` does (``"key"``)."""

    def setup(self, at, where="run", keys=3, loud=True):
        self.at, self.where, self.keys, self.loud = at, where, keys, loud
        self.total = 0

    def key(self, x):
        if self.where == "key" and x == self.at:
            raise KeyError(f"no key for {x}")
        return x % self.keys

    def run(self, x):
        if self.loud:
            print(f"call {x}")
        if self.where == "run" and x == self.at:
            raise ValueError(f"broke at {x}")
        self.total += x
        self.emit((x % self.keys, self.total))


@pytest.mark.parametrize("where", ["run", "key"])
@pytest.mark.parametrize("mode", ["here", "tasks", pytest.param("cluster", marks=pytest.mark.cluster)])
def test_output_before_a_keyed_nodes_error_is_delivered(where, mode, request):
    from tests.reference import reference_until_error

    def g():
        return N.Gen("gen", size=60) | Fragile("fragile", stateless=False, at=37, where=where) | N.Echo("out")

    want_text, want, error = reference_until_error(g())
    assert error is not None and len(want["out"]) == 37
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), pytest.raises(NodeError, match="37") as caught:
        if mode == "here":
            Pipeline(g(), n_threads=1).run()
        elif mode == "tasks":
            p = Pipeline(g())
            p.partition_size = 8
            p._run_on(SyncTaskBackend())
        else:
            Pipeline(g(), client=request.getfixturevalue("local_client"), partition_size=8).run()
    assert caught.value.node == "fragile"
    assert buf.getvalue() == want_text
