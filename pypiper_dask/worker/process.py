"""What each worker process of a cluster a run starts sets up: a ``distributed`` preload.

The run's caller owns that cluster and reports whatever goes wrong as an
exception, so its worker processes keep quiet:

* Ctrl-C in a terminal signals the whole process group, the workers too. The
  caller cancels the work and closes the cluster; workers that took the signal
  themselves died printing a traceback each (some 70 lines for two). They
  ignore it.
* distributed's own ERROR records in a worker add nothing the caller does not
  say: a heartbeat that meets the scheduler closing at the end of a run, a
  message for an actor released after an error. Only CRITICAL ones are shown
  (a value that could not be serialized, say).

Node errors don't depend on this: a task returns a node's failure instead of
raising it (see :func:`~pypiper_dask.worker.fused.run_fused`), so no worker,
of any cluster, logs it as "Compute Failed".
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

__all__ = ["dask_setup", "quiet_worker_process"]

#: The loggers distributed gives a handler of their own in each process.
LOGGERS = ("distributed", "distributed.client", "tornado", "tornado.application", "bokeh")


def quiet_worker_process() -> None:
    """Ignore SIGINT and show only CRITICAL records of distributed's loggers, in this process."""
    if threading.current_thread() is threading.main_thread():  # only there can a handler be set
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    for name in LOGGERS:
        for handler in logging.getLogger(name).handlers:
            handler.setLevel(max(handler.level, logging.CRITICAL))


def dask_setup(worker: Any) -> None:
    """distributed calls this in each worker process as it starts (``preload=[__name__]``)."""
    quiet_worker_process()
