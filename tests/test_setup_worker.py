"""Per-process set-up: ``setup_worker()`` / ``teardown_worker()`` (issue 22, item 1)."""

from __future__ import annotations

import os
import pickle
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest

from pypiper_dask import Node, NodeError, Pipeline
from pypiper_dask.model.node import PROCESS, process_attributes
from pypiper_dask.worker import SeqHolder, SeqSpec
from pypiper_dask.worker.setups import set_up, set_up_count, tear_down
from pypiper_dask.worker.snapshots import load_snapshot, take_snapshot
from tests import nodes as N


class Unpicklable:
    """A stand-in for a model or a connection: pickling it fails loudly."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls = 0

    def __reduce__(self):
        raise TypeError("the model must never be pickled")


class Model(Node):
    """Loads its 'model' once per process, and notes each set-up and tear-down as a file in ``folder``."""

    def setup(self, folder: str) -> None:
        self.seen = 0

    def setup_worker(self) -> None:
        self.model = Unpicklable()
        self.pid = os.getpid()
        Path(self.folder, f"setup-{os.getpid()}-{uuid.uuid4().hex}").touch()

    def teardown_worker(self) -> None:
        Path(self.folder, f"teardown-{os.getpid()}-{uuid.uuid4().hex}").touch()

    def run(self, data: Any) -> None:
        self.model.calls += 1  # the process's object changes: no hidden state of the node
        self.emit((data, os.getpid()))


class StatefulModel(Model):
    def setup(self, folder: str) -> None:
        self.seen = 0
        self.stateless = False

    def run(self, data: Any) -> None:
        self.model.calls += 1
        self.seen += 1
        self.emit((data, os.getpid()))


class BrokenSetup(Node):
    def setup_worker(self) -> None:
        raise RuntimeError("no model file")

    def run(self, data: Any) -> None:
        self.emit(data)


def files(folder: Path, kind: str) -> list[str]:
    """The pids of the ``kind`` ("setup"/"teardown") notes in ``folder``."""
    return sorted(p.name.split("-")[1] for p in folder.iterdir() if p.name.startswith(kind + "-"))


def test_in_the_caller_set_up_once_before_the_first_run_and_torn_down_at_the_end(tmp_path, capfd):
    node = Model("model", folder=str(tmp_path))
    result = Pipeline(N.Gen("gen", size=50) | node, n_threads=1, quiet=True).run()
    pid = str(os.getpid())
    assert [p for _, p in result["model"]] == [int(pid)] * 50
    assert files(tmp_path, "setup") == [pid] and files(tmp_path, "teardown") == [pid]
    # The caller's object: what setup_worker() set is gone again; its own state is as it was.
    assert not hasattr(node, "model") and PROCESS not in vars(node) and node.seen == 0
    assert "keeps changing" not in capfd.readouterr().err  # the model's changes are not hidden state


def test_a_stateful_node_in_the_caller_keeps_its_state_without_the_model(tmp_path):
    node = StatefulModel("model", folder=str(tmp_path))
    Pipeline(N.Gen("gen", size=10) | node, n_threads=1, quiet=True).run()
    assert node.seen == 10 and not hasattr(node, "model")


def test_what_setup_worker_set_is_never_pickled_nor_snapshotted(tmp_path):
    node = StatefulModel("model", folder=str(tmp_path))
    scope = uuid.uuid4().hex
    set_up(node, scope)
    assert process_attributes(node) == {"model", "pid"}
    copy = pickle.loads(pickle.dumps(node))  # the model would raise
    assert not hasattr(copy, "model") and copy.seen == 0
    restored, *_ = load_snapshot(take_snapshot("model", node, [], False, False))
    assert not hasattr(restored, "model")
    # A copy set up in the same process and scope shares the set-up: setup_worker() ran once.
    set_up(restored, scope)
    assert restored.model is node.model and len(files(tmp_path, "setup")) == 1
    assert set_up_count(scope) == 1
    assert tear_down(scope) == 1 and len(files(tmp_path, "teardown")) == 1


def test_a_holder_sets_up_before_its_first_step_and_again_after_a_restore(tmp_path):
    from pypiper_dask.model.pickling import dumps_node

    node = StatefulModel("model", folder=str(tmp_path))
    scope = uuid.uuid4().hex
    holder = SeqHolder(SeqSpec("model", dumps_node(node), 1, scope))
    assert files(tmp_path, "setup") == []  # not at construction: before its first step
    holder.process([1, 2])
    assert len(files(tmp_path, "setup")) == 1 and holder.node.model.calls == 2
    snap = holder.snapshot()
    assert isinstance(snap, bytes)  # the unpicklable model is left out
    tear_down(scope)  # as if the holder's process were gone
    again = SeqHolder(SeqSpec("model", dumps_node(node), 1, scope), restore=snap, start=1)
    again.process([3])
    assert len(files(tmp_path, "setup")) == 2 and again.node.seen == 3 and again.node.model.calls == 1
    tear_down(scope)


def test_a_checkpoint_leaves_the_model_out(tmp_path):
    folder = tmp_path / "notes"
    folder.mkdir()
    node = StatefulModel("model", folder=str(folder))
    result = Pipeline(N.Gen("gen", size=20) | node, n_threads=1, quiet=True, partition_size=5).run(
        checkpoint=str(tmp_path / "ck")
    )
    assert len(result["model"]) == 20 and node.seen == 20 and not hasattr(node, "model")
    assert files(folder, "setup") == files(folder, "teardown") == [str(os.getpid())]


def test_a_failing_setup_worker_names_the_node():
    with pytest.raises(NodeError, match="broken") as info:
        Pipeline(N.Gen("gen", size=3) | BrokenSetup("broken"), n_threads=1, quiet=True).run()
    assert "setup_worker()" in str(info.value) and "no model file" in str(info.value)


@pytest.mark.cluster
@pytest.mark.timeout(120)
def test_on_a_cluster_set_up_once_per_worker_process_not_per_partition(local_client, tmp_path, capfd):
    graph = N.Gen("gen", size=400) | Model("model", folder=str(tmp_path)) | N.Map("m")
    result = Pipeline(graph, client=local_client, quiet=True, partition_size=10).run()
    assert len(result["m"]) == 400
    pids = files(tmp_path, "setup")
    # Once per worker process (each starts its set-up as the run starts), not once per partition (40).
    assert len(pids) == len(set(pids)) == 2
    assert files(tmp_path, "teardown") == pids  # torn down at the run's end (client.run on the workers)
    assert "keeps changing" not in capfd.readouterr().err


@pytest.mark.cluster
@pytest.mark.timeout(120)
def test_on_a_cluster_a_stateful_node_is_set_up_on_its_holder(local_client, tmp_path):
    node = StatefulModel("model", folder=str(tmp_path))
    result = Pipeline(
        N.Gen("gen", size=100) | node | N.Map("m"), client=local_client, quiet=True, partition_size=10
    ).run()
    assert len(result["m"]) == 100
    assert len(files(tmp_path, "setup")) == 1 and files(tmp_path, "teardown") == files(tmp_path, "setup")
    assert node.seen == 100 and not hasattr(node, "model")  # its final state came back, the model did not


@pytest.mark.cluster
@pytest.mark.timeout(180)
def test_a_kept_cluster_sets_up_once_across_runs_and_tears_down_at_close(tmp_path):
    with Pipeline(
        N.Gen("gen", size=200) | Model("model", folder=str(tmp_path)), n_threads=2, quiet=True, partition_size=10
    ) as p:
        workers = set()
        for _ in range(2):
            workers |= {pid for _, pid in p.run()["model"]}
        pids = files(tmp_path, "setup")
        assert len(pids) == len(set(pids)) == 2  # each worker once, as the first run started; not for the 2nd
        assert {str(w) for w in workers} <= set(pids)
        assert files(tmp_path, "teardown") == []
    assert files(tmp_path, "teardown") == pids


class SlowSetup(Node):
    def setup(self, folder: str) -> None:
        pass

    def setup_worker(self) -> None:
        import time

        time.sleep(0.2)  # a second thread arrives while the first one is still setting up
        self.model = Unpicklable()
        Path(self.folder, f"setup-{os.getpid()}-{uuid.uuid4().hex}").touch()

    def run(self, data: Any) -> None:
        self.emit(data)


def test_threads_of_one_process_share_one_set_up(tmp_path):
    from pypiper_dask.model.pickling import dumps_node
    from pypiper_dask.model.snapshot import load_node

    blob = dumps_node(SlowSetup("slow", folder=str(tmp_path)))
    copies = [load_node(blob) for _ in range(4)]  # one per worker thread, as a fused stage has them
    scope = uuid.uuid4().hex
    threads = [threading.Thread(target=set_up, args=(c, scope)) for c in copies]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(files(tmp_path, "setup")) == 1
    assert len({id(c.model) for c in copies}) == 1
    tear_down(scope)


@pytest.mark.cluster
@pytest.mark.timeout(180)
def test_on_an_external_cluster_set_up_once_per_worker_and_torn_down(external_cluster, tmp_path):
    graph = N.Gen("gen", size=200) | Model("model", folder=str(tmp_path)) | N.Map("m")
    result = Pipeline(graph, client=external_cluster, quiet=True, partition_size=10).run()
    assert len(result["m"]) == 200
    pids = files(tmp_path, "setup")
    assert len(pids) == len(set(pids)) == 2
    assert files(tmp_path, "teardown") == pids


@pytest.mark.cluster
@pytest.mark.timeout(240)  # room for a fresh cluster when a replacement worker is late
def test_a_stateful_node_restored_after_its_worker_died_is_set_up_again_there(tmp_path, killable):
    import random

    from tests.test_recovery import Killer

    node = StatefulModel("model", folder=str(tmp_path))
    graph = N.Gen("gen", size=900, pause=0.002) | node | N.Map("m")
    client = killable.client()  # not the shared local_client's cluster: a worker is killed
    with Killer(client, 360, random.Random(1), node="model-") as killer:  # after 360 of the 900 items
        result = Pipeline(graph, client=client, quiet=True, snapshot_every=(50, None), partition_size=20).run(
            update_callback=killer.callback
        )
    assert killer.kills, "the run ended before the kill: nothing was tested"
    assert len(result["m"]) == 900 and node.seen == 900  # the restored copy ran with a model
    pids = files(tmp_path, "setup")
    assert len(pids) == 2 and len(set(pids)) == 2  # the first holder's process, then the one it was restored on
