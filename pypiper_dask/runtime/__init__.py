"""The runtime: where a run executes, the run loop, output and results."""

from .backends import DistributedBackend, InProcessBackend
from .output import PipelineResult
from .pipeline import Pipeline
from .scheduler import choose_backend

__all__ = ["DistributedBackend", "InProcessBackend", "Pipeline", "PipelineResult", "choose_backend"]
