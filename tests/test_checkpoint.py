"""``run(checkpoint=PATH)``: a run that stops resumes where it stopped (issue 12, items 3 and 4).

Resumed output, concatenated with what the stopped run printed, is the
undisturbed run's: nothing missing, at most one partition repeated at the
seam. The fast tests stop a run with a node error on the synchronous task
backend (no cluster); the slow ones SIGKILL or Ctrl-C a caller running a
local cluster in a subprocess, and resume in a new process.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import uuid

import cloudpickle
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pypiper_dask import CheckpointError, Node, OptionError, Pipeline
from pypiper_dask.runtime import SyncTaskBackend
from pypiper_dask.runtime.backends import InProcessBackend
from pypiper_dask.runtime.checkpoint import VERSION, Checkpoint, Completed, Cut, Loaded, Position
from tests import nodes as N
from tests.conftest import ROOT
from tests.strategies import build, programs


def read_cut(blob: bytes) -> Cut | Completed:
    """The record a checkpoint file holds (an outer pickle of plain values around the body)."""
    return cloudpickle.loads(pickle.loads(blob)["body"])


class FailAt(N.Map):
    """``Map``, raising on the item that ``$CHECKPOINT_FAIL_AT`` names (read where it runs)."""

    def run(self, data):
        if os.environ.get("CHECKPOINT_FAIL_AT") == str(data):
            raise RuntimeError("stopped here")
        super().run(data)


def pipeline(size=300, op="inc", partition_size=10, every=(30, None), node=FailAt):
    return Pipeline(
        N.Gen("gen", size=size) | node("map", op=op) | N.Running("run"),
        partition_size=partition_size,
        snapshot_every=every,
    )


def run_captured(p, fail_at=None, **kw):
    out = io.StringIO()
    if fail_at is not None:
        os.environ["CHECKPOINT_FAIL_AT"] = str(fail_at)
    try:
        with contextlib.redirect_stdout(out):
            result = p._run_on(SyncTaskBackend(), **kw)
    except Exception as exc:
        return out.getvalue().splitlines(), exc
    finally:
        os.environ.pop("CHECKPOINT_FAIL_AT", None)
    return out.getvalue().splitlines(), result


def check_seam(first: list[str], second: list[str], reference: list[str], partition: int) -> int:
    """``first + second`` is ``reference`` with at most ``partition`` lines repeated at the seam; the overlap."""
    assert first == reference[: len(first)]
    start = len(reference) - len(second)
    assert second == reference[start:], "the resumed run's output is not the rest of the reference"
    overlap = len(first) - start
    assert 0 <= overlap <= partition, f"{overlap} lines repeated (nothing may be lost; at most one partition)"
    return overlap


REFERENCE = [str((i + 1, sum(range(1, i + 2)))) for i in range(300)]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("every", [(30, None), (70, None)])
@pytest.mark.parametrize("where", ["local", "memory"])
def test_resume_prints_the_rest_and_returns_the_full_result(tmp_path, where, every):
    path = str(tmp_path / "ck") if where == "local" else f"memory://checkpoints/{uuid.uuid4().hex}/ck"
    first, exc = run_captured(pipeline(every=every), fail_at=157, checkpoint=path)
    assert isinstance(exc, Exception) and "stopped here" in str(exc)
    assert 0 < len(first) < 300
    # A different partition size (and cluster) may resume: it is not part of the identity.
    second, result = run_captured(pipeline(every=every, partition_size=7), checkpoint=path)
    check_seam(first, second, REFERENCE, 7)
    assert [str(x) for x in result["run"]] == REFERENCE  # collected: the whole run's items
    assert result.counts == {"run": 300}
    # Complete: nothing printed, the stored result returned.
    third, again = run_captured(pipeline(every=every), checkpoint=path)
    assert third == [] and list(again["run"]) == list(result["run"])


@pytest.mark.timeout(60)
def test_a_pipeline_without_stateful_nodes_resumes_from_its_cuts(tmp_path):
    def make(partition_size=10):
        return Pipeline(
            N.Gen("gen", size=200) | FailAt("map", op="inc"), partition_size=partition_size, snapshot_every=(40, None)
        )

    reference, _ = run_captured(make())
    path = str(tmp_path / "ck")
    first, exc = run_captured(make(), fail_at=123, checkpoint=path)
    assert isinstance(exc, Exception)
    assert read_cut((tmp_path / "ck").read_bytes()).items >= 80
    second, result = run_captured(make(9), checkpoint=path)
    check_seam(first, second, reference, 9)
    assert [str(x) for x in result["map"]] == reference


@pytest.mark.timeout(60)
def test_a_complete_checkpoint_logs_that_overwrite_starts_over(tmp_path, caplog):
    path = str(tmp_path / "ck")
    lines, _ = run_captured(pipeline(size=40), checkpoint=path)
    assert len(lines) == 40
    with caplog.at_level(logging.INFO, logger="pypiper_dask"):
        again, result = run_captured(pipeline(size=40), checkpoint=path)
    assert again == [] and result.counts == {"run": 40}
    assert "overwrite=True" in caplog.text and "complete" in caplog.text
    over, _ = run_captured(pipeline(size=40), checkpoint=path, overwrite=True)
    assert over == lines


@pytest.mark.timeout(60)
def test_local_checkpoint_files_are_private_and_leave_no_temporary_files(tmp_path):
    path = tmp_path / "ck"
    run_captured(pipeline(size=40), checkpoint=str(path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck", "ck.delivered"]
    for p in tmp_path.iterdir():
        assert p.stat().st_mode & 0o777 == 0o600


@pytest.mark.timeout(60)
def test_a_different_pipeline_is_refused_naming_the_difference(tmp_path):
    path = str(tmp_path / "ck")
    run_captured(pipeline(), fail_at=100, checkpoint=path)
    _, exc = run_captured(pipeline(op="sq"), checkpoint=path)
    assert isinstance(exc, CheckpointError), exc
    assert "'map'" in str(exc) and "arguments" in str(exc) and "overwrite=True" in str(exc)
    _, exc = run_captured(pipeline(node=N.Map), checkpoint=path)
    assert isinstance(exc, CheckpointError) and "class" in str(exc)
    _, exc = run_captured(pipeline(size=301), checkpoint=path)
    assert isinstance(exc, CheckpointError) and "'gen'" in str(exc)
    # overwrite=True starts over with the new pipeline.
    lines, result = run_captured(pipeline(op="sq"), checkpoint=path, overwrite=True)
    assert result.counts == {"run": 300} and len(lines) == 300


class Weights:
    """Default repr (``<Weights object at 0x...>``): a repr tells no two apart."""

    def __init__(self, values):
        self.values = values


class Weighted(N.Map):
    def setup(self, weights, op="inc"):
        self.weights = weights
        self.op = op


def weighted(weights):
    return Pipeline(N.Gen("gen", size=40) | Weighted("map", weights=weights) | N.Running("run"), partition_size=10)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("first", "other"),
    [
        (np.zeros(2000), np.concatenate([np.zeros(1000), [1.0], np.zeros(999)])),  # the same repr, elided
        (Weights([1, 2, 3]), Weights([1, 2, 4])),
        ({"a": Weights(1)}, {"a": Weights(2)}),
    ],
    ids=["numpy", "default-repr", "nested"],
)
def test_arguments_with_the_same_repr_but_other_content_are_another_pipeline(tmp_path, first, other):
    assert repr(first) == repr(other) or "object at" in repr(first)
    path = str(tmp_path / "ck")
    run_captured(weighted(first), checkpoint=path)
    _, again = run_captured(weighted(first), checkpoint=path)  # the same content: its stored result
    assert again.counts == {"run": 40}
    _, exc = run_captured(weighted(other), checkpoint=path)
    assert isinstance(exc, CheckpointError), exc
    assert "node 'map'" in str(exc) and "'weights'" in str(exc) and "overwrite=True" in str(exc)


TOKEN = """
import sys
sys.path.insert(0, {root!r})
import numpy as np
from pypiper_dask.runtime.checkpoint import content_token

