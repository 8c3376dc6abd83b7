"""An item that kills its worker every time: found and named once resending it stops helping.

A partition whose tasks are lost with their workers is sent again (see
``execute.MAX_RESENDS``). When that stops helping, the partitions that were
in flight at every loss are probed one by one, in order
(:func:`pypiper_dask.worker.probe.probe_partition`): the first whose probe
kills its worker names the node and the item, in a :class:`PipelineError`
that replaces distributed's ``lost dependencies``.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from typing import Any

from ..compiler.plan import FusedStage
from ..compiler.tasks import Ref, StageRef, TaskSpec, fused_spec, seq_spec
from ..errors import PipelineError, short_repr
from ..log import logger
from ..worker.probe import Holder, Result, probe_partition, probe_rounds, read_probe
from .backends import DistributedBackend

__all__ = ["find_poison", "find_poison_in_rounds"]

#: Seconds a probe of one partition may take.
PROBE_TIMEOUT = 60.0

#: Seconds to wait for a worker to read a probe's file after it killed its worker:
#: on a loaded machine a nanny's restart has taken over 30 s.
READ_TIMEOUT = 60.0


def find_poison(backend: Any, rounds: list[Any], resends: int) -> PipelineError | None:
    """Probe ``rounds`` (their top stage) one at a time; the error naming what killed its worker, if found."""
    if not isinstance(backend, DistributedBackend) or backend.names is None or not rounds:
        return None  # only a cluster loses workers
    client, names, plan = backend.client, backend.names, backend.plan
    if plan is None:
        return None  # not started
    top = plan.stages[0]
    if not isinstance(top, FusedStage):
        return None  # not reached: a plan always starts with one
    spec = fused_spec(plan, top, names.token)  # the top stage, fed by the source; in the task itself
    for r in rounds:
        logger.info("partition %d was lost with its worker again and again: probing its items", r.index)
        line = _probe(client, names, f"probe{r.index}", probe_partition, spec, list(r.chunk.items))
        if line is None:
            continue
        index, node = line.split("\t", 1)
        node = _unescaped(node)
        item = r.chunk.items[int(index)]
        return PipelineError(
            f"Node {node!r} killed its worker process on item {short_repr(item)} (item {index} of partition "
            f"{r.index}): {_STOPS.format(resends=resends)}"
        )
    return None


def find_poison_in_rounds(
    backend: Any, states: dict[int, bytes | None], start: int, rounds: list[tuple[int, list[TaskSpec]]], resends: int
) -> PipelineError | None:
    """Run ``rounds`` (every stage) in one probe task from the cut ``states``; the error naming what killed it.

    For a node the top stage's probe cannot reach: a sequential node, or one
    below it, whose input depends on the state of the nodes above.
    """
    if not isinstance(backend, DistributedBackend) or backend.names is None or not rounds:
        return None  # only a cluster loses workers
    client, names, plan = backend.client, backend.names, backend.plan
    if plan is None:
        return None  # not started
    stages = {
        s.id: fused_spec(plan, s, names.token) if isinstance(s, FusedStage) else seq_spec(plan, s) for s in plan.stages
    }
    shipped = [(index, [(t.key, t.func, tuple(_marker(a) for a in t.args)) for t in tasks]) for index, tasks in rounds]
    logger.info("partitions were lost with their workers again and again: probing %d round(s) whole", len(rounds))
    line = _probe(client, names, "probe-rounds", probe_rounds, stages, states, start, shipped, timeout=120.0)
    if line is None:
        return None
    index, node, data = line.split("\t", 2)  # the input's repr stays on one line, as written
    node = _unescaped(node)
    what = "item" if plan.snapshot.info[node].batch_size == 1 else "batch"
    return PipelineError(
        f"Node {node!r} killed its worker process on {what} {data} (partition {index}): "
        f"{_STOPS.format(resends=resends)}"
    )


_STOPS = (
    "every worker that ran it died, {resends} times in a row, so the run stops here. A node that calls "
    "os._exit, crashes the interpreter or runs out of memory on this item does this."
)


def _unescaped(field: str) -> str:
    """A probe file's field as it was before it was written on one line."""
    return field.encode("latin-1", "backslashreplace").decode("unicode_escape") if "\\" in field else field


def _marker(arg: Any) -> Any:
    """A task argument as :func:`probe_rounds` reads it."""
    if isinstance(arg, Ref):
        return Result(arg.key)
    if isinstance(arg, StageRef):
        return Holder(arg.stage)
    return arg


def _probe(client: Any, names: Any, label: Any, func: Any, *args: Any, timeout: float = PROBE_TIMEOUT) -> str | None:
    """Run ``func(*args, path)`` as a task; the last line it wrote to ``path`` if its worker died, else ``None``."""
    from distributed import wait

    path = os.path.join(tempfile.gettempdir(), f"pypiper-probe-{names.token}-{label}-{os.getpid()}")
    key = names.key(0, label)
    future = client.submit(func, *args, path, key=key, pure=False)
    deadline = time.monotonic() + timeout
    died = False
    while time.monotonic() < deadline and not future.done():
        with contextlib.suppress(Exception), client.as_current():
            wait([future], timeout=0.2)
        died = client.run_on_scheduler(_suspicious, key=key) > 0
        if died:
            break
    client.cancel([future], force=True)
    # Every worker may have died running it: wait for one to come back to read the file.
    found = _read_everywhere(client, path, READ_TIMEOUT if died else 0.0)  # also removes the files
    if not died or not found:
        return None  # went through (or took too long): not here
    return min(found)[1]  # the first run's (a worker that died runs it again)


def _suspicious(dask_scheduler: Any, key: Any) -> int:
    ts = dask_scheduler.tasks.get(key)
    return 0 if ts is None else ts.suspicious


def _read_everywhere(client: Any, path: str, seconds: float) -> list[tuple[float, str]]:
    """What :func:`~pypiper_dask.worker.probe.read_probe` finds here and on every worker's host.

    Read here first: on this machine's cluster the probe wrote here, and every
    worker may still be restarting after the probe killed them. Else asked of the
    workers, retried for ``seconds`` while none answers.
    """
    here = read_probe(path)
    deadline = time.monotonic() + seconds
    while True:
        try:
            found = client.run(read_probe, path, on_error="ignore")
        except Exception:
            found = {}
        answers = [a for a in [here, *found.values()] if a]
        if answers or time.monotonic() >= deadline:
            return answers
        time.sleep(0.2)
