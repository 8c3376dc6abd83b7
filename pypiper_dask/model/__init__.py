"""The user's model: nodes, the graph and streams. No Dask here."""

from .functions import FunctionNode, as_node
from .graph import NodeGraph, check_edge
from .node import RESERVED_KEYWORDS, Node, check_batch_size, normalize_streams
from .streams import edge_selector

__all__ = [
    "RESERVED_KEYWORDS",
    "FunctionNode",
    "Node",
    "NodeGraph",
    "as_node",
    "check_batch_size",
    "check_edge",
    "edge_selector",
    "normalize_streams",
]
