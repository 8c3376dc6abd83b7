"""Where the tasks of a run execute: in the caller, or on a distributed cluster.

Both backends take the same :class:`~pypiper_dask.compiler.TaskSpec` lists
(one list per round), follow the :class:`Backend` protocol, and return the
same results; which one a run uses is decided in
:func:`pypiper_dask.runtime.scheduler.choose_backend`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import threading
import time
from collections.abc import Generator
from concurrent.futures import CancelledError
from typing import Any, Protocol, cast

from ..compiler.plan import FusedStage, Plan, SeqStage
from ..compiler.tasks import Ref, StageRef, TaskNames, TaskSpec, fused_spec, seq_spec, state_step
from ..errors import PipelineError, SchedulerError, StateLostError
from ..log import logger
from ..model.node import Node
from ..ordering import Segment
from ..worker import Chunk, NodeFailure, SeqHolder, run_state
from .output import PipelineResult
from .restarts import main_not_reimported_by_nannies

__all__ = ["Backend", "DataLost", "DistributedBackend", "HolderLost", "InProcessBackend", "SyncTaskBackend"]


class Backend(Protocol):
    """What the run loop needs of a place to run tasks.

    ``window`` is how many rounds may be in flight at once; ``submit`` takes
    one round's tasks and returns a handle; ``wait`` returns the handles
    (of those given) that are done, waiting up to ``timeout`` seconds for
    one; ``results_many`` gives done rounds' fetched segments by stage, or in
    a round's place the error it ended with (a task's failure, or :class:`DataLost`).
    """

    in_process: bool  # runs the caller's node objects, not copies

    @property
    def n_workers(self) -> int: ...
    @property
    def window(self) -> int: ...

    def __enter__(self) -> Any: ...
    def __exit__(self, *exc: Any) -> None: ...
    def start(
        self, plan: Plan, names: TaskNames, states: dict[int, bytes | None] | None = None, first: int = 0
    ) -> None: ...
    def submit(self, tasks: list[TaskSpec]) -> Any: ...
    def wait(self, handles: list[Any], timeout: float) -> list[Any]: ...
    def results_many(self, handles: list[Any]) -> list[dict[int, Segment] | BaseException]: ...
    def cancel(self, handles: list[Any] | None = None) -> None: ...
    def final_states(self, n_source: int) -> dict[str, bytes]: ...


class _RunsTasks:
    """``iter_pipeline`` for backends that run tasks on copies of the nodes: the run loop."""

    def iter_pipeline(
        self, plan: Plan, **options: Any
    ) -> Generator[None, None, tuple[PipelineResult, dict[str, Node]]]:
        """Run ``plan``, pausing after each delivery (see :func:`~pypiper_dask.runtime.execute.iter_execute`)."""
        from .execute import iter_execute

        options.pop("nodes", None)  # the plan's snapshot holds the copies that travel
        return (yield from iter_execute(plan, cast(Backend, self), **options))


class InProcessBackend:
    """Runs a pipeline in the calling process: its nodes called depth first, as pyPiper calls them.

    No tasks and no partitions (see :mod:`pypiper_dask.runtime.inprocess`).
    """

    in_process = True  # it runs the caller's node objects

    def __enter__(self) -> InProcessBackend:
        return self

    def __exit__(self, *exc: Any) -> None:
        pass

    def iter_pipeline(
        self, plan: Plan, nodes: dict[str, Node] | None = None, **options: Any
    ) -> Generator[None, None, tuple[PipelineResult, dict[str, Node]]]:
        """Run ``plan`` on ``nodes`` themselves (copies of its snapshot's if not given), pausing between blocks.

        Returns the result, and the source and stateful nodes as they ended.
        """
        from .execute import node_error
        from .inprocess import iter_in_process

        options.pop("partition_size", None)  # nothing is cut into partitions here
        options.pop("snapshot_every", None)  # nor is anything lost
        options.pop("reached", None)  # the caller's own nodes: they are where they got
        if nodes is None:
            nodes = {name: plan.snapshot.node(name) for name in plan.snapshot.order}
        try:
            result = yield from iter_in_process(plan.snapshot, nodes, **options)
        except NodeFailure as failure:
            raise node_error(failure) from failure.error
        return result, _final_nodes(plan, nodes)


class SyncTaskBackend(_RunsTasks):
    """Runs each round's tasks in the calling process on Dask's synchronous scheduler.

    The task path of a cluster run without a cluster: what the tests use to
    check partitioning, splicing and the task specs quickly.
    """

    in_process = False  # its tasks run on copies, as a cluster's do

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
            else SeqHolder(seq_spec(plan, s), restore=states.get(s.id), start=first)
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

    def final_states(self, n_source: int) -> dict[str, bytes]:
        assert self.plan is not None  # started
        return {s.node: run_state(self.refs[s.id], 0) for s in self.plan.seq_stages if not s.stateless}


def _final_nodes(plan: Plan, nodes: dict[str, Node]) -> dict[str, Node]:
    """The nodes whose final state goes back to the caller's objects: the source and the stateful ones."""
    snap = plan.snapshot
    return {n: nodes[n] for n in snap.order if n == snap.root or not snap.info[n].stateless}


class DistributedBackend(_RunsTasks):
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
        self.refs: dict[int, Any] = {}  # stage -> its scattered spec, or its holder (an actor)
        self.where: dict[int, str] = {}  # sequential stage -> the worker holding it
        self.live: set[_Round] = set()  # rounds submitted and not fetched yet
        self.lost: HolderLost | None = None  # a holder's worker died: rounds not back report it
        self.generation = 0  # how many times the holders were re-created
        self._specs = 0  # fused stage specs sent

    def __enter__(self) -> DistributedBackend:
        import dask
        from distributed import Client, LocalCluster

        try:
            if self.client is None and self.address is None:
                # Entered before the cluster, left after it closed (the stack unwinds in reverse).
                self._stack.enter_context(_QUIET_DISTRIBUTED)
                self._stack.enter_context(main_not_reimported_by_nannies())  # workers restarted too
                with _main_not_reimported(), _sigint_ignored():
                    cluster = self._stack.enter_context(
                        LocalCluster(
                            n_workers=self.n_workers_wanted,
                            threads_per_worker=1,
                            processes=True,
                            host="127.0.0.1",
                            dashboard_address="127.0.0.1:0",
                            silence_logs=logging.ERROR,
                            # Workers that ignore Ctrl-C and log only CRITICAL records: the caller
                            # reports what goes wrong (see pypiper_dask.worker.process).
                            preload=[*dask.config.get("distributed.worker.preload", []), _WORKER_SETUP],
                        )
                    )
                self.client = self._stack.enter_context(Client(cluster, set_as_default=False))
                link = self.client.dashboard_link
                if link:
                    logger.info("dashboard at %s", link)
            elif self.client is None and self.address is not None:
                client = _connect(self.address, self.timeout, self.security)
                self.client = self._stack.enter_context(client)
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stack.close()

    #: Seconds between checks that the workers holding sequential nodes are alive.
    poll = 0.5

    #: Seconds to wait for a worker to restore lost holders on, when none is left.
    wait_for_worker = 15.0

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
        client = self.client
        self.plan, self.names = plan, names
        self.refs, self.where, self.live, self.lost, self.generation, self._specs = {}, {}, set(), None, 0, 0
        workers = sorted(client.scheduler_info(n_workers=-1).get("workers", {}))
        self._scatter_specs()
        self._place_holders(workers, states or {}, first)

    def _scatter_specs(self, only: set[int] | None = None) -> None:
        """Send each fused stage's spec (or those of the stages ``only``) to the cluster, once."""
        assert self.plan is not None and self.names is not None  # started
        for stage in self.plan.stages:
            if isinstance(stage, FusedStage) and (only is None or stage.id in only):
                # Sent once; tasks carry only a reference, so a heavy node crosses the network
                # once per worker per run (a worker fetches it for its first task), not once
                # per task. Not broadcast: a worker dying while the scheduler copies a value
                # to all the others left Client.scatter(broadcast=True) waiting for ever
                # (distributed 2026.8.0). Keyed under the stage's name: the dashboard shows
                # it as that node's.
                self._specs += 1
                key = self.names.key(stage.id, "spec", self._specs)
                self.refs[stage.id] = self._scatter(key, fused_spec(self.plan, stage, self.names.token))

    def _scatter(self, key: Any, value: Any) -> Any:
        """``value`` sent to a worker under ``key``; its future."""
        for attempt in range(5):
            try:
                return self.client.scatter({key: value}, hash=False)[key]
            except OSError:  # the worker it went to is dying: try another (a lost holder shows in wait())
                if attempt == 4:
                    raise
                time.sleep(0.2 * (attempt + 1))
        raise AssertionError("unreachable")

    def _respec(self) -> None:
        """Send again the specs lost with a worker (nobody else had fetched them yet)."""
        gone = ("lost", "cancelled", "error")
        lost = {sid for sid, ref in self.refs.items() if sid not in self.where and ref.status in gone}
        if lost:
            self._scatter_specs(lost)

    def _place_holders(self, workers: list[str], states: dict[int, bytes | None], start: int) -> None:
        """Create each sequential stage's holder (from ``states`` where given), spread over ``workers``."""
        assert self.plan is not None and self.names is not None  # started
        for i, stage in enumerate(self.plan.seq_stages):
            # Holders spread over the workers; their steps are tasks that may run
            # anywhere and call the holder, which runs them on its own thread.
            self.where[stage.id] = where = workers[i % len(workers)]
            self.refs[stage.id] = self.client.submit(
                SeqHolder,
                seq_spec(self.plan, stage),
                4 * self.window + 8,
                states.get(stage.id),
                start,
                actor=True,
                key=self.names.key(stage.id, "actor", self.generation),
                workers=[where],
                allow_other_workers=False,
            )

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
        self._place_holders(workers, states, start)

    #: Partitions of at least this many items are scattered to a worker rather
    #: than embedded in their task: a task's embedded data also lives in the
    #: scheduler (for a LocalCluster, in the caller's process) until it is forgotten.
    scatter_from = 1000

    def _data(self, value: Any, task: Any) -> Any:
        if not (isinstance(value, Chunk) and len(value) >= self.scatter_from):
            return value
        assert self.names is not None  # started
        return self._scatter(self.names.partition(task), value)  # named after the source, as the dashboard shows

    def submit(self, tasks: list[TaskSpec]) -> _Round:
        """Submit one round's tasks; the handle says which results the caller gathers."""
        round_ = _Round()
        self._respec()
        for t in tasks:
            args = [
                round_.futures[a.key]
                if isinstance(a, Ref)
                else self.refs[a.stage]
                if isinstance(a, StageRef)
                else self._data(a, t.key)
                for a in t.args
            ]
            future = self.client.submit(t.func, *args, key=t.key, pure=False, priority=_priority(t))
            round_.futures[t.key] = future
            if t.fetch:
                round_.fetch[t.stage] = future
        self.live.add(round_)
        return round_

    def wait(self, handles: list[_Round], timeout: float) -> list[_Round]:
        """The rounds among ``handles`` that are done, failed or lost, waiting up to ``timeout`` for one."""
        from distributed import wait

        pending = [f for h in handles for f in h.fetch.values() if not f.done()]
        if pending:
            try:
                with self.client.as_current():
                    wait(pending, timeout=min(timeout, self.poll), return_when="FIRST_COMPLETED")
            except TimeoutError:
                try:
                    self._check_holders()
                except HolderLost as lost:
                    self.lost = lost  # every round not back reports it (results_many)
                    return list(handles)
                # then say which are done (some may have been before the wait)
            except CancelledError:
                pass  # a future lost with its worker: its round is back, and results_many() says so
        return [h for h in handles if all(f.done() or _failed(f) for f in h.fetch.values())]

    def results_many(self, handles: list[_Round]) -> list[dict[int, Segment] | BaseException]:
        """Done rounds' segments, fetched in one exchange; a failed round's error in its place."""
        finished = [h for h in handles if all(f.status == "finished" for f in h.fetch.values())]
        try:
            values = iter(self.client.gather([f for h in finished for f in h.fetch.values()]) if finished else [])
        except Exception:  # something was lost on the way: each round on its own says what
            finished, values = [], iter([])
        out: list[dict[int, Segment] | BaseException] = []
        for h in handles:
            if h in finished:
                self.live.discard(h)
                out.append(_outcome({stage: next(values) for stage in h.fetch}))
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
            self._check_holders()
            raise DataLost(str(exc)) from exc
        except Exception as exc:
            self._check_holders()  # a lost actor shows as many things; name its node
            if type(exc).__name__ == "KilledWorker":
                raise PipelineError(f"A task of this pipeline killed its worker again and again: {exc}") from exc
            raise
        self.live.discard(handle)
        return _outcome(dict(zip(handle.fetch, values, strict=True)))

    def _alive(self) -> set[str]:
        return set(self.client.scheduler_info(n_workers=-1).get("workers", {}))

    def _check_holders(self) -> None:
        """Raise :class:`HolderLost` if a worker holding a sequential node's state has gone."""
        assert self.plan is not None  # started
        if self.lost is not None:
            raise self.lost
        alive = self._alive()
        if not set(self.where.values()) <= alive:
            # Asked again a moment later: a worker busy moving large data can be missing
            # from one answer (a false StateLostError was seen with 80 MB items).
            time.sleep(self.poll)
            alive = self._alive()
        for stage_id, address in self.where.items():
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

    def cancel(self, handles: list[_Round] | None = None) -> None:
        """Cancel these rounds' tasks (every live round's by default)."""
        rounds = list(self.live) if handles is None else handles
        futures = [f for r in rounds for f in r.futures.values()]
        self.live.difference_update(rounds)
        if futures:
            self.client.cancel(futures, force=True)

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


def _failed(future: Any) -> bool:
    return future.status in ("error", "cancelled", "lost")


def _priority(task: TaskSpec) -> int:
    """Earlier rounds first (delivery is in round order); a sequential step before any fused work.

    Without it, tasks submitted within the scheduler's FIFO timeout of each
    other share a priority, and a worker ran its queue last-in first-out.
    """
    index = task.key[1]
    return (1 << 40) - index if task.sequential else -index


class DataLost(Exception):
    """A round's input (a scattered partition) went with its worker; the caller sends it again."""


class HolderLost(DataLost):
    """A sequential stage's holder went with its worker; ``error`` is raised if it cannot be restored."""

    def __init__(self, error: StateLostError) -> None:
        super().__init__(str(error))
        self.error = error


class _Round:
    """The futures of one submitted round."""

    __slots__ = ("fetch", "futures")

    def __init__(self) -> None:
        self.futures: dict[Any, Any] = {}  # key -> future, every task
        self.fetch: dict[int, Any] = {}  # stage -> future, what the caller gathers


def _outcome(results: dict[int, Any]) -> dict[int, Segment] | NodeFailure:
    """A round's fetched results: its segments by stage, or the first failure among them.

    A task whose node raised returns the :class:`NodeFailure` rather than
    raising it (see ``worker.run_fused``), and the tasks below pass it on.
    """
    for value in results.values():
        if isinstance(value, NodeFailure):
            return value
    return _with_carried(results)


def _with_carried(results: dict[int, Segment]) -> dict[int, Segment]:
    """Add the segments that came back inside another's (see ``worker.run_seq``)."""
    for res in list(results.values()):
        if res.carried is not None:
            stage, carried = res.carried
            results[stage] = carried
            res.carried = None
    return results


def _connect(address: str, timeout: float, security: Any) -> Any:
    """A client of the Dask scheduler at ``address``; :class:`SchedulerError` if none answers within ``timeout``.

    ``Client(address, timeout=...)`` alone is not enough: distributed waits for
    the other side's handshake with no time limit, so a service that is not a
    Dask scheduler (an HTTP server, waiting for a request line) kept it waiting
    forever; one that answers other bytes raised whatever reading them raised
    (a ``MemoryError`` for an absurd frame length), and the half-made client
    printed a ``TimeoutError`` from ``Client.__del__`` at exit. So the scheduler
    is asked who it is first, within the time limit, and a client whose start
    fails anyway is closed here.
    """
    from distributed import Client

    def fail(reason: str) -> SchedulerError:
        hint = (
            " A tls:// address needs Pipeline(security=distributed.security.Security(...))."
            if address.startswith("tls://") and security is None
            else " Is it running, and is the address (and its tcp:// or tls:// protocol) right?"
            " Pipeline(connect_timeout=...) sets the wait."
        )
        return SchedulerError(
            f"Could not reach the Dask scheduler at {address!r} within {timeout:g} s ({reason}).{hint}"
        )

    try:
        kind = _identify(address, timeout, security)
    except _NoScheduler as exc:
        raise fail(str(exc)) from exc.__cause__
    except Exception as exc:  # connecting failed (refused, TLS settings, ...)
        raise fail(f"{type(exc).__name__}: {exc}") from exc
    if kind != "Scheduler":  # a worker's address, say
        raise fail(f"a Dask {kind or 'server'} answered, not a scheduler")
    client = Client.__new__(Client)  # held before it connects, so a failed start is closed here
    try:
        Client.__init__(client, address, timeout=timeout, security=security, set_as_default=False)
    except Exception as exc:
        with contextlib.suppress(Exception):
            client.close(timeout=timeout)
        raise fail(f"{type(exc).__name__}: {exc}") from exc
    return client


def _identify(address: str, timeout: float, security: Any) -> str | None:
    """What the Dask server at ``address`` says it is (``"Scheduler"``), asked within about ``timeout`` seconds.

    Raises :class:`_NoScheduler` when what answers is no Dask server.
    """
    from concurrent.futures import ThreadPoolExecutor

    from distributed.comm import connect
    from distributed.security import Security

    args = (security or Security()).get_connection_args("client")

    async def ask() -> Any:
        try:
            comm = await connect(address, timeout=timeout, **args)  # retries until `timeout`, then OSError
        except (OSError, TypeError, ValueError):  # unreachable, refused, TLS settings
            raise
        except Exception as exc:  # its first bytes, read as a Dask handshake, meant nonsense
            raise _NoScheduler(
                f"something answered in another protocol than Dask's ({type(exc).__name__}: {exc})"
            ) from exc
        try:
            await comm.write({"op": "identity", "n_workers": 0, "reply": True})
            return await comm.read()
        finally:
            comm.abort()

    async def bounded() -> Any:
        # A little past connect's own limit, so an unreachable address fails there (saying why):
        # running out here means a connection was made and then nothing answered as Dask does.
        try:
            return await asyncio.wait_for(ask(), timeout + 0.5)
        except asyncio.TimeoutError:  # TimeoutError from Python 3.11 on
            raise _NoScheduler(
                "something accepted the connection but did not answer as a Dask scheduler does"
            ) from None

    # An event loop of its own, in a thread: the caller may be running one (a notebook).
    with ThreadPoolExecutor(1, thread_name_prefix="pypiper-connect") as pool:
        answer = pool.submit(asyncio.run, bounded()).result()
    return answer.get("type") if isinstance(answer, dict) else None


class _NoScheduler(Exception):
    """No Dask scheduler answered; the message says what happened instead."""


class _QuietDistributed:
    """distributed's log handlers in this process at ERROR while any cluster a run started is up.

    ``LocalCluster(silence_logs=...)`` lowers them per cluster and puts back
    what it found when it closes: with two runs from two threads at once, the
    first to close turned INFO back on while the second still ran. Counted
    here instead: the first run in lowers them (so the cluster finds them
    lowered and restores nothing), the last one out puts them back.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count = 0
        self._saved: list[tuple[logging.Handler, int]] = []

    def __enter__(self) -> None:
        with self._lock:
            if self._count == 0:
                for root in ("distributed", "bokeh"):
                    for handler in logging.getLogger(root).handlers:
                        if isinstance(handler, logging.StreamHandler) and handler.level < logging.ERROR:
                            self._saved.append((handler, handler.level))
                            handler.setLevel(logging.ERROR)
            self._count += 1

    def __exit__(self, *exc: Any) -> None:
        with self._lock:
            self._count -= 1
            if self._count == 0:
                for handler, level in self._saved:
                    handler.setLevel(level)
                self._saved.clear()


_QUIET_DISTRIBUTED = _QuietDistributed()

#: The preload module each worker process of a cluster a run starts runs first.
_WORKER_SETUP = "pypiper_dask.worker.process"


@contextlib.contextmanager
def _sigint_ignored():
    """Keep Ctrl-C from the worker processes a cluster starts; in this process, raise it once they are up.

    SIGINT is blocked in this thread, so the cluster's threads (started now)
    and the worker processes they start have it blocked from their first
    instruction, until their preload (:mod:`pypiper_dask.worker.process`)
    ignores it: a Ctrl-C while they import printed their tracebacks. Here a
    handler notes a Ctrl-C of that time, and it is raised (the previous
    handler called: ``KeyboardInterrupt``) once the cluster has started, which
    then closes it. Only the main thread can set a handler: a run started from
    another thread does without.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    hold = hasattr(signal, "pthread_sigmask")  # not on Windows
    if hold:
        # multiprocessing starts its resource tracker with the first worker, and unblocks
        # SIGINT in the thread that does (the cluster's); started now, it leaves that alone.
        from multiprocessing import resource_tracker

        resource_tracker.ensure_running()
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT}) if hold else None
    got = []  # the Ctrl-C noted while the cluster started
    previous = signal.signal(signal.SIGINT, lambda signum, frame: got.append(signum))
    try:
        yield
    finally:
        if hold:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # a pending Ctrl-C reaches the handler here
        signal.signal(signal.SIGINT, signal.SIG_DFL if previous is None else previous)
    if got and callable(previous):
        previous(signal.SIGINT, None)  # Python's own raises KeyboardInterrupt
    elif got and previous != signal.SIG_IGN:
        raise KeyboardInterrupt


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
