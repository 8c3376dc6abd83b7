"""``run(checkpoint=PATH)``: a run's consistent cut, kept through fsspec, and a resume from it.

A checkpoint is two files at ``PATH`` (a local path or any fsspec URL):

* ``PATH``: the pipeline's identity around the last *cut* (a :class:`Cut`,
  see :mod:`~pypiper_dask.runtime.recovery`): the source items delivered
  through partition ``k``, the source node as it was when partition ``k + 1``
  was cut, every sequential stage's snapshot after ``k``, and the output
  through ``k`` (collected items and counts). Once the run ends it holds the
  result instead (a :class:`Completed`).
* ``PATH.delivered``: how many source items' output was delivered (stdout
  flushed), written after every partition (a :class:`Position`, as JSON).

Each is written to a temporary name and then moved over the old one, so a
run killed at any moment leaves the previous version whole; local files are
created readable by their owner only (a checkpoint holds pickles: loading one
runs code). A resumed run restores the source and the stages from the cut,
computes the partitions after it and prints only what lies beyond the
delivered position: a partition that straddles it is printed whole, so at
most one partition repeats at the seam and nothing is lost.
"""

from __future__ import annotations

import inspect
import json
import os
import pickle
import re
import sys
import types
import uuid
from dataclasses import dataclass
from typing import Any

import cloudpickle
import dask

from ..errors import CheckpointError
from ..log import logger
from ..model.node import _INIT, Node
from ..model.snapshot import Snapshot
from ..ordering import ItemError

__all__ = ["Checkpoint", "CheckpointRun", "Completed", "Cut", "Loaded", "Position", "content_token", "identity"]

# The outer wrapper's version: a file of another one is refused before its body is unpickled.
# 2: constructor arguments compared by content token, not repr; 3: the body is a Cut or a
# Completed (dataclasses), not a dict.
VERSION = 3


@dataclass(frozen=True)
class Cut:
    """A consistent cut, as a checkpoint file's body holds it: what a resumed run starts from.

    Written by :meth:`CheckpointRun.cut` after round ``point`` was delivered;
    a run resumed from it restores the source and the sequential stages and
    computes from round ``point + 1`` on.

    Examples
    --------
    >>> cut = Cut(
    ...     run="ab12", point=0, items=10, source=b"", emitted=10, states={},
    ...     collect=False, values={}, counts={"leaf": 10}, errors=[],
    ... )
    >>> cut.point + 1, cut.counts["leaf"]
    (1, 10)
    """

    run: str  # the run that wrote it: a delivered position of another run is not its own
    point: int  # the round delivered last, the restore point (-1: the start, before round 0)
    items: int  # source items delivered through round ``point``
    source: bytes  # the source node pickled as it was when round ``point + 1`` was cut
    emitted: int  # how many items that source had emitted then
    states: dict[int, bytes | None]  # sequential stage id -> its snapshot after ``point`` (None: as planned)
    collect: bool  # whether the run collected its items (``values`` holds them)
    values: dict[str, list[Any]]  # leaf -> its items through ``point``; empty when not ``collect``
    counts: dict[str, int]  # leaf -> how many items it output through ``point``
    errors: list[ItemError]  # items dropped or collected by ``on_error`` through ``point``


@dataclass(frozen=True)
class Completed:
    """The body of a complete checkpoint: the run ended, and this is what it returned.

    Examples
    --------
    >>> Completed("run", collect=False, result=None).collect
    False
    """

    run: str  # the run that completed it
    collect: bool  # whether ``result`` holds the items (a run with ``collect=False`` kept only counts)
    result: Any  # the run's PipelineResult, returned again without running


@dataclass(frozen=True)
class Position:
    """How far a run's output was delivered: the ``PATH.delivered`` file, as JSON.

    Examples
    --------
    >>> Position.from_json(Position("run", 40).to_json())
    Position(run='run', items=40)
    >>> Position.from_json(b"damaged") is None
    True
    """

    run: str  # the run that delivered it: a position counts only for that run's cut
    items: int  # source items whose output was delivered (stdout flushed, or yielded)

    def to_json(self) -> bytes:
        """The file's content."""
        return json.dumps({"run": self.run, "items": self.items}).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Position | None:
        """The position ``data`` holds; ``None`` if it is damaged."""
        try:
            mark = json.loads(data)
            run, items = mark["run"], int(mark["items"])
        except (ValueError, TypeError, KeyError):
            return None
        return cls(run, items) if isinstance(run, str) else None


