"""Where the tasks of a run execute: in the caller, or on a distributed cluster.

Both backends take the same :class:`~pypiper_dask.compiler.TaskSpec` lists
(one list per round) and return the same results; which one a run uses is
decided in :func:`pypiper_dask.runtime.scheduler.choose_backend`.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from typing import Any

from ..compiler.plan import Plan
from ..compiler.tasks import Ref, StageRef, TaskNames, TaskSpec, fused_spec, seq_spec
from ..worker import Chunk, SegmentResult, SeqHolder, final_state

__all__ = ["DistributedBackend", "InProcessBackend"]


class InProcessBackend:
    """Runs each round's tasks in the calling process on Dask's synchronous scheduler."""

    n_workers = 1
    window = 1
    description = "in the calling process (dask synchronous scheduler)"

    def __enter__(self) -> InProcessBackend:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.refs: dict[int, Any] = {}

    def start(self, plan: Plan, names: TaskNames, quiet: bool = False) -> None:
        self.plan = plan
        self.refs = {
            s.id: fused_spec(plan, s, names.token, quiet) if s.kind == "fused" else SeqHolder(seq_spec(plan, s))
            for s in plan.stages
        }

    def submit(self, tasks: list[TaskSpec]) -> dict[int, SegmentResult]:
        from dask.local import get_sync
        from dask.task_spec import Task, TaskRef

        def arg(a: Any) -> Any:
            if isinstance(a, Ref):
                return TaskRef(a.key)
            if isinstance(a, StageRef):
                return self.refs[a.stage]
            return a

        graph = {t.key: Task(t.key, t.func, *map(arg, t.args)) for t in tasks}
        results = get_sync(graph, [t.key for t in tasks])
        return {t.stage: r for t, r in zip(tasks, results, strict=False)}

    def gather(self, handle: dict[int, SegmentResult]) -> dict[int, SegmentResult]:
        return handle

    def cancel(self) -> None:
        pass

    def submit_states(self, names: TaskNames) -> dict[str, Any]:
        return {s.node: self.refs[s.id] for s in self.plan.seq_stages if not s.stateless}

    def gather_states(self, handle: dict[str, Any]) -> dict[str, bytes]:
        return {node: final_state(holder) for node, holder in handle.items()}


class DistributedBackend:
    """Runs tasks on a ``distributed`` cluster: one the run starts, or the user's.

    Parameters
    ----------
    client : distributed.Client, optional
        Run on this client's cluster and leave it up.
    address : str, optional
        Connect to the scheduler at this address for the run.
    n_workers : int, optional
        Start a ``LocalCluster`` of this many single-threaded worker processes
        on 127.0.0.1 for the run, and close it afterwards.
    """

    def __init__(
        self, client: Any = None, address: str | None = None, n_workers: int | None = None, timeout: float = 30.0
    ) -> None:
        self.client = client
        self.address = address
        self.n_workers_wanted = n_workers
        self.timeout = timeout
        self._stack = contextlib.ExitStack()

    @property
    def description(self) -> str:
        if self.n_workers_wanted:
            return f"a LocalCluster of {self.n_workers_wanted} single-threaded worker processes, started for the run"
        if self.address:
            return f"the cluster at {self.address}"
        return f"the cluster of {self.client!r}"

    def __enter__(self) -> DistributedBackend:
        from distributed import Client, LocalCluster

        try:
            if self.client is None and self.address is None:
                with _main_not_reimported():
                    cluster = self._stack.enter_context(
                        LocalCluster(
                            n_workers=self.n_workers_wanted,
                            threads_per_worker=1,
                            processes=True,
                            host="127.0.0.1",
                            dashboard_address="127.0.0.1:0",
                            silence_logs=logging.ERROR,
                        )
                    )
                self.client = self._stack.enter_context(Client(cluster, set_as_default=False))
                link = self.client.dashboard_link
                if link:
                    print(f"pypiper_dask: dashboard at {link}", file=sys.stderr)
            elif self.client is None:
                self.client = self._stack.enter_context(
                    Client(self.address, timeout=self.timeout, set_as_default=False)
                )
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stack.close()

    @property
    def n_workers(self) -> int:
        return max(1, len(self.client.scheduler_info().get("workers", {})))

    @property
    def window(self) -> int:
        return max(2, 3 * self.n_workers)

    def start(self, plan: Plan, names: TaskNames, quiet: bool = False) -> None:
        client = self.client
        self.plan = plan
        self.refs: dict[int, Any] = {}
        self.where: dict[int, str] = {}
        self.last: dict[int, Any] = {}
        workers = sorted(client.scheduler_info().get("workers", {}))
        for stage in plan.stages:
            if stage.kind == "fused":
                # Sent to every worker once; tasks carry only a reference, so a heavy
                # node crosses the network once per worker per run, not once per task.
                self.refs[stage.id] = client.scatter(
                    fused_spec(plan, stage, names.token, quiet), broadcast=True, hash=False
                )
            else:
                # The holder's worker is chosen here, so nothing waits for the actor to
                # exist: its tasks depend on its creation and are pinned to that worker.
                self.where[stage.id] = where = workers[len(self.where) % len(workers)]
                self.refs[stage.id] = client.submit(
                    SeqHolder,
                    seq_spec(plan, stage),
                    actor=True,
                    key=names.key(stage.id, "actor"),
                    workers=[where],
                    allow_other_workers=False,
                )

    #: Partitions of at least this many items are scattered to a worker rather
    #: than embedded in their task: a task's embedded data also lives in the
    #: scheduler (for a LocalCluster, in the caller's process) until it is forgotten.
    scatter_from = 1000

    def _data(self, value: Any) -> Any:
        if isinstance(value, Chunk) and len(value) >= self.scatter_from:
            return self.client.scatter(value, hash=False)
        return value

    def submit(self, tasks: list[TaskSpec]) -> dict[int, Any]:
        """Submit one round; returns stage -> future of the results the caller gathers."""
        by_key: dict[Any, Any] = {}
        out: dict[int, Any] = {}
        for t in tasks:
            args = [
                by_key[a.key]
                if isinstance(a, Ref)
                else self.refs[a.stage]
                if isinstance(a, StageRef)
                else self._data(a)
                for a in t.args
            ]
            options: dict[str, Any] = {}
            if t.sequential:
                if t.stage in self.last:
                    args.append(self.last[t.stage])
                options = {"workers": [self.where[t.stage]], "allow_other_workers": False}
            future = self.client.submit(t.func, *args, key=t.key, pure=False, **options)
            if t.sequential:
                self.last[t.stage] = future
            by_key[t.key] = future
            if t.fetch:
                out[t.stage] = future
        return out

    def gather(self, handle: dict[int, Any]) -> dict[int, SegmentResult]:
        stages = list(handle)
        return _with_carried(dict(zip(stages, self.client.gather([handle[s] for s in stages]), strict=True)))

    def cancel(self) -> None:
        pending = [f for f in self.last.values()]
        if pending:
            self.client.cancel(pending, force=True)

    def submit_states(self, names: TaskNames) -> dict[str, Any]:
        """Ask each stateful node for its state once its last task has run."""
        out = {}
        for s in self.plan.seq_stages:
            if not s.stateless:
                after = [self.last[s.id]] if s.id in self.last else []
                out[s.node] = self.client.submit(
                    final_state,
                    self.refs[s.id],
                    *after,
                    key=names.key(s.id, "state"),
                    workers=[self.where[s.id]],
                    allow_other_workers=False,
                    pure=False,
                )
        return out

    def gather_states(self, handle: dict[str, Any]) -> dict[str, bytes]:
        return dict(zip(handle, self.client.gather(list(handle.values())), strict=True))


def _with_carried(results: dict[int, SegmentResult]) -> dict[int, SegmentResult]:
    """Add the results that came back inside another's (see ``worker.run_seq``)."""
    for res in list(results.values()):
        if res.carried is not None:
            stage, carried = res.carried
            results[stage] = carried
            res.carried = None
    return results


@contextlib.contextmanager
def _main_not_reimported():
    """Start worker processes without re-running the caller's script in them.

    ``distributed`` starts workers with multiprocessing's *spawn*, which imports
    the main module again in each new process; a pyPiper script has no
    ``if __name__ == "__main__":`` guard, so it would run itself again. Workers
    don't need the main module (node classes reach them pickled by value), so
    it is hidden from multiprocessing while the workers start.
    """
    main = sys.modules.get("__main__")
    if main is None:
        yield
        return
    saved = {k: main.__dict__[k] for k in ("__file__", "__spec__") if k in main.__dict__}
    main.__dict__.pop("__file__", None)
    main.__spec__ = None
    try:
        yield
    finally:
        main.__dict__.pop("__spec__", None)
        main.__dict__.update(saved)
