"""The user's unit of work: :class:`Node`, as pyPiper defines it."""

from __future__ import annotations

import abc
import inspect
import numbers
import threading
from collections.abc import Callable
from typing import Any

from ..errors import NodeTypeError, OptionError

__all__ = [
    "LEFT_OUT",
    "NODE_OPTIONS",
    "ON_ERROR",
    "PRIVATE",
    "PROCESS",
    "RESERVED_KEYWORDS",
    "Node",
    "arm_setup_emits",
    "check_batch_size",
    "check_resources",
    "check_snapshot_every",
    "constructed_again",
    "has_setup_emits",
    "has_worker_setup",
    "mark_used",
    "near_miss",
    "normalize_streams",
    "process_attributes",
    "reinitialise",
]

#: Per-node options: keywords of ``Node(...)`` that win over what ``setup`` sets.
NODE_OPTIONS = ("batch_size", "stateless", "retries", "on_error", "snapshot_every", "resources")

#: Keywords of ``Node(...)`` the library consumes; they never reach ``setup``.
RESERVED_KEYWORDS = ("in_streams", "out_streams", *NODE_OPTIONS)

#: What a node does with an item whose ``run`` raised (after its retries).
ON_ERROR = ("raise", "skip", "collect")

# The library's own entries in a node's ``__dict__``: how it was constructed
# (to re-initialise it in place before a later run) and what its setup() emitted.
_INIT = "_pypiper_dask_init"
_SETUP_EMITS = "_pypiper_dask_setup_emits"

#: On a node's final state brought back from a worker: ``{attribute: why}`` for the
#: attributes left out because they cannot be pickled.
LEFT_OUT = "_pypiper_dask_left_out"

#: The names of the attributes ``setup_worker()`` set: they belong to the process
#: (see :func:`process_attributes`).
PROCESS = "_pypiper_dask_process"

#: Attributes of a node that are the library's, not the user's state.
PRIVATE = frozenset({_INIT, _SETUP_EMITS, LEFT_OUT, PROCESS, "emit", "close", "run"})

# Nodes whose setup() is running in this thread: their emit() keeps the value
# for their first call, as pyPiper delivers it.
_in_setup = threading.local()


class _InitRecord:
    """The arguments a node was constructed with, and whether a run has used it since."""

    __slots__ = ("args", "emits_in_setup", "kwargs", "used")

    def __init__(self, args: tuple, kwargs: dict) -> None:
        self.args, self.kwargs, self.used = args, kwargs, False
        self.emits_in_setup = False  # stays known after a run delivered what setup() emitted

    def __reduce__(self) -> tuple:
        # A copy that leaves the process is never re-initialised: it carries no arguments
        # (which may hold large or unpicklable objects the node does not keep).
        return (_InitRecord, ((), {}))


def normalize_streams(node_name: str, what: str, streams: Any) -> str | list[str]:
    """Return ``"*"`` or a list of stream names.

    Examples
    --------
    >>> normalize_streams("n", "out_streams", "even")
    ['even']
    >>> normalize_streams("n", "out_streams", ("even", "odd"))
    ['even', 'odd']
    """
    if streams == "*":
        return "*"
    if isinstance(streams, str):
        return [streams]
    if isinstance(streams, (list, tuple)) and all(isinstance(s, str) for s in streams):
        return list(streams)
    raise NodeTypeError(
        f"Node {node_name!r}: {what} must be '*', a stream name or a list of stream names, not {streams!r}."
    )


