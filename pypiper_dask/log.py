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

__all__ = ["logger"]


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
