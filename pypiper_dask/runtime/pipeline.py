"""``Pipeline``: pyPiper's entry point, lazy, compiled to Dask tasks when run."""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from dataclasses import replace
from functools import cached_property, partial
from typing import Any

from ..compiler.picture import NO_DOT, plan_html, plan_picture, plan_text
from ..compiler.plan import Plan, compile_plan
from ..compiler.tasks import TaskNames
from ..compiler.to_dask import Layout, PipelineCollection, collection_graph
from ..errors import NodeTypeError, OptionError
from ..log import logger
from ..model.graph import NodeGraph
from ..model.node import (
    LEFT_OUT,
    PRIVATE,
    Node,
    constructed_again,
    mark_used,
    process_attributes,
    reinitialise,
)
from ..model.pickling import dumps_node
from ..model.snapshot import Snapshot, load_node
from ..worker import NodeFailure
from ..worker.keyed import KeyedInstances
from ..worker.setups import tear_down
from .backends import DistributedBackend, _outcome
from .execute import drain, node_error, run_plan
from .handle import RunHandle
from .inprocess import set_up_here
from .options import RunOptions
from .output import Output, PipelineResult
from .progress import progress_callback
from .recovery import DEFAULT_SNAPSHOT_EVERY
from .resources import prepare_workers
from .scheduler import choose_backend
from .source import SourceReader

__all__ = ["Pipeline"]

_IGNORED_PYPIPER_OPTIONS = ("exec_name",)


