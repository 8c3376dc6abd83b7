"""The command line: ``pypiper-dask run FILE.py:NAME``.

Runs a ``Pipeline`` (or a ``NodeGraph`` or ``Node``) named ``NAME`` in a file.
The file is imported as a module, not run as ``__main__``, so code under its
``if __name__ == "__main__":`` guard does not fire; its node classes are sent
to workers by value, so a remote cluster need not have the file (its workers
need pypiper_dask itself, which the run checks first).

It speaks one way: a usage error (a bad option, a bad value, a malformed
address, ``FILE.py:NAME`` naming nothing) is one line on stderr and exit code
2; a failed run shows the user's own frames and the error once, exit code 1
(``--traceback`` adds the library's frames); Ctrl-C exits with 130.
"""

from __future__ import annotations

import argparse
import difflib
import importlib.util
import os
import sys
import traceback
from pathlib import Path
from typing import Any, NoReturn

__all__ = ["TargetError", "load_target", "main", "positive_int", "scheduler_address"]


class TargetError(ValueError):
    """``FILE.py:NAME`` does not name something in a file: a usage error (exit code 2)."""


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line naming the (sub)command, and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see '{self.prog} --help')\n")


def positive_int(text: str) -> int:
    """``argparse`` type: a whole number >= 1.

    Examples
    --------
    >>> positive_int("4")
    4
    >>> positive_int("0")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: expected a whole number >= 1, got '0'
    """
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


#: The protocols a scheduler address may name (distributed's own, less ``inproc``: one process only).
PROTOCOLS = ("tcp", "tls", "ws", "wss", "ucx")


def scheduler_address(text: str) -> str:
    """``argparse`` type: a scheduler address, ``PROTOCOL://HOST:PORT`` (``HOST:PORT`` means tcp, as in Dask).

    Checked for its form only; whether a scheduler answers there is the run's to find.

    Examples
    --------
    >>> scheduler_address("tcp://10.0.0.5:8786")
    'tcp://10.0.0.5:8786'
    >>> scheduler_address("nonsense")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: expected a scheduler address such as tcp://HOST:8786, got 'nonsense'
    """
    protocol, sep, rest = text.rpartition("://")
    host, colon, port = rest.rpartition(":")
    if (sep and protocol not in PROTOCOLS) or not colon or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected a scheduler address such as tcp://HOST:8786, got {text!r}")
    return text


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


def _run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from . import Node, NodeGraph, NodeTypeError, OptionError, Pipeline

    if args.overwrite and args.checkpoint is None:
        parser.error("--overwrite needs --checkpoint PATH")
    try:
        target = load_target(args.target)
    except TargetError as exc:
        parser.exit(2, f"{parser.prog}: {exc}\n")
    if isinstance(target, (Node, NodeGraph)):
        target = Pipeline(target)
    if not isinstance(target, Pipeline):
        kind = type(target).__name__
        article = "an" if kind[:1].lower() in "aeiou" else "a"
        parser.exit(2, f"{parser.prog}: {args.target} is {article} {kind}, not a Pipeline, NodeGraph or Node\n")
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
        parser.exit(2, f"{parser.prog}: {exc}\n")
    result = target.run(checkpoint=args.checkpoint, overwrite=args.overwrite)
    print(result, file=sys.stderr)
    return 0


def _library_roots() -> tuple[str, ...]:
    """Folders whose frames a failed run's report leaves out (without ``--traceback``)."""
    import cloudpickle
    import dask

    roots = [os.path.dirname(os.path.abspath(__file__))]
    roots += [os.path.dirname(os.path.abspath(m.__file__ or "")) for m in (dask, cloudpickle)]
    for name in ("distributed", "tornado", "tblib"):
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.origin:
            roots.append(os.path.dirname(os.path.abspath(spec.origin)))
    return tuple(root + os.sep for root in roots)


def _report(exc: BaseException, full: bool) -> None:
    """Print why the run failed: the user's frames and the error once (all frames if ``full``)."""
    from .errors import NodeError

    if full:
        traceback.print_exception(exc)
        return
    # A node's error: where the user's code raised, which is the NodeError's cause.
    shown = exc.__cause__ if isinstance(exc, NodeError) and exc.__cause__ is not None else exc
    roots = _library_roots()
    frames = [
        frame
        for frame in traceback.extract_tb(shown.__traceback__)
        # "<...>": code made at run time (a pipeline's generated driver, importlib's frozen modules).
        if not frame.filename.startswith("<") and not os.path.abspath(frame.filename).startswith(roots)
    ]
    if frames:
        print("Traceback (most recent call last):", file=sys.stderr)
        print("".join(traceback.format_list(frames)), end="", file=sys.stderr)
    for note in getattr(exc, "__notes__", ()):  # the worker's traceback, where it could not travel
        print(note, file=sys.stderr)
    print(f"pypiper-dask: {type(exc).__name__}: {exc}", file=sys.stderr)


def _parser() -> tuple[_Parser, dict[str, _Parser]]:
    from . import __version__
    from .demo import add_arguments as add_demo_arguments

    parser = _Parser(prog="pypiper-dask", description="Run pyPiper pipelines on Dask.")
    parser.add_argument("--version", action="version", version=f"pypiper-dask {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{run,demo}")
    run = sub.add_parser(
        "run",
        help="run the pipeline NAME defined in FILE.py",
        # The module's docstring, without its reST markup.
        description=__doc__.split("\n\n")[1].replace("``", "") if __doc__ else None,
    )
    run.add_argument(
        "target", metavar="FILE.py:NAME", help="a file and the name of a Pipeline, NodeGraph or Node in it"
    )
    run.add_argument(
        "--scheduler",
        metavar="ADDR",
        type=scheduler_address,
        help="run on the Dask scheduler at ADDR (e.g. tcp://host:8786); its workers need pypiper_dask",
    )
    run.add_argument(
        "--n-threads", type=positive_int, metavar="N", help="1: in this process; N > 1: a local cluster of N workers"
    )
    run.add_argument("--quiet", action="store_true", help="do not print the leaves' items")
    run.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show a progress bar on stderr (default: the pipeline's own setting)",
    )
    run.add_argument(
        "--checkpoint",
        metavar="PATH",
        help="keep the run's progress at PATH (a local path or fsspec URL); run again to resume where it stopped",
    )
    run.add_argument("--overwrite", action="store_true", help="with --checkpoint: ignore what is there, start over")
    demo = sub.add_parser(
        "demo",
        help="run the demo pipeline on a local 2-process cluster",
        description="The demo pipeline: gen | square | [running_total, summary], on a local cluster.",
    )
    add_demo_arguments(demo)
    for command in (run, demo):
        command.add_argument("--traceback", action="store_true", help="if the run fails, show every frame")
    return parser, {"run": run, "demo": demo}


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``pypiper-dask``; returns the exit code."""
    parser, commands = _parser()
    args, unknown = parser.parse_known_args(argv)
    command = commands[args.command]
    if unknown:  # said by the subcommand, with its own options as the suggestions
        known = [o for action in command._actions for o in action.option_strings]
        close = difflib.get_close_matches(unknown[0], known, n=1)
        hint = f"; did you mean {close[0]}?" if close and unknown[0].startswith("-") else ""
        command.error(f"unrecognized arguments: {' '.join(unknown)}{hint}")
    try:
        if args.command == "demo":
            from .demo import run_demo

            return run_demo(args.n_threads, args.size, args.keep_open)
        return _run(args, command)
    except KeyboardInterrupt:
        print("pypiper-dask: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        _report(exc, args.traceback)
        return 1


if __name__ == "__main__":
    sys.exit(main())
