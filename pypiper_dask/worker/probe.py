"""Which item, at which node, kills its worker: partitions fed again with each call written down first.

When a partition's tasks are lost with their workers again and again, the
caller sends the partition once more as a probe: the top fused stage over
its items, nothing pushed on, each node call preceded by a line
``"{item index}\\t{node}"`` written straight to a file on the worker's host.
The write is a system call, so the line survives the process (an
``os._exit`` in ``run`` included); the caller reads the last line back.

A node below the top stage (a stateful or batched one, or one after it) is
found by :func:`probe_rounds`: every stage of the plan in one task, its
sequential stages restored from the last cut and the rounds since fed to
them in order, each call written down as ``"{round}\\t{node}\\t{input}"``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
import reprlib
import time
from typing import Any, NamedTuple

from ..ordering import Segment
from .capture import capture_stdout
from .fused import FusedSpec, _Compiled, _compiled
from .sequential import SeqSpec, make_holder

__all__ = ["Holder", "Result", "probe_partition", "probe_rounds", "read_probe"]

_short = reprlib.Repr()
_short.maxlist = _short.maxtuple = 6
_short.maxstring = _short.maxother = 60


def probe_partition(spec: FusedSpec, items: list, path: str) -> int:
    """Feed ``items`` through the stage of ``spec`` one by one, logging each node call to ``path``.

    Returns how many items went through (all of them, unless one killed the
    process, in which case it never returns).
    """
    stage = _Compiled(spec)
    seg = Segment(spec.n_sinks)
    stage.bind(seg, [], frozenset(), None)
    fd = _open(path)
    at = [0]

    def traced(name: str, real: Any) -> Any:
        line = f"\t{_one_line(name)}\n"

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


class Result(NamedTuple):
    """A task argument of :func:`probe_rounds`: the result of the round's task ``key``."""

    key: Any


class Holder(NamedTuple):
    """A task argument of :func:`probe_rounds`: stage ``stage``'s spec, or its holder."""

    stage: int


def probe_rounds(
    stages: dict[int, FusedSpec | SeqSpec],
    states: dict[int, bytes | None],
    start: int,
    rounds: list[tuple[int, list[tuple[Any, Any, tuple]]]],
    path: str,
) -> int:
    """Run whole rounds here, every node call written to ``path`` first; how many rounds went through.

    ``stages``: each stage's spec; a sequential one starts from ``states``
    (a cut's snapshot, or ``None``: as planned) with ``start`` its next step.
    ``rounds``: ``(index, tasks)`` in order, each task ``(key, func, args)``
    parents first, :class:`Result` and :class:`Holder` standing for what the
    scheduler fills in. Holders are plain objects here, so nothing is pushed
    anywhere else and a step runs when its task does.
    """
    fd = _open(path)
    at = [0]

    def traced(name: str, real: Any) -> Any:
        def run(data: Any) -> None:
            os.write(fd, f"{at[0]}\t{_one_line(name)}\t{_one_line(_short.repr(data))}\n".encode())
            real(data)

        return run

    refs: dict[int, Any] = {}
    for sid, spec in stages.items():
        if isinstance(spec, FusedSpec):
            spec = dataclasses.replace(spec, token=f"{spec.token}-probe")  # not the run's cached instances
            for name, node in _compiled(spec).nodes.items():
                node.run = traced(name, node.run)  # an instance attribute: bind() takes node.run
            refs[sid] = spec
        else:
            holder = make_holder(spec, restore=states.get(sid), start=start)
            holder.node.run = traced(spec.name, holder.node.run)
            refs[sid] = holder
    try:
        with capture_stdout(lambda text: None):
            for index, tasks in rounds:
                at[0] = index
                results: dict[Any, Any] = {}
                for key, func, args in tasks:
                    values = [
                        results[a.key] if isinstance(a, Result) else refs[a.stage] if isinstance(a, Holder) else a
                        for a in args
                    ]
                    with contextlib.suppress(Exception):  # a node raising is not what is looked for
                        results[key] = func(*values)
    finally:
        os.close(fd)
    return len(rounds)


def _open(path: str) -> int:
    """The probe file, opened for appending, with a line saying when this run of the probe started.

    A worker that dies while running the probe task makes the scheduler run it
    again (on this host, into this file): the caller reads the first run's lines.
    """
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.write(fd, f"{_START}\t{time.time()!r}\n".encode())
    return fd


_START = "start"


def _one_line(text: str) -> str:
    """``text`` without the characters that split the probe file's lines and fields."""
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")


def read_probe(path: str) -> tuple[float, str] | None:
    """When the first run of the probe in ``path`` (on this host) started, and the last line it wrote.

    ``None`` if it wrote none. The file is removed.
    """
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
        os.remove(path)
    except OSError:
        return None
    if not lines or not lines[0].startswith(_START + "\t"):
        return None
    started = float(lines[0].split("\t", 1)[1])
    first_run = list(itertools.takewhile(lambda line: not line.startswith(_START + "\t"), lines[1:]))
    return (started, first_run[-1]) if first_run else None
