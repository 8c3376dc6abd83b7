"""Where the tasks of a run execute: the transports the run loop drives.

:class:`SyncTaskBackend` (the caller, on Dask's synchronous scheduler) and
:class:`DistributedBackend` (a cluster) take the same
:class:`~pypiper_dask.compiler.TaskSpec` lists (one list per round), follow
the :class:`TaskBackend` protocol, and return the same results.
:class:`InProcessBackend` runs no tasks: the caller's nodes, depth first.
Which one a run uses is decided in :func:`pypiper_dask.runtime.scheduler.choose_backend`;
how a cluster is started or reached, in :mod:`pypiper_dask.runtime.cluster`.
"""

from __future__ import annotations

import contextlib
import functools
import time
from concurrent.futures import CancelledError
from typing import Any, Protocol, runtime_checkable

from ..compiler.plan import FusedStage, Plan, SeqStage
from ..compiler.tasks import Ref, StageRef, TaskNames, TaskSpec, fused_spec, seq_spec, state_step
from ..errors import PipelineError, StateLostError
from ..log import logger
from ..model.keys import KEY_GROUPS
from ..ordering import Segment
from ..worker import Chunk, NodeFailure, run_seq, run_state
from ..worker.keyed import KeyRoute
from ..worker.sequential import HolderAt, make_holder
from .cluster import open_client, quiet_recovered_losses, sigint_held
from .collect import Collector, Direct
from .loop import DataLost, HolderLost, Killed
from .resources import able_workers, check_placeable
from .worker_environment import check_workers

__all__ = ["Backend", "DistributedBackend", "InProcessBackend", "SyncTaskBackend", "TaskBackend"]


@runtime_checkable
class Backend(Protocol):
    """Where a run executes: entered for the run, left after it.

    ``in_process``: it runs the caller's node objects themselves, not copies.
    """

    in_process: bool

    def __enter__(self) -> Any: ...
    def __exit__(self, *exc: Any) -> None: ...


@runtime_checkable
class TaskBackend(Backend, Protocol):
    """What the run loop needs of a place to run tasks.

    ``window`` is how many rounds may be in flight at once; ``start`` makes
    the run's sequential holders (from a checkpoint's ``states``, their next
    step ``first``); ``submit`` takes one round's tasks and returns a handle;
    ``wait`` returns the handles (of those given) that are done, waiting up to
    ``timeout`` seconds for one; ``results_many`` gives done rounds' fetched
    segments by stage, or in a round's place the error it ended with (a
    task's failure, or :class:`~pypiper_dask.runtime.loop.DataLost`).
    ``can_restore``: ``restore`` can re-create lost holders from snapshots.
    """

    can_restore: bool

    @property
    def n_workers(self) -> int: ...
    @property
    def window(self) -> int: ...

    def start(
        self, plan: Plan, names: TaskNames, states: dict[int, bytes | None] | None = None, first: int = 0
    ) -> None: ...
    def submit(self, tasks: list[TaskSpec]) -> Any: ...
    def wait(self, handles: list[Any], timeout: float) -> list[Any]: ...
    def results_many(self, handles: list[Any]) -> list[dict[int, Segment] | BaseException]: ...
    def cancel(self, handles: list[Any] | None = None) -> None: ...
    def restore(self, states: dict[int, bytes | None], start: int) -> None: ...
    def final_states(self, n_source: int) -> dict[str, bytes]: ...


class InProcessBackend:
    """Runs a pipeline in the calling process: its nodes called depth first, as pyPiper calls them.

    No tasks and no partitions (see :mod:`pypiper_dask.runtime.inprocess`).
    """

    in_process = True  # it runs the caller's node objects

    def __enter__(self) -> InProcessBackend:
        return self

    def __exit__(self, *exc: Any) -> None:
        pass


