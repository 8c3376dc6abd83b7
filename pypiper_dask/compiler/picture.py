"""The plan as text (``print(pipeline)``), as a picture (graphviz) and as an HTML table (for notebooks)."""

from __future__ import annotations

import html
from typing import Any

from ..model.node import Node
from ..model.snapshot import NodeInfo
from .plan import FusedStage, Plan, SeqStage

__all__ = ["NO_DOT", "plan_html", "plan_picture", "plan_text", "stream_label"]

#: What to install when the graphviz package is there but Graphviz's own ``dot`` program is not.
NO_DOT = (
    "Pipeline.visualize() needs Graphviz's dot program to draw the picture: apt-get install graphviz "
    "(or conda install graphviz, or brew install graphviz). The picture's source is in .source."
)

_COLOURS = {"source": "#d9d9d9", "fused": "#cfe2f3", "stateful": "#f9cb9c", "barrier": "#b6d7a8", "batch": "#ffe599"}


def _role(plan: Plan, name: str) -> tuple[str, str]:
    """(kind, how it runs) of one node."""
    if name == plan.snapshot.root:
        return "source", "source: runs in this process; its items go out in partitions"
    for stage in plan.stages:
        if isinstance(stage, FusedStage) and name in stage.nodes:
            return "fused", f"stage {stage.id}: runs in parallel, one task per partition"
        if isinstance(stage, SeqStage) and stage.node == name:
            if not stage.stateless:
                kind = "stateful"
            elif stage.batch_size == Node.BATCH_SIZE_ALL:
                kind = "barrier"
            else:
                kind = "batch"
            return kind, f"stage {stage.id}: {_where(stage)}, {stage.role}"
    raise KeyError(name)


def _where(stage: SeqStage) -> str:
    """Where a sequential stage's node runs, in a newcomer's words."""
    return "runs on one holder per worker, its keys dealt out among them" if stage.keyed else "runs in one place"


def _batch(size: Any) -> str:
    return "ALL" if size == Node.BATCH_SIZE_ALL else str(size)


def _notes(info: NodeInfo) -> str:
    """``name (Class, notes)``: a node as the text tree shows it."""
    notes = [info.cls]
    if info.batch_size != 1:
        notes.append(f"batch={_batch(info.batch_size)}")
    if info.keyed:
        notes.append("keyed")
    elif not info.stateless:
        notes.append("stateful")
    if info.in_streams != "*" or info.out_streams != "*":
        notes.append(f"streams {stream_label(info.in_streams)} -> {stream_label(info.out_streams)}")
    if info.resources:
        notes.append(" ".join(f"{r}={a:g}" for r, a in info.resources))
    return f"{info.name} ({', '.join(notes)})"


def _source_line(root: str, partition_size: int | None, in_process: bool) -> str:
    if in_process:
        return (
            f"{root}: runs in this process, no partitions: each of its items goes through all the nodes before "
            "the next, as in pyPiper (the stages below are how a cluster would run them)"
        )
    if partition_size is None:
        return f"{root}: runs in this process; its items go out in partitions of a size chosen while it runs"
    return f"{root}: runs in this process; its items go out in partitions of {partition_size}"


def plan_text(plan: Plan, where: str, partition_size: int | None, in_process: bool = False) -> str:
    """What ``print(pipeline)`` shows: the node tree as built, each node's stage, and the plan.

    ``where`` says where a run executes; ``partition_size`` is the one the
    run will use (``None``: chosen while it runs); ``in_process``: a run
    cuts no partitions.

    Examples
    --------
    >>> from pypiper_dask.model import Node
    >>> from pypiper_dask.model.snapshot import Snapshot
    >>> from pypiper_dask.compiler.plan import compile_plan
    >>> class N(Node):
    ...     def run(self, data):
    ...         self.emit(data)
    >>> graph = N("gen", size=10) | [N("a") | N("a2"), N("b", stateless=False)]
    >>> print(plan_text(compile_plan(Snapshot.from_graph(graph)), "runs on a cluster", 50))
    Pipeline of 4 nodes, runs on a cluster
    Graph:
      gen (N)               source
      ├─ a (N)              stage 0
      │  └─ a2 (N)          stage 0
      └─ b (N, stateful)    stage 1
    Plan:
      source   gen: runs in this process; its items go out in partitions of 50
      stage 0  a, a2: run in parallel, one task per partition of gen's items; they pass items on to b
      stage 1  b: runs in one place, stateful: one call per item, every item once, in order
    """
    snap = plan.snapshot
    stage_of = {snap.root: "source"}
    for stage in plan.stages:
        for name in stage.nodes if isinstance(stage, FusedStage) else (stage.node,):
            stage_of[name] = f"stage {stage.id}"

    drawn: list[tuple[str, str]] = []  # (tree line, the node's stage)

    def tree(name: str, prefix: str, branch: str) -> None:
        drawn.append((prefix + branch + _notes(snap.info[name]), stage_of[name]))
        kids = snap.children[name]
        inner = prefix + {"": "", "├─ ": "│  ", "└─ ": "   "}[branch]
        for i, kid in enumerate(kids):
            tree(kid, inner, "└─ " if i == len(kids) - 1 else "├─ ")

    tree(snap.root, "", "")
    width = max(len(line) for line, _ in drawn) + 4
    lines = [f"Pipeline of {len(snap.order)} nodes, {where}", "Graph:"]
    lines += [f"  {line:<{width}}{stage}" for line, stage in drawn]

    steps = [("source", _source_line(snap.root, partition_size, in_process))]
    for stage in plan.stages:
        if isinstance(stage, FusedStage):
            crossing = ", ".join(s.node for s in stage.sinks if s.kind == "cross")
            tasks = f"one task per partition of {stage.above}'s items"
            if not stage.nodes:
                text = f"(no node): {tasks} passes them on to {crossing}"
            else:
                one = len(stage.nodes) == 1
                text = f"{', '.join(stage.nodes)}: {'runs' if one else 'run'} in parallel, {tasks}"
                if crossing:
                    text += f"; {'it passes' if one else 'they pass'} items on to {crossing}"
            if stage.resources:
                text += "; on workers with " + ", ".join(f"{r}={v:g}" for r, v in stage.resources.items())
            steps.append((f"stage {stage.id}", text))
        else:
            where = "".join(f"; on a worker with {r}={v:g}" for r, v in stage.resources.items())
            steps.append((f"stage {stage.id}", f"{stage.node}: {_where(stage)}, {stage.role}{where}"))
    label = max(len(s) for s, _ in steps) + 2
    lines.append("Plan:")
    lines += [f"  {s:<{label}}{text}" for s, text in steps]
    return "\n".join(lines)


