"""What tasks run on workers (or in the caller): small functions and the objects they carry.

Everything here is pickled to other processes, so it imports nothing from the
compiler or the runtime, the way ``dask/bag/chunk.py`` keeps a collection's
worker code apart. By concern:

* :mod:`.fused` — a fused stage of stateless nodes over one partition;
* :mod:`.sequential` — a stateful, batched or ``BATCH_SIZE_ALL`` node and its holder;
* :mod:`.capture` — what nodes print, captured per thread;
* :mod:`.values` — partitions, failures, and values frozen at ``emit``;
* :mod:`.process` — what each worker process of a cluster a run starts sets up.

What a task records of output order is written with :mod:`pypiper_dask.ordering`.
"""

from .capture import capture_stdout
from .fused import Edge, FusedSpec, ToNode, ToSink, run_fused
from .sequential import SeqHolder, SeqSpec, SeqStep, run_flush, run_seq, run_state, step_flush, step_seq
from .values import Chunk, Items, NodeFailure, failure, freeze, freezing, stage_input

__all__ = [
    "Chunk",
    "Edge",
    "FusedSpec",
    "Items",
    "NodeFailure",
    "SeqHolder",
    "SeqSpec",
    "SeqStep",
    "ToNode",
    "ToSink",
    "capture_stdout",
    "failure",
    "freeze",
    "freezing",
    "run_flush",
    "run_fused",
    "run_seq",
    "run_state",
    "stage_input",
    "step_flush",
    "step_seq",
]