def check_batch_size(node_name: str, batch_size: Any) -> int | float:
    """Validate ``batch_size``: an int >= 1 or ``Node.BATCH_SIZE_ALL``.

    Examples
    --------
    >>> check_batch_size("n", 5)
    5
    >>> check_batch_size("n", 0)
    Traceback (most recent call last):
    ...
    pypiper_dask.errors.OptionError: Node 'n': batch_size must be an int >= 1 or Node.BATCH_SIZE_ALL, not 0.
    """
    expected = "an int >= 1 or Node.BATCH_SIZE_ALL"
    if isinstance(batch_size, float) and batch_size == Node.BATCH_SIZE_ALL:
        return Node.BATCH_SIZE_ALL
    if not isinstance(batch_size, numbers.Number):
        raise NodeTypeError(
            f"Node {node_name!r}: batch_size must be {expected}, not {type(batch_size).__name__} {batch_size!r}."
        )
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise OptionError(f"Node {node_name!r}: batch_size must be {expected}, not {batch_size!r}.")
    return int(batch_size)


def check_snapshot_every(owner: str, value: Any) -> tuple[int | None, float | None] | None:
    """Validate ``snapshot_every``: ``None``, items (an int >= 1), or ``(items, seconds)``.

    Returns ``(items, seconds)`` (either may be ``None``: no limit of that
    kind), or ``None`` when ``value`` is ``None``. ``owner`` starts the error
    message (``"Node 'n'"`` or ``"Pipeline"``), which names the value given
    and the part of it that is wrong.

    Examples
    --------
    >>> check_snapshot_every("Node 'n'", 5000), check_snapshot_every("Node 'n'", (None, 2))
    ((5000, None), (None, 2.0))
    >>> check_snapshot_every("Node 'n'", 0)
    Traceback (most recent call last):
    ...
    pypiper_dask.errors.OptionError: Node 'n': snapshot_every=0 is not valid: items must be an int >= 1 or None, not 0.
    >>> check_snapshot_every("Pipeline", (100, float("nan")))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    pypiper_dask.errors.OptionError: Pipeline: snapshot_every=(100, nan) is not valid: seconds must be ... not nan.
    """
    if value is None:
        return None
    given = f"{owner}: snapshot_every={value!r} is not valid: "
    if not isinstance(value, (tuple, list, numbers.Number)) or isinstance(value, bool):
        raise NodeTypeError(
            given + "it must be None, a number of items (an int >= 1) or a tuple (items, seconds)"
            f"{' or False' if owner == 'Pipeline' else ''}, not {type(value).__name__}."
        )
    pair = value if isinstance(value, (tuple, list)) else (value, None)
    if len(pair) != 2:
        raise NodeTypeError(given + f"a tuple must be (items, seconds), not {len(pair)} values.")
    items, seconds = pair
    if items is not None and (isinstance(items, bool) or not isinstance(items, numbers.Integral)):
        raise NodeTypeError(given + f"items must be an int >= 1 or None, not {type(items).__name__} {items!r}.")
    if seconds is not None and (isinstance(seconds, bool) or not isinstance(seconds, numbers.Real)):
        raise NodeTypeError(given + f"seconds must be a number > 0 or None, not {type(seconds).__name__} {seconds!r}.")
    if items is not None and int(items) < 1:
        raise OptionError(given + f"items must be an int >= 1 or None, not {items!r}.")
    if seconds is not None and not float(seconds) > 0:  # NaN too
        raise OptionError(given + f"seconds must be a number > 0 or None, not {seconds!r}.")
    if pair == (None, None):
        raise OptionError(given + "items and seconds cannot both be None (that is snapshot_every=None).")
    return (None if items is None else int(items), None if seconds is None else float(seconds))


def check_resources(node_name: str, resources: Any) -> dict[str, float] | None:
    """Validate ``resources``: ``None``, or a dict of resource names to amounts > 0.

    Examples
    --------
    >>> check_resources("n", {"GPU": 1})
    {'GPU': 1}
    >>> check_resources("n", {"GPU": 0})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    pypiper_dask.errors.OptionError: Node 'n': resources must be None or a dict of ... not {'GPU': 0}.
    """
    if resources is None:
        return None
    expected = f"Node {node_name!r}: resources must be None or a dict of resource names to amounts > 0 ({{'GPU': 1}})"
    if not isinstance(resources, dict):
        raise NodeTypeError(f"{expected}, not {type(resources).__name__} {resources!r}.")
    for key, amount in resources.items():
        if not isinstance(key, str) or isinstance(amount, bool) or not isinstance(amount, numbers.Real):
            raise NodeTypeError(f"{expected}, not {resources!r}.")
        if not float(amount) > 0:  # NaN too
            raise OptionError(f"{expected}, not {resources!r}.")
    return dict(resources)


