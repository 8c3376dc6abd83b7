"""Can a cluster this run did not start run its tasks? One round trip to every worker says.

A worker runs a pipeline's tasks by unpickling functions of
:mod:`pypiper_dask.worker` (by reference: it must import them) and the user's
node classes (by value: cloudpickle sends their code, which only the same
Python minor version can run). So before the first task, every worker of a
cluster given as a ``Client`` or an address is asked, in one
``Client.run`` call, for the versions of Python, dask, distributed and
cloudpickle it has, and whether it can import ``pypiper_dask.worker`` and at
which version. A worker that cannot, or differs, fails the run at once with one
:class:`~pypiper_dask.errors.WorkerEnvironmentError` that names the workers,
what each lacks or runs, and the command that fixes it; not 84 lines of
``ModuleNotFoundError`` from the first task, or a wait for tasks that never run.

Why raise rather than send the package (``Client.upload_file`` or
distributed's ``UploadDirectory`` plugin):

* what is missing is often more than pypiper_dask: a worker with another
  dask, distributed, cloudpickle or Python cannot be mended by a copy of our
  files, and the error must say so anyway;
* an upload changes a cluster that others may share, for every later client,
  and it lasts (``UploadDirectory`` writes into each worker's directory and
  adds it to ``sys.path``; a worker that already imported another
  ``pypiper_dask`` keeps it until it restarts);
* installing is one command in the workers' environment, said in the
  message, and then the cluster serves every later run with no upload.

A ``LocalCluster``'s workers are not asked: they are processes of this
interpreter, with its packages. The answer is kept per client and set of
worker addresses: a later run on the same client asks the scheduler for its
workers (one small call) and checks only workers it has not seen. A worker
that joins while a run goes on is not checked by that run.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..errors import WorkerEnvironmentError

__all__ = ["MATCH", "check_workers", "environment_problems", "install_command", "local_environment", "worker_probe"]

#: What must match between the caller and every worker, and how closely (the leading parts of the version).
#: pypiper_dask, dask and distributed: exactly (distributed pins its dask exactly, and tasks name our
#: functions); cloudpickle: its major.minor (it promises no compatibility across versions; a patch
#: release is taken to keep the format); Python: major.minor (the node classes' bytecode).
MATCH: Mapping[str, int | None] = {
    "pypiper_dask": None,
    "python": 2,
    "dask": None,
    "distributed": None,
    "cloudpickle": 2,
}

# client -> the worker addresses already found fit (weak: a closed client's entry goes with it).
_checked: weakref.WeakKeyDictionary[Any, frozenset[str]] = weakref.WeakKeyDictionary()


def worker_probe() -> Callable[[], dict[str, str | None]]:
    """The function ``Client.run`` calls on each worker: what that worker has.

    It is made inside this function so that cloudpickle sends its code by value
    (a function it cannot look up by module and name): a worker without
    pypiper_dask can still run it. It uses the standard library only.

    Examples
    --------
    >>> found = worker_probe()()
    >>> sorted(found)
    ['cloudpickle', 'dask', 'distributed', 'error', 'pypiper_dask', 'python']
    >>> found["error"] is None
    True
    """

    def probe() -> dict[str, str | None]:
        import importlib
        import sys

        found: dict[str, str | None] = {"python": ".".join(map(str, sys.version_info[:3])), "error": None}
        for name in ("dask", "distributed", "cloudpickle"):
            try:
                found[name] = str(importlib.import_module(name).__version__)
            except Exception:  # a worker runs distributed, so dask and cloudpickle are there
                found[name] = None
        try:
            importlib.import_module("pypiper_dask.worker")  # what tasks unpickle
            found["pypiper_dask"] = str(sys.modules["pypiper_dask"].__version__)
        except Exception as exc:
            found["pypiper_dask"] = None
            found["error"] = f"{type(exc).__name__}: {exc}"
        return found

    return probe


def local_environment() -> dict[str, str | None]:
    """What this process has, in the probe's terms.

    Examples
    --------
    >>> import dask
    >>> local_environment()["dask"] == dask.__version__
    True
    """
    return worker_probe()()


def _same(name: str, mine: str | None, theirs: str | None) -> bool:
    parts = MATCH[name]
    if mine is None or theirs is None:
        return mine == theirs
    return mine.split(".")[:parts] == theirs.split(".")[:parts]


def environment_problems(mine: Mapping[str, Any], theirs: Mapping[str, Any] | BaseException) -> dict[str, str]:
    """What keeps a worker with ``theirs`` (a probe's answer, or the exception it raised) from running tasks.

    Keyed by what differs (a name of :data:`MATCH`, or ``"check"``: the probe did not run).

    Examples
    --------
    >>> here = {"python": "3.11.7", "dask": "2026.8.0", "distributed": "2026.8.0",
    ...         "cloudpickle": "3.1.3", "pypiper_dask": "0.1.0", "error": None}
    >>> environment_problems(here, dict(here, cloudpickle="3.1.0", python="3.11.2"))
    {}
    >>> environment_problems(here, dict(here, pypiper_dask="0.2.0", dask="2025.1.0"))
    {'pypiper_dask': 'pypiper_dask 0.2.0 (here 0.1.0)', 'dask': 'dask 2025.1.0 (here 2026.8.0)'}
    >>> environment_problems(here, dict(here, pypiper_dask=None, error="ModuleNotFoundError: no"))
    {'pypiper_dask': 'cannot import pypiper_dask (ModuleNotFoundError: no)'}
    """
    if isinstance(theirs, BaseException):
        return {"check": f"could not run the check ({type(theirs).__name__}: {theirs})"}
    problems = {}
    if theirs.get("pypiper_dask") is None:
        problems["pypiper_dask"] = f"cannot import pypiper_dask ({theirs.get('error')})"
    for name in MATCH:
        if theirs.get(name) is not None and not _same(name, mine[name], theirs[name]):
            problems[name] = f"{name} {theirs[name]} (here {mine[name]})"
    return problems


def install_command(mine: Mapping[str, Any], wrong: set[str]) -> str:
    """What to do in a worker's environment to mend what ``wrong`` names (keys of :data:`MATCH`).

    Examples
    --------
    >>> here = {"python": "3.11.7", "dask": "2026.8.0", "distributed": "2026.8.0", "cloudpickle": "3.1.3"}
    >>> install_command(here, {"distributed", "dask"})
    'python -m pip install "dask==2026.8.0" "distributed==2026.8.0"'
    >>> install_command(here, {"python"})
    'use Python 3.11 there'
    """
    specs = []
    if "pypiper_dask" in wrong:
        import pypiper_dask

        checkout = Path(pypiper_dask.__file__).resolve().parent.parent
        if (checkout / "pyproject.toml").is_file():  # running from a source tree: install that tree
            specs.append(str(checkout))
        else:
            specs.append(f'"pypiper-dask=={mine["pypiper_dask"]}"')
    specs += [f'"{name}=={mine[name]}"' for name in ("dask", "distributed", "cloudpickle") if name in wrong]
    command = f"python -m pip install {' '.join(specs)}" if specs else ""
    if "python" in wrong:
        python = ".".join(mine["python"].split(".")[:2])
        command = f"use Python {python} there" + (f", with {command}" if command else "")
    return command


def _message(address: str, n_workers: int, bad: Mapping[str, Mapping[str, str]], mine: Mapping[str, Any]) -> str:
    by_problem: dict[tuple[str, ...], list[str]] = {}  # workers with the same problems share a line
    for worker, problems in sorted(bad.items()):
        by_problem.setdefault(tuple(problems.values()), []).append(worker)
    lines = [f"{len(bad)} of {n_workers} workers of the cluster at {address} cannot run this pipeline's tasks:"]
    lines += [f"  {', '.join(workers)}: {'; '.join(problems)}" for problems, workers in by_problem.items()]
    command = install_command(mine, {name for problems in bad.values() for name in problems})
    if command:
        lines.append(f"Fix: in the workers' environment, {command}; then restart the workers.")
    return "\n".join(lines)


def check_workers(client: Any) -> None:
    """Raise :class:`~pypiper_dask.errors.WorkerEnvironmentError` if a worker of ``client`` cannot run tasks.

    One ``Client.run`` round trip on workers not checked before for this
    client (see the module's docstring); nothing when there are none. A
    ``LocalCluster``'s workers are not asked: they are this interpreter's own
    processes, with its packages. A worker that went away while asked is left
    for the run to find.
    """
    from distributed import LocalCluster

    if isinstance(getattr(client, "cluster", None), LocalCluster):
        return
    seen = _checked.get(client)
    current: set[str] = set()
    if seen is None:
        workers = None  # all of them: their answers say who they are
    else:
        current = set(client.scheduler_info(n_workers=-1).get("workers", {}))
        workers = sorted(current - seen)
        if not workers:
            return
    answers = client.run(worker_probe(), workers=workers, on_error="return")
    # A connection lost (OSError, distributed's CommClosedError among them): the worker left, or is leaving.
    answers = {w: answer for w, answer in answers.items() if not isinstance(answer, OSError)}
    mine = local_environment()
    bad = {w: p for w, answer in answers.items() if (p := environment_problems(mine, answer))}
    if bad:
        address = getattr(client.scheduler, "address", None) or "?"
        message = _message(address, len(current | set(answers)), bad, mine)
        raise WorkerEnvironmentError(message, {w: list(p.values()) for w, p in bad.items()})
    _checked[client] = (seen or frozenset()) | frozenset(answers)
