"""The plan as a picture (graphviz) and as an HTML table (for notebooks)."""

from __future__ import annotations

import html
from typing import Any

from ..model.node import Node
from .plan import FusedStage, Plan, SeqStage

__all__ = ["NO_DOT", "plan_html", "plan_picture", "stream_label"]

#: What to install when the graphviz package is there but Graphviz's own ``dot`` program is not.
NO_DOT = (
    "Pipeline.visualize() needs Graphviz's dot program to draw the picture: apt-get install graphviz "
    "(or conda install graphviz, or brew install graphviz). The picture's source is in .source."
)

_COLOURS = {"source": "#d9d9d9", "fused": "#cfe2f3", "stateful": "#f9cb9c", "barrier": "#b6d7a8", "batch": "#ffe599"}


def _role(plan: Plan, name: str) -> tuple[str, str]:
    """(kind, how it runs) of one node."""
    if name == plan.snapshot.root:
        return "source", "source: runs in the caller; items cut into partitions"
    for stage in plan.stages:
        if isinstance(stage, FusedStage) and name in stage.nodes:
            return "fused", f"stage {stage.id}: fused stateless, one task per partition"
        if isinstance(stage, SeqStage) and stage.node == name:
            if not stage.stateless:
                kind = "stateful"
            elif stage.batch_size == Node.BATCH_SIZE_ALL:
                kind = "barrier"
            else:
                kind = "batch"
            return kind, f"stage {stage.id}: {stage.role} (one actor)"
    raise KeyError(name)


def _batch(size: Any) -> str:
    return "ALL" if size == Node.BATCH_SIZE_ALL else str(size)


def plan_picture(plan: Plan) -> Any:
    """A ``graphviz.Digraph`` of the nodes, grouped and coloured by stage.

    Raises ``ImportError`` with an install hint when graphviz is missing.
    """
    try:
        import graphviz
    except ImportError as exc:
        raise ImportError(
            'Pipeline.visualize() needs the graphviz package: pip install "pypiper-dask[viz]" '
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
        if kind == "stateful":
            label += "\\nstateful (actor)"
        graph.node(name, label=label, fillcolor=_COLOURS[kind])

    add(dot, snap.root)
    for stage in plan.stages:
        if isinstance(stage, FusedStage) and stage.nodes:
            with dot.subgraph(name=f"cluster_{stage.id}") as sub:
                sub.attr(label=f"stage {stage.id}: fused, one task per partition", style="dashed", fontname="Helvetica")
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
