"""How a node is pickled to leave the caller's process.

* **The user's own modules go by value.** A node's class, and the functions,
  classes and modules its code uses, that come from a module of the user's
  (a file that is not in the standard library, not in a ``site-packages`` or
  ``dist-packages`` folder, and not pypiper_dask) are registered with
  ``cloudpickle.register_pickle_by_value`` as the pickler meets them: a worker
  without the file runs them, and never imports the module (its top-level
  code does not run there). ``__main__`` always goes by value (cloudpickle's
  own rule); installed packages go by reference, as usual.
* **Code keeps its file name.** cloudpickle writes ``"<dynamic-code>"`` as the
  file name of every code object it pickles by value; here the real one is
  kept, so a traceback from a worker names the user's file and line (the
  caller, which has the file, shows the source line).
* **Where by value cannot work** (the module holds something unpicklable that
  its classes use), the module goes by reference instead: a worker that can
  import it (a local cluster, a cluster it was installed or uploaded to) runs
  the node, and one that cannot raises :class:`~pypiper_dask.errors.NodeModuleError`
  naming the module, why it could not go by value and what to do.
  ``__main__`` cannot go by reference: it raises that error at once.
"""

from __future__ import annotations

import io
import os
import pickle
import sys
import sysconfig
import threading
import types
from collections import ChainMap
from collections.abc import Iterator
from typing import Any, ClassVar

import cloudpickle

from ..errors import NodeModuleError, NodePickleError, short_repr
from .node import PROCESS

__all__ = ["dumps", "dumps_node", "is_user_module", "load_packed", "send_by_value", "unpicklable_attributes"]

#: Modules this library registered by value (the user's own registrations are left alone).
_ours: set[str] = set()
#: Modules that could not go by value, and why: they go by reference.
_by_reference: dict[str, str] = {}
#: Modules a worker can never import by name: by value or not at all.
_value_only: set[str] = {"__main__"}
#: Registration is global to the process: one node is pickled at a time.
_lock = threading.RLock()
_verdicts: dict[str, tuple[str | None, bool]] = {}


def _installed_roots() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    roots = {os.path.realpath(paths[k]) for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths}
    return tuple(os.path.join(root, "") for root in roots)


_INSTALLED = _installed_roots()


def send_by_value(module: types.ModuleType) -> None:
    """Send ``module``'s code to workers by value only: it has no name a worker could import (a file the CLI ran)."""
    with _lock:
        cloudpickle.register_pickle_by_value(module)
        _value_only.add(module.__name__)


def is_user_module(module: types.ModuleType) -> bool:
    """Whether ``module`` is the user's own: a ``.py`` file outside the standard library and installed packages.

    ``__main__`` and pypiper_dask itself are not (cloudpickle always sends
    ``__main__`` by value; workers have pypiper_dask).

    Examples
    --------
    >>> import json, pypiper_dask
    >>> is_user_module(json), is_user_module(pypiper_dask)
    (False, False)
    """
    name = module.__name__
    file = getattr(module, "__file__", None)
    cached = _verdicts.get(name)
    if cached is not None and cached[0] == file:
        return cached[1]
    verdict = False
    ours = name in ("__main__", "__mp_main__") or name.partition(".")[0] == "pypiper_dask"
    if not ours and isinstance(file, str) and file.endswith(".py"):
        path = os.path.realpath(file)
        parts = path.split(os.sep)
        verdict = (
            "site-packages" not in parts
            and "dist-packages" not in parts
            and not any(path.startswith(root) for root in _INSTALLED)
        )
    _verdicts[name] = (file, verdict)
    return verdict


_cloudpickle_code_reduce = cloudpickle.Pickler.dispatch_table[types.CodeType]


def _code_reduce(code: types.CodeType) -> Any:
    """cloudpickle's reduction of a code object, with the code's own file name instead of ``<dynamic-code>``."""
    func, args = _cloudpickle_code_reduce(code)
    return func, tuple(code.co_filename if isinstance(a, str) and a == "<dynamic-code>" else a for a in args)