class Pipeline:
    """A pyPiper pipeline, run on Dask.

    Building one runs nothing; :meth:`run` compiles the graph into tasks and
    runs them. ``n_threads``, ``quiet``, ``client``, ``partition_size`` and
    ``progress`` are also attributes, readable and settable (a value set is
    checked like one given here). ``print(pipeline)`` shows the graph and the
    plan it compiles to; in a notebook the pipeline shows them as a table.
    ``with Pipeline(...) as p:`` keeps one local cluster for the runs inside
    (see :meth:`open`).

    Parameters
    ----------
    graph : NodeGraph or Node
        The nodes, rooted at the source. The pipeline keeps the graph's shape
        as it is now (nodes added to it later are not run). A run in this
        process uses these node objects themselves, as pyPiper does; a run on
        a cluster sends copies and gives the source and the stateful nodes
        their final state back. Each run after the first re-initialises the
        nodes in place (see :func:`~pypiper_dask.model.node.reinitialise`).
    n_threads : int, optional
        ``1``: run in the calling process. ``N > 1``: start a local cluster of N
        single-threaded worker processes for each run (or keep one across runs:
        :meth:`open`, ``with``). Not given: the active
        default ``distributed`` client if there is one, else the calling process.
    quiet : bool
        Don't print the leaves' items.
    client : distributed.Client or str, optional
        Run on this cluster (a client, or a scheduler address such as
        ``"tcp://127.0.0.1:8786"``); takes precedence over ``n_threads``.
    partition_size : int, optional
        Source items per partition; chosen automatically when not given.
        Output never depends on it.
    progress : bool, optional
        A progress bar (tqdm; a widget in a notebook) of source items done
        against the source's ``size``: ``True`` always, ``False`` never, not
        given: for runs longer than two seconds.
    connect_timeout : float
        Seconds to wait for the scheduler when ``client`` is an address.
    security : distributed.security.Security, optional
        TLS settings for a ``client`` address such as ``"tls://host:8786"``.
    snapshot_every : int or (int, float) or False
        On a cluster, how often the state of the stateful, batched and
        ``BATCH_SIZE_ALL`` nodes is copied to this process, so that a node
        whose worker dies is restored and the run goes on: at least every
        this many source items and seconds (default ``(250_000, 5.0)``; a node's
        own ``snapshot_every=`` may ask for more often). ``False``: never (a
        lost worker holding such a node fails the run with ``StateLostError``).
    ordered : bool
        ``True`` (the default): the leaves get their items in the sequential
        run's order. ``False``: on a cluster, each partition's items go to the
        leaves (printed, collected, yielded by :meth:`stream`) as soon as the
        partition is done, so a slow partition holds back no other; the same
        items, in another order. Stateful, batched and ``BATCH_SIZE_ALL``
        nodes still see their items in source order, and a node's prints for
        one item stay together. Not with ``checkpoint=``. In this process
        (``n_threads=1``) the order is the sequential one anyway.

    Examples
    --------
    >>> class Gen(Node):
    ...     def setup(self, size):
    ...         self.pos = 0
    ...     def run(self, data):
    ...         if self.pos < self.size:
    ...             self.emit(self.pos)
    ...             self.pos += 1
    ...         else:
    ...             self.close()
    >>> class Square(Node):
    ...     def run(self, data):
    ...         self.emit(data ** 2)
    >>> pipeline = Pipeline(Gen("gen", size=4) | Square("square"), n_threads=1)
    >>> result = pipeline.run()
    0
    1
    4
    9
    >>> result["square"]
    [0, 1, 4, 9]
    """

    def __init__(
        self,
        graph: NodeGraph | Node,
        n_threads: int | None = None,
        quiet: bool = False,
        *,
        client: Any = None,
        partition_size: int | None = None,
        progress: bool | None = None,
        connect_timeout: float = 10.0,
        security: Any = None,
        snapshot_every: Any = DEFAULT_SNAPSHOT_EVERY,
        ordered: bool = True,
        **kwargs: Any,
    ) -> None:
        for name in _IGNORED_PYPIPER_OPTIONS:
            kwargs.pop(name, None)
        if kwargs:
            raise NodeTypeError(f"Pipeline() got unexpected keyword argument(s) {sorted(kwargs)!r}.")
        if isinstance(graph, Node):
            graph = NodeGraph(graph)
        if not isinstance(graph, NodeGraph):
            raise NodeTypeError(f"Pipeline() takes a NodeGraph or a Node, not {type(graph).__name__} {graph!r}.")
        self.options = RunOptions(
            n_threads, quiet, client, partition_size, progress, connect_timeout, security, snapshot_every, ordered
        )
        self._snapshot = Snapshot.from_graph(graph, pickle=False)
        # The caller's objects: what an in-process run calls, and what a cluster run's
        # final state goes back to (as pyPiper's nodes hold theirs).
        self._originals = {n.name: n for n in graph}
        self._held: Any = None  # the backend whose cluster open() keeps
        self._scope = uuid.uuid4().hex  # the per-process set-up scope of the runs on a kept cluster
        self._worker_setup = any(info.worker_setup for info in self._snapshot.info.values())
        if self.options.leaves_process():
            self._snapshot.with_nodes(self._originals)  # a node that cannot travel: say so now

    # The options, readable and settable one by one; a value set is checked like a new one.
    n_threads = property(lambda self: self.options.n_threads, lambda self, v: self._set(n_threads=v))
    quiet = property(lambda self: self.options.quiet, lambda self, v: self._set(quiet=v))
    client = property(lambda self: self.options.client, lambda self, v: self._set(client=v))
    partition_size = property(lambda self: self.options.partition_size, lambda self, v: self._set(partition_size=v))
    progress = property(lambda self: self.options.progress, lambda self, v: self._set(progress=v))
    ordered = property(lambda self: self.options.ordered, lambda self, v: self._set(ordered=v))

    def _set(self, **change: Any) -> None:
        self.options = self.options.replace(**change)

    @cached_property
    def plan(self) -> Plan:
        """The compiled plan (compiled on first use)."""
        return compile_plan(self._snapshot)

    def run(
        self,
        update_callback: Callable[[int, int | None], None] | None = None,
        collect: bool = True,
        *,
        checkpoint: str | None = None,
        overwrite: bool = False,
    ) -> PipelineResult:
        """Run the pipeline and return each leaf's items.

        Parameters
        ----------
        update_callback : callable, optional
            Called as ``update_callback(done, total)``: source items fully
            processed so far, and the source's ``size`` (or ``None``).
        collect : bool
            Keep the leaves' items in the result; ``False`` keeps only counts.
        checkpoint : str, optional
            A local path or fsspec URL: the run writes its consistent cuts
            there (at ``snapshot_every``) and the delivered position after
            every partition; running the same pipeline with the same
            checkpoint again resumes where it stopped, printing only what was
            not delivered (at most one partition repeats at the seam). A
            complete checkpoint prints nothing and returns its stored result.
            At ``n_threads=1`` such a run goes partition by partition on
            copies of the nodes, as on a cluster. A checkpoint holds pickles:
            resume only from a place you trust.
        overwrite : bool
            With ``checkpoint``: ignore what is there and start over.

        Returns
        -------
        PipelineResult
            Each leaf's items, in stream order (with ``collect=False``, only
            their counts), and the items ``on_error`` dropped.

        Raises
        ------
        NodeError
            A node's ``run`` raised (the original exception is its ``__cause__``),
            after everything a sequential run output before the failing call was
            printed; its ``partial`` holds those items (or their counts).
        PipelineError
            Any other failure of the run (see the error classes).
        """
        return self._run_on(self._backend(checkpoint), update_callback, collect, checkpoint, overwrite)

    def stream(self, *, checkpoint: str | None = None, overwrite: bool = False) -> Iterator[tuple[str, Any]]:
        """Run the pipeline and yield ``(leaf, item)`` as items arrive, in the sequential order.

        The first items come after the first partition, not at the end;
        memory stays bounded on a source that never ends. The leaves' items
        are yielded instead of printed; what nodes print still reaches stdout
        in its place. Leaving the loop early (``break``, an exception, the
        iterator dropped) cancels the run and closes a cluster it started.
        ``checkpoint``/``overwrite``: as for :meth:`run`, "delivered" meaning
        yielded (a complete checkpoint yields nothing). With ``ordered=False``
        the items come as their partitions finish, not in the sequential order.

        Yields
        ------
        tuple of (str, object)
            A leaf's name and one of its items.

        Examples
        --------
        >>> from pypiper_dask.demo import Generate, Square
        >>> for leaf, item in Pipeline(Generate("gen", size=3) | Square("sq"), n_threads=1).stream():
        ...     print(leaf, item)
        sq 0
        sq 1
        sq 4
        """
        pending: list = []
        backend = self._backend(checkpoint)
        keep = self._checkpoint(backend, checkpoint, overwrite, False)
        if keep is not None and keep.done is not None:
            return
        run = self._iter_run(backend, None, False, pending, keep)
        try:
            while True:
                try:
                    next(run)
                except StopIteration:
                    return
                except Exception:
                    # A node failed: what the run delivered before the failing call is yielded first.
                    items, pending[:] = pending[:], []
                    yield from items
                    raise
                if pending:
                    items, pending[:] = pending[:], []
                    yield from items
        finally:
            run.close()  # a loop left early: cancel the run, close a cluster it started

    def submit(
        self,
        update_callback: Callable[[int, int | None], None] | None = None,
        collect: bool = True,
        *,
        checkpoint: str | None = None,
        overwrite: bool = False,
    ) -> RunHandle:
        """Start the run in the background and return at once.

        The :class:`~pypiper_dask.runtime.handle.RunHandle` has ``done()``,
        ``result(timeout=None)``, ``cancel()`` and ``progress``; ``await``
        it from async code. What the run prints goes where this call's prints
        would (in a notebook, the cell that submitted it). ``checkpoint``/``overwrite``:
        as for :meth:`run`. A script that ends before the run does waits for it
        at exit, as ``concurrent.futures`` does (Ctrl-C cancels it).

        Returns
        -------
        RunHandle
            The run going on; ``handle.result()`` waits for its
            :class:`PipelineResult` (or raises its error).

        Examples
        --------
        >>> from pypiper_dask.demo import Generate, Square
        >>> handle = Pipeline(Generate("gen", size=3) | Square("sq"), n_threads=1, quiet=True).submit()
        >>> handle.result(timeout=60)["sq"]
        [0, 1, 4]
        """
        backend = self._backend(checkpoint)  # chosen here, in the caller's context (its default client)
        keep = self._checkpoint(backend, checkpoint, overwrite, collect)
        stored = None if keep is None else keep.done  # a complete checkpoint: its result, nothing run

        def start(callback: Any) -> Generator[None, None, PipelineResult]:
            if stored is not None:
                return _stored(stored)
            return self._iter_run(backend, callback, collect, None, keep)

        return RunHandle(
            start,
            update_callback,
            dashboard=lambda: getattr(_client_of(backend), "dashboard_link", None),
        )

    def open(self) -> Pipeline:
        """Start the local cluster now and keep it for later runs, until :meth:`close`.

        Only a pipeline that would start a cluster of its own (``n_threads > 1``,
        no client) has one to keep; for others this does nothing.
        ``with Pipeline(..., n_threads=4) as p:`` opens and closes it.

        Returns
        -------
        Pipeline
            This pipeline.
        """
        options = self.options
        if self._held is None and options.client is None and (options.n_threads or 1) > 1:
            backend = choose_backend(options.n_threads, None)
            backend.__enter__()
            self._held = backend
        return self

    def close(self) -> None:
        """Close the cluster :meth:`open` started (nothing if none)."""
        held, self._held = self._held, None
        if held is not None:
            try:
                if self._worker_setup:
                    tear_down_everywhere(held.client, self._scope)
            finally:
                held.__exit__(None, None, None)

    def __enter__(self) -> Pipeline:
        return self.open()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def dashboard_link(self) -> str | None:
        """The dashboard of the cluster kept open by :meth:`open`, if any."""
        return None if self._held is None else self._held.client.dashboard_link

    def _backend(self, checkpoint: str | None = None) -> Any:
        options = self.options
        return choose_backend(
            options.n_threads,
            options.client,
            connect_timeout=options.connect_timeout,
            security=options.security,
            held=None if self._held is None else self._held.client,
            checkpoint=checkpoint is not None,
        )

    def _run_on(
        self,
        backend: Any,
        update_callback: Callable[[int, int | None], None] | None = None,
        collect: bool = True,
        checkpoint: str | None = None,
        overwrite: bool = False,
    ) -> PipelineResult:
        """Run on ``backend`` (tests pass one; :meth:`run` lets the scheduler module choose)."""
        keep = self._checkpoint(backend, checkpoint, overwrite, collect)
        if keep is not None and keep.done is not None:
            return keep.done
        return drain(self._iter_run(backend, update_callback, collect, None, keep))

    def _checkpoint(self, backend: Any, checkpoint: str | None, overwrite: bool, collect: bool) -> Any:
        """The run's :class:`~pypiper_dask.runtime.checkpoint.CheckpointRun` (``None`` without ``checkpoint``)."""
        if checkpoint is None:
            return None
        if backend.in_process:  # chosen by a caller that did not say checkpoint (a test's backend)
            raise OptionError("checkpoint=...: this backend runs the caller's nodes and cannot cut them.")
        if not self.options.ordered:  # its delivered position is a count of items in source order
            raise OptionError("checkpoint=...: needs ordered delivery; this pipeline has ordered=False.")
        from .checkpoint import Checkpoint, CheckpointRun, identity

        return CheckpointRun(
            Checkpoint(checkpoint, identity(self._snapshot, self._originals)), overwrite=overwrite, collect=collect
        )

    def _iter_run(
        self,
        backend: Any,
        update_callback: Callable[[int, int | None], None] | None,
        collect: bool,
        stream: list | None,
        checkpoint: Any = None,
    ) -> Generator[None, None, PipelineResult]:
        """One run, as a generator that pauses whenever it delivered something (see :meth:`stream`)."""
        options = self.options
        with claimed(self._originals) as nodes:
            # Per-process set-up (setup_worker) is shared by the runs on a kept cluster
            # and torn down at close(); else by this run's copies only, torn down at its end.
            held = self._held is not None and _client_of(backend) is self._held.client
            scope = self._scope if held else uuid.uuid4().hex
            if backend.in_process:
                plan = self.plan  # the nodes themselves run
            else:
                plan = replace(self.plan, snapshot=self._snapshot.with_nodes(nodes), scope=scope)
            callback, bar = progress_callback(options.progress, self._snapshot.root, update_callback)
            reached: dict[str, Node] = {}  # a run that ends early: the source as it got there
            try:
                with backend:
                    try:
                        client = _client_of(backend)
                        if self._worker_setup and client is not None:
                            # Every worker's setup_worker() at once, not each at its first partition.
                            preparing = prepare_workers(client, plan)  # noqa: F841 - held for the run
                        result, final = yield from run_plan(
                            backend,
                            plan,
                            nodes=nodes,
                            quiet=options.quiet,
                            collect=collect,
                            partition_size=options.partition_size,
                            callback=callback,
                            snapshot_every=options.snapshots,
                            stream=stream,
                            reached=reached,
                            ordered=options.ordered,
                            **({} if checkpoint is None else {"checkpoint": checkpoint}),
                        )
                    finally:
                        if not held and not backend.in_process and self._worker_setup:
                            tear_down_everywhere(_client_of(backend), scope)
            finally:
                if bar is not None:
                    bar.close()
                if nodes is self._originals:
                    for name, node in reached.items():
                        _adopt(nodes[name], node)
            if not backend.in_process:
                for name, node in final.items():
                    if isinstance(node, KeyedInstances):  # the caller's object stays as built
                        result.keyed_nodes[name] = node
                    elif nodes is self._originals:
                        _adopt(nodes[name], node)
        if result.errors:
            _report_dropped(result.errors)
        return result

    def visualize(self, filename: str | None = None, format: str | None = None) -> Any:
        """Draw the node graph, grouped and coloured by how each node runs.

        With ``filename`` also writes the picture there (``format`` from its
        suffix, or given). Needs ``pip install ".[viz]"`` (from a checkout) and,
        to write a file, Graphviz's ``dot`` program.

        Parameters
        ----------
        filename : str, optional
            Where to write the picture.
        format : str, optional
            ``"png"``, ``"svg"``, ...; from ``filename``'s suffix when not given.

        Returns
        -------
        graphviz.Digraph
            The picture (a notebook shows it).
        """
        picture = plan_picture(self.plan)
        if filename is not None:
            import graphviz

            try:
                picture.render(outfile=filename, format=format, cleanup=True)
            except graphviz.ExecutableNotFound as exc:
                raise RuntimeError(NO_DOT) from exc
        return picture

    def to_dask(self, partition_size: int | None = None) -> PipelineCollection:
        """The whole run as a Dask collection (the source must end).

        The source runs here, now, to cut its partitions; the rest is a task
        graph. ``dask.compute`` of it gives the ``PipelineResult`` that
        ``run()`` gives (nothing is printed); ``dask.visualize`` draws it.

        Parameters
        ----------
        partition_size : int, optional
            Source items per partition (one task per stage and partition);
            the pipeline's ``partition_size``, or 1000, when not given.

        Returns
        -------
        PipelineCollection
            A Dask collection (it implements Dask's collection protocol:
            ``__dask_graph__``, ``__dask_keys__``, ...). ``dask.compute(c)``
            returns ``(PipelineResult,)``; ``c.compute()`` the
            :class:`PipelineResult` itself; ``c.n_partitions`` is the number
            of partitions the source was cut into. Tasks are named after the
            nodes, as on the dashboard.

        Examples
        --------
        >>> import dask
        >>> from pypiper_dask.demo import Generate, Square
        >>> (result,) = dask.compute(Pipeline(Generate("gen", size=5) | Square("sq")).to_dask(), scheduler="sync")
        >>> result["sq"]
        [0, 1, 4, 9, 16]
        """
        RunOptions(partition_size=partition_size)  # checks it
        snap = self._snapshot.with_nodes(self._originals)
        # A copy of its own: the caller's source stays where it is (a run, by contrast, gives it its end state).
        reader = SourceReader(load_node(dumps_node(snap.source)))
        chunks = []
        scope = uuid.uuid4().hex
        try:
            set_up_here(reader.node, scope)  # the source runs here, now (the workers' nodes: see the README)
            while not reader.closed:
                chunk = reader.pull(partition_size or self.partition_size or 1000)
                if chunk.items or chunk.prints:
                    chunks.append(chunk)
            if reader.failed is not None:
                raise reader.failed
        finally:
            tear_down(scope)
        plan = replace(self.plan, snapshot=snap)
        graph, layout = collection_graph(plan, TaskNames(plan), chunks)
        return PipelineCollection(graph, layout, partial(_finish, self.plan))

    def _repr_html_(self) -> str:
        link = self.dashboard_link
        where = self.options.where() if link is None else f"its cluster is open; dashboard at {link}"
        return plan_html(self.plan, where)

    def __repr__(self) -> str:
        snap = self._snapshot
        return f"<Pipeline {snap.root!r}: {len(snap.order)} nodes, {len(self.plan.stages)} stages>"

    def __str__(self) -> str:
        options = self.options
        in_process = options.n_threads == 1 and options.client is None
        return plan_text(self.plan, options.where(), options.partition_size, in_process)