class SyncTaskBackend:
    """Runs each round's tasks in the calling process on Dask's synchronous scheduler.

    The task path of a cluster run without a cluster: what the tests use to
    check partitioning, splicing and the task specs quickly.
    """

    in_process = False  # its tasks run on copies, as a cluster's do
    can_restore = False  # nothing is lost here

    def __init__(self) -> None:
        self.n_workers = 1
        self.window = 1
        self.plan: Plan | None = None
        self.refs: dict[int, Any] = {}

    def __enter__(self) -> SyncTaskBackend:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.refs = {}

    def start(
        self, plan: Plan, names: TaskNames, states: dict[int, bytes | None] | None = None, first: int = 0
    ) -> None:
        self.plan = plan
        states = states or {}
        self.refs = {
            s.id: fused_spec(plan, s, names.token)
            if isinstance(s, FusedStage)
            else make_holder(seq_spec(plan, s), restore=states.get(s.id), start=first)
            for s in plan.stages
        }

    def submit(self, tasks: list[TaskSpec]) -> dict[int, Segment] | NodeFailure:
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
        return _outcome({t.stage: r for t, r in zip(tasks, results, strict=True) if t.fetch})

    def wait(self, handles: list[Any], timeout: float) -> list[Any]:
        return handles  # each ran when it was submitted

    def results_many(self, handles: list[Any]) -> list[dict[int, Segment] | BaseException]:
        return handles

    def cancel(self, handles: list[Any] | None = None) -> None:
        pass

    def restore(self, states: dict[int, bytes | None], start: int) -> None:
        raise AssertionError("a synchronous run loses no holder")  # can_restore is False

    def final_states(self, n_source: int) -> dict[str, bytes]:
        assert self.plan is not None  # started
        return {s.node: run_state(self.refs[s.id], 0) for s in self.plan.seq_stages if not s.stateless}


