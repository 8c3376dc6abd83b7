"""In a Jupyter kernel, what a submitted run shows goes to the cell that submitted it.

docs/guide/streaming.md says so ("submit() in a notebook"): the progress widget and the
nodes' prints are addressed to the submitting cell, also after it returned. Checked on the
messages a real ipykernel sends, as a front-end receives them.
"""

from __future__ import annotations

import os
import queue
import time

import pytest

from tests.conftest import ROOT

SUBMIT = """
import time
from pypiper_dask import Node, Pipeline
from pypiper_dask.demo import Generate

class Slow(Node):
    def run(self, data):
        time.sleep(0.02)
        if data == 30:
            print("slow saw", data)
        self.emit(data)

handle = Pipeline(Generate("gen", size=40) | Slow("slow"), n_threads=1, quiet=True, progress=True).submit()
"""

WAIT = """
while not handle.done():
    time.sleep(0.05)
print("next cell:", handle.result()["slow"][-1])
"""


@pytest.mark.timeout(120)
def test_a_submitted_runs_widget_and_prints_are_addressed_to_the_submitting_cell():
    pytest.importorskip("ipywidgets")
    manager = pytest.importorskip("jupyter_client.manager")
    km, kc = manager.start_new_kernel(kernel_name="python3", env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        submit, wait = kc.execute(SUBMIT), kc.execute(WAIT)
        messages, idle, deadline = [], set(), time.monotonic() + 90
        while idle != {submit, wait} and time.monotonic() < deadline:
            try:
                msg = kc.get_iopub_msg(timeout=1)
            except queue.Empty:
                continue
            parent = msg["parent_header"].get("msg_id")
            if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                idle.add(parent)
            messages.append((parent, msg["msg_type"], msg["content"], submit in idle))
        assert idle == {submit, wait}, "the kernel did not finish both cells"
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)

    def where(kind, test):
        return [(parent, after) for parent, t, content, after in messages if t == kind and test(content)]

    widgets = where("display_data", lambda c: "application/vnd.jupyter.widget-view+json" in c["data"])
    prints = where("stream", lambda c: "slow saw 30" in c["text"])
    result = where("stream", lambda c: "next cell: 39" in c["text"])
    assert widgets and all(parent == submit for parent, _ in widgets)
    assert prints == [(submit, True)]  # printed after the submitting cell had returned, and sent to it
    assert [parent for parent, _ in result] == [wait]
