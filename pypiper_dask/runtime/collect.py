"""Steps of a sequential stage collected by the caller from their holder, without a task of their own.

A sequential stage's step is otherwise a task (``worker.run_seq``): it waits
on a worker's only thread for the holder to run the items that the fused task
above pushed to it. Where nothing below the stage depends on the step (its
output goes to the caller), the caller asks the holder itself once the fused
task is done, with an actor call: no task is scheduled and no worker's thread
waits. Measured on a 2-core machine, S3 (a stateful running sum after a
sleeping node) at 8 workers: every worker idled 8-10% of the run around the
step tasks (issue 18).

Only the plain case goes this way: a fused task that returned a segment and a
holder that answers with the step's segment. Anything else (a failure above
or in the node, a push that never arrived, the holder's worker gone) falls
back to the step's task, which asks the holder again (it keeps each step's
answer) and handles it as before.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import threading
from typing import Any

from ..compiler.tasks import TaskSpec
from ..ordering import Segment
from ..worker.keyed import merge_steps
from ..worker.sequential import HolderAt, SeqHolder

__all__ = ["Collector", "Direct"]


class Direct:
    """A step the caller collects: its task spec, the future of the fused task that pushed its items, the answers.

    ``keyed``: the step is a keyed node's, one answer from each of its
    holders, merged here in the partition's order as its task would.
    """

    __slots__ = ("answers", "keyed", "result", "task", "upstream")

    def __init__(self, task: TaskSpec, upstream: Any, keyed: bool = False) -> None:
        self.task = task
        self.upstream = upstream  # the fused task's future (its result is not fetched)
        self.keyed = keyed
        self.answers: list[concurrent.futures.Future] | None = None  # the holders' answers to come
        self.result: Segment | None = None  # the step's segment, carrying the fused task's log

    @property
    def number(self) -> int:
        return self.task.args[1]

    @property
    def carry(self) -> int | None:
        return self.task.args[4]

    @property
    def snap(self) -> bool:
        return self.task.args[5]

    def asked(self) -> bool:
        """Can the holder be asked now: the fused task above returned a segment (it pushed)?"""
        return self.upstream.status == "finished" and self.upstream.type is Segment

    def answered(self) -> bool | None:
        """The holders' answers, if they came: True when they are a result (now in ``result``), False to fall back."""
        assert self.answers is not None
        if not all(a.done() for a in self.answers):
            return None
        try:
            segs, logs = zip(*(a.result() for a in self.answers), strict=True)
        except Exception:  # the node's failure, a lost worker: the step's task says which
            return False
        if not all(isinstance(seg, Segment) for seg in segs):
            return False  # a push had not arrived (the holder waits a while)
        if self.keyed:
            if any(log is None or log[2] for log in logs):  # an item's key() raised: its task reports it
                return False
            where = [log[1] for log in logs]
            seg, log = merge_steps(list(segs), where, sum(map(len, where)), self.snap), logs[0][0]
        else:
            seg, log = segs[0], logs[0]
        if self.carry is not None:
            if log is None:
                return False  # (the fused task's log comes with its first push)
            seg.carried = (self.carry, log)  # as the step's task would bring it (see worker.run_seq)
        self.result = seg
        return True


class Collector:
    """Asks holders for steps from the caller, and wakes the run loop when an answer or a watched future is done.

    Parameters
    ----------
    client : distributed.Client
        The run's client: its event loop makes the calls.
    """

    def __init__(self, client: Any, near: bool = False) -> None:
        self.client = client
        self.near = near
        self.wake = threading.Event()
        self._proxies: dict[tuple[str, Any], Any] = {}

    def watch(self, future: Any) -> None:
        """Wake the run loop when ``future`` (a Dask future) is done."""
        future.add_done_callback(self._woken)

    def _woken(self, _: Any) -> None:
        self.wake.set()

    def ask(self, holders: list[HolderAt], number: int) -> list[concurrent.futures.Future]:
        """Step ``number``'s result and what came with its push, from each holder: futures that wake the loop."""
        return [self._ask(holder, number) for holder in holders]

    def _ask(self, holder: HolderAt, number: int) -> concurrent.futures.Future:
        proxy = self._proxy(holder)

        async def call() -> Any:
            return await proxy.step(number, "collect", with_log=True)

        answer = asyncio.run_coroutine_threadsafe(call(), self.client.loop.asyncio_loop)
        answer.add_done_callback(self._woken)
        return answer

    def _proxy(self, holder: HolderAt) -> Any:
        where = (holder.address, holder.key)
        if where not in self._proxies:
            with self.client.as_current():  # bound to the run's client (the default one may be another)
                self._proxies[where] = _actor_class(self.near)(SeqHolder, holder.address, holder.key)
        return self._proxies[where]

    def forget(self) -> None:
        """Drop the proxies (each holds a reference to its holder): the holders were replaced or the run ended."""
        self._proxies.clear()


@functools.cache
def _actor_class(near: bool) -> type:
    """distributed's actor proxy, or (``near``) one that calls its worker straight."""
    from distributed.actor import Actor

    if not near:
        return Actor

    class Near(Actor):
        """An actor proxy that calls its worker straight, not through the scheduler (which, for a
        ``LocalCluster``, runs in the caller's process too)."""

        @property
        def _worker_rpc(self) -> Any:
            return self._client.rpc(self._address)

    return Near