class Node(abc.ABC):
    """A step of a pipeline. Subclass it and implement :meth:`run`.

    Every keyword below can also be set by :meth:`setup` (``self.stateless =
    False``, as pyPiper programs do); a keyword given to the constructor wins.
    Any other keyword is set as an attribute and passed to :meth:`setup` if
    its signature takes it.

    Parameters
    ----------
    name : str
        Unique within a pipeline; tasks on the Dask dashboard carry it.
    in_streams : str or list of str, default "*"
        What this node reads from its predecessor: ``"*"`` (each value whole)
        or the names of some of the predecessor's ``out_streams`` (each named
        position becomes an item of its own, in this list's order).
    out_streams : str or list of str, default "*"
        ``"*"`` or the names of the streams this node writes; each value it
        emits is then a list with one position per name.
    batch_size : int or Node.BATCH_SIZE_ALL, default 1
        ``1`` calls ``run(item)``; ``k > 1`` calls ``run(tuple_of_k)``
        (exact across partitions; the last batch may be shorter);
        ``BATCH_SIZE_ALL`` calls ``run(list_of_everything)`` once, after the
        input ends.
    stateless : bool, default True
        ``False`` makes one instance see every item once, in order, wherever
        it runs; on a cluster its final state comes back to this object.
        With a ``key(self, data)`` method as well, the node is *keyed*: one
        instance per distinct key, each a copy of this object, seeing its
        key's items in order; the keys' instances run side by side on a
        cluster, and ``PipelineResult.keyed(name)`` holds them at the end
        (this object is not changed).
    retries : int, default 0
        Call ``run`` again this many times when it raises (stateless nodes only:
        a stateful node's state may already have changed).
    on_error : {"raise", "skip", "collect"}, default "raise"
        After the retries: stop the run with a ``NodeError`` (``"raise"``), or
        drop the item and report it in ``PipelineResult.errors``
        (``"collect"`` also keeps the item itself there).
    snapshot_every : int or (int, float), optional
        For a stateful, batched or ``BATCH_SIZE_ALL`` node on a cluster: copy
        its state to the caller at least every this many source items (and
        seconds), so that it survives its worker. Not given: the pipeline's.
        A node asking for more often sets it for the whole pipeline.
    size : int, optional
        For a source, pyPiper's convention: how many items it emits (your
        ``run`` reads ``self.size``). The progress bar and
        ``update_callback`` report it as the total.
    resources : dict, optional
        Dask worker resources each of its tasks (or, for a stateful node, its
        holder) needs on a cluster, e.g. ``{"GPU": 1}``: they run only on
        workers started with them. Ignored in the calling process.
    **kwargs
        Set as attributes, then passed to :meth:`setup` if its signature takes them.

    Attributes
    ----------
    BATCH_SIZE_ALL : float
        The ``batch_size`` of a node that is called once with every item
        (a barrier).
    cache_attributes : tuple of str
        A class attribute: names of attributes (of the node, of its class, or
        globals its code uses) that only cache what ``run`` computes and never
        change its output, such as a memo dict. A stateless node whose ``run``
        keeps changing what it holds is reported as having hidden state (each
        worker would change its own copy); these names are left out of that
        check.

    Examples
    --------
    >>> class Square(Node):
    ...     def run(self, data):
    ...         self.emit(data ** 2)
    >>> Square("square", batch_size=4)
    Square('square', batch_size=4)

    A memo cache, declared as one:

    >>> class Slow(Node):
    ...     cache_attributes = ("memo",)
    ...     def setup(self):
    ...         self.memo = {}
    ...     def run(self, data):
    ...         if data not in self.memo:
    ...             self.memo[data] = data ** 2
    ...         self.emit(self.memo[data])
    """

    BATCH_SIZE_ALL = float("inf")

    #: Attributes that only cache (see the class docstring): not reported as hidden state.
    cache_attributes: tuple[str, ...] = ()

    name: str
    in_streams: str | list[str]
    out_streams: str | list[str]
    batch_size: int | float
    stateless: bool
    retries: int
    on_error: str
    snapshot_every: Any
    resources: dict[str, float] | None
    size: Any

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        # Recorded before any __init__ (a subclass's own included) so that a later run can
        # construct the node again in place: see reinitialise().
        self = super().__new__(cls)
        # setattr, not __dict__[...]: a dict made this early loses its shared keys, and
        # every self.x in run() got slower (measured on W1: 1.3x).
        object.__setattr__(self, _INIT, _InitRecord(args, kwargs))
        return self

    def __init__(self, name: str, in_streams: Any = "*", out_streams: Any = "*", **kwargs: Any) -> None:
        if not isinstance(name, str) or not name:
            raise NodeTypeError(f"A node's name must be a non-empty str, not {name!r}.")
        self.name = name
        self.in_streams = normalize_streams(name, "in_streams", in_streams)
        self.out_streams = normalize_streams(name, "out_streams", out_streams)
        self.batch_size = 1
        self.stateless = True
        self.retries = 0
        self.on_error = "raise"
        self.snapshot_every = None
        self.resources = None
        self.size = None
        override = {k: kwargs.pop(k) for k in NODE_OPTIONS if k in kwargs}
        accepted = _accepted(self.setup, kwargs)
        # Node's own setup takes **kwargs and does nothing with them: it takes none really.
        taken = accepted.keys() if type(self).setup is not Node.setup else set()
        for key in kwargs.keys() - taken:
            meant = near_miss(key)
            if meant is not None:
                raise NodeTypeError(
                    f"Node {name!r}: keyword {key!r} is not one of Node's and {type(self).__name__}.setup() does "
                    f"not take it; did you mean {meant!r}? (Left as it is, it would only become an attribute.)"
                )
        for key, value in kwargs.items():
            setattr(self, key, value)
        constructing = _constructing()
        constructing.append(self)
        try:
            self.setup(**accepted)
        finally:
            constructing.remove(self)
        # A keyword given to the constructor wins over what setup() chose.
        for key, value in override.items():
            setattr(self, key, value)
        self.batch_size = check_batch_size(name, self.batch_size)
        if not isinstance(self.stateless, bool):
            raise NodeTypeError(f"Node {name!r}: stateless must be True or False, not {self.stateless!r}.")
        if isinstance(self.retries, bool) or not isinstance(self.retries, int) or self.retries < 0:
            raise OptionError(f"Node {name!r}: retries must be an int >= 0, not {self.retries!r}.")
        if self.retries and not self.stateless:
            raise OptionError(
                f"Node {name!r}: retries={self.retries} needs a stateless node; a stateful node's state "
                "may already have changed when run() raised."
            )
        if self.on_error not in ON_ERROR:
            raise OptionError(f"Node {name!r}: on_error must be one of {ON_ERROR!r}, not {self.on_error!r}.")
        check_snapshot_every(f"Node {name!r}", self.snapshot_every)
        self.resources = check_resources(name, self.resources)

    def _setup(self, **kwargs: Any) -> None:  # noqa: B027 - optional hook, as in pyPiper
        """Prepare the node; called once by the constructor. Override freely."""

    # Typed as any callable: pyPiper programs override setup() with any signature.
    setup: Callable[..., None] = _setup

    @abc.abstractmethod
    def run(self, data: Any) -> None:
        """Handle one item (or one batch); call :meth:`emit` for each result."""

    def setup_worker(self) -> None:  # noqa: B027 - optional hook
        """Prepare what this process needs to run the node (a model, a connection); override freely.

        Called once in each process that runs the node, before its first
        :meth:`run` there: in the caller for a run there; on a cluster in each
        worker process that can run it (its ``resources``), as the run starts,
        however many threads or partitions; for a stateful node on its holder,
        and again on a worker it is restored on. The
        attributes it sets belong to that process: they are never pickled to
        another one, never in a snapshot or a checkpoint, never reported as
        hidden state, and never copied back to your node object.
        """

    def teardown_worker(self) -> None:  # noqa: B027 - optional hook
        """Release what :meth:`setup_worker` made; called when the process is done with the node.

        Best effort: at the end of the run (in the caller, and on the workers
        of a cluster that is still up), or at ``Pipeline.close()`` for a
        cluster ``Pipeline.open()`` keeps; not on a worker that died.
        """

    def __getstate__(self) -> Any:
        # What setup_worker() set stays in its process: a pickled copy carries only the names.
        state = self.__dict__
        local = state.get(PROCESS)
        if not local:
            return state
        return {k: v for k, v in state.items() if k not in local}

    def emit(self, data: Any) -> None:
        """Send ``data`` to every successor.

        The engine rebinds this on the nodes it runs. Called from ``setup``,
        the value is delivered with the node's first call, as in pyPiper;
        anywhere else outside a run it has nowhere to go and raises.
        """
        if any(node is self for node in _constructing()):
            if not hasattr(self, _SETUP_EMITS):
                object.__setattr__(self, _SETUP_EMITS, [])
            getattr(self, _SETUP_EMITS).append(data)
            record = getattr(self, _INIT, None)
            if record is not None:
                record.emits_in_setup = True
            return
        raise RuntimeError(f"Node {self.name!r}: emit() was called outside a running pipeline.")

    def close(self) -> None:
        """End this node's stream: it gets no item after the current one."""
        raise RuntimeError(f"Node {self.name!r}: close() was called outside a running pipeline.")

    def __or__(self, other: Any):
        from .graph import NodeGraph

        return NodeGraph(self) | other

    def __repr__(self) -> str:
        extra = ""
        if self.batch_size != 1:
            extra += ", batch_size=" + (
                "Node.BATCH_SIZE_ALL" if self.batch_size == Node.BATCH_SIZE_ALL else str(self.batch_size)
            )
        if not self.stateless:
            extra += ", stateless=False"
        return f"{type(self).__name__}({self.name!r}{extra})"

    def __str__(self) -> str:
        return f"Node<{self.name}>"