@dataclass(frozen=True)
class Loaded:
    """What :meth:`Checkpoint.load` found: the stored record, and how far its output was delivered."""

    record: Cut | Completed  # the last cut, or the completed run's result
    # Source items whose output went out: the cut's ``items``, or its run's ``PATH.delivered``
    # position where that is further; -1 for a completed record (nothing resumes from it).
    delivered: int


def identity(snap: Snapshot, nodes: dict[str, Node]) -> dict[str, dict[str, Any]]:
    """What identifies a pipeline: per node its class, children, options, streams and constructor arguments.

    Not ``n_threads``, ``client`` or ``partition_size``: a run may resume elsewhere.
    Each argument is compared by a token of its content (:func:`content_token`).
    """
    out: dict[str, dict[str, Any]] = {}
    for name in snap.order:
        info = snap.info[name]
        cls = type(nodes[name])
        out[name] = {
            "class": f"{cls.__module__}.{cls.__qualname__}",
            "children": list(snap.children[name]),
            "batch_size": repr(info.batch_size),
            "stateful": not info.stateless,
            "in_streams": repr(info.in_streams),
            "out_streams": repr(info.out_streams),
            "arguments": {arg: _argument_token(name, arg, value) for arg, value in _arguments(nodes[name]).items()},
        }
    out[""] = {"root": snap.root, "order": list(snap.order)}
    return out


def _arguments(node: Node) -> dict[str, Any]:
    """The arguments ``node`` was constructed with, by the names its ``__init__`` gives them."""
    record = getattr(node, _INIT, None)
    if record is None:
        return {}
    args, kwargs = record.args, dict(record.kwargs)
    try:
        sig = inspect.signature(type(node).__init__)
        bound = sig.bind(node, *args, **kwargs).arguments
    except (TypeError, ValueError):  # no signature to read: by position and keyword
        return {**{f"argument {i}": a for i, a in enumerate(args)}, **kwargs}
    named: dict[str, Any] = {}
    for i, (param, value) in enumerate(bound.items()):
        kind = sig.parameters[param].kind
        if i == 0:
            continue  # self
        if kind is inspect.Parameter.VAR_KEYWORD:
            named.update(value)
        elif kind is inspect.Parameter.VAR_POSITIONAL:
            named.update({f"{param}[{j}]": v for j, v in enumerate(value)})
        else:
            named[param] = value
    return named


def _argument_token(node: str, arg: str, value: Any) -> str:
    try:
        return content_token(value)
    except Exception as exc:  # not picklable, say (a lock): its repr is what there is to compare
        logger.warning(
            "node %r: argument %r cannot be compared by content (%s); the checkpoint compares its repr",
            node,
            arg,
            exc,
        )
        return "repr " + stable_repr(value)


def content_token(value: Any) -> str:
    """A token of ``value``'s content, the same in any process: two values with the same token are equal.

    :func:`dask.base.tokenize` does this for what it knows (numpy arrays by
    their data, dicts and sets whatever their order, functions) and is
    deterministic across processes for those; for any other object it
    pickles it, which for a class of ``__main__`` (or another module pickled
    by value) writes a random per-process id of the class, so such a token
    never matches in another process. Those objects are taken apart here
    first, as pickle sees them (``__reduce_ex__``: class by name, then
    state), so they compare by content too. Raises where no deterministic
    token exists (an object pickle cannot handle).

    Examples
    --------
    >>> class Weights:  # the default repr: <Weights object at 0x...>
    ...     def __init__(self, w):
    ...         self.w = w
    >>> content_token(Weights([1, 2])) == content_token(Weights([1, 2]))
    True
    >>> content_token(Weights([1, 2])) == content_token(Weights([1, 3]))
    False
    >>> content_token({"b": 1, "a": {2, 1}}) == content_token({"a": {1, 2}, "b": 1})
    True
    """
    from dask.base import tokenize

    with dask.config.set({"tokenize.ensure-deterministic": True}):
        return tokenize(_plain(value, set()))


_SCALARS = (int, float, complex, bool, str, bytes, type(None))


