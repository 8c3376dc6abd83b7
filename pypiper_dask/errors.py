"""The exceptions pypiper_dask raises.

Every error is a :class:`PipelineError`; those about a bad value or a bad type
also subclass :class:`ValueError` or :class:`TypeError`, so code written for
pyPiper that catches the builtin keeps working.
"""

from __future__ import annotations

import reprlib
from typing import Any

__all__ = [
    "BadKeyError",
    "CheckpointError",
    "GraphError",
    "NodeError",
    "NodeModuleError",
    "NodePickleError",
    "NodeTypeError",
    "OptionError",
    "PipelineError",
    "ResourceError",
    "StreamError",
    "ValuePickleError",
    "WorkerEnvironmentError",
    "short_repr",
]

_repr = reprlib.Repr()
_repr.maxstring = 60
_repr.maxother = 60
_repr.maxlist = 6
_repr.maxtuple = 6


def short_repr(value: object) -> str:
    """A repr of ``value`` short enough for an error message.

    Examples
    --------
    >>> short_repr(list(range(100)))
    '[0, 1, 2, 3, 4, 5, ...]'
    """
    return _repr.repr(value)


class PipelineError(Exception):
    """Base class of every error raised by pypiper_dask."""


class GraphError(PipelineError, ValueError):
    """The node graph is malformed: a duplicate name, a node added twice, ..."""


class StreamError(PipelineError, ValueError):
    """Named streams of two connected nodes do not fit together."""


class OptionError(PipelineError, ValueError):
    """An option has a value outside its range (``batch_size=0``, ``n_threads=-1``)."""


class NodeTypeError(PipelineError, TypeError):
    """Something of the wrong type was given where a node or an option was expected."""


class NodePickleError(NodeTypeError):
    """A node cannot be pickled, so it cannot be snapshotted or sent to a worker."""


class NodeModuleError(NodePickleError):
    """A node's code comes from a module that cannot reach the workers.

    Its classes cannot be pickled by value (a global they use cannot be
    pickled), and a worker cannot import the module. ``module`` is its name;
    the message says what to do.
    """

    def __init__(self, module: str, message: str) -> None:
        super().__init__(message)
        self.module = module

    def __reduce__(self):
        return (type(self), (self.module, str(self)))


class NodeError(PipelineError):
    """A node's ``run`` raised.

    The original exception is the ``__cause__``; ``node`` is the node's name and
    ``item`` a short repr of what ``run`` was given. ``partial`` is what the run
    delivered before the error, as a ``PipelineResult`` (the leaves' items if
    the run collected them, else their counts): exactly what a sequential run
    emitted before the failing call. ``None`` where the error did not come from a run.
    """

    def __init__(self, node: str, item: str, message: str) -> None:
        super().__init__(message)
        self.node = node
        self.item = item
        self.partial: Any = None


class ValuePickleError(PipelineError, TypeError):
    """A value a node emitted cannot be pickled, and it must go to another process.

    Raised by the node's ``emit`` on a cluster, so the run stops with a
    :class:`NodeError` naming the node and its input; the message says what
    pickle said.
    """


class BadKeyError(TypeError):
    """A keyed node's ``key()`` returned a value that cannot be a key: unhashable, or not picklable.

    Raised where the node runs; it reaches the caller inside the node's
    :class:`NodeError`, which names the node and the item.
    """


class StateLostError(PipelineError):
    """The worker holding a sequential node (its state, or its pending batch) died."""

    def __init__(self, node: str, message: str) -> None:
        super().__init__(message)
        self.node = node


class ResourceError(PipelineError):
    """A node asks for a worker resource (``resources=``) that no worker of the cluster has.

    ``node`` is the node's name, ``resource`` the resource's.
    """

    def __init__(self, node: str, resource: str, message: str) -> None:
        super().__init__(message)
        self.node = node
        self.resource = resource

    def __reduce__(self):
        return (type(self), (self.node, self.resource, str(self)))


class SchedulerError(PipelineError, ConnectionError):
    """The scheduler could not be reached."""


class CheckpointError(PipelineError, ValueError):
    """A checkpoint cannot be used: it is of a different pipeline, or not a checkpoint."""


class WorkerEnvironmentError(PipelineError):
    """Workers of a cluster the run did not start cannot run its tasks.

    They cannot import ``pypiper_dask``, or run another version of it, of
    dask, distributed, cloudpickle or Python than the caller. ``workers`` maps
    each such worker's address to what it lacks or runs; the message ends with
    the command that fixes it (see :mod:`pypiper_dask.runtime.worker_environment`).
    """

    def __init__(self, message: str, workers: dict[str, list[str]]) -> None:
        super().__init__(message)
        self.workers = workers

    def __reduce__(self):
        return (type(self), (str(self), self.workers))