class _Met:
    """What one pickle used of the user's code: their modules by name, and the classes and functions of each."""

    def __init__(self) -> None:
        self.modules: dict[str, types.ModuleType] = {}
        self.objects: dict[str, list[Any]] = {}


class _Pickler(cloudpickle.Pickler):
    """cloudpickle's pickler, keeping file names; with ``met``, the user's modules go by value."""

    dispatch_table: ClassVar[ChainMap] = ChainMap({types.CodeType: _code_reduce}, cloudpickle.Pickler.dispatch_table)

    def __init__(self, file: io.BytesIO, met: _Met | None) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.met = met

    def reducer_override(self, obj: Any) -> Any:
        if self.met is not None and isinstance(obj, (type, types.FunctionType, types.ModuleType)):
            self._meet(obj, self.met)
        return super().reducer_override(obj)

    @staticmethod
    def _meet(obj: Any, met: _Met) -> None:
        name = obj.__name__ if isinstance(obj, types.ModuleType) else getattr(obj, "__module__", None)
        if not isinstance(name, str):
            return
        if name not in met.modules:
            module = sys.modules.get(name)
            if module is None or not (name in _value_only or is_user_module(module)):
                return
            met.modules[name] = module
            registered = cloudpickle.list_registry_pickle_by_value()
            if name not in _value_only and name not in _by_reference and name not in registered:
                cloudpickle.register_pickle_by_value(module)
                _ours.add(name)
        met.objects.setdefault(name, []).append(obj)


def _dump(obj: Any, met: _Met | None) -> bytes:
    with io.BytesIO() as file:
        _Pickler(file, met).dump(obj)
        return file.getvalue()


def dumps(obj: Any) -> bytes:
    """``cloudpickle.dumps(obj)``, keeping code objects' file names (what a worker sends back)."""
    return _dump(obj, None)


def _code_names(obj: Any) -> Iterator[str]:
    """The global names the code of a function or a class's methods may read."""
    if isinstance(obj, type):
        for value in vars(obj).values():
            for part in (value, getattr(value, "__func__", None), *(getattr(value, a, None) for a in ("fget", "fset"))):
                if isinstance(part, types.FunctionType):
                    yield from _code_names(part)
        return
    code = getattr(obj, "__code__", None)
    stack = [code] if isinstance(code, types.CodeType) else []
    while stack:
        code = stack.pop()
        yield from code.co_names
        stack += [c for c in code.co_consts if isinstance(c, types.CodeType)]


def _unpicklable_global(module: types.ModuleType, used: list[Any]) -> str | None:
    """Which global of ``module`` that ``used`` (its classes, functions or itself) reads cannot be pickled."""
    space = vars(module)
    if any(obj is module for obj in used):  # the module itself goes by value: all of it
        names = {n for n in space if not n.startswith("__")}
    else:
        names = {n for obj in used for n in _code_names(obj)}
    for name in sorted(names & space.keys()):
        value = space[name]
        if isinstance(value, types.ModuleType) or (
            isinstance(value, (type, types.FunctionType)) and getattr(value, "__module__", None) == module.__name__
        ):
            continue  # imported by name, or the module's own code: it fails only through such a global
        try:
            _dump(value, None)
        except Exception as exc:
            return f"its global {name!r} holds {type(value).__name__} {short_repr(value)} ({exc})"
    return None


def _where(module: types.ModuleType) -> str:
    file = getattr(module, "__file__", None)
    return f"{module.__name__!r} ({file})" if file else repr(module.__name__)


def unpicklable_attributes(node: Any) -> dict[str, str]:
    """``{attribute: what it holds}`` for each attribute of ``node`` that cannot be pickled.

    Examples
    --------
    >>> import threading
    >>> from types import SimpleNamespace
    >>> unpicklable_attributes(SimpleNamespace(n=1, lock=threading.Lock()))  # doctest: +ELLIPSIS
    {'lock': 'lock <unlocked _thread.lock object at ...'}
    """
    bad = {}
    local = vars(node).get(PROCESS) or ()  # setup_worker()'s: never pickled anyway
    for attr, value in vars(node).items():
        if attr in local:
            continue
        try:
            _dump(value, _Met())
        except Exception:
            bad[attr] = f"{type(value).__name__} {value!r:.60}"
    return bad