def _constructing() -> list:
    try:
        return _in_setup.nodes
    except AttributeError:
        _in_setup.nodes = []
        return _in_setup.nodes


def has_worker_setup(node: Any) -> bool:
    """Whether ``node``'s class overrides :meth:`Node.setup_worker` or :meth:`Node.teardown_worker`."""
    cls = type(node)
    return getattr(cls, "setup_worker", None) not in (None, Node.setup_worker) or getattr(
        cls, "teardown_worker", None
    ) not in (None, Node.teardown_worker)


def process_attributes(node: Any) -> frozenset[str]:
    """The names of the attributes ``node.setup_worker()`` set (``PROCESS`` records them), or none.

    Examples
    --------
    >>> class Model(Node):
    ...     def setup_worker(self):
    ...         self.model = "heavy"
    ...     def run(self, data):
    ...         self.emit(self.model)
    >>> node = Model("m")
    >>> node.__dict__[PROCESS] = frozenset({"model"}); node.model = "heavy"
    >>> process_attributes(node), "model" in node.__getstate__()
    (frozenset({'model'}), False)
    """
    try:
        return vars(node).get(PROCESS) or frozenset()
    except TypeError:
        return frozenset()


def has_setup_emits(node: Node) -> bool:
    """Whether ``node``'s ``setup`` emits values (delivered with its first call)."""
    record = getattr(node, _INIT, None)
    return bool(getattr(node, _SETUP_EMITS, None)) or (record is not None and record.emits_in_setup)


