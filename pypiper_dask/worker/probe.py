"""Which item, at which node, kills its worker: a partition fed again with each call written down first.

When a partition's tasks are lost with their workers again and again, the
caller sends the partition once more as a probe: the top fused stage over
its items, nothing pushed on, each node call preceded by a line
``"{item index}\\t{node}"`` written straight to a file on the worker's host.
The write is a system call, so the line survives the process (an
``os._exit`` in ``run`` included); the caller reads the last line back.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

from ..ordering import Segment
from .capture import capture_stdout
from .fused import FusedSpec, _Compiled

__all__ = ["probe_partition", "read_probe"]


def probe_partition(spec: FusedSpec, items: list, path: str) -> int:
    """Feed ``items`` through the stage of ``spec`` one by one, logging each node call to ``path``.

    Returns how many items went through (all of them, unless one killed the
    process, in which case it never returns).
    """
    stage = _Compiled(spec)
    seg = Segment(spec.n_sinks)
    stage.bind(seg, [], frozenset(), None)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    at = [0]

    def traced(name: str, real: Any) -> Any:
        line = f"\t{name}\n"

        def run(data: Any) -> None:
            os.write(fd, f"{at[0]}{line}".encode())
            real(data)

        return run

    for name, i in stage.index.items():
        stage.ns[f"RUN{i}"] = traced(name, stage.ns[f"RUN{i}"])
    try:
        with capture_stdout(lambda text: None):
            for k, item in enumerate(items):
                at[0] = k
                with contextlib.suppress(Exception):  # a node raising is not what is looked for
                    stage.feed_ends([item])
    finally:
        os.close(fd)
    return len(items)


def read_probe(path: str) -> str | None:
    """The last line :func:`probe_partition` wrote to ``path`` on this host, if any; the file is removed."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
        os.remove(path)
    except OSError:
        return None
    return lines[-1] if lines else None