class Weights:
    def __init__(self, values):
        self.values = values

def double(x):
    return 2 * x

value = (Weights({{"b": {{3, 1}}, "a": np.arange(5)}}), frozenset({{"x", "y"}}), double, Weights)
print(content_token(value))
"""


@pytest.mark.timeout(60)
def test_a_content_token_is_the_same_in_another_process(tmp_path):
    script = tmp_path / "content_token_script.py"
    script.write_text(TOKEN.format(root=str(ROOT)))
    tokens = {
        subprocess.run(
            [sys.executable, str(script)],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        ).stdout
        for seed in ("1", "2")
    }
    assert len(tokens) == 1, tokens


def test_a_file_that_is_not_a_checkpoint_is_refused(tmp_path):
    (tmp_path / "ck").write_text("not a checkpoint")
    _, exc = run_captured(pipeline(size=10), checkpoint=str(tmp_path / "ck"))
    assert isinstance(exc, CheckpointError) and "not a pypiper_dask checkpoint" in str(exc)


@pytest.mark.timeout(60)
def test_a_truncated_checkpoint_is_refused_saying_overwrite_starts_over(tmp_path):
    path = tmp_path / "ck"
    run_captured(pipeline(size=40), fail_at=25, checkpoint=str(path))
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])  # a copy cut short, say
    _, exc = run_captured(pipeline(size=40), checkpoint=str(path))
    assert isinstance(exc, CheckpointError) and str(path) in str(exc) and "overwrite=True" in str(exc), exc
    lines, result = run_captured(pipeline(size=40), checkpoint=str(path), overwrite=True)
    assert result.counts == {"run": 40} and len(lines) == 40


IDENT = {"": {"root": "gen", "order": ["gen"]}}  # an identity, as identity() makes them


def a_cut(run: str = "ab12") -> Cut:
    return Cut(
        run=run,
        point=2,
        items=30,
        source=b"the source",
        emitted=31,
        states={1: b"a state", 2: None},
        collect=True,
        values={"run": [1, 2, 3]},
        counts={"run": 3},
        errors=[],
    )


def test_a_cut_and_its_position_round_trip_through_the_files(tmp_path):
    store = Checkpoint(str(tmp_path / "ck"), IDENT)
    assert store.load() is None
    cut = a_cut()
    store.write_cut(cut)
    outer = pickle.loads((tmp_path / "ck").read_bytes())  # plain values around the body's bytes
    assert outer["identity"] == IDENT and isinstance(outer["body"], bytes)
    assert store.load() == Loaded(cut, delivered=30)
    store.write_delivered(Position("ab12", 45))
    assert json.loads((tmp_path / "ck.delivered").read_text()) == {"run": "ab12", "items": 45}
    assert store.load() == Loaded(cut, delivered=45)
    store.write_delivered(Position("another run", 90))  # not this cut's run: it does not count
    assert store.load() == Loaded(cut, delivered=30)
    (tmp_path / "ck.delivered").write_text("{damaged")
    assert store.load() == Loaded(cut, delivered=30)
    done = Completed("ab12", collect=True, result={"run": [1, 2, 3]})
    store.write_cut(done)
    assert store.load() == Loaded(done, delivered=-1)


def test_a_checkpoint_of_version_2_is_refused_before_its_body_is_read(tmp_path):
    body = {"run": "ab12", "complete": False, "point": 2, "items": 30}  # version 2's body: a dict
    path = tmp_path / "ck"
    path.write_bytes(pickle.dumps({"version": 2, "identity": IDENT, "body": cloudpickle.dumps(body)}))
    with pytest.raises(CheckpointError, match="not a pypiper_dask checkpoint this version can read"):
        Checkpoint(str(path), IDENT).load()
    # This version's wrapper around a body that is no record: refused the same way.
    path.write_bytes(pickle.dumps({"version": VERSION, "identity": IDENT, "body": cloudpickle.dumps(body)}))
    with pytest.raises(CheckpointError, match="not a pypiper_dask checkpoint this version can read"):
        Checkpoint(str(path), IDENT).load()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("where", ["under a file", "read-only folder"])
def test_an_unwritable_checkpoint_path_is_a_checkpoint_error_naming_it(tmp_path, where):
    if where == "under a file":
        (tmp_path / "file").write_text("")
        path = tmp_path / "file" / "ck"
    else:
        if os.geteuid() == 0:
            pytest.skip("root writes to a read-only folder")
        (tmp_path / "ro").mkdir(mode=0o500)
        path = tmp_path / "ro" / "ck"
    lines, exc = run_captured(pipeline(size=40), checkpoint=str(path))
    assert isinstance(exc, CheckpointError), exc
    assert f"Cannot write the checkpoint at {path}" in str(exc) and ".tmp-" not in str(exc), exc
    assert lines == []  # said before anything ran


@pytest.mark.timeout(120)
def test_n_threads_1_checkpoints_and_resumes_there_or_on_a_cluster(tmp_path, local_client):
    def public(p, fail_at=None, **kw):
        out = io.StringIO()
        os.environ.pop("CHECKPOINT_FAIL_AT", None)
        if fail_at is not None:
            os.environ["CHECKPOINT_FAIL_AT"] = str(fail_at)
        try:
            with contextlib.redirect_stdout(out):
                result = p.run(**kw)
        except Exception as exc:
            return out.getvalue().splitlines(), exc
        finally:
            os.environ.pop("CHECKPOINT_FAIL_AT", None)
        return out.getvalue().splitlines(), result

    for i, where in enumerate([{"n_threads": 1}, {"client": local_client}]):
        path = str(tmp_path / f"ck{i}")
        p = Pipeline(
            N.Gen("gen", size=300) | FailAt("map", op="inc") | N.Running("run"),
            n_threads=1,
            partition_size=10,
            snapshot_every=(30, None),
        )
        first, exc = public(p, fail_at=157, checkpoint=path)
        assert isinstance(exc, Exception) and "stopped here" in str(exc)
        assert 0 < len(first) < 300
        graph = N.Gen("gen", size=300) | FailAt("map", op="inc") | N.Running("run")
        second, result = public(Pipeline(graph, partition_size=10, **where), checkpoint=path)
        check_seam(first, second, REFERENCE, 10)
        assert [str(x) for x in result["run"]] == REFERENCE
        assert graph.root.pos == 300 and list(graph)[2].total == sum(range(1, 301))  # final state given back


def test_a_backend_running_the_callers_nodes_cannot_be_checkpointed(tmp_path):
    p = Pipeline(N.Gen("gen", size=3) | N.Map("map"), n_threads=1)
    with pytest.raises(OptionError, match="cannot cut them"):
        p._run_on(InProcessBackend(), checkpoint=str(tmp_path / "ck"))
    assert not (tmp_path / "ck").exists()


class Lines(Node):
    """The README's file-reading source: a checkpoint keeps its place in the file, not its handle."""

    def setup(self, path):
        self.file = open(path)  # noqa: SIM115

    def run(self, data):
        line = self.file.readline()
        if line:
            self.emit(line.rstrip("\n"))
        else:
            self.close()

    def __getstate__(self):
        state = dict(self.__dict__)
        state["offset"] = self.file.tell()
        del state["file"]
        return state

    def __setstate__(self, state):
        offset = state.pop("offset")
        self.__dict__.update(state)
        self.file = open(self.path)  # noqa: SIM115
        self.file.seek(offset)


