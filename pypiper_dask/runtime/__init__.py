"""The runtime: where a run executes, the run loop, output and results."""

from .backends import Backend, DistributedBackend, InProcessBackend, SyncTaskBackend, TaskBackend
from .handle import RunHandle
from .options import RunOptions
from .output import PipelineResult
from .pipeline import Pipeline
from .scheduler import choose_backend

__all__ = [
    "Backend",
    "DistributedBackend",
    "InProcessBackend",
    "Pipeline",
    "PipelineResult",
    "RunHandle",
    "RunOptions",
    "SyncTaskBackend",
    "TaskBackend",
    "choose_backend",
]
