"""The command line: ``pypiper-dask run FILE.py:NAME``.

Runs a ``Pipeline`` (or a ``NodeGraph`` or ``Node``) named ``NAME`` in a file.
The file is imported as a module, not run as ``__main__``, so code under its
``if __name__ == "__main__":`` guard does not fire; its node classes are sent
to workers by value, so a remote cluster need not have the file.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import traceback
from pathlib import Path
from typing import Any

__all__ = ["TargetError", "load_target", "main"]


class TargetError(ValueError):
    """``FILE.py:NAME`` does not name something in a file: a usage error (exit code 2)."""


def load_target(spec: str) -> Any:
    """Import ``FILE.py`` as a module and return its attribute ``NAME``.

    Examples
    --------
    >>> load_target("no-colon-here")
    Traceback (most recent call last):
    ...
    pypiper_dask.cli.TargetError: expected FILE.py:NAME, got 'no-colon-here'
    """
    path_text, sep, name = spec.rpartition(":")
    if not sep or not path_text or not name:
        raise TargetError(f"expected FILE.py:NAME, got {spec!r}")
    path = Path(path_text).resolve()
    if not path.is_file():
        raise TargetError(f"no such file: {path_text!r}")
    from .model.pickling import send_by_value

    module_name = f"pypiper_dask_target_{path.stem}"
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    if module_spec is None or module_spec.loader is None:
        raise TargetError(f"cannot import {path_text!r} as a Python module")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module
    # Workers cannot import this module by name: its code goes by value. Registered
    # before it runs, since a Pipeline built at import time snapshots its nodes then.
    send_by_value(module)
    sys.path.insert(0, str(path.parent))  # the file's own imports of its neighbours
    module_spec.loader.exec_module(module)
    if not hasattr(module, name):
        raise TargetError(f"{path_text} has no attribute {name!r}")
    return getattr(module, name)


def _run(args: argparse.Namespace) -> int:
    from . import Node, NodeGraph, NodeTypeError, OptionError, Pipeline

    try:
        target = load_target(args.target)
    except TargetError as exc:
        print(f"pypiper-dask: {exc}", file=sys.stderr)
        return 2
    if isinstance(target, (Node, NodeGraph)):
        target = Pipeline(target)
    if not isinstance(target, Pipeline):
        kind = type(target).__name__
        article = "an" if kind[:1].lower() in "aeiou" else "a"
        print(f"pypiper-dask: {args.target} is {article} {kind}, not a Pipeline, NodeGraph or Node", file=sys.stderr)
        return 2
    # The command line's options override the pipeline's own, checked as Pipeline(...) checks them.
    overrides: dict[str, Any] = {}
    if args.scheduler is not None:
        overrides["client"] = args.scheduler
    if args.n_threads is not None:
        overrides["n_threads"] = args.n_threads
        if args.scheduler is None:
            overrides["client"] = None
    if args.quiet:
        overrides["quiet"] = True
    if args.progress is not None:
        overrides["progress"] = args.progress
    try:
        target.options = target.options.replace(**overrides)
    except (OptionError, NodeTypeError) as exc:
        print(f"pypiper-dask: {exc}", file=sys.stderr)
        return 2
    result = target.run()
    print(result, file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``pypiper-dask``; returns the exit code."""
    from . import __version__

    parser = argparse.ArgumentParser(prog="pypiper-dask", description="Run pyPiper pipelines on Dask.")
    parser.add_argument("--version", action="version", version=f"pypiper-dask {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run",
        help="run the pipeline NAME defined in FILE.py",
        # The module's docstring, without its reST markup.
        description=__doc__.split("\n\n")[1].replace("``", "") if __doc__ else None,
    )
    run.add_argument(
        "target", metavar="FILE.py:NAME", help="a file and the name of a Pipeline, NodeGraph or Node in it"
    )
    run.add_argument("--scheduler", metavar="ADDR", help="run on the Dask scheduler at ADDR (e.g. tcp://host:8786)")
    run.add_argument("--n-threads", type=int, metavar="N", help="N > 1: a local cluster of N worker processes")
    run.add_argument("--quiet", action="store_true", help="do not print the leaves' items")
    run.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show a progress bar on stderr (default: the pipeline's own setting)",
    )
    demo = sub.add_parser(
        "demo",
        help="run the demo pipeline on a local 2-process cluster",
        description="The demo pipeline: gen | square | [running_total (stateful), summary (BATCH_SIZE_ALL)].",
    )
    demo.add_argument("--n-threads", type=int, default=2, help="worker processes to start (1: in-process)")
    demo.add_argument("--size", type=int, default=100_000, help="items the source emits")
    args = parser.parse_args(argv)
    try:
        if args.command == "demo":
            from .demo import main as demo_main

            return demo_main(["--n-threads", str(args.n_threads), "--size", str(args.size)])
        return _run(args)
    except KeyboardInterrupt:
        print("pypiper-dask: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        traceback.print_exc()
        print(f"pypiper-dask: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