def _plain(value: Any, active: set[int]) -> Any:
    """``value`` as something :func:`dask.base.tokenize` tokenizes the same in every process."""
    from dask.base import normalize_token, tokenize
    from dask.tokenize import normalize_object

    if type(value) in _SCALARS:
        return value
    if isinstance(value, type):
        return ("class", value.__module__, value.__qualname__)
    if id(value) in active:
        return ("cycle",)
    kind = f"{type(value).__module__}.{type(value).__qualname__}"
    active.add(id(value))
    try:
        if isinstance(value, types.FunctionType):
            defaults = (value.__defaults__, value.__kwdefaults__)
            cells = tuple(c.cell_contents for c in value.__closure__ or () if c.cell_contents is not value)
            code = _code(value.__code__, active)
            return ("function", value.__module__, value.__qualname__, code, _plain((defaults, cells), active))
        if isinstance(value, (list, tuple)):
            return (kind, [_plain(v, active) for v in value])
        if isinstance(value, (set, frozenset)):
            return (kind, sorted(tokenize(_plain(v, active)) for v in value))
        if isinstance(value, dict):
            pairs = [(tokenize(_plain(k, active)), _plain(v, active)) for k, v in value.items()]
            return (kind, sorted(pairs, key=lambda pair: pair[0]))
        if normalize_token.dispatch(type(value)) is not normalize_object or hasattr(value, "__dask_tokenize__"):
            return value  # dask has a deterministic normalizer for it (numpy, pandas, ...)
        reduced = value.__reduce_ex__(4)
        if isinstance(reduced, str):  # a module-level singleton, by name
            return ("global", kind, reduced)
        func, args, state, items, pairs_ = (*reduced, None, None, None)[:5]
        return (
            "object",
            kind,
            _plain(func, active),
            _plain(args, active),
            _plain(state, active),
            _plain(list(items or ()), active),
            _plain(dict(pairs_ or ()), active),
        )
    finally:
        active.discard(id(value))


