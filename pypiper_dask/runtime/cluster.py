"""Clusters and clients: the one a run starts, or the user's, reached and kept quiet.

What a run needs of a cluster before its first task: a ``LocalCluster`` of
single-threaded worker processes started without re-running the caller's
script in them, with distributed's log chatter lowered and its workers'
allocator set for numpy-heavy nodes; or a client of a scheduler at an
address, reached within a time limit with a clear error when nothing (or
something else) answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

from ..errors import SchedulerError
from ..log import logger
from .restarts import main_not_reimported_by_nannies

__all__ = ["WORKER_MALLOC", "local_cluster_class", "open_client", "quiet_recovered_losses"]

#: glibc's allocator settings for the worker processes of a cluster a run starts. The nanny's
#: default (``MALLOC_TRIM_THRESHOLD_=65536``) also fixes the mmap threshold at 128 KiB, so
#: every numpy array over it is mapped and page-faulted anew: an allocation-heavy node ran
#: 1.8x slower in a worker than in a plain process. With these, arrays up to 4 MiB reuse the
#: heap, larger ones are still mapped (and returned to the system when freed), and free
#: memory over 1 MiB at the heap's top is trimmed: memory stays bounded.
WORKER_MALLOC = {"MALLOC_TRIM_THRESHOLD_": "1048576", "MALLOC_MMAP_THRESHOLD_": "4194304"}


def _malloc_environ() -> dict[str, str | None]:
    """``WORKER_MALLOC``'s variables as this process's environment has them now (``None``: unset)."""
    return {k: os.environ.get(k) for k in WORKER_MALLOC}


#: These variables as the process had them when this module was imported: the user's own, not
#: what a nanny wrote there since (it sets them in its own process before spawning a worker,
#: and an environment variable overrides distributed's configuration for the next one).
_USER_MALLOC = _malloc_environ()


def open_client(
    stack: contextlib.ExitStack,
    address: str | None,
    n_workers: int | None,
    *,
    timeout: float = 10.0,
    security: Any = None,
) -> Any:
    """A client for a run, entered on ``stack``: of the scheduler at ``address``, or of a new ``LocalCluster``."""
    if address is not None:
        return stack.enter_context(_connect(address, timeout, security))
    return _local_cluster(stack, n_workers)


def _local_cluster(stack: contextlib.ExitStack, n_workers: int | None) -> Any:
    import dask
    from distributed import Client

    # Entered before the cluster, left after it closed (the stack unwinds in reverse).
    stack.enter_context(_QUIET_DISTRIBUTED)
    stack.enter_context(main_not_reimported_by_nannies())  # workers restarted too
    with _main_not_reimported(), _sigint_ignored(), _worker_malloc():
        cluster = stack.enter_context(
            local_cluster_class()(
                n_workers=n_workers,
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                dashboard_address="127.0.0.1:0",
                silence_logs=logging.ERROR,
                # Workers that ignore Ctrl-C and log only CRITICAL records: the caller
                # reports what goes wrong (see pypiper_dask.worker.process).
                preload=[*dask.config.get("distributed.worker.preload", []), _WORKER_SETUP],
            )
        )
    client = stack.enter_context(Client(cluster, set_as_default=False))
    link = client.dashboard_link
    if link:
        logger.info("dashboard at %s", link)
    return client


@functools.cache  # one class; distributed is imported when a cluster is first started
def local_cluster_class() -> type:
    """``LocalCluster``, untroubled by a worker that dies before the cluster has listed it.

    distributed (dask/distributed#5407) looks a removed worker up in the cluster's
    own list of workers; a worker killed just after it started (a node that kills
    its process, replaced by the nanny, killed again) may not be there yet. The
    ``KeyError`` ends the task that keeps the list, and is raised again when the
    cluster closes, after every process has stopped: a run that got its result
    would fail at its end. The worker is gone either way, so there is nothing to
    remove.
    """
    from distributed import LocalCluster as Base

    class LocalCluster(Base):  # the name its repr and the dashboard show
        def _update_worker_status(self, op: str, msg: Any) -> None:
            if op == "remove" and msg not in self.scheduler_info["workers"]:
                return
            super()._update_worker_status(op, msg)

    return LocalCluster


_malloc_logged = False


@contextlib.contextmanager
def _worker_malloc() -> Iterator[None]:
    """Workers spawned inside get ``WORKER_MALLOC`` (see :func:`_malloc_config`).

    Through distributed's configuration, and in this process's environment while
    they start: a variable there wins over the configuration, and an earlier
    cluster's nanny may have left distributed's default there.
    """
    import dask

    settings = _malloc_config()
    if not settings:
        yield
        return
    before = _malloc_environ()
    os.environ.update(WORKER_MALLOC)
    try:
        with dask.config.set(settings):
            yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _malloc_config() -> dict[str, str]:
    """``WORKER_MALLOC`` as nanny settings, unless the user set their own; logged once per process."""
    import dask

    global _malloc_logged
    key = "distributed.nanny.pre-spawn-environ"
    current = dict(dask.config.get(key, {}))
    if current.get("MALLOC_TRIM_THRESHOLD_") not in (None, 65536, "65536") or "MALLOC_MMAP_THRESHOLD_" in current:
        return {}  # the user's own settings: theirs to keep
    if _USER_MALLOC["MALLOC_TRIM_THRESHOLD_"] not in (None, "65536") or _USER_MALLOC["MALLOC_MMAP_THRESHOLD_"]:
        return {}  # exported by the user before this process started a cluster
    if not _malloc_logged:
        _malloc_logged = True
        logger.info(
            "worker processes start with %s (for numpy-heavy nodes; see the performance guide)",
            " ".join(f"{k}={v}" for k, v in WORKER_MALLOC.items()),
        )
    return {f"{key}.{k}": v for k, v in WORKER_MALLOC.items()}


def _connect(address: str, timeout: float, security: Any) -> Any:
    """A client of the Dask scheduler at ``address``; :class:`SchedulerError` if none answers within ``timeout``.

    ``Client(address, timeout=...)`` alone is not enough: distributed waits for
    the other side's handshake with no time limit, so a service that is not a
    Dask scheduler (an HTTP server, waiting for a request line) kept it waiting
    forever; one that answers other bytes raised whatever reading them raised
    (a ``MemoryError`` for an absurd frame length), and the half-made client
    printed a ``TimeoutError`` from ``Client.__del__`` at exit. So the scheduler
    is asked who it is first, within the time limit, and a client whose start
    fails anyway is closed here.
    """
    from distributed import Client

    def fail(reason: str) -> SchedulerError:
        hint = (
            " A tls:// address needs Pipeline(security=distributed.security.Security(...))."
            if address.startswith("tls://") and security is None
            else " Is it running, and is the address (and its tcp:// or tls:// protocol) right?"
            " Pipeline(connect_timeout=...) sets the wait."
        )
        return SchedulerError(
            f"Could not reach the Dask scheduler at {address!r} within {timeout:g} s ({reason}).{hint}"
        )

    try:
        kind = _identify(address, timeout, security)
    except _NoScheduler as exc:
        raise fail(str(exc)) from exc.__cause__
    except Exception as exc:  # connecting failed (refused, TLS settings, ...)
        raise fail(f"{type(exc).__name__}: {exc}") from exc
    if kind != "Scheduler":  # a worker's address, say
        raise fail(f"a Dask {kind or 'server'} answered, not a scheduler")
    client = Client.__new__(Client)  # held before it connects, so a failed start is closed here
    try:
        Client.__init__(client, address, timeout=timeout, security=security, set_as_default=False)
    except Exception as exc:
        with contextlib.suppress(Exception):
            client.close(timeout=timeout)
        raise fail(f"{type(exc).__name__}: {exc}") from exc
    return client


def _identify(address: str, timeout: float, security: Any) -> str | None:
    """What the Dask server at ``address`` says it is (``"Scheduler"``), asked within about ``timeout`` seconds.

    Raises :class:`_NoScheduler` when what answers is no Dask server.
    """
    from concurrent.futures import ThreadPoolExecutor

    from distributed.comm import connect
    from distributed.security import Security

    args = (security or Security()).get_connection_args("client")

    async def ask() -> Any:
        try:
            comm = await connect(address, timeout=timeout, **args)  # retries until `timeout`, then OSError
        except (OSError, TypeError, ValueError):  # unreachable, refused, TLS settings
            raise
        except Exception as exc:  # its first bytes, read as a Dask handshake, meant nonsense
            raise _NoScheduler(
                f"something answered in another protocol than Dask's ({type(exc).__name__}: {exc})"
            ) from exc
        try:
            await comm.write({"op": "identity", "n_workers": 0, "reply": True})
            return await comm.read()
        finally:
            comm.abort()

    async def bounded() -> Any:
        # A little past connect's own limit, so an unreachable address fails there (saying why):
        # running out here means a connection was made and then nothing answered as Dask does.
        try:
            return await asyncio.wait_for(ask(), timeout + 0.5)
        except asyncio.TimeoutError:  # TimeoutError from Python 3.11 on
            raise _NoScheduler(
                "something accepted the connection but did not answer as a Dask scheduler does"
            ) from None

    # An event loop of its own, in a thread: the caller may be running one (a notebook).
    with ThreadPoolExecutor(1, thread_name_prefix="pypiper-connect") as pool:
        answer = pool.submit(asyncio.run, bounded()).result()
    return answer.get("type") if isinstance(answer, dict) else None


class _NoScheduler(Exception):
    """No Dask scheduler answered; the message says what happened instead."""


class _QuietDistributed:
    """distributed's log handlers in this process at ERROR while any cluster a run started is up.

    ``LocalCluster(silence_logs=...)`` lowers them per cluster and puts back
    what it found when it closes: with two runs from two threads at once, the
    first to close turned INFO back on while the second still ran. Counted
    here instead: the first run in lowers them (so the cluster finds them
    lowered and restores nothing), the last one out puts them back.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count = 0
        self._saved: list[tuple[logging.Handler, int]] = []

    def __enter__(self) -> None:
        with self._lock:
            if self._count == 0:
                for root in ("distributed", "bokeh"):
                    for handler in logging.getLogger(root).handlers:
                        if isinstance(handler, logging.StreamHandler) and handler.level < logging.ERROR:
                            self._saved.append((handler, handler.level))
                            handler.setLevel(logging.ERROR)
            self._count += 1

    def __exit__(self, *exc: Any) -> None:
        with self._lock:
            self._count -= 1
            if self._count == 0:
                for handler, level in self._saved:
                    handler.setLevel(level)
                self._saved.clear()


_QUIET_DISTRIBUTED = _QuietDistributed()

#: The preload module each worker process of a cluster a run starts runs first.
_WORKER_SETUP = "pypiper_dask.worker.process"


@contextlib.contextmanager
def sigint_held() -> Iterator[None]:
    """Hold a Ctrl-C that arrives inside this block, and raise it when the block ends.

    Around the run loop's calls into distributed: a ``KeyboardInterrupt``
    raised at an arbitrary point inside them (a ``sync()`` half scheduled, a
    lock of its event loop's just taken) can leave the client's thread stuck,
    and the cluster's close after it waiting for ever (a Ctrl-C test's script
    hung once in CI). Held, it is raised a moment later (the run
    loop's waits return within half a second), where the run can be cancelled
    and the cluster closed. The previous handler is called then, so a user's
    own SIGINT handler still runs, once. Only the main thread can set a handler;
    elsewhere this does nothing.

    Examples
    --------
    >>> import os, signal
    >>> done = []
    >>> try:
    ...     with sigint_held():
    ...         os.kill(os.getpid(), signal.SIGINT)
    ...         done.append("the block ran to its end")
    ... except KeyboardInterrupt:
    ...     done.append("then Ctrl-C")
    >>> done
    ['the block ran to its end', 'then Ctrl-C']
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got: list = []  # the Ctrl-C noted in the block
    previous = signal.signal(signal.SIGINT, lambda signum, frame: got.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_DFL if previous is None else previous)
    if got and callable(previous):
        previous(signal.SIGINT, None)  # Python's own raises KeyboardInterrupt
    elif got and previous != signal.SIG_IGN:
        raise KeyboardInterrupt


@contextlib.contextmanager
def _sigint_ignored():
    """Keep Ctrl-C from the worker processes a cluster starts; in this process, raise it once they are up.

    SIGINT is blocked in this thread, so the cluster's threads (started now)
    and the worker processes they start have it blocked from their first
    instruction, until their preload (:mod:`pypiper_dask.worker.process`)
    ignores it: a Ctrl-C while they import printed their tracebacks. Here a
    Ctrl-C of that time is held (:func:`sigint_held`), and raised once the
    cluster has started, which then closes it.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    hold = hasattr(signal, "pthread_sigmask")  # not on Windows
    if hold:
        # multiprocessing starts its resource tracker with the first worker, and unblocks
        # SIGINT in the thread that does (the cluster's); started now, it leaves that alone.
        from multiprocessing import resource_tracker

        resource_tracker.ensure_running()
    with sigint_held():
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT}) if hold else None
        try:
            yield
        finally:
            if hold:
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # a pending Ctrl-C reaches the handler here