def arm_setup_emits(node: Any) -> None:
    """Make ``node``'s next call emit what its ``setup`` emitted, before its own values.

    pyPiper keeps such values in the node's output buffer, which its first call
    sends on. The engine calls this after binding ``emit``; the wrapper is an
    instance attribute that removes itself on the first call.
    """
    # getattr, not vars(): see Node.__new__ (a node's dict is left as Python made it).
    pending = getattr(node, _SETUP_EMITS, None)
    if not pending:
        return
    delattr(node, _SETUP_EMITS)
    real = node.run
    waiting = [pending]

    def first_call(data: Any) -> None:
        if waiting:  # an engine may hold on to this function: later calls go straight through
            node.__dict__.pop("run", None)
            for value in waiting.pop():
                node.emit(value)
        real(data)

    node.run = first_call


def reinitialise(node: Node) -> None:
    """Construct ``node`` again in place, if a run has used it since it was constructed.

    Its attributes are cleared and its constructor called again with the
    arguments it was first given (so an object passed in is the same object,
    with what earlier runs added, while what ``setup`` creates starts fresh).

    Examples
    --------
    >>> class Count(Node):
    ...     def setup(self, sink):
    ...         self.seen = 0
    ...     def run(self, data):
    ...         self.seen += 1
    >>> sink = []
    >>> node = Count("c", sink=sink)
    >>> node.seen = 5; mark_used(node); reinitialise(node)
    >>> node.seen, node.sink is sink
    (0, True)
    """
    record = getattr(node, _INIT, None)
    if record is None or not record.used or not (record.args or record.kwargs):
        return  # fresh, or a copy that left the process (it keeps no arguments)
    node.__dict__.clear()
    object.__setattr__(node, _INIT, _InitRecord(record.args, record.kwargs))
    type(node).__init__(node, *record.args, **record.kwargs)