@pytest.mark.timeout(60)
def test_a_source_holding_a_file_resumes_at_its_place(tmp_path):
    data = tmp_path / "numbers.txt"
    data.write_text("".join(f"{i}\n" for i in range(300)))
    path = str(tmp_path / "ck")

    def make():
        return Pipeline(
            Lines("lines", path=str(data)) | FailAt("map", op="inc") | N.Running("run"),
            partition_size=10,
            snapshot_every=(30, None),
        )

    reference, _ = run_captured(make())
    first, exc = run_captured(make(), fail_at=211, checkpoint=path)
    assert isinstance(exc, Exception) and 0 < len(first) < 300
    assert read_cut((tmp_path / "ck").read_bytes()).items >= 180  # a cut well past the start
    second, result = run_captured(make(), checkpoint=path)
    check_seam(first, second, reference, 10)
    assert [str(x) for x in result["run"]] == reference
    assert isinstance(read_cut((tmp_path / "ck").read_bytes()), Completed)


@pytest.mark.cluster
@pytest.mark.timeout(90)
def test_stream_and_submit_resume_from_a_checkpoint(local_client, tmp_path):
    def make(**kw):
        return Pipeline(
            N.Gen("gen", size=400) | N.Map("map", op="inc") | N.Running("run"),
            client=local_client,
            partition_size=20,
            snapshot_every=(60, None),
            **kw,
        )

    reference = [item for _, item in make().stream()]
    path = str(tmp_path / "stream")
    first = []
    for _, item in make().stream(checkpoint=path):
        first.append(item)
        if len(first) == 250:
            break  # the consumer stops: the run is cancelled
    assert 120 <= read_cut((tmp_path / "stream").read_bytes()).items <= 250
    second = [item for _, item in make().stream(checkpoint=path)]
    overlap = check_seam(first, second, reference, 20)  # "delivered" means yielded
    print(f"stream: stopped after 250, {overlap} repeated")
    assert list(make().stream(checkpoint=path)) == []  # complete: nothing yielded

    path = str(tmp_path / "submit")
    result = make(quiet=True).submit(checkpoint=path).result(timeout=60)
    assert list(result["run"]) == reference
    again = make(quiet=True).submit(checkpoint=path).result(timeout=10)  # complete: the stored result
    assert list(again["run"]) == reference


