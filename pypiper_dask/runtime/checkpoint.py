"""``run(checkpoint=PATH)``: a run's consistent cut, kept through fsspec, and a resume from it.

A checkpoint is two files at ``PATH`` (a local path or any fsspec URL):

* ``PATH``: the last *cut* (see :mod:`~pypiper_dask.runtime.recovery`): the
  pipeline's identity, the source items delivered through partition ``k``,
  the source node as it was when partition ``k + 1`` was cut, every
  sequential stage's snapshot after ``k``, and the output through ``k``
  (collected items and counts). Once the run ends it holds the result and is
  marked complete.
* ``PATH.delivered``: how many source items' output was delivered (stdout
  flushed), written after every partition.

Each is written to a temporary name and then moved over the old one, so a
run killed at any moment leaves the previous version whole; local files are
created readable by their owner only (a checkpoint holds pickles: loading one
runs code). A resumed run restores the source and the stages from the cut,
computes the partitions after it and prints only what lies beyond the
delivered position: a partition that straddles it is printed whole, so at
most one partition repeats at the seam and nothing is lost.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import sys
import uuid
from typing import Any

import cloudpickle

from ..errors import CheckpointError
from ..log import logger
from ..model.node import _INIT, Node
from ..model.snapshot import Snapshot

__all__ = ["Checkpoint", "CheckpointRun", "identity"]

VERSION = 1


def identity(snap: Snapshot, nodes: dict[str, Node]) -> dict[str, dict[str, Any]]:
    """What identifies a pipeline: per node its class, children, options, streams and constructor arguments.

    Not ``n_threads``, ``client`` or ``partition_size``: a run may resume elsewhere.
    """
    out: dict[str, dict[str, Any]] = {}
    for name in snap.order:
        info = snap.info[name]
        cls = type(nodes[name])
        record = getattr(nodes[name], _INIT, None)
        out[name] = {
            "class": f"{cls.__module__}.{cls.__qualname__}",
            "children": list(snap.children[name]),
            "batch_size": repr(info.batch_size),
            "stateful": not info.stateless,
            "in_streams": repr(info.in_streams),
            "out_streams": repr(info.out_streams),
            "arguments": "" if record is None else stable_repr((record.args, dict(record.kwargs))),
        }
    out[""] = {"root": snap.root, "order": list(snap.order)}
    return out


_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def stable_repr(value: Any) -> str:
    """``repr`` that is the same in another process: sets and dicts sorted, object addresses dropped.

    Examples
    --------
    >>> stable_repr(({"b", "a"}, {"y": 1, "x": object()}))
    "({'a', 'b'}, {'x': <object object>, 'y': 1})"
    """
    if isinstance(value, dict):
        items = sorted((stable_repr(k), stable_repr(v)) for k, v in value.items())
        return "{" + ", ".join(f"{k}: {v}" for k, v in items) + "}"
    if isinstance(value, (set, frozenset)):
        return "{" + ", ".join(sorted(stable_repr(v) for v in value)) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(stable_repr(v) for v in value) + "]"
    if isinstance(value, tuple):
        return "(" + ", ".join(stable_repr(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    return _ADDRESS.sub("", repr(value))


def difference(mine: dict[str, dict[str, Any]], theirs: dict[str, dict[str, Any]]) -> str | None:
    """The first difference between two identities, in words; ``None`` if they are the same."""
    if mine == theirs:
        return None
    if mine.get("") != theirs.get(""):
        a, b = theirs.get("", {}), mine.get("", {})
        return f"its nodes are {b.get('order')} (root {b.get('root')!r}), the checkpoint's {a.get('order')}"
    for name, fields in mine.items():
        for key, value in fields.items():
            if theirs.get(name, {}).get(key) != value:
                return f"node {name!r}: {key} is {value} here, {theirs.get(name, {}).get(key)} in the checkpoint"
    return "the pipelines differ"


class Checkpoint:
    """One checkpoint location: load what is there, write cuts and the delivered position."""

    def __init__(self, url: str, ident: dict[str, dict[str, Any]]) -> None:
        import fsspec

        self.url = str(url)
        self.fs, self.path = fsspec.core.url_to_fs(self.url)
        self.local = "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,))
        self.identity = ident
        self.writes = 0

    # -- reading -----------------------------------------------------------------------

    def load(self) -> dict[str, Any] | None:
        """The stored cut with its delivered position, or ``None`` where there is none.

        Raises :class:`CheckpointError` when it belongs to a different pipeline.
        """
        if not self.fs.exists(self.path):
            return None
        with self.fs.open(self.path, "rb") as f:
            try:
                outer = pickle.loads(f.read())  # plain values: nothing of the pipeline's is loaded yet
            except Exception:
                outer = None
        if not isinstance(outer, dict) or outer.get("version") != VERSION:
            raise CheckpointError(f"{self.url} is not a pypiper_dask checkpoint this version can read.")
        why = difference(self.identity, outer["identity"])
        if why is not None:
            raise CheckpointError(
                f"The checkpoint at {self.url} is of a different pipeline: {why}. "
                "Use another checkpoint, or run(..., overwrite=True) to start over."
            )
        record = cloudpickle.loads(outer["body"])
        record["delivered"] = record["items"]
        pos = self.path + ".delivered"
        if not record.get("complete") and self.fs.exists(pos):
            with self.fs.open(pos, "rb") as f:
                mark = json.loads(f.read())
            if mark.get("run") == record["run"]:
                record["delivered"] = max(record["items"], int(mark["items"]))
        return record

    # -- writing -----------------------------------------------------------------------

    def write_cut(self, record: dict[str, Any]) -> None:
        # The identity is checked before the body (nodes, states, items) is unpickled.
        outer = {"version": VERSION, "identity": self.identity, "body": cloudpickle.dumps(record)}
        self._put(self.path, pickle.dumps(outer), sync=True)

    def write_delivered(self, run: str, items: int) -> None:
        # After every partition: not synced to disk (a rename survives the process, which is
        # what a kill takes; after a power loss a resume may repeat more than a partition).
        self._put(self.path + ".delivered", json.dumps({"run": run, "items": items}).encode(), sync=False)

    def _put(self, path: str, data: bytes, sync: bool) -> None:
        """Write ``data`` to ``path`` atomically: to a temporary name, then moved over it."""
        self.writes += 1
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:12]}"
        if self.local:
            parent = os.path.dirname(path)
            if parent:
                os.makedirs(parent, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    if sync:
                        f.flush()
                        os.fsync(f.fileno())
                os.replace(tmp, path)
            except BaseException:
                if os.path.exists(tmp):
                    os.unlink(tmp)
                raise
            return
        self.fs.pipe_file(tmp, data)
        self.fs.mv(tmp, path)


def new_run_id() -> str:
    return uuid.uuid4().hex


class CheckpointRun:
    """One run's side of a checkpoint: what it resumes from, and the cuts and positions it writes.

    ``record``: the cut to resume from (``None``: start from the beginning);
    ``done``: the stored result of a complete checkpoint (nothing to run).
    """

    def __init__(self, store: Checkpoint, overwrite: bool, collect: bool) -> None:
        self.store = store
        self.collect = collect
        self.record: dict[str, Any] | None = None
        self.done: Any = None
        self.run_id = new_run_id()
        self.source_at: dict[int, tuple[bytes, int]] = {}  # round index -> the source before it was cut
        self.want_source = False
        self.broken: str | None = None
        self._written = -1
        if overwrite:
            return
        record = store.load()
        if record is None:
            return
        if record.get("complete"):
            self.done = record["result"]
            if collect and not record["collect"]:
                self.done = None  # a full result was asked for and is not stored: run again
                return
            logger.info(
                "checkpoint %s is complete: printing nothing and returning its stored result "
                "(run(..., overwrite=True) starts over)",
                store.url,
            )
            return
        if collect and not record["collect"]:
            raise CheckpointError(
                f"The checkpoint at {store.url} was written by a run with collect=False and holds no items to "
                "return: resume it with collect=False, or run(..., overwrite=True) to start over."
            )
        self.record = record
        self.run_id = record["run"]
        self._written = record["delivered"]  # a resumed run never records less than went out
        logger.info(
            "resuming from checkpoint %s: after %d source items (output delivered through %d)",
            store.url,
            record["items"],
            record["delivered"],
        )

    # -- what the run loop calls -------------------------------------------------------

    def take_source(self, index: int, node: Node, emitted: int) -> None:
        """The source as it is before round ``index`` is cut (kept for a cut at ``index - 1``)."""
        from ..model.pickling import dumps_node

        self.want_source = False
        if self.broken is not None:
            return
        bound: dict[str, Any] = {k: node.__dict__.pop(k) for k in ("emit", "close") if k in node.__dict__}
        try:
            self.source_at.setdefault(index, (dumps_node(node), emitted))
        except Exception as exc:
            self._break(f"the source {node.name!r} cannot be pickled ({exc})")
        finally:
            node.__dict__.update(bound)

    def cut(self, point: int, items: int, states: dict[int, bytes | None], out: Any, source: Any) -> None:
        """Round ``point`` was delivered and is the restore point: write it as the checkpoint's cut."""
        if self.broken is not None:
            return
        for old in [i for i in self.source_at if i <= point]:
            del self.source_at[old]
        if point + 1 not in self.source_at:
            self.take_source(point + 1, source.node, source.emitted)  # nothing was cut after it yet
            if self.broken is not None:
                return
        blob, emitted = self.source_at[point + 1]
        splicer = out.splicer
        if splicer.waiting or splicer.closed or splicer.seen_closed:
            return  # a node closed: the splicer's state is not kept; the previous cut stays
        self.store.write_cut(
            {
                "run": self.run_id,
                "complete": False,
                "point": point,
                "items": items,
                "source": blob,
                "emitted": emitted,
                "states": dict(states),
                "collect": out.collect,
                "values": out.values if out.collect else {},
                "counts": out.counts,
                "errors": splicer.errors,
            }
        )

    def delivered(self, items: int) -> None:
        """Output through ``items`` source items went out: flush stdout, then record the position."""
        if items <= self._written:
            return
        sys.stdout.flush()
        self.store.write_delivered(self.run_id, items)
        self._written = items

    def complete(self, result: Any) -> None:
        """The run ended: flush stdout, then store the result and mark the checkpoint complete."""
        sys.stdout.flush()
        self.store.write_cut(
            {"run": self.run_id, "complete": True, "collect": self.collect, "result": result, "items": -1}
        )

    def _break(self, why: str) -> None:
        logger.warning("%s: the run goes on without writing checkpoints", why)
        self.broken = why