def constructed_again(node: Node) -> Node:
    """A new node built with the arguments ``node`` was built with (``node`` itself if unknown)."""
    record = getattr(node, _INIT, None)
    if record is None or not (record.args or record.kwargs):
        return node
    return type(node)(*record.args, **record.kwargs)


def mark_used(node: Node) -> None:
    """Note that a run used ``node``: the next run re-initialises it first."""
    record = getattr(node, _INIT, None)
    if record is not None:
        record.used = True


def _forms(word: str) -> set[str]:
    """A keyword as written, without underscores, and in the singular."""
    forms = {word, word.replace("_", "")}
    for form in list(forms):
        if form.endswith("ies"):
            forms.add(form[:-3] + "y")
        elif form.endswith("s") and not form.endswith("ss"):
            forms.add(form[:-1])
    return forms


def _one_edit_apart(a: str, b: str) -> bool:
    """At most one letter inserted, deleted or changed between ``a`` and ``b``."""
    if abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        return sum(x != y for x, y in zip(a, b, strict=True)) <= 1
    short, long = sorted((a, b), key=len)
    return any(long[:i] + long[i + 1 :] == short for i in range(len(long)))


def near_miss(keyword: str) -> str | None:
    """The reserved keyword that ``keyword`` is a slip of, if any.

    Examples
    --------
    >>> [near_miss(k) for k in ("stateles", "batchsize", "in_stream", "retry", "on_errors", "snapshot_evry")]
    ['stateless', 'batch_size', 'in_streams', 'retries', 'on_error', 'snapshot_every']
    >>> near_miss("size") is None and near_miss("stream") is None
    True
    """
    mine = _forms(keyword.lower())
    for reserved in RESERVED_KEYWORDS:
        if keyword != reserved and any(_one_edit_apart(a, b) for a in mine for b in _forms(reserved)):
            return reserved
    return None


def _accepted(method: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The part of ``kwargs`` that ``method``'s signature accepts."""
    params = inspect.signature(method).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return kwargs
    names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return {k: v for k, v in kwargs.items() if k in names}
