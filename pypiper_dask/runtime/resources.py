"""Where a stage can run: worker resources (``resources=`` on a node), checked before a run starts; set-up ahead.

Dask runs a task that asks for resources only on a worker started with them
(``dask worker --resources GPU=1``, ``LocalCluster(resources=...)``), and
waits for ever when none has them; so a run checks first and fails at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..compiler.plan import FusedStage, Plan, SeqStage
from ..errors import ResourceError

__all__ = ["able_workers", "check_placeable", "fits", "prepare_workers"]


def fits(have: Mapping[str, float] | None, need: Mapping[str, float]) -> bool:
    """Whether a worker with resources ``have`` can run a task asking for ``need``.

    Examples
    --------
    >>> fits({"GPU": 1, "MEM": 8}, {"GPU": 1}), fits({}, {"GPU": 1}), fits({"GPU": 1}, {"GPU": 2})
    (True, False, False)
    """
    have = have or {}
    return all(have.get(name, 0) >= amount for name, amount in need.items())


def _nodes(plan: Plan, stage: FusedStage | SeqStage) -> tuple[str, ...]:
    return stage.nodes if isinstance(stage, FusedStage) else (stage.node,)


def check_placeable(plan: Plan, workers: Mapping[str, Any]) -> None:
    """Raise :class:`ResourceError` if a stage asks for resources no worker of ``workers`` has.

    ``workers``: ``Client.scheduler_info()["workers"]``, each with its ``"resources"``.

    Examples
    --------
    >>> from pypiper_dask.model import Node
    >>> from pypiper_dask.model.snapshot import Snapshot
    >>> from pypiper_dask.compiler.plan import compile_plan
    >>> class N(Node):
    ...     def run(self, data):
    ...         self.emit(data)
    >>> plan = compile_plan(Snapshot.from_graph(N("gen") | N("embed", resources={"GPU": 1})))
    >>> check_placeable(plan, {"tcp://a": {"resources": {"GPU": 1}}})
    >>> check_placeable(plan, {"tcp://a": {"resources": {}}})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    pypiper_dask.errors.ResourceError: Node 'embed' asks for resource 'GPU' (1), and no worker of the cluster ...
    """
    offered = [dict(w.get("resources") or {}) for w in workers.values()]
    info = plan.snapshot.info
    for stage in plan.stages:
        if not stage.resources or any(fits(have, stage.resources) for have in offered):
            continue
        for name in _nodes(plan, stage):  # one node's own ask first: the clearest message
            for resource, amount in info[name].resources:
                most = max((have.get(resource, 0) for have in offered), default=0)
                if most < amount:
                    raise ResourceError(
                        name,
                        resource,
                        f"Node {name!r} asks for resource {resource!r} ({amount:g}), and no worker of the cluster "
                        f"has it{'' if not most else f' (the most any has is {most:g})'}: start a worker with it "
                        f"(dask worker --resources {resource}={amount:g}) or drop resources= from the node.",
                    )
        names = [n for n in _nodes(plan, stage) if info[n].resources]
        asked = ", ".join(f"{r}={a:g}" for r, a in stage.resources.items())
        raise ResourceError(
            names[0],
            next(iter(stage.resources)),
            f"Nodes {names!r} run together (fused) and need {asked} on one worker, which no worker of the "
            "cluster has: start such a worker, or ask for less.",
        )


def able_workers(client: Any, workers: list[str], resources: Mapping[str, float], node: str) -> list[str]:
    """Those of ``workers`` that have ``resources`` (all of them when it asks for none)."""
    if not resources:
        return workers
    info = client.scheduler_info(n_workers=-1).get("workers", {})
    able = [w for w in workers if w in info and fits(info[w].get("resources"), resources)]
    if not able:
        resource = next(iter(resources))
        raise ResourceError(
            node, resource, f"Node {node!r} needs {dict(resources)!r}, and no live worker of the cluster has it."
        )
    return able


def prepare_workers(client: Any, plan: Plan) -> list[Any]:
    """Start each fused stage's ``setup_worker()`` calls on every worker that can run the stage, now, in parallel.

    Returns the futures (keep them until the run ends: a released future's
    task may be cancelled). Nothing for a plan without such nodes. A
    stateful node is set up on its holder only, as its first step comes.
    """
    from ..worker.setups import prepare

    info = plan.snapshot.info
    workers = client.scheduler_info(n_workers=-1).get("workers", {})
    futures = []
    for stage in plan.stages:
        if not isinstance(stage, FusedStage):
            continue
        blobs = [plan.snapshot.blobs[n] for n in stage.nodes if info[n].worker_setup]
        if not blobs:
            continue
        for address, worker in workers.items():
            if fits(worker.get("resources"), stage.resources):
                futures.append(
                    client.submit(
                        prepare,
                        blobs,
                        plan.scope,
                        workers=[address],
                        allow_other_workers=False,
                        pure=False,
                        priority=1 << 41,  # ahead of the run's own tasks (see backends._priority)
                        resources=dict(stage.resources) or None,
                    )
                )
    return futures
