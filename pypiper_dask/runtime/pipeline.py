"""``Pipeline``: pyPiper's entry point, lazy, compiled to Dask tasks when run."""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property, partial
from typing import Any

from ..compiler.picture import NO_DOT, plan_html, plan_picture, stream_label
from ..compiler.plan import Plan, compile_plan
from ..compiler.tasks import TaskNames
from ..compiler.to_dask import Layout, PipelineCollection, collection_graph
from ..errors import NodeTypeError
from ..log import logger
from ..model.graph import NodeGraph
from ..model.node import Node
from ..model.snapshot import Snapshot
from ..worker import NodeFailure
from .backends import _outcome
from .execute import SourceReader, node_error
from .options import RunOptions
from .output import Output, PipelineResult
from .progress import progress_callback
from .scheduler import choose_backend

__all__ = ["Pipeline"]

_IGNORED_PYPIPER_OPTIONS = ("exec_name",)


class Pipeline:
    """A pyPiper pipeline, run on Dask.

    Building one runs nothing; :meth:`run` compiles the graph into tasks and
    runs them.

    Parameters
    ----------
    graph : NodeGraph or Node
        The nodes, rooted at the source. The pipeline keeps a snapshot: later
        changes to the graph or its nodes do not change it.
    n_threads : int, optional
        ``1``: run in the calling process. ``N > 1``: start a local cluster of N
        single-threaded worker processes for each run. Not given: the active
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
        self.options = RunOptions(n_threads, quiet, client, partition_size, progress, connect_timeout, security)
        self._snapshot = Snapshot.from_graph(graph)
        # The caller's objects, to hand back final state after a run (as pyPiper does).
        self._originals = {n.name: n for n in graph}

    # The options, readable and settable one by one; a value set is checked like a new one.
    n_threads = property(lambda self: self.options.n_threads, lambda self, v: self._set(n_threads=v))
    quiet = property(lambda self: self.options.quiet, lambda self, v: self._set(quiet=v))
    client = property(lambda self: self.options.client, lambda self, v: self._set(client=v))
    partition_size = property(lambda self: self.options.partition_size, lambda self, v: self._set(partition_size=v))
    progress = property(lambda self: self.options.progress, lambda self, v: self._set(progress=v))

    def _set(self, **change: Any) -> None:
        self.options = self.options.replace(**change)

    @cached_property
    def plan(self) -> Plan:
        """The compiled plan (compiled on first use)."""
        return compile_plan(self._snapshot)

    def run(
        self, update_callback: Callable[[int, int | None], None] | None = None, collect: bool = True
    ) -> PipelineResult:
        """Run the pipeline and return each leaf's items.

        Parameters
        ----------
        update_callback : callable, optional
            Called as ``update_callback(done, total)``: source items fully
            processed so far, and the source's ``size`` (or ``None``).
        collect : bool
            Keep the leaves' items in the result; ``False`` keeps only counts.
        """
        options = self.options
        backend = choose_backend(
            options.n_threads, options.client, connect_timeout=options.connect_timeout, security=options.security
        )
        callback, bar = progress_callback(options.progress, self._snapshot.root, update_callback)
        try:
            with backend:
                result, final = backend.run_pipeline(
                    self.plan,
                    quiet=options.quiet,
                    collect=collect,
                    partition_size=options.partition_size,
                    callback=callback,
                )
        finally:
            if bar is not None:
                bar.close()
        for name, node in final.items():
            _adopt(self._originals[name], node)
        if result.errors:
            _report_dropped(result.errors)
        return result

    def visualize(self, filename: str | None = None, format: str | None = None) -> Any:
        """Draw the node graph, grouped and coloured by how each node runs.

        Returns a ``graphviz.Digraph`` (a notebook shows it); with ``filename``
        also writes the picture there (``format`` from its suffix, or given).
        Needs ``pip install "pypiper-dask[viz]"`` and Graphviz's ``dot``.
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

        Examples
        --------
        >>> import dask
        >>> from pypiper_dask.demo import Generate, Square
        >>> (result,) = dask.compute(Pipeline(Generate("gen", size=5) | Square("sq")).to_dask(), scheduler="sync")
        >>> result["sq"]
        [0, 1, 4, 9, 16]
        """
        RunOptions(partition_size=partition_size)  # checks it
        reader = SourceReader(self._snapshot.node(self._snapshot.root))
        chunks = []
        while not reader.closed:
            chunk = reader.pull(partition_size or self.partition_size or 1000)
            if chunk.items or chunk.prints:
                chunks.append(chunk)
        graph, layout = collection_graph(self.plan, TaskNames(self.plan), chunks)
        return PipelineCollection(graph, layout, partial(_finish, self.plan))

    def _repr_html_(self) -> str:
        return plan_html(self.plan, self.options.where())

    def __repr__(self) -> str:
        snap = self._snapshot
        return f"<Pipeline {snap.root!r}: {len(snap.order)} nodes, {len(self.plan.stages)} stages>"

    def __str__(self) -> str:
        snap = self._snapshot
        lines = [f"Pipeline of {len(snap.order)} nodes, {self.options.where()}", "Graph:"]

        def tree(name: str, prefix: str, last: bool, top: bool) -> None:
            info = snap.info[name]
            notes = []
            if info.batch_size == Node.BATCH_SIZE_ALL:
                notes.append("batch=ALL")
            elif info.batch_size != 1:
                notes.append(f"batch={info.batch_size}")
            if not info.stateless:
                notes.append("stateful")
            if info.in_streams != "*" or info.out_streams != "*":
                notes.append(f"streams {stream_label(info.in_streams)} -> {stream_label(info.out_streams)}")
            label = f"{name} ({info.cls}{', ' if notes else ''}{', '.join(notes)})"
            lines.append(("  " if top else prefix + ("└─ " if last else "├─ ")) + label)
            kids = snap.children[name]
            inner = "  " if top else prefix + ("   " if last else "│  ")
            for i, kid in enumerate(kids):
                tree(kid, inner, i == len(kids) - 1, False)

        tree(snap.root, "", True, True)
        lines.append("Plan:")
        lines += self.plan.describe()
        return "\n".join(lines)


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
    """Give the caller's node object the state its copy ended the run with."""
    state = {k: v for k, v in vars(final).items() if k not in ("emit", "close")}
    original.__dict__.clear()
    original.__dict__.update(state)
