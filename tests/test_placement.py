"""Every worker gets work from a run's first rounds: no task is tied to data one worker holds.

Read from the scheduler's task stream, not from timings: which worker ran
each of a run's first tasks.
"""

from __future__ import annotations

import pytest

from pypiper_dask import Pipeline
from tests.nodes import Gen, Running, Slow

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(180)]

N_WORKERS = 4


@pytest.fixture(scope="module")
def four_workers():
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=N_WORKERS, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=":0"
        ) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        client.wait_for_workers(N_WORKERS, timeout=120)
        yield client


def first_round_workers(client, graph, node: str, rounds: int) -> set[str]:
    """The workers that ran ``node``'s tasks of the run's first ``rounds`` rounds."""
    from distributed import get_task_stream

    with get_task_stream(client=client) as stream:
        Pipeline(graph, client=client, quiet=True).run()
    ran = {}
    for record in stream.data:
        key = record["key"]
        if isinstance(key, tuple) and key[0].startswith(node) and len(key) == 2 and isinstance(key[1], int):
            ran[key[1]] = record["worker"]
    assert len(ran) > rounds, f"too few rounds to judge: {sorted(ran)}"
    return {ran[i] for i in sorted(ran)[:rounds]}


def test_the_first_rounds_reach_every_worker(four_workers):
    # Two rounds a worker: before, each task depended on a spec scattered to one worker,
    # and the first rounds queued there until work stealing moved them.
    used = first_round_workers(four_workers, Gen("gen", size=400) | Slow("slow", seconds=0.01), "slow", 2 * N_WORKERS)
    assert len(used) == N_WORKERS, f"the first {2 * N_WORKERS} rounds ran on {len(used)} of {N_WORKERS} workers"


def test_the_work_feeding_a_stateful_node_reaches_every_worker(four_workers):
    # The fused tasks hand their items to the stateful node's holder: they must not be
    # placed on the holder's worker for holding a reference to it.
    graph = Gen("gen", size=400) | Slow("slow", seconds=0.01) | Running("running", stateless=False)
    used = first_round_workers(four_workers, graph, "slow", 2 * N_WORKERS)
    assert len(used) == N_WORKERS, f"the first {2 * N_WORKERS} rounds ran on {len(used)} of {N_WORKERS} workers"


def test_a_heavy_node_reaches_every_worker(four_workers):
    # A spec too large to travel inside each task is sent to every worker once.
    slow = Slow("slow", seconds=0.01)
    slow.weights = bytes(1 << 20)
    graph = Gen("gen", size=400) | slow
    # Twice at most: once in a full CI run (not reproduced alone) the first rounds all ran on one
    # worker; a second run on the same cluster tells a rare placement from a spec tied to one worker.
    tries = [first_round_workers(four_workers, graph, "slow", 2 * N_WORKERS)]
    if len(tries[0]) < N_WORKERS:
        tries.append(first_round_workers(four_workers, graph, "slow", 2 * N_WORKERS))
    used = tries[-1]
    ran = [len(t) for t in tries]
    assert len(used) == N_WORKERS, f"the first {2 * N_WORKERS} rounds ran on {ran} of {N_WORKERS} workers"