def tear_down_everywhere(client: Any, scope: str) -> None:
    """``teardown_worker()`` for what ``scope`` set up, in this process and on ``client``'s workers (best effort)."""
    tear_down(scope)
    if client is not None:
        with contextlib.suppress(Exception):  # a worker gone, or the cluster closing: nothing to tear down there
            client.run(tear_down, scope, on_error="ignore")


def _finish(plan: Plan, results: list, layout: Layout) -> PipelineResult:
    """A computed collection's rounds, in order, into the ``PipelineResult`` ``run()`` gives."""
    out = Output(plan, quiet=True, collect=True)
    flat = iter(results)
    for origin, chunk, fetched in layout:
        segments = {}
        for stage, _ in fetched:
            value = next(flat)
            segments[stage] = getattr(value, "segment", value)  # a sequential step carries its segment
        outcome = _outcome(segments)
        if isinstance(outcome, NodeFailure):  # the round's turn: a sequential run fails here
            raise node_error(outcome) from outcome.error
        segments = outcome
        if origin == 0:
            out.splicer.round(segments, chunk)
        else:
            out.splicer.flush(origin, segments)
    out.splicer.finish()
    return out.result()


def _stored(result: PipelineResult) -> Generator[None, None, PipelineResult]:
    """A run that returns ``result`` at once (a complete checkpoint's)."""
    return result
    yield  # a generator


