"""The library's own messages: the ``pypiper_dask`` logger.

What pypiper_dask says (the dashboard link, items dropped by ``on_error``,
warnings) goes through :data:`logger`, never to stdout, which stays the nodes'
own. It has a handler of its own, so the messages show by default on stderr
(as distributed's do); silence or redirect them the standard way::

    logging.getLogger("pypiper_dask").setLevel(logging.WARNING)  # no dashboard link
    logging.getLogger("pypiper_dask").handlers.clear()           # nothing of ours on stderr
"""

from __future__ import annotations

import logging
import sys
import time

__all__ = ["HiddenStateReport", "SilentSource", "logger"]


class _Stderr(logging.StreamHandler):
    """A handler writing to ``sys.stderr`` as it is when a message comes (a notebook or test may replace it)."""

    def __init__(self) -> None:
        super().__init__()

    @property  # type: ignore[override]
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


logger = logging.getLogger("pypiper_dask")
if not logger.handlers:
    _handler = _Stderr()
    _handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    logger.addHandler(_handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # our handler shows them; a root handler would print them twice


class HiddenStateReport:
    """Warns once per node (per run) that a stateless node keeps changing an attribute.

    ``where`` says what was compared: ``"partitions"`` on a cluster, ``"checks"`` in the caller.
    """

    def __init__(self) -> None:
        self.warned: set[str] = set()

    def saw(self, found: list[tuple[str, str]]) -> None:
        """``(node, what)`` pairs a watch (:class:`~pypiper_dask.worker.guard.StateWatch`) saw changing again."""
        for node, what in found:
            if node in self.warned:
                continue
            self.warned.add(node)
            logger.warning(
                "node %r is stateless, but its run() keeps changing %s (it changed again and again during "
                "the run). At n_threads>1 each worker changes its own copy, so the output can differ from "
                "n_threads=1: mark the node stateless=False, or send what it gathers on with emit() and read "
                "it from run()'s result. If it is a cache that never changes the output, name it in the "
                "node's cache_attributes.",
                node,
                what,
            )


class SilentSource:
    """Says once when a source has been called ``calls`` times or for ``seconds`` without emitting.

    A source that never closes and never emits keeps a run busy with nothing
    to show; the user hears which node it is.

    Examples
    --------
    >>> quiet = SilentSource("gen", calls=3)
    >>> quiet.idle(2); quiet.said
    False
    >>> quiet.idle(1); quiet.said
    True
    """

    #: Calls that emitted nothing after which the source is named, however fast they were.
    CALLS = 1_000_000

    def __init__(self, name: str, seconds: float = 10.0, calls: int | None = None) -> None:
        self.name, self.seconds = name, seconds
        self.limit = self.CALLS if calls is None else calls
        self.calls = 0
        self.since: float | None = None
        self.said = False

    def idle(self, calls: int = 1) -> None:
        """``calls`` more calls of the source emitted nothing."""
        if self.said:
            return
        if self.since is None:
            self.since = time.monotonic()
        before, self.calls = self.calls, self.calls + calls
        # The clock is read every 1024 calls: a silent source may be called very fast.
        if self.calls >= self.limit or (
            (self.calls >> 10 != before >> 10 or calls > 1) and time.monotonic() - self.since >= self.seconds
        ):
            self.said = True
            logger.warning(
                "source %r has emitted nothing in its last %d calls (%.1f s) and has not called close(); "
                "the run goes on until it does. A source ends the run by calling self.close().",
                self.name,
                self.calls,
                time.monotonic() - self.since,
            )

    def heard(self) -> None:
        """The source emitted: start counting again."""
        self.calls, self.since = 0, None
