"""The compiler: graph → plan → Dask tasks."""

from .plan import FusedStage, Plan, SeqStage, Sink, compile_plan, is_sequential
from .tasks import Ref, StageRef, TaskNames, TaskSpec, fused_spec, key_label, round_tasks, seq_spec

__all__ = [
    "FusedStage",
    "Plan",
    "Ref",
    "SeqStage",
    "Sink",
    "StageRef",
    "TaskNames",
    "TaskSpec",
    "compile_plan",
    "fused_spec",
    "is_sequential",
    "key_label",
    "round_tasks",
    "seq_spec",
]
