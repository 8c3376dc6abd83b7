"""Worker processes that a nanny starts, now or later, never run the caller's script again.

``distributed`` starts a ``LocalCluster``'s workers with multiprocessing's
*spawn*, which imports the caller's main module again in each new process; a
pyPiper script has no ``if __name__ == "__main__":`` guard, so it would run
itself again there. Hiding the main module while the cluster starts (see
``backends._main_not_reimported``) covers the first workers, but a nanny
starts a new worker whenever one dies, at any moment of the run: then the
script ran again in the new worker (3 times in one trial) and the worker
failed to start ("bootstrapping phase").

While a cluster a run started is up, :func:`main_not_reimported_by_nannies`
leaves the main module out of what spawn hands to a process that a nanny
starts (they are named :data:`WORKER_PROCESS`). Workers don't need it: node
classes reach them pickled by value.
"""

from __future__ import annotations

import contextlib
import multiprocessing.spawn
import threading
from collections.abc import Iterator
from typing import Any

__all__ = ["WORKER_PROCESS", "main_not_reimported_by_nannies"]

#: The name distributed's ``Nanny`` gives the worker processes it starts.
WORKER_PROCESS = "Dask Worker process (from Nanny)"

_lock = threading.Lock()
_users = 0
_original: Any = None


def _preparation_data(name: str) -> dict:
    data = _original(name)
    if name == WORKER_PROCESS:
        data.pop("init_main_from_path", None)
        data.pop("init_main_from_name", None)
    return data


@contextlib.contextmanager
def main_not_reimported_by_nannies() -> Iterator[None]:
    """While inside, a nanny's new worker process does not import the main module.

    Counted, so that runs from several threads share one patch: the first in
    installs it, the last out removes it.
    """
    global _users, _original
    with _lock:
        if _users == 0:
            _original = multiprocessing.spawn.get_preparation_data
            multiprocessing.spawn.get_preparation_data = _preparation_data  # type: ignore[assignment]
        _users += 1
    try:
        yield
    finally:
        with _lock:
            _users -= 1
            if _users == 0:
                multiprocessing.spawn.get_preparation_data = _original
                _original = None
