"""``RunHandle``: a run going on in the background (``Pipeline.submit()``)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import html
import threading
from collections.abc import Callable, Generator
from typing import Any

from ..log import logger
from .output import PipelineResult

__all__ = ["RunHandle"]

Callback = Callable[[int, "int | None"], None]


class RunHandle:
    """A pipeline run in a background thread of the calling process.

    Returned by :meth:`Pipeline.submit() <pypiper_dask.Pipeline.submit>`; not
    made directly (its constructor is internal). The run itself goes on where
    the pipeline runs (here, or on a cluster); this thread drives it, as
    ``run()`` would in the foreground. ``await handle`` gives the result in
    async code; in a notebook the handle shows its state and the dashboard link.

    A script that ends while a submitted run goes on waits for the run at
    exit, as ``concurrent.futures`` waits for its pending work; Ctrl-C there
    cancels it (and closes a cluster it started).

    Examples
    --------
    >>> from pypiper_dask import Pipeline
    >>> from pypiper_dask.demo import Generate, Square
    >>> handle = Pipeline(Generate("gen", size=4) | Square("sq"), n_threads=1, quiet=True).submit()
    >>> handle.result(timeout=60)["sq"], handle.done(), handle.progress
    ([0, 1, 4, 9], True, (4, 4))
    """

    def __init__(
        self,
        start: Callable[[Callback], Generator[None, None, PipelineResult]],
        update_callback: Callback | None = None,
        dashboard: Callable[[], str | None] | None = None,
    ) -> None:
        self._future: concurrent.futures.Future[PipelineResult] = concurrent.futures.Future()
        self._cancel = threading.Event()
        self._done_items = 0
        self._total: int | None = None
        self._user = update_callback
        self._dashboard = dashboard or (lambda: None)
        self._parent = _notebook_parent()
        self._thread = threading.Thread(target=self._drive, args=(start,), name="pypiper_dask-run", daemon=True)
        with _running_lock:
            _running.add(self)
        self._thread.start()

    # -- the background thread -----------------------------------------------------------

    def _progress(self, done: int, total: int | None) -> None:
        self._done_items, self._total = done, total
        if self._user is not None:
            self._user(done, total)

    def _drive(self, start: Callable[[Callback], Generator[None, None, PipelineResult]]) -> None:
        _adopt_notebook_parent(self._parent)
        if not self._future.set_running_or_notify_cancel():
            return
        try:
            run = start(self._progress)
            try:
                while True:
                    if self._cancel.is_set():
                        run.close()  # cancels what is in flight, closes a cluster the run started
                        raise concurrent.futures.CancelledError("the run was cancelled")
                    next(run)
            except StopIteration as stop:
                self._future.set_result(stop.value)
        except BaseException as exc:  # the run's own error, for result()
            self._future.set_exception(exc)
        finally:
            with _running_lock:
                _running.discard(self)

    # -- the caller's side ---------------------------------------------------------------

    def done(self) -> bool:
        """Whether the run has ended (finished, failed or cancelled)."""
        return self._future.done()

    def result(self, timeout: float | None = None) -> PipelineResult:
        """Wait for the run; its :class:`PipelineResult`, or its error raised here.

        Raises ``TimeoutError`` if it is still running after ``timeout`` seconds,
        ``concurrent.futures.CancelledError`` if it was cancelled.
        """
        return self._future.result(timeout)

    def cancel(self) -> bool:
        """Stop the run where it is (nothing more is submitted; a cluster it started closes).

        Returns ``False`` if it had already ended. Waits until it has stopped.
        """
        if self._future.done():
            return False
        self._cancel.set()
        self._thread.join()
        return True

    def cancelled(self) -> bool:
        """Whether the run was cancelled (by :meth:`cancel`)."""
        return self._future.cancelled() or (
            self._future.done() and isinstance(self._future.exception(), concurrent.futures.CancelledError)
        )

    @property
    def progress(self) -> tuple[int, int | None]:
        """``(done, total)``: source items delivered so far, and the source's ``size`` (or ``None``)."""
        return self._done_items, self._total

    def __await__(self) -> Generator[Any, None, PipelineResult]:
        return asyncio.wrap_future(self._future).__await__()

    @property
    def state(self) -> str:
        """``"running"``, ``"finished"``, ``"failed"`` or ``"cancelled"``."""
        if not self._future.done():
            return "running"
        if self.cancelled():
            return "cancelled"
        return "failed" if self._future.exception() is not None else "finished"

    def __repr__(self) -> str:
        done, total = self.progress
        return f"<RunHandle {self.state}: {done}{'' if total is None else f'/{total}'} items>"

    def _repr_html_(self) -> str:
        done, total = self.progress
        link = self._dashboard()
        dash = f' — <a href="{html.escape(link)}" target="_blank">dashboard</a>' if link else ""
        count = f"{done}" if total is None else f"{done} of {total}"
        return f"<div><b>RunHandle</b>: {self.state}, {count} source items delivered{dash}</div>"


# The runs going on, waited for at interpreter exit. Their threads are daemons: a plain
# exit would drop them mid-run (and what they had not yet printed) without a word.
_running: set[RunHandle] = set()
_running_lock = threading.Lock()


def _wait_at_exit() -> None:
    """At interpreter exit: wait for the submitted runs to end; Ctrl-C cancels them."""
    with _running_lock:
        running = list(_running)
    if not running:
        return
    logger.info("waiting for %d submitted run(s) to finish before exiting (Ctrl-C cancels)", len(running))
    try:
        for handle in running:
            handle._thread.join()
    except KeyboardInterrupt:
        for handle in running:
            handle._cancel.set()
        for handle in running:
            handle._thread.join()
        raise


# What concurrent.futures.thread does: called before the interpreter joins its threads, so
# that a cluster the run started (and its atexit hooks) is still there.
threading._register_atexit(_wait_at_exit)  # type: ignore[attr-defined]


def _notebook_parent() -> Any:
    """The submitting cell's message, in a Jupyter kernel (else ``None``)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    shell = get_ipython()
    get_parent = getattr(shell, "get_parent", None)
    return get_parent() if get_parent is not None else None


def _adopt_notebook_parent(parent: Any) -> None:
    # ipykernel sends a thread's output to the latest cell unless the thread names its own.
    if parent is None:
        return
    from IPython import get_ipython

    shell = get_ipython()
    if shell is not None and hasattr(shell, "set_parent"):
        shell.set_parent(parent)