def _code(code: types.CodeType, active: set[int]) -> tuple:
    consts = tuple(_code(c, active) if isinstance(c, types.CodeType) else _plain(c, active) for c in code.co_consts)
    return (code.co_name, code.co_code, consts, code.co_names)


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
            stored = theirs.get(name, {}).get(key)
            if stored == value:
                continue
            if key == "arguments" and isinstance(stored, dict):
                differ = sorted(a for a in value.keys() | stored.keys() if value.get(a) != stored.get(a))
                names = ", ".join(map(repr, differ))
                return f"node {name!r}: its constructor arguments differ from the checkpoint's in {names}"
            return f"node {name!r}: {key} is {value} here, {stored} in the checkpoint"
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

    def load(self) -> Loaded | None:
        """The stored record with its delivered position, or ``None`` where there is none.

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
            raise self._unreadable()
        why = difference(self.identity, outer["identity"])
        if why is not None:
            raise CheckpointError(
                f"The checkpoint at {self.url} is of a different pipeline: {why}. "
                "Use another checkpoint, or run(..., overwrite=True) to start over."
            )
        record = cloudpickle.loads(outer["body"])
        if not isinstance(record, (Cut, Completed)):
            raise self._unreadable()
        if isinstance(record, Completed):
            return Loaded(record, -1)
        delivered = record.items
        pos = self.path + ".delivered"
        if self.fs.exists(pos):
            with self.fs.open(pos, "rb") as f:
                mark = Position.from_json(f.read())
            # Damaged (None) or another run's: the cut's own position is a safe one (it may repeat more).
            if mark is not None and mark.run == record.run:
                delivered = max(record.items, mark.items)
        return Loaded(record, delivered)

    def _unreadable(self) -> CheckpointError:
        return CheckpointError(
            f"{self.url} is not a pypiper_dask checkpoint this version can read (truncated, of another "
            "version, or another file). Use another checkpoint, or run(..., overwrite=True) to replace it."
        )

    # -- writing -----------------------------------------------------------------------

    def write_cut(self, record: Cut | Completed) -> None:
        # The identity is checked before the body (nodes, states, items) is unpickled: the
        # wrapper stays a dict of plain values, and only the body holds the record's classes.
        outer = {"version": VERSION, "identity": self.identity, "body": cloudpickle.dumps(record)}
        self._put(self.path, pickle.dumps(outer), sync=True)

    def write_delivered(self, position: Position) -> None:
        # After every partition: not synced to disk (a rename survives the process, which is
        # what a kill takes; after a power loss a resume may repeat more than a partition).
        self._put(self.path + ".delivered", position.to_json(), sync=False)

    def check_writable(self) -> None:
        """Raise :class:`CheckpointError` now if nothing can be written there (not after the first cut)."""
        probe = f"{self.path}.tmp-{uuid.uuid4().hex[:12]}"
        try:
            if self.local:
                parent = os.path.dirname(self.path)
                if parent:
                    os.makedirs(parent, exist_ok=True)
                os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
                os.unlink(probe)
            else:
                self.fs.pipe_file(probe, b"")
                self.fs.rm(probe)
        except OSError as exc:
            raise self._unwritable(exc) from exc

    def _unwritable(self, exc: OSError) -> CheckpointError:
        # Named by the user's path: the temporary file's name means nothing to them.
        reason = exc.strerror or str(exc) or type(exc).__name__
        where = exc.filename if isinstance(exc.filename, str) and ".tmp-" not in exc.filename else None
        return CheckpointError(
            f"Cannot write the checkpoint at {self.url}: {reason}"
            + ("" if where is None or where == self.path else f" ({where})")
            + ". Give checkpoint= a path in a folder this process can write to."
        )

    def _put(self, path: str, data: bytes, sync: bool) -> None:
        """Write ``data`` to ``path`` atomically: to a temporary name, then moved over it."""
        try:
            self._put_raw(path, data, sync)
        except OSError as exc:
            raise self._unwritable(exc) from exc

    def _put_raw(self, path: str, data: bytes, sync: bool) -> None:
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

    ``record``: the cut to resume from (``None``: start from the beginning),
    with ``delivered_before``: how many source items' output went out before
    (-1 when not resuming); ``done``: the stored result of a complete
    checkpoint (nothing to run).
    """

    def __init__(self, store: Checkpoint, overwrite: bool, collect: bool) -> None:
        self.store = store
        self.collect = collect
        self.record: Cut | None = None
        self.delivered_before = -1
        self.done: Any = None
        self.run_id = new_run_id()
        self.source_at: dict[int, tuple[bytes, int]] = {}  # round index -> the source before it was cut
        self.want_source = False
        self.broken: str | None = None
        self._written = -1
        loaded = None if overwrite else store.load()
        stored, delivered = (None, -1) if loaded is None else (loaded.record, loaded.delivered)
        if isinstance(stored, Completed) and not (collect and not stored.collect):
            self.done = stored.result
            logger.info(
                "checkpoint %s is complete: printing nothing and returning its stored result "
                "(run(..., overwrite=True) starts over)",
                store.url,
            )
            return
        store.check_writable()  # this run writes there: say now if it cannot
        if not isinstance(stored, Cut):  # none, or a complete one without the full result asked for: run again
            return
        if collect and not stored.collect:
            raise CheckpointError(
                f"The checkpoint at {store.url} was written by a run with collect=False and holds no items to "
                "return: resume it with collect=False, or run(..., overwrite=True) to start over."
            )
        self.record = stored
        self.delivered_before = delivered
        self.run_id = stored.run
        self._written = delivered  # a resumed run never records less than went out
        logger.info(
            "resuming from checkpoint %s: after %d source items (output delivered through %d)",
            store.url,
            stored.items,
            delivered,
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
        # The cut counts this round as delivered: its printed lines go out first, or a kill
        # between the write and the next flush loses them (a resume prints after the cut).
        sys.stdout.flush()
        self.store.write_cut(
            Cut(
                run=self.run_id,
                point=point,
                items=items,
                source=blob,
                emitted=emitted,
                states=dict(states),
                collect=out.collect,
                values=out.values if out.collect else {},
                counts=out.counts,
                errors=splicer.errors,
            )
        )

    def delivered(self, items: int) -> None:
        """Output through ``items`` source items went out: flush stdout, then record the position."""
        if items <= self._written:
            return
        sys.stdout.flush()
        self.store.write_delivered(Position(self.run_id, items))
        self._written = items

    def complete(self, result: Any) -> None:
        """The run ended: flush stdout, then store the result and mark the checkpoint complete."""
        sys.stdout.flush()
        self.store.write_cut(Completed(run=self.run_id, collect=self.collect, result=result))

    def _break(self, why: str) -> None:
        logger.warning("%s: the run goes on without writing checkpoints", why)
        self.broken = why
