"""A run's options, validated once, in one value that ``Pipeline`` and the command line share."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..errors import NodeTypeError, OptionError
from ..model.node import check_snapshot_every
from .recovery import DEFAULT_SNAPSHOT_EVERY

__all__ = ["RunOptions"]


def _positive_int(what: str, value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise NodeTypeError(f"Pipeline: {what} must be an int >= 1 or None, not {type(value).__name__} {value!r}.")
    if value < 1:
        raise OptionError(f"Pipeline: {what} must be an int >= 1 or None, not {value!r}.")


@dataclass(frozen=True)
class RunOptions:
    """Where and how a pipeline runs; every value checked when it is made or replaced.

    See :class:`~pypiper_dask.Pipeline` for what each option means.

    Examples
    --------
    >>> RunOptions(n_threads=2).replace(quiet=True).quiet
    True
    >>> RunOptions(n_threads=0)
    Traceback (most recent call last):
    ...
    pypiper_dask.errors.OptionError: Pipeline: n_threads must be an int >= 1 or None, not 0.
    """

    n_threads: int | None = None
    quiet: bool = False
    client: Any = None
    partition_size: int | None = None
    progress: bool | None = None
    connect_timeout: float = 10.0
    security: Any = None
    snapshot_every: Any = DEFAULT_SNAPSHOT_EVERY
    ordered: bool = True

    def __post_init__(self) -> None:
        _positive_int("n_threads", self.n_threads)
        _positive_int("partition_size", self.partition_size)
        if self.client is not None and not isinstance(self.client, str) and not hasattr(self.client, "submit"):
            raise NodeTypeError(
                f"Pipeline: client must be a distributed.Client or a scheduler address string, not "
                f"{type(self.client).__name__} {self.client!r}."
            )
        if self.progress not in (None, True, False):
            raise NodeTypeError(f"Pipeline: progress must be True, False or None, not {self.progress!r}.")
        timeout = self.connect_timeout
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise OptionError(f"Pipeline: connect_timeout must be a number of seconds > 0, not {timeout!r}.")
        if not isinstance(self.ordered, bool):
            raise NodeTypeError(f"Pipeline: ordered must be True or False, not {self.ordered!r}.")
        if self.snapshot_every is not False:
            check_snapshot_every("Pipeline", self.snapshot_every)

    @property
    def snapshots(self) -> tuple[int | None, float | None] | None:
        """``snapshot_every`` as ``(items, seconds)``; ``None``: no snapshots (``False``, or ``None``)."""
        return None if self.snapshot_every is False else check_snapshot_every("Pipeline", self.snapshot_every)

    def replace(self, **changes: Any) -> RunOptions:
        """A copy with ``changes``, checked like a new value."""
        return dataclasses.replace(self, **changes)

    def leaves_process(self) -> bool:
        """Whether a run surely leaves the calling process (a client, or ``n_threads > 1``)."""
        return self.client is not None or (self.n_threads or 1) > 1

    def where(self) -> str:
        """Where a run with these options executes, in words."""
        if isinstance(self.client, str):
            return f"runs on the cluster at {self.client}"
        if self.client is not None:
            return "runs on the given client's cluster"
        if self.n_threads and self.n_threads > 1:
            return f"runs on a local cluster of {self.n_threads} worker processes"
        if self.n_threads == 1:
            return "runs in the calling process"
        return "runs on the default Dask client if one is active, else in the calling process"
