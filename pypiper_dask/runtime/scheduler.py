"""The one place that decides where a run executes."""

from __future__ import annotations

import sys
from typing import Any

from ..log import logger
from .backends import DistributedBackend, InProcessBackend, SyncTaskBackend

__all__ = ["choose_backend"]


def _default_client() -> Any:
    """The active default ``distributed`` client, without importing distributed for it."""
    if "distributed" not in sys.modules:
        return None
    from distributed import default_client

    try:
        return default_client()
    except ValueError:
        return None


def choose_backend(
    n_threads: int | None,
    client: Any,
    *,
    connect_timeout: float = 10.0,
    security: Any = None,
    held: Any = None,
    checkpoint: bool = False,
) -> InProcessBackend | SyncTaskBackend | DistributedBackend:
    """Pick where a run executes, in this order.

    1. ``client=`` (a ``distributed.Client`` or a scheduler address) → that cluster;
    2. ``held`` (the client of a cluster ``Pipeline.open()`` keeps) → that cluster;
    3. ``n_threads > 1`` → a ``LocalCluster`` of that many worker processes for the run;
    4. ``n_threads == 1`` → the calling process;
    5. neither given → the default ``distributed`` client if one is active
       (a notebook that made a ``Client`` for the dashboard), else the calling process.

    In the calling process a ``checkpoint`` run goes partition by partition
    on copies of the nodes, as on a cluster (its cuts are pickled), rather
    than depth first on the caller's objects.

    Examples
    --------
    >>> type(choose_backend(1, None)).__name__
    'InProcessBackend'
    >>> type(choose_backend(1, None, checkpoint=True)).__name__
    'SyncTaskBackend'
    >>> choose_backend(4, None).n_workers_wanted
    4
    """
    if isinstance(client, str):
        return DistributedBackend(address=client, timeout=connect_timeout, security=security)
    if client is not None:
        return DistributedBackend(client=client)
    if held is not None:
        return DistributedBackend(client=held)
    if n_threads is not None and n_threads > 1:
        default = _default_client()
        if default is not None:
            logger.info(
                "n_threads=%d: this run starts a local cluster of its own, not the active default client's "
                "(%s); pass client=distributed.default_client() (or leave n_threads out) to run there",
                n_threads,
                getattr(default, "dashboard_link", None) or default,
            )
        return DistributedBackend(n_workers=n_threads)
    if n_threads is None:
        default = _default_client()
        if default is not None:
            return DistributedBackend(client=default)
    return SyncTaskBackend() if checkpoint else InProcessBackend()
