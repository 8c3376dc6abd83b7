"""Resource hints: ``resources={"GPU": 1}`` on a node (issue 22, item 2)."""

from __future__ import annotations

import os
import time
from typing import Any

import pytest

from pypiper_dask import Node, OptionError, Pipeline, ResourceError, as_node
from pypiper_dask.compiler.tasks import TaskNames, round_tasks
from pypiper_dask.worker import Chunk
from tests import nodes as N


class Where(Node):
    """Emits ``(item, pid of the process that ran it)``."""

    def run(self, data: Any) -> None:
        self.emit((N.num(data), os.getpid()))


class StatefulWhere(Node):
    def setup(self) -> None:
        self.stateless = False
        self.seen = 0

    def run(self, data: Any) -> None:
        self.seen += 1
        self.emit((N.num(data), os.getpid()))


@pytest.fixture(scope="module")
def gpu_cluster():
    """Two single-threaded worker processes, one of them started with ``GPU=1``; yields (client, gpu pid, cpu pid)."""
    from distributed import Client, Nanny, Scheduler, SpecCluster

    options = {"nthreads": 1, "host": "127.0.0.1", "dashboard": False, "silence_logs": 40}
    workers = {
        "gpu": {"cls": Nanny, "options": {**options, "resources": {"GPU": 1}}},
        "cpu": {"cls": Nanny, "options": options},
    }
    scheduler = {"cls": Scheduler, "options": {"host": "127.0.0.1", "dashboard_address": ":0"}}
    with (
        SpecCluster(workers=workers, scheduler=scheduler, silence_logs=40) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        client.wait_for_workers(2, timeout=60)
        pids = client.run(os.getpid)
        info = client.scheduler_info(n_workers=-1)["workers"]
        gpu = next(pids[a] for a, w in info.items() if w.get("resources", {}).get("GPU"))
        cpu = next(pid for pid in pids.values() if pid != gpu)
        yield client, gpu, cpu


def test_a_bad_resources_value_is_refused_at_construction():
    with pytest.raises(OptionError, match="resources"):
        Where("w", resources={"GPU": 0})
    with pytest.raises(TypeError, match="resources"):
        Where("w", resources=["GPU"])


def test_resources_is_reserved_and_a_fused_stage_takes_the_most_each_node_asks():
    class Takes(Node):
        def setup(self, **kwargs):
            self.got = kwargs

        def run(self, data):
            self.emit(data)

    node = Takes("t", resources={"GPU": 1}, other=2)
    assert node.got == {"other": 2} and node.resources == {"GPU": 1}  # never passed to setup()
    graph = (
        N.Gen("gen", size=4)
        | Where("a", resources={"GPU": 1})
        | Where("b", resources={"GPU": 2, "MEM": 1})
        | StatefulWhere("s", resources={"GPU": 1})
        | Where("c")
    )
    plan = Pipeline(graph).plan
    assert [dict(s.resources) for s in plan.stages] == [{"GPU": 2, "MEM": 1}, {"GPU": 1}, {}]
    tasks = round_tasks(plan, TaskNames(plan), 0, 0, Chunk([1, 2], {}, None))
    by_stage = {t.stage: t.resources for t in tasks}
    assert by_stage == {0: {"GPU": 2, "MEM": 1}, 1: None, 2: None}  # a holder's step runs anywhere: it asks its holder


def test_in_the_caller_the_hint_is_ignored_silently(capfd, caplog):
    graph = N.Gen("gen", size=5) | Where("w", resources={"GPU": 1}) | as_node(lambda v: v[0], resources={"TPU": 4})
    result = Pipeline(graph, n_threads=1, quiet=True).run()
    assert result[graph_leaf(graph)] == [0, 1, 2, 3, 4]
    assert capfd.readouterr().err == "" and not caplog.records


def graph_leaf(graph) -> str:
    return [n.name for n in graph][-1]


@pytest.mark.cluster
@pytest.mark.timeout(180)
def test_a_node_asking_for_a_gpu_runs_only_on_the_worker_that_has_one(gpu_cluster):
    client, gpu, _ = gpu_cluster
    graph = (
        N.Gen("gen", size=300)
        | Where("anywhere")
        | N.Batch("batch", batch_size=3)
        | [Where("embed", resources={"GPU": 1}), StatefulWhere("tally", resources={"GPU": 1})]
    )
    result = Pipeline(graph, client=client, quiet=True, partition_size=5).run()
    assert len(result["embed"]) == len(result["tally"]) == 100
    assert {pid for _, pid in result["embed"]} == {gpu}  # a fused stage's tasks
    assert {pid for _, pid in result["tally"]} == {gpu}  # a stateful node's holder


@pytest.mark.cluster
@pytest.mark.timeout(180)
def test_a_resource_no_worker_has_fails_at_once_naming_node_and_resource(gpu_cluster):
    client, _, _ = gpu_cluster
    for node in (Where("tpu-node", resources={"TPU": 1}), StatefulWhere("tpu-node", resources={"TPU": 1})):
        start = time.monotonic()
        with pytest.raises(ResourceError, match=r"'tpu-node'.*'TPU'") as info:
            Pipeline(N.Gen("gen", size=10) | node, client=client, quiet=True).run()
        assert info.value.node == "tpu-node" and info.value.resource == "TPU"
        assert time.monotonic() - start < 60  # not a hang
    with pytest.raises(ResourceError, match="GPU"):  # more than any worker has
        Pipeline(N.Gen("gen", size=10) | Where("big", resources={"GPU": 2}), client=client, quiet=True).run()


@pytest.mark.cluster
@pytest.mark.timeout(180)
def test_a_gpu_node_is_set_up_only_on_the_worker_that_has_the_gpu(gpu_cluster, tmp_path):
    from tests.test_setup_worker import Model, files

    client, gpu, _ = gpu_cluster
    graph = N.Gen("gen", size=60) | Model("model", folder=str(tmp_path), resources={"GPU": 1})
    result = Pipeline(graph, client=client, quiet=True, partition_size=5).run()
    assert {pid for _, pid in result["model"]} == {gpu}
    assert files(tmp_path, "setup") == files(tmp_path, "teardown") == [str(gpu)]