def _report_dropped(errors: list) -> None:
    """Say which nodes dropped items (on the ``pypiper_dask`` logger), so none vanish unnoticed."""
    by_node: dict[str, list] = {}
    for e in errors:
        by_node.setdefault(e.node, []).append(e)
    for node, errs in by_node.items():
        logger.warning(
            "node %r dropped %d item(s) whose run() raised (first: %s: %s); see PipelineResult.errors",
            node,
            len(errs),
            errs[0].item_repr,
            errs[0].error,
        )


def _adopt(original: Node, final: Node) -> None:
    """Give the caller's node object the state its copy ended the run with.

    Attributes the copy could not bring back (they cannot be pickled) keep
    the caller's own values, and are named once on the logger.
    """
    left_out: dict[str, str] = vars(final).get(LEFT_OUT) or {}
    if left_out:
        logger.warning(
            "Node %r: its final state came back from its worker without %s, which cannot be pickled; "
            "your object keeps its own value of each (state meant for the caller must pickle)",
            original.name,
            ", ".join(f"attribute {attr!r} ({what})" for attr, what in left_out.items()),
        )
    # Its constructor's record stays, and whatever could not come back or belongs to the
    # copy's process (what its setup_worker() set: the source's copy ran in this one).
    local = process_attributes(final)
    mine = {k: v for k, v in vars(original).items() if k in PRIVATE or k in left_out or k in local}
    state = {k: v for k, v in vars(final).items() if k not in PRIVATE and k not in local}
    original.__dict__.clear()
    original.__dict__.update(state, **mine)


_busy: set[int] = set()
_busy_lock = threading.Lock()


@contextmanager
def claimed(originals: dict[str, Node]) -> Iterator[dict[str, Node]]:
    """The nodes one run uses: the caller's, each as it was after ``setup``.

    Each run after the first re-initialises the caller's nodes in place. Runs
    of one pipeline from several threads stay independent: while one holds
    the caller's objects, another gets nodes constructed again from the same
    arguments (and its final state stays with them).
    """
    ids = {id(n) for n in originals.values()}
    with _busy_lock:
        free = not ids & _busy
        if free:
            _busy.update(ids)
    if not free:
        yield {name: constructed_again(node) for name, node in originals.items()}
        return
    try:
        for node in originals.values():
            reinitialise(node)
        yield originals
    finally:
        for node in originals.values():
            mark_used(node)
        with _busy_lock:
            _busy.difference_update(ids)


def _client_of(backend: Any) -> Any:
    """The ``distributed`` client a backend runs on (``None`` for the caller's process)."""
    return backend.client if isinstance(backend, DistributedBackend) else None