def plan_picture(plan: Plan) -> Any:
    """A ``graphviz.Digraph`` of the nodes, grouped and coloured by stage.

    Raises ``ImportError`` with an install hint when graphviz is missing.
    """
    try:
        import graphviz
    except ImportError as exc:
        raise ImportError(
            'Pipeline.visualize() needs the graphviz package: pip install ".[viz]" from a checkout '
            "(and Graphviz's dot program to render: apt-get install graphviz)"
        ) from exc
    snap = plan.snapshot

    class Picture(graphviz.Digraph):
        """A notebook shows what to install, not a traceback, where Graphviz's ``dot`` is missing."""

        def _repr_mimebundle_(self, include: Any = None, exclude: Any = None, **kwargs: Any) -> dict:
            try:
                return super()._repr_mimebundle_(include, exclude, **kwargs)
            except graphviz.ExecutableNotFound:
                return {"text/plain": NO_DOT}

    dot = Picture(
        "pipeline",
        graph_attr={"rankdir": "LR", "fontname": "Helvetica"},
        node_attr={"shape": "box", "style": "rounded,filled", "fontname": "Helvetica"},
    )

    def add(graph: Any, name: str) -> None:
        info = snap.info[name]
        kind, _ = _role(plan, name)
        label = f"{name}\\n{info.cls}"
        if info.batch_size != 1:
            label += f"\\nbatch {_batch(info.batch_size)}"
        if info.keyed:
            label += "\\nkeyed, one holder per worker"
        elif kind == "stateful":
            label += "\\nstateful, in one place"
        graph.node(name, label=label, fillcolor=_COLOURS[kind])

    add(dot, snap.root)
    for stage in plan.stages:
        if isinstance(stage, FusedStage) and stage.nodes:
            with dot.subgraph(name=f"cluster_{stage.id}") as sub:
                sub.attr(
                    label=f"stage {stage.id}: in parallel, one task per partition", style="dashed", fontname="Helvetica"
                )
                for name in stage.nodes:
                    add(sub, name)
        elif isinstance(stage, SeqStage):
            add(dot, stage.node)
    for parent, kids in snap.children.items():
        for kid in kids:
            info = snap.info[kid]
            streams = "" if info.in_streams == "*" else ", ".join(info.in_streams)
            dot.edge(parent, kid, label=streams)
    return dot


def plan_html(plan: Plan, where: str) -> str:
    """An HTML table of the nodes and how each runs."""
    snap = plan.snapshot
    rows = []
    for name in snap.order:
        info = snap.info[name]
        kind, how = _role(plan, name)
        streams = f"{stream_label(info.in_streams)} → {stream_label(info.out_streams)}"
        rows.append(
            f'<tr><td style="background:{_COLOURS[kind]}"><b>{html.escape(name)}</b></td>'
            f"<td>{html.escape(info.cls)}</td><td>{html.escape(how)}</td>"
            f"<td>{_batch(info.batch_size)}</td><td>{html.escape(streams)}</td></tr>"
        )
    return (
        f"<div><p><b>Pipeline</b>: {len(snap.order)} nodes in {len(plan.stages)} stages; "
        f"{html.escape(where)}.</p>"
        "<table><thead><tr><th>node</th><th>class</th><th>runs as</th><th>batch</th><th>streams</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


def stream_label(streams: Any) -> str:
    """``*`` or ``[a, b]``: a node's streams as the plan shows them."""
    return "*" if streams == "*" else "[" + ", ".join(streams) + "]"
