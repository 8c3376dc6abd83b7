"""Take docs/dashboard-task-stream.png: ``python docs/make_dashboard.py`` (needs a ``chromium`` on PATH).

Starts a local cluster of two worker processes, runs a pipeline on it (a fused
stateless pair, a stateful node and a ``BATCH_SIZE_ALL`` barrier, partitions
large enough to be sent to the workers as data) and, while it runs, has
headless Chromium screenshot the dashboard's status page. Prints the names
the dashboard groups the run's tasks by.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from pypiper_dask import Node, Pipeline
from pypiper_dask.demo import Generate  # the source: 0, 1, ..., size-1

OUT = Path(__file__).resolve().parent / "dashboard-task-stream.png"


class Features(Node):
    def run(self, data: int) -> None:
        self.emit(sum(math.sin(data * k) for k in range(150)))  # some work per item


class Scale(Node):
    def run(self, data: float) -> None:
        self.emit(data / 150)


class RunningMean(Node):
    def setup(self) -> None:
        self.stateless = False
        self.n = 0
        self.mean = 0.0

    def run(self, data: float) -> None:
        self.n += 1
        self.mean += (data - self.mean) / self.n
        self.emit(self.mean)


class Summary(Node):
    def setup(self) -> None:
        self.batch_size = Node.BATCH_SIZE_ALL

    def run(self, data: list) -> None:
        self.emit((len(data), min(data), max(data)))


def screenshot(chromium: str, url: str, profile: str, settle: float = 4.0) -> bytes:
    """A PNG of ``url`` as headless Chromium shows it ``settle`` seconds after it loads.

    Driven over the DevTools protocol (with tornado's websocket client, which
    distributed brings): ``chromium --screenshot`` shoots at the load event,
    before the dashboard's plots have come over their websocket.
    """
    import asyncio
    import base64
    import json
    import urllib.request

    from tornado.websocket import websocket_connect

    port = 9300
    args = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    args += [f"--user-data-dir={profile}", f"--remote-debugging-port={port}", "--window-size=1500,950", "about:blank"]
    browser = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json") as answer:
                    page = next(t for t in json.load(answer) if t["type"] == "page")
                break
            except (OSError, StopIteration):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

        async def drive() -> bytes:
            ws = await websocket_connect(page["webSocketDebuggerUrl"], max_message_size=64 << 20)
            ids = iter(range(1, 1000))

            async def call(method: str, **params: Any) -> dict:
                n = next(ids)
                await ws.write_message(json.dumps({"id": n, "method": method, "params": params}))
                while True:
                    message = json.loads(await ws.read_message())
                    if message.get("id") == n:
                        return message["result"]

            await call("Page.navigate", url=url)
            await asyncio.sleep(settle)
            shot = await call("Page.captureScreenshot", format="png")
            await call("Page.navigate", url="about:blank")  # the dashboard's session ends cleanly
            await asyncio.sleep(0.5)
            ws.close()
            return base64.b64decode(shot["data"])

        return asyncio.run(drive())
    finally:
        browser.terminate()
        browser.wait(timeout=30)


def main() -> int:
    from distributed import Client, LocalCluster, get_task_stream
    from distributed.utils import key_split

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        print("needs a chromium on PATH (apt-get install chromium)", file=sys.stderr)
        return 2
    graph = Generate("readings", size=1_200_000) | Features("features") | Scale("scale")
    graph = graph | [RunningMean("running-mean"), Summary("summary")]
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, host="127.0.0.1", dashboard_address="127.0.0.1:0") as cluster,
        Client(cluster) as client,
        tempfile.TemporaryDirectory() as profile,
    ):
        url = client.dashboard_link.replace("/status", "") + "/status"
        pipeline = Pipeline(graph, client=client, quiet=True, partition_size=2000, progress=False)
        done = threading.Event()

        def shoot() -> None:
            time.sleep(6)  # the task stream and the progress bars well filled, the run not over
            OUT.write_bytes(screenshot(chromium, url, profile))
            done.set()

        shooter = threading.Thread(target=shoot)
        with get_task_stream(client=client) as stream:
            shooter.start()
            pipeline.run()
        shooter.join()
        print(f"wrote {OUT}" if done.is_set() else "no screenshot")
        print("task stream rows:", sorted({key_split(t["key"]) for t in stream.data}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