@contextlib.contextmanager
def _main_not_reimported():
    """Start worker processes without re-running the caller's script in them.

    ``distributed`` starts workers with multiprocessing's *spawn*, which imports
    the main module again in each new process; a pyPiper script has no
    ``if __name__ == "__main__":`` guard, so it would run itself again. Workers
    don't need the main module (node classes reach them pickled by value), so
    it is hidden from multiprocessing while the workers start.
    """
    main = sys.modules.get("__main__")
    if main is None:
        yield
        return
    saved = {k: main.__dict__[k] for k in ("__file__", "__spec__") if k in main.__dict__}
    main.__dict__.pop("__file__", None)
    main.__spec__ = None
    try:
        yield
    finally:
        main.__dict__.pop("__spec__", None)
        main.__dict__.update(saved)


class _RecoveredLosses(logging.Filter):
    """Drops distributed's records of data lost with a worker: the run sends it again, and says so itself.

    After a worker kill the run recovered from, the scheduler logged
    ``Removing worker ... lost scattered data, which can't be recovered`` and
    the client ``Couldn't gather N keys`` (11 of 12 kills), and so did a
    Ctrl-C in ``handle.result()``. A run that cannot recover raises its own
    error naming the node.
    """

    NOISE = ("scattered data, which can't be recovered", "Couldn't gather")

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._count = 0
        self._loggers = [logging.getLogger(n) for n in ("distributed.scheduler", "distributed.client")]

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.msg if isinstance(record.msg, str) else ""
        return not any(part in message for part in self.NOISE)

    def __enter__(self) -> None:
        with self._lock:
            if self._count == 0:
                for log in self._loggers:
                    log.addFilter(self)
            self._count += 1

    def __exit__(self, *exc: Any) -> None:
        with self._lock:
            self._count -= 1
            if self._count == 0:
                for log in self._loggers:
                    log.removeFilter(self)


#: Entered for every run on a cluster (counted: runs from several threads at once).
quiet_recovered_losses = _RecoveredLosses()