def _ctrl_c_after(method: Any) -> Any:
    """A run-loop call into distributed that a Ctrl-C does not cut in the middle (see :func:`.cluster.sigint_held`).

    Not ``start`` and ``restore``: they may wait a minute for a worker, and a Ctrl-C ends that wait.
    """

    @functools.wraps(method)
    def held(self: Any, *args: Any, **kwargs: Any) -> Any:
        with sigint_held():
            return method(self, *args, **kwargs)

    return held


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
    timeout : float
        Seconds to wait for the scheduler at ``address``.
    security : distributed.security.Security, optional
        TLS settings for connecting to ``address``.
    """

    in_process = False
    can_restore = True

    def __init__(
        self,
        client: Any = None,
        address: str | None = None,
        n_workers: int | None = None,
        timeout: float = 10.0,
        security: Any = None,
    ) -> None:
        self.client = client
        self.address = address
        self.n_workers_wanted = n_workers
        self.timeout = timeout
        self.security = security
        self._n_workers: int | None = None
        self._stack = contextlib.ExitStack()
        # Set by start(), for one run:
        self.plan: Plan | None = None
        self.names: TaskNames | None = None
        self.refs: dict[int, Any] = {}  # stage -> its scattered spec's future, or its holder's (an actor)
        self.args: dict[int, Any] = {}  # stage -> what its tasks get: the spec or its future, the holder's proxy
        self.workers: list[str] = []  # the workers partitions are sent to, in turn
        self.where: dict[int, str] = {}  # sequential stage -> the worker holding it
        self.shards: dict[int, list[str]] = {}  # keyed stage -> the workers holding its key groups
        self.live: set[_Round] = set()  # rounds submitted and not fetched yet
        self.lost: HolderLost | None = None  # a holder's worker died: rounds not back report it
        self.generation = 0  # how many times the holders were re-created
        self._specs = 0  # fused stage specs sent
        self._direct: frozenset[int] = frozenset()  # sequential stages whose steps the caller may collect
        self.pushed_to: dict[int, tuple] = {}  # keyed stage -> (route, each holder's HolderAt): fused tasks push
        self.collector: Collector | None = None  # ... with this (see .collect)
        self._near = False  # the scheduler (so the workers) on this machine: data goes to workers straight

    def __enter__(self) -> DistributedBackend:
        try:
            self._stack.enter_context(quiet_recovered_losses)
            if self.client is None:
                self.client = open_client(
                    self._stack, self.address, self.n_workers_wanted, timeout=self.timeout, security=self.security
                )
            if self.n_workers_wanted is None:  # a cluster this run did not start: can its workers run tasks?
                check_workers(self.client)
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stack.close()

    #: Seconds between checks that the workers holding sequential nodes are alive.
    poll = 0.5

    #: Seconds to wait for a worker to restore lost holders on, when none is left: a nanny's
    #: replacement took over 30 s on a 2-core machine whose host took much of its CPU.
    wait_for_worker = 60.0

    @property
    def n_workers(self) -> int:
        if self._n_workers is None:  # asked once per run: keep the scheduler's answer
            self._n_workers = max(1, len(self.client.scheduler_info(n_workers=-1).get("workers", {})))
        return self._n_workers

    @property
    def window(self) -> int:
        """Rounds in flight: enough that every worker has its next partition queued."""
        return max(2, 4 * self.n_workers)

    def start(
        self, plan: Plan, names: TaskNames, states: dict[int, bytes | None] | None = None, first: int = 0
    ) -> None:
        """Create the holders: as planned, or from ``states`` (a checkpoint's cut) with ``first`` their next step."""
        self.plan, self.names = plan, names
        self.refs, self.where, self.live, self.lost, self.generation, self._specs = {}, {}, set(), None, 0, 0
        self.args = {}
        # A holder's steps whose output nothing below reads (it goes to the caller) are asked
        # of it by the caller where they can be.
        self._direct = frozenset(s.id for s in plan.seq_stages if s.below is None)
        self._near = _on_this_machine(self.client.scheduler.address)
        self.collector = Collector(self.client, self._near) if self._direct else None
        self.workers = workers = self._first_workers()
        # A node asking for a resource no worker has: fail now, not hang.
        check_placeable(plan, self.client.scheduler_info(n_workers=-1).get("workers", {}))
        self._scatter_specs()
        self._place_holders(workers, states or {}, first)

    #: Seconds a run waits for a first worker (a scheduler with none yet, a kept cluster whose
    #: workers died and are being restarted by their nannies) before it fails.
    wait_for_first_worker = 30.0

    def _first_workers(self) -> list[str]:
        """The cluster's workers, waiting up to ``wait_for_first_worker`` s for one; :class:`PipelineError` if none."""
        workers = sorted(self._alive())
        if workers:
            return workers
        where = self.client.scheduler.address
        logger.warning(
            "no worker is connected to the Dask scheduler at %s; waiting up to %g s for one",
            where,
            self.wait_for_first_worker,
        )
        deadline = time.monotonic() + self.wait_for_first_worker
        while not workers and time.monotonic() < deadline:
            time.sleep(self.poll)
            workers = sorted(self._alive())
        if not workers:
            raise PipelineError(
                f"No worker is connected to the Dask scheduler at {where}: waited {self.wait_for_first_worker:g} s "
                f"for one. Start workers with `dask worker {where}` (or check that they reach it)."
            )
        self._n_workers = None  # asked again now that there are some
        return workers

    #: A fused stage's spec (its nodes, pickled) up to this many bytes travels inside each of
    #: its tasks; a larger one is sent to every worker once. A task that depends on data one
    #: worker holds is placed on that worker: with the spec scattered to one worker, every
    #: task of a short run went there until work stealing moved them (8 workers: seven idle
    #: for ~1 s, efficiency 0.26).
    inline_spec = 64 * 1024

    #: Seconds to wait for a large spec to reach every worker before settling for one copy.
    broadcast_timeout = 30.0

    def _scatter_specs(self, only: set[int] | None = None) -> None:
        """Give each fused stage's tasks its spec (or those of the stages ``only``): inside them, or sent once."""
        assert self.plan is not None and self.names is not None  # started
        for stage in self.plan.stages:
            if isinstance(stage, FusedStage) and (only is None or stage.id in only):
                spec = fused_spec(self.plan, stage, self.names.token)
                if sum(map(len, spec.blobs.values())) <= self.inline_spec:
                    self.args[stage.id] = spec  # the worker builds the stage once per run (by its token)
                    continue
                # A heavy node: sent to every worker once, so it crosses the network once per
                # worker per run and no worker is preferred. Keyed under the stage's name: the
                # dashboard shows it as that node's.
                self._specs += 1
                key = self.names.key(stage.id, "spec", self._specs)
                self.refs[stage.id] = self.args[stage.id] = self._broadcast(key, spec)

    def _broadcast(self, key: Any, value: Any) -> Any:
        """``value`` sent to every worker under ``key``; its future.

        Bounded: a worker dying while the scheduler copied a value to all of
        them left ``scatter(broadcast=True)`` waiting for ever (distributed
        2026.8.0). Past ``broadcast_timeout`` the value goes to one worker, and
        the others fetch it from there for their first task.
        """
        try:
            return self.client.scatter({key: value}, broadcast=True, hash=False, timeout=self.broadcast_timeout)[key]
        except (OSError, TimeoutError):
            return self._scatter(key, value)[0]

    def _scatter(self, key: Any, value: Any, worker: str | None = None) -> tuple[Any, str | None]:
        """``value`` sent to ``worker`` (or one the scheduler picks) under ``key``: its future, and the worker.

        The worker is another one where ``worker`` was not running (see ``scatter_timeout``).

        Straight to the worker when the scheduler is on this machine (its workers are too):
        through a scheduler in the caller's process (a LocalCluster's), partitions sent to
        more than one worker grew the caller's peak memory with the stream's length (W6:
        117 MB at 1M items and 3M by the scheduler's route to one worker, 151 and 198 MB to
        two; straight to them, 115 and 117 MB). A remote scheduler's workers may not be
        reachable from here, so there the scheduler forwards it.
        """
        for attempt in range(5):
            try:
                # A chosen worker not running is given up on soon; any worker is waited for as
                # distributed waits (a nanny's new worker may take long on a busy machine).
                wait = {} if worker is None else {"workers": [worker], "timeout": self.scatter_timeout}
                return self.client.scatter({key: value}, hash=False, direct=self._near, **wait)[key], worker
            except (OSError, KeyError):  # the worker is gone (a scheduler's route: KeyError): try another
                if attempt == 4:
                    raise
                time.sleep(0.2 * (attempt + 1))
                alive = self._send_to(self._alive())
                worker = None if worker is None or not alive else self._next_worker()
        raise AssertionError("unreachable")

    #: Seconds ``scatter`` waits for the chosen worker to be running (not for the data to
    #: arrive) before another is tried. A worker can die after it was chosen and before its
    #: loss is known here; distributed then waits its client timeout (30 s) for it: a run
    #: whose worker was killed stalled 29 s.
    scatter_timeout = 1.0

    def _send_to(self, alive: set[str]) -> list[str]:
        """Partitions go to the workers in ``alive`` from now on (to the same ones if it is empty)."""
        self.workers = sorted(alive) or self.workers
        return sorted(alive)

    def _next_worker(self) -> str:
        """The worker with the fewest partitions of this run's live rounds: where the next one goes."""
        load = dict.fromkeys(self.workers, 0)
        for r in self.live:
            if r.worker in load:
                load[r.worker] += 1
        return min(load, key=load.__getitem__)  # ties: the first in address order

    def _respec(self) -> None:
        """Send again the specs lost with a worker (nobody else had fetched them yet)."""
        gone = ("lost", "cancelled", "error")
        lost = {sid for sid, ref in self.refs.items() if sid not in self.where and ref.status in gone}
        if lost:
            self._scatter_specs(lost)

    def _place_holders(self, workers: list[str], states: dict[int, bytes | None], start: int) -> None:
        """Create each sequential stage's holder (from ``states`` where given), spread over ``workers``.

        A keyed node gets one holder per worker able to run it (its key groups
        dealt out among them), so its keys' calls run side by side.
        """
        assert self.plan is not None and self.names is not None  # started
        self.shards = {}
        for i, stage in enumerate(self.plan.seq_stages):
            # Holders spread over the workers; their steps are tasks that may run
            # anywhere and call the holder, which runs them on its own thread.
            able = able_workers(self.client, workers, stage.resources, stage.node)
            n = min(len(able), KEY_GROUPS) if stage.keyed else 1
            at = [able[(i + h) % len(able)] for h in range(n)]
            futures = tuple(
                self.client.submit(
                    make_holder,
                    seq_spec(self.plan, stage),
                    4 * self.window + 8,
                    states.get(stage.id),
                    start,
                    **({"shard": h, "shards": n} if stage.keyed else {}),
                    actor=True,
                    key=self.names.key(stage.id, "actor" if h == 0 else f"actor{h}", self.generation),
                    workers=[where],
                    allow_other_workers=False,
                    resources=dict(stage.resources) or None,
                )
                for h, where in enumerate(at)
            )
            self.where[stage.id] = at[0]
            if stage.keyed:
                self.shards[stage.id] = at
                route = KeyRoute(stage.node, self.plan.snapshot.blobs[stage.node], f"{self.names.token}-{stage.id}")
                self.refs[stage.id] = (route, *futures)
            else:
                self.refs[stage.id] = futures[0]
        # Tasks get each holder's address and key, not its future (nor an Actor, which is a
        # reference too): a task depending on the holder's future is placed on the holder's
        # worker, so every fused task that feeds a stateful node ran there. Waited for, where
        # the caller collects its steps (see .collect): the fused tasks sent before it exists
        # push nothing to it (see _stage_arg), so their steps are tasks, which wait behind
        # fused work for a worker's thread (S3 at 8 workers: the first rounds came back
        # ~0.1 s late, and the partition size with them). Else not (the first rounds go out
        # ~10 ms sooner). A keyed step calls its other holders by address, as they are:
        # those are waited for.
        from distributed import wait

        seq = self.plan.seq_stages
        made = [f for s in seq if s.keyed for f in self.refs[s.id][2:]]
        made += [self.refs[s.id][1] if s.keyed else self.refs[s.id] for s in seq if s.id in self._direct]
        # (Not the default client's: a run's client need not be the default.)
        with self.client.as_current(), contextlib.suppress(Exception):  # a holder's worker died: the probe says so
            wait(made, timeout=60)
        for stage in seq:
            if stage.keyed:
                # A keyed step's task depends on its first holder alone (so it fails when that one
                # is lost) and calls the others by address: a task depending on every holder's
                # future waited for a transfer from each of their workers first.
                route, first, *others = self.refs[stage.id]
                held = [HolderAt(where, f.key) for f, where in zip(others, self.shards[stage.id][1:], strict=True)]
                self.args[stage.id] = (route, first, *held)
                # The fused tasks above push to each by address (see _stage_arg).
                self.pushed_to[stage.id] = (route, HolderAt(self.shards[stage.id][0], first.key), *held)
            else:
                self.args[stage.id] = HolderAt(self.where[stage.id], self.refs[stage.id].key)

    def restore(self, states: dict[int, bytes | None], start: int) -> None:
        """Create every holder again on the live workers, from ``states``, its next step ``start``.

        See :mod:`pypiper_dask.runtime.recovery`. Raises
        :class:`StateLostError` when no worker is left.
        """
        assert self.plan is not None and self.lost is not None
        self.cancel()
        workers = sorted(self._alive())
        deadline = time.monotonic() + self.wait_for_worker
        while not workers and time.monotonic() < deadline:  # a nanny may be starting a new one
            time.sleep(self.poll)
            workers = sorted(self._alive())
        if not workers:
            error = self.lost.error
            raise StateLostError(error.node, f"{error} No worker is left to restore it on.")
        self.generation += 1
        self.lost = None
        if self.collector is not None:
            self.collector.forget()
        self.workers = workers
        self._place_holders(workers, states, start)

    #: Partitions of at least this many bytes (Dask's estimate) are sent to a worker on their
    #: own rather than inside their task: a task's data also lives in the scheduler (for a
    #: LocalCluster, in the caller's process) until it is forgotten, and a large graph warns.
    scatter_from = 1 << 20

    def _data(self, value: Any, task: Any, round_: _Round) -> Any:
        from dask.sizeof import sizeof

        if not (isinstance(value, Chunk) and sizeof(value) >= self.scatter_from):
            return value
        assert self.names is not None  # started
        # Its task runs where it lies, so it goes to the worker with the fewest partitions out
        # (left to the scheduler, every partition went to the same worker).
        future, round_.worker = self._scatter(self.names.partition(task), value, self._next_worker())
        return future  # named after the source

    def _stage_arg(self, stage: int, task: TaskSpec, made: frozenset[int]) -> Any:
        """What a task gets for a stage: its spec; a holder's address, or its future for the holder's own steps.

        A holder's own steps depend on its future, so they fail when it is lost
        (a step recomputed after a kill called a holder that was gone and hung);
        the fused tasks that push to it must not, or they would all be placed on
        its worker (a task goes where its dependencies are). Those get ``None`` until it exists:
        a push to an actor not made yet is an error in its worker's log, and a step
        that waited for it would wait in vain.
        """
        if stage not in self.where:  # a fused stage's spec
            return self.args[stage]
        if not task.sequential:  # a fused task pushing to the holder(s)
            if stage not in made:
                return None
            return self.pushed_to[stage] if stage in self.shards else self.args[stage]
        return self.args[stage] if stage in self.shards else self.refs[stage]

    @_ctrl_c_after
    def submit(self, tasks: list[TaskSpec]) -> _Round:
        """Submit one round's tasks; the handle says which results the caller gathers."""
        round_ = _Round()
        self._respec()
        # The holders made: read once, so that a fused task pushes to each exactly where its
        # step is collected from the caller.
        round_.made = frozenset(sid for sid in self.where if self._made(sid))
        for t in tasks:
            if self._collectable(t, round_):
                direct = Direct(t, round_.futures[t.args[2].key], keyed=t.stage in self.shards)
                round_.direct[t.stage] = direct
                self._watch(direct.upstream)
            else:
                self._submit(t, round_)
        self.live.add(round_)
        return round_

    def _made(self, stage: int) -> bool:
        """Does the holder of ``stage`` (each of a keyed node's) exist?"""
        if stage in self.shards:
            return all(f.status == "finished" for f in self.refs[stage][1:])
        return bool(self.refs[stage].status == "finished")

    def _submit(self, t: TaskSpec, round_: _Round) -> None:
        args = [
            round_.futures[a.key]
            if isinstance(a, Ref)
            else self._stage_arg(a.stage, t, round_.made)
            if isinstance(a, StageRef)
            else self._data(a, t.key, round_)
            for a in t.args
        ]
        future = self.client.submit(t.func, *args, key=t.key, pure=False, priority=_priority(t), resources=t.resources)
        round_.futures[t.key] = future
        if t.fetch:
            round_.fetch[t.stage] = future
            self._watch(future)

    def _watch(self, future: Any) -> None:
        if self.collector is not None:
            self.collector.watch(future)

    def _collectable(self, t: TaskSpec, round_: _Round) -> bool:
        """Can the caller collect this step from its holder (see :mod:`.collect`)?

        Its stage's output goes to the caller, and the fused task above it in
        this round pushes its items to a holder that exists.
        """
        upstream = t.args[2] if t.func is run_seq else None
        return (
            t.stage in self._direct
            and isinstance(upstream, Ref)
            and upstream.key in round_.futures
            and t.stage in round_.made
        )

    def _advance(self, handles: list[_Round]) -> None:
        """Ask holders for the steps whose fused task is done; take their answers, or fall back to a task."""
        assert self.collector is not None
        for h in handles:
            for stage, d in list(h.direct.items()):
                if d.answers is None and (d.upstream.done() or _failed(d.upstream)):
                    if not d.asked():
                        self._fall_back(h, d)
                        continue
                    holders = self.pushed_to[stage][1:] if d.keyed else (self.args[stage],)
                    d.answers = self.collector.ask(list(holders), d.number)
                if d.answers is not None and d.result is None and d.answered() is False:
                    self._fall_back(h, d)

    def _fall_back(self, h: _Round, d: Direct) -> None:
        """The step goes as its task after all: it asks the holder again and handles what the caller cannot."""
        del h.direct[d.task.stage]
        self._submit(d.task, h)

    @_ctrl_c_after
    def wait(self, handles: list[_Round], timeout: float) -> list[_Round]:
        """The rounds among ``handles`` that are done, failed or lost, waiting up to ``timeout`` for one."""
        from distributed import wait

        if any(h.direct for h in handles):
            return self._wait_collecting(handles, timeout)
        pending = [f for h in handles for f in h.fetch.values() if not f.done()]
        if pending:
            try:
                with self.client.as_current():
                    wait(pending, timeout=min(timeout, self.poll), return_when="FIRST_COMPLETED")
            except TimeoutError:
                if self._holder_lost():
                    return list(handles)
                # then say which are done (some may have been before the wait)
            except CancelledError:
                pass  # a future lost with its worker: its round is back, and results_many() says so
        return [h for h in handles if h.done()]

    def _wait_collecting(self, handles: list[_Round], timeout: float) -> list[_Round]:
        """:meth:`wait` where steps are collected from holders: woken by their answers and by the futures."""
        assert self.collector is not None
        self.collector.wake.clear()  # before looking: what is done after this wakes the wait below
        self._advance(handles)
        done = [h for h in handles if h.done()]
        if done:
            return done
        if not self.collector.wake.wait(min(timeout, self.poll)) and self._holder_lost():
            return list(handles)
        self._advance(handles)
        return [h for h in handles if h.done()]

    def _holder_lost(self) -> bool:
        """Has a holder's worker gone? (Nothing came back for a while.) Then every round not back reports it."""
        try:
            self._check_holders()
        except HolderLost as lost:
            self.lost = lost  # (see results_many)
            return True
        return False

    @_ctrl_c_after
    def results_many(self, handles: list[_Round]) -> list[dict[int, Segment] | BaseException]:
        """Done rounds' segments, fetched in one exchange; a failed round's error in its place."""
        finished = [h for h in handles if h.done(finished=True)]
        try:
            values = iter(self.client.gather([f for h in finished for f in h.fetch.values()]) if finished else [])
        except Exception:  # something was lost on the way: each round on its own says what
            finished, values = [], iter([])
        out: list[dict[int, Segment] | BaseException] = []
        for h in handles:
            if h in finished:
                self.live.discard(h)
                out.append(_outcome({**{stage: next(values) for stage in h.fetch}, **h.collected()}))
                continue
            if self.lost is not None:
                out.append(self.lost)
                continue
            try:
                out.append(self._results(h))
            except Exception as exc:  # reported by the run loop, in round order
                out.append(exc)
        return out

    def _results(self, handle: _Round) -> dict[int, Segment] | NodeFailure:
        """A done round's segments by stage, or the failure of a node in it."""
        from distributed.client import FutureCancelledError

        fetch = list(handle.fetch.values())
        try:
            values = self.client.gather(fetch)
        except (NodeFailure, StateLostError):
            raise
        except (FutureCancelledError, CancelledError) as exc:
            # Data lost with a worker: the partitions sent again must not go to it (a scatter
            # to a dead worker waits for distributed's connect timeout).
            self._send_to(self._check_holders())
            raise DataLost(str(exc)) from exc
        except Exception as exc:
            self._check_holders()  # a lost actor shows as many things; name its node
            if type(exc).__name__ == "KilledWorker":
                error = PipelineError(f"A task of this pipeline killed its worker again and again: {exc}")
                raise Killed(error) from exc
            raise
        self.live.discard(handle)
        return _outcome({**dict(zip(handle.fetch, values, strict=True)), **handle.collected()})

    def _alive(self) -> set[str]:
        return set(self.client.scheduler_info(n_workers=-1).get("workers", {}))

    def _check_holders(self) -> set[str]:
        """The workers alive; :class:`HolderLost` raised if one holding a sequential node's state has gone."""
        assert self.plan is not None  # started
        if self.lost is not None:
            raise self.lost
        alive = self._alive()
        if not set(self.where.values()).union(*self.shards.values()) <= alive:
            # Asked again a moment later: a worker busy moving large data can be missing
            # from one answer (a false StateLostError was seen with 80 MB items).
            time.sleep(self.poll)
            alive = self._alive()
        holding = [(sid, a) for sid, a in self.where.items()] + [
            (sid, a) for sid, shards in self.shards.items() for a in shards[1:]
        ]
        for stage_id, address in holding:
            if address not in alive:
                stage = self.plan.stages[stage_id]
                assert isinstance(stage, SeqStage)  # only sequential stages have a worker
                what = "its state" if not stage.stateless else "the items it was holding for its next batch"
                self.lost = HolderLost(
                    StateLostError(
                        stage.node,
                        f"Node {stage.node!r} lived on worker {address}, which is gone; {what} was lost with it, "
                        "so the run cannot go on exactly. Run it again.",
                    )
                )
                raise self.lost
        return alive

    @_ctrl_c_after
    def cancel(self, handles: list[_Round] | None = None) -> None:
        """Cancel these rounds' tasks (every live round's by default)."""
        rounds = list(self.live) if handles is None else handles
        futures = [f for r in rounds for f in r.futures.values()]
        self.live.difference_update(rounds)
        if futures:
            self.client.cancel(futures, force=True)

    @_ctrl_c_after
    def final_states(self, n_source: int) -> dict[str, bytes]:
        """Each stateful node's state, asked for after its last step."""
        assert self.plan is not None and self.names is not None  # started
        futures = {}
        for s in self.plan.seq_stages:
            if not s.stateless:
                futures[s.node] = self.client.submit(
                    run_state, self.refs[s.id], state_step(s, n_source), key=self.names.key(s.id, "state"), pure=False
                )
        return dict(zip(futures, self.client.gather(list(futures.values())), strict=True))


def _on_this_machine(address: str) -> bool:
    """Is the scheduler at ``address`` on this machine (a loopback address)?

    Examples
    --------
    >>> _on_this_machine("tcp://127.0.0.1:8786"), _on_this_machine("tls://scheduler.example:8786")
    (True, False)
    """
    from distributed.comm import get_address_host

    try:
        host = get_address_host(address)
    except ValueError:
        return False
    return host in ("localhost", "::1") or host.startswith("127.")


def _failed(future: Any) -> bool:
    return future.status in ("error", "cancelled", "lost")


def _priority(task: TaskSpec) -> int:
    """Earlier rounds first (delivery is in round order); a sequential step before any fused work.

    Without it, tasks submitted within the scheduler's FIFO timeout of each
    other share a priority, and a worker ran its queue last-in first-out.
    """
    index = task.key[1]
    return (1 << 40) - index if task.sequential else -index


class _Round:
    """The futures of one submitted round."""

    __slots__ = ("direct", "fetch", "futures", "made", "worker")

    def __init__(self) -> None:
        self.futures: dict[Any, Any] = {}  # key -> future, every task
        self.fetch: dict[int, Any] = {}  # stage -> future, what the caller gathers
        self.direct: dict[int, Direct] = {}  # stage -> a step collected from its holder, without a task
        self.worker: str | None = None  # where its partition was sent, if it was not inside its task
        self.made: frozenset[int] = frozenset()  # the sequential stages whose holders existed at its submission

    def done(self, finished: bool = False) -> bool:
        """Is everything the caller gathers here: done, failed or lost (``finished``: each a result)?"""
        ended = (lambda f: f.status == "finished") if finished else (lambda f: f.done() or _failed(f))
        return all(map(ended, self.fetch.values())) and all(d.result is not None for d in self.direct.values())

    def collected(self) -> dict[int, Segment]:
        """The steps collected from their holders, by stage."""
        return {stage: d.result for stage, d in self.direct.items() if d.result is not None}


def _outcome(results: dict[int, Any]) -> dict[int, Segment] | NodeFailure:
    """A round's fetched results: its segments by stage, or the first failure among them.

    A task whose node raised returns the :class:`NodeFailure` rather than
    raising it (see ``worker.run_fused``), and the tasks below pass it on,
    each with what its stage produced before the failure: those segments, by
    stage, are the failure's ``segments`` (delivered before it is raised).
    """
    failures = [v for v in results.values() if isinstance(v, NodeFailure)]
    if not failures:
        return _with_carried(results)
    failure = failures[0]
    if all(f.partial is not None for f in failures):
        segments = {s: v.partial if isinstance(v, NodeFailure) else v for s, v in results.items()}
        failure.segments = _with_carried(segments)  # type: ignore[arg-type]
    return failure


def _with_carried(results: dict[int, Segment]) -> dict[int, Segment]:
    """Add the segments that came back inside another's (see ``worker.run_seq``)."""
    for res in list(results.values()):
        if res.carried is not None:
            stage, carried = res.carried
            results[stage] = carried
            res.carried = None
    return results
