"""pypiper_dask: pyPiper pipelines, compiled to Dask task graphs.

Change ``from pyPiper import Node, Pipeline`` to
``from pypiper_dask import Node, Pipeline`` and the program runs on Dask.
"""

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from .errors import (
    BadKeyError,
    CheckpointError,
    GraphError,
    NodeError,
    NodeModuleError,
    NodePickleError,
    NodeTypeError,
    OptionError,
    PipelineError,
    ResourceError,
    SchedulerError,
    StateLostError,
    StreamError,
    ValuePickleError,
    WorkerEnvironmentError,
)
from .model import FunctionNode, Node, NodeGraph, as_node

if TYPE_CHECKING:
    from .runtime import Pipeline, PipelineResult, RunHandle


def __getattr__(name: str) -> Any:
    # The runtime is imported when first asked for: a worker unpickling a task's
    # function (pypiper_dask.worker) never loads the caller's side.
    if name in ("Pipeline", "PipelineResult", "RunHandle"):
        from . import runtime

        return getattr(runtime, name)
    raise AttributeError(f"module 'pypiper_dask' has no attribute {name!r}")


try:
    __version__ = version("pypiper-dask")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0+unknown"

__all__ = [
    "BadKeyError",
    "CheckpointError",
    "FunctionNode",
    "GraphError",
    "Node",
    "NodeError",
    "NodeGraph",
    "NodeModuleError",
    "NodePickleError",
    "NodeTypeError",
    "OptionError",
    "Pipeline",
    "PipelineError",
    "PipelineResult",
    "ResourceError",
    "RunHandle",
    "SchedulerError",
    "StateLostError",
    "StreamError",
    "ValuePickleError",
    "WorkerEnvironmentError",
    "as_node",
]