# -- the caller killed: SIGKILL and Ctrl-C, resumed in a new process --------------------------

SCRIPT = """
import sys
import time

from pypiper_dask import Node, Pipeline


class Gen(Node):
    def setup(self, size):
        self.pos = 0

    def run(self, data):
        if self.pos >= self.size:
            self.close()
            return
        time.sleep(0.002)
        self.emit(self.pos)
        self.pos += 1


class Total(Node):
    def setup(self):
        self.total = 0
        self.stateless = False

    def run(self, data):
        self.total += data
        self.emit(f"{data} {self.total}")


if __name__ == "__main__":
    pipeline = Pipeline(
        Gen("gen", size=int(sys.argv[2])) | Total("total"), n_threads=2, partition_size=25, snapshot_every=(100, None)
    )
    pipeline.run(checkpoint=sys.argv[1], collect=False)
"""

SIZE = 1500


def start(script, path):
    return subprocess.Popen(
        [sys.executable, str(script), str(path), str(SIZE)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        bufsize=0,  # read below as raw bytes: communicate() reads the pipe, not a wrapper's buffer
        cwd=script.parent,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        start_new_session=True,  # its cluster's processes too: all of them ended below
    )


@pytest.mark.cluster
@pytest.mark.timeout(120)
@pytest.mark.parametrize("how", ["SIGKILL", "Ctrl-C"])
def test_a_killed_caller_resumes_in_a_new_process(tmp_path, how):
    script = tmp_path / "checkpointed.py"
    script.write_text(textwrap.dedent(SCRIPT))
    path = tmp_path / "ck"
    reference = [f"{i} {sum(range(i + 1))}" for i in range(SIZE)]
    proc = start(script, path)
    try:
        assert proc.stdout is not None
        # Raw reads: a text wrapper's readline() reads ahead, and communicate() below, reading
        # the pipe itself, would never see those lines (they looked lost at the seam).
        first = b""
        while first.count(b"\n") < 300:
            chunk = os.read(proc.stdout.fileno(), 1 << 16)
            assert chunk, f"the run ended early: {proc.stderr.read() if proc.stderr else ''}"
            first += chunk
        if how == "SIGKILL":
            os.kill(proc.pid, signal.SIGKILL)  # the caller only; its workers are ended below
        else:
            os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        rest, err_bytes = proc.communicate(timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    err = err_bytes.decode()
    if how == "Ctrl-C":
        assert err.rstrip().endswith("KeyboardInterrupt"), err
    text = (first + rest).decode()
    if not text.endswith("\n"):  # killed in the middle of a write: that line did not go out
        text = text.rsplit("\n", 1)[0] + "\n"
    stopped = text.splitlines()
    assert len(stopped) < SIZE, "the run ended before it was stopped: make it slower"
    cut = read_cut(path.read_bytes())
    assert isinstance(cut, Cut) and 0 < cut.items <= len(stopped)  # resumed from a cut, not the start
    resumed = subprocess.run(
        [sys.executable, str(script), str(path), str(SIZE)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=90,
        start_new_session=True,
    )
    assert resumed.returncode == 0, resumed.stderr
    overlap = check_seam(stopped, resumed.stdout.splitlines(), reference, 25)
    print(f"{how}: stopped after {len(stopped)} lines, cut at {cut.items}, {overlap} repeated")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("leave", ["break", "raise"])
def test_a_stream_left_mid_partition_resumes_with_nothing_lost(tmp_path, n_threads, leave):
    """Issue 19 item 1: a cut or position written before the consumer took a partition's items skipped them."""

    def make(n=n_threads):
        graph = N.Gen("gen", size=200) | N.Map("map", op="inc") | N.Running("run")
        return Pipeline(graph, n_threads=n, snapshot_every=(1, None))  # a cut after every partition

    reference = [item for _, item in make(1).stream()]
    path = str(tmp_path / "ck")
    first = []
    with contextlib.suppress(ZeroDivisionError):
        for _, item in make().stream(checkpoint=path):
            first.append(item)
            if len(first) == 10:
                if leave == "break":
                    break
                raise ZeroDivisionError  # an exception in the loop body
    second = [item for _, item in make().stream(checkpoint=path)]
    check_seam(first, second, reference, 40)


# -- random programs: a consumer that leaves a checkpointed stream at a drawn point (issue 19 item 1) --


def check_stream_left_and_resumed(program, leave_at: int, make, folder, each=None) -> None:
    """Leave ``make(graph).stream(checkpoint=...)`` after ``leave_at`` items, resume: nothing lost.

    What the resumed stream yields is the rest of the sequential order, and it
    starts at or before where the consumer left (what repeats is the seam's
    partition: its items were taken, but the consumer left before its end).
    ``each(n)``, if given, is called with the number of items taken before each one.
    """
    reference = list(Pipeline(build(program), n_threads=1).stream())
    path = str(folder / uuid.uuid4().hex)
    first: list = []
    with contextlib.redirect_stdout(io.StringIO()):
        for pair in make(build(program)).stream(checkpoint=path):
            if each is not None:
                each(len(first))
            if len(first) == leave_at:
                break
            first.append(pair)
        second = list(make(build(program)).stream(checkpoint=path))
    assert first == reference[: len(first)]
    start = len(reference) - len(second)
    assert second == reference[start:], "the resumed stream is not the rest of the sequential order"
    assert start <= len(first), f"items {start}..{len(first) - 1} were lost"


_random_in_background = pytest.mark.filterwarnings("ignore:Do not use the `random` module inside strategies")


@pytest.mark.timeout(300, method="thread")  # hypothesis would swallow a signal
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(programs(reuse=True, names=True), st.integers(0, 150), st.sampled_from([1, 3, 17]))
def test_random_streams_left_early_resume_with_nothing_lost(tmp_path_factory, program, leave_at, partition_size):
    folder = tmp_path_factory.mktemp("ck")
    check_stream_left_and_resumed(
        program, leave_at, lambda g: Pipeline(g, n_threads=1, partition_size=partition_size), folder
    )


@_random_in_background
@pytest.mark.timeout(300, method="thread")  # hypothesis would swallow a signal
@settings(
    max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(programs(reuse=True, names=True), st.integers(0, 150), st.sampled_from([2, 7]))
def test_random_streams_left_early_resume_with_nothing_lost_on_a_local_cluster(
    tmp_path_factory, local_client, program, leave_at, partition_size
):
    folder = tmp_path_factory.mktemp("ck")
    check_stream_left_and_resumed(
        program, leave_at, lambda g: Pipeline(g, client=local_client, partition_size=partition_size), folder
    )


@_random_in_background
@pytest.mark.timeout(300, method="thread")  # hypothesis would swallow a signal
@settings(
    max_examples=3, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(programs(reuse=True, names=True), st.integers(0, 150))
def test_random_streams_left_early_resume_with_nothing_lost_on_an_external_cluster(
    tmp_path_factory, external_cluster, program, leave_at
):
    folder = tmp_path_factory.mktemp("ck")
    check_stream_left_and_resumed(
        program, leave_at, lambda g: Pipeline(g, client=external_cluster, partition_size=5), folder
    )
