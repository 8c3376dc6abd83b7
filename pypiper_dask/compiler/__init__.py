"""The compiler: graph → plan → Dask tasks."""

from .plan import FusedStage, Plan, SeqStage, Sink, compile_plan, is_sequential
from .tasks import Ref, StageRef, TaskNames, TaskSpec, fused_spec, key_label, round_tasks, seq_spec, state_step
from .to_dask import PipelineCollection, collection_graph

__all__ = [
    "FusedStage",
    "PipelineCollection",
    "Plan",
    "Ref",
    "SeqStage",
    "Sink",
    "StageRef",
    "TaskNames",
    "TaskSpec",
    "collection_graph",
    "compile_plan",
    "fused_spec",
    "is_sequential",
    "key_label",
    "round_tasks",
    "seq_spec",
    "state_step",
]