def _attribute_culprit(node: Any) -> str:
    for attr, what in unpicklable_attributes(node).items():
        return f" (its attribute {attr!r} holds {what})"
    return ""


def _fall_back(node: Any, exc: Exception, met: _Met) -> tuple[bytes, _Met]:
    """Pickling ``node`` failed: send by reference the modules that cannot go by value, or raise."""
    suspects = [m for name, m in met.modules.items() if name in _ours and name not in _by_reference]
    groups = [[m] for m in suspects] + ([suspects] if len(suspects) > 1 else [])
    for group in groups:
        for m in group:
            cloudpickle.unregister_pickle_by_value(m)
            _by_reference[m.__name__] = ""
        again = _Met()
        try:
            blob = _dump(node, again)
        except Exception:
            for m in group:
                del _by_reference[m.__name__]
                cloudpickle.register_pickle_by_value(m)
            continue
        for m in group:
            why = _unpicklable_global(m, met.objects.get(m.__name__, []))
            _by_reference[m.__name__] = why or f"{type(exc).__name__}: {exc}"
        return blob, again
    for name, module in met.modules.items():
        why = _unpicklable_global(module, met.objects.get(name, [])) if name in _value_only else None
        if why is not None:
            raise NodeModuleError(
                name,
                f"Node {node.name!r} cannot be sent to workers: its code comes from {_where(module)}, which "
                f"can only go to workers by value, and {why}. Create that object in the node's setup() or run() "
                "instead, or move the code into a module installed on the workers.",
            ) from exc
    raise NodePickleError(
        f"Node {node.name!r} cannot be pickled{_attribute_culprit(node)}: {exc}. A run outside this process "
        "(n_threads > 1 or a cluster) sends every node to the workers; create such "
        "resources in run(), or run with n_threads=1, where nodes are used as they are."
    ) from exc


class _Packed:
    """A pickled node and what a worker that cannot load it should say."""

    __slots__ = ("args",)

    def __init__(self, *args: Any) -> None:
        self.args = args

    def __reduce__(self) -> Any:
        return (load_packed, self.args)


def dumps_node(node: Any) -> bytes:
    """``node`` pickled for a worker that may lack the user's files (see the module's notes).

    Raises :class:`NodePickleError` (naming the attribute) if it cannot be
    pickled, :class:`NodeModuleError` if its script holds what it needs and
    cannot be pickled.
    """
    with _lock:
        met = _Met()
        try:
            blob = _dump(node, met)
        except Exception as exc:
            blob, met = _fall_back(node, exc, met)
        notes = {
            name: (getattr(module, "__file__", None), _by_reference[name])
            for name, module in met.modules.items()
            if name in _by_reference
        }
    return pickle.dumps(_Packed(node.name, blob, notes), pickle.HIGHEST_PROTOCOL)


def load_packed(name: str, blob: bytes, notes: dict[str, tuple[str | None, str]]) -> Any:
    """Unpickle a node packed by :func:`dumps_node`; a module the worker cannot import is named, with the remedy."""
    try:
        return cloudpickle.loads(blob)
    except ImportError as exc:
        missing = exc.name or ""
        for module, (file, why) in notes.items():
            if missing and (module == missing or module.startswith(missing + ".")):
                where = f"{module!r} ({file})" if file else repr(module)
                upload = f"client.upload_file({file!r})" if file else "client.upload_file(...)"
                message = (
                    f"Node {name!r} needs module {where}, which a worker cannot import ({exc}). The module "
                    f"could not be sent by value: {why}. Create that object in the node's setup() or run() "
                    f"instead, install the module on the workers as a package, or upload it with {upload}."
                )
                raise NodeModuleError(module, message) from None
        raise NodeModuleError(
            missing,
            f"Node {name!r} needs module {missing!r}, which a worker cannot import ({exc}): install it on "
            "every worker (the same version as in the caller).",
        ) from None
