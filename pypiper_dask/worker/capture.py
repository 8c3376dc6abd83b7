"""What a node prints, captured per thread while a task runs it."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["capture_stdout"]

_local = threading.local()
_install_lock = threading.Lock()


class _Dispatch:
    """``sys.stdout`` stand-in: the running task's capture on this thread, else the real stream.

    Capture is per thread, so tasks on a worker with several threads never see
    each other's prints, and every other thread writes straight through.
    Everything but ``write`` and ``flush`` (``fileno``, ``isatty``,
    ``encoding``, ...) is the real stream's.
    """

    def __init__(self, real: Any) -> None:
        self.real = real

    def write(self, text: str) -> int:
        target = getattr(_local, "capture", None)
        if target is None:
            return self.real.write(text)
        target(text)
        return len(text)

    def flush(self) -> None:
        if getattr(_local, "capture", None) is None:
            self.real.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


class capture_stdout:
    """Send this thread's prints to ``record(text)`` for the ``with`` block.

    The stand-in is put on ``sys.stdout`` while any capture is active and
    taken off when the last one ends, so the user's ``sys.stdout`` is their
    own between runs.
    """

    _active = 0

    def __init__(self, record: Callable[[str], None]) -> None:
        self.record = record

    def __enter__(self) -> None:
        with _install_lock:
            if not isinstance(sys.stdout, _Dispatch):
                sys.stdout = _Dispatch(sys.stdout)
            capture_stdout._active += 1
        self.saved = getattr(_local, "capture", None)
        _local.capture = self.record

    def __exit__(self, *exc: Any) -> None:
        _local.capture = self.saved
        with _install_lock:
            capture_stdout._active -= 1
            stand_in = sys.stdout
            # Only our own stand-in is taken off: something installed over it stays.
            if capture_stdout._active == 0 and isinstance(stand_in, _Dispatch):
                sys.stdout = stand_in.real
