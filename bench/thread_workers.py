"""Single-threaded Dask workers as threads of one process: ``python -m bench.thread_workers ADDRESS N``.

T10's split layout (bench/third.py): the scheduler in its own process (``dask
scheduler``), the workers here, the caller alone in the benchmark's process, so
each one's CPU can be read apart. One process cannot start 64 worker processes
quickly on two cores; threads can. Each worker's statistical profiler (a thread
sampling every thread's stack every 10 ms) and memory monitor are off: in one
process they would run once per worker.
"""

from __future__ import annotations

import asyncio
import sys

import dask
from distributed import Worker


async def serve(address: str, count: int) -> None:
    """Start ``count`` workers against ``address`` and run until they close (or the process is ended)."""
    workers = [
        Worker(address, nthreads=1, memory_limit=0, host="127.0.0.1", dashboard=False, name=f"t{i}")
        for i in range(count)
    ]
    await asyncio.gather(*workers)
    await asyncio.gather(*(w.finished() for w in workers))


if __name__ == "__main__":
    with dask.config.set({"distributed.worker.profile.enabled": False}):
        asyncio.run(serve(sys.argv[1], int(sys.argv[2])))
