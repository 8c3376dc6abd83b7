"""Progress: adapters on the one mechanism, ``update_callback(done, total)``."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

__all__ = ["ProgressBar", "progress_callback"]

Callback = Callable[[int, "int | None"], None]


class ProgressBar:
    """A tqdm bar fed by ``update_callback`` calls: on stderr, or a widget in a notebook.

    Parameters
    ----------
    desc : str
        The bar's label.
    delay : float
        Seconds before the bar appears; a run that ends sooner shows nothing.

    Examples
    --------
    >>> bar = ProgressBar("demo", delay=3600)  # never shown in a doctest
    >>> bar(0, 10); bar(10, 10); bar.close()
    >>> bar.done
    10
    """

    def __init__(self, desc: str, delay: float = 0.0) -> None:
        self.desc = desc
        self.delay = delay
        self.done = 0
        self._bar: Any = None
        self._start: float | None = None

    def __call__(self, done: int, total: int | None) -> None:
        if self._bar is None:
            # A run that ends within the delay never imports or builds tqdm at all.
            now = time.monotonic()
            if self._start is None:
                self._start = now
            if now - self._start < self.delay:
                self.done = done
                return
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc=self.desc, unit="item", leave=True, initial=self.done)
        self._bar.update(done - self.done)
        self.done = done

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def progress_callback(setting: bool | None, desc: str, user: Callback | None) -> tuple[Callback | None, Any]:
    """Combine the user's ``update_callback`` with a bar, as ``progress`` asks.

    ``setting``: ``True`` shows a bar at once, ``None`` shows one for runs
    longer than two seconds unless the user passed a callback of their own
    (which may draw its own bar), ``False`` none. Returns the callback to use
    and the bar (to close), or ``None``.

    Examples
    --------
    >>> mine = lambda done, total: None
    >>> progress_callback(None, "gen", mine) == (mine, None)
    True
    """
    if setting is False or (setting is None and user is not None):
        return user, None
    bar = ProgressBar(desc, delay=0.0 if setting else 2.0)
    if user is None:
        return bar, bar

    def both(done: int, total: int | None) -> None:
        bar(done, total)
        user(done, total)

    return both, bar
