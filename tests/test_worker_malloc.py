"""The allocator settings of the workers a run starts (issue 18 item 5): the library's unless the user set theirs."""

from __future__ import annotations

import json
import os

import pytest

from pypiper_dask.runtime.cluster import WORKER_MALLOC
from tests.conftest import run_script

SCRIPT = """
import json, os
from distributed import Client, LocalCluster
from pypiper_dask import Node, Pipeline

class Gen(Node):
    def setup(self, size):
        self.i = 0
    def run(self, data):
        if self.i == self.size:
            self.close()
            return
        self.emit(self.i)
        self.i += 1

def env():
    return {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")}

if __name__ == "__main__":
    # A cluster of the user's first: its nanny leaves distributed's default in this process's
    # environment, which overrides the configuration for the next nanny.
    with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=":0") as cluster, Client(cluster):
        pass
    with Pipeline(Gen("gen", size=3), n_threads=2, quiet=True) as pipeline:
        pipeline.run()
        print(json.dumps(list(pipeline._held.client.run(env).values())))
"""


@pytest.mark.cluster
@pytest.mark.timeout(120)
@pytest.mark.parametrize("exported", [None, "2097152"])
def test_workers_get_the_librarys_allocator_settings_unless_the_user_set_them(tmp_path, exported):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    if exported:
        env["MALLOC_TRIM_THRESHOLD_"] = exported
    done = run_script(tmp_path, SCRIPT, timeout=110, env=env)
    assert done.returncode == 0, done.stderr
    workers = json.loads(done.stdout.splitlines()[-1])
    assert len(workers) == 2
    want = WORKER_MALLOC if exported is None else {"MALLOC_TRIM_THRESHOLD_": exported}
    assert all(w == want for w in workers), workers
