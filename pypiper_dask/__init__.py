"""pypiper_dask: pyPiper pipelines, compiled to Dask task graphs.

Change ``from pyPiper import Node, Pipeline`` to
``from pypiper_dask import Node, Pipeline`` and the program runs on Dask.
"""

from importlib.metadata import PackageNotFoundError, version

from .errors import (
    GraphError,
    NodeError,
    NodeTypeError,
    OptionError,
    PipelineError,
    SchedulerError,
    StateLostError,
    StreamError,
)
from .model import Node, NodeGraph
from .model.snapshot import NodePickleError
from .runtime import Pipeline, PipelineResult

try:
    __version__ = version("pypiper-dask")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0+unknown"

__all__ = [
    "GraphError",
    "Node",
    "NodeError",
    "NodeGraph",
    "NodePickleError",
    "NodeTypeError",
    "OptionError",
    "Pipeline",
    "PipelineError",
    "PipelineResult",
    "SchedulerError",
    "StateLostError",
    "StreamError",
]
