"""What a failing run leaves on stderr, and that bad data or a bad address never hangs a run.

Where the behaviour is the process's own (its stderr, its exit, its children), a
small script runs in a subprocess.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from pypiper_dask import Node, NodeError, Pipeline
from tests import nodes as N
from tests.conftest import ROOT


def run_script(tmp_path, source: str, timeout: float = 90) -> subprocess.CompletedProcess:
    """Run ``source`` as a script of its own; its stdout and stderr as text."""
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(source))
    return subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


NODES = """
from pypiper_dask import Node, Pipeline

class Gen(Node):
    def setup(self, size):
        self.pos = 0
    def run(self, data):
        if self.pos < self.size:
            self.emit(self.pos)
            self.pos += 1
        else:
            self.close()

class Boom(Node):
    def run(self, data):
        if data == 3:
            raise ValueError("boom at 3")
        self.emit(data)
"""


# -- item 5: what a run leaves on stderr ------------------------------------------------------


@pytest.mark.cluster
@pytest.mark.timeout(120)
@pytest.mark.parametrize("stateless", [True, False])
@pytest.mark.parametrize("where", ["n_threads=2", "the caller's LocalCluster"])
def test_a_node_error_on_a_cluster_prints_no_compute_failed_block(tmp_path, where, stateless):
    run = {
        "n_threads=2": "Pipeline(graph, n_threads=2, quiet=True).run()",
        "the caller's LocalCluster": """
            from distributed import Client, LocalCluster
            cluster = LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0")
            with cluster, Client(cluster) as client:
                Pipeline(graph, client=client, quiet=True).run()
        """,
    }[where]
    done = run_script(
        tmp_path,
        NODES
        + f"\nif __name__ == '__main__':\n    graph = Gen('g', size=10) | Boom('boom', stateless={stateless})\n"
        + textwrap.indent(textwrap.dedent(run), "    "),
    )
    assert done.returncode == 1
    assert "NodeError: Node 'boom' raised ValueError: boom at 3 on input 3." in done.stderr
    assert "Compute Failed" not in done.stderr, done.stderr
    assert " - ERROR - " not in done.stderr, done.stderr


HEARTBEAT = """
import logging
from distributed.comm.core import CommClosedError

class Beat(Node):
    # What a worker logs when its heartbeat meets a scheduler that has just closed (a race at a
    # cluster's close, seldom hit on purpose): logged here from inside the run, on a worker.
    def run(self, data):
        if data == 0:
            try:
                raise CommClosedError("in <TCP (closed) ConnectionPool.heartbeat_worker>: Stream is closed")
            except CommClosedError:
                log = logging.getLogger("distributed.worker")
                log.exception("Failed to communicate with scheduler during heartbeat.")
        self.emit(data)

if __name__ == "__main__":
    result = Pipeline(Gen("g", size=5) | Beat("beat"), n_threads=2, quiet=True).run()
    print(result["beat"])
"""


@pytest.mark.cluster
@pytest.mark.timeout(120)
def test_a_clean_run_leaves_no_worker_heartbeat_error_on_stderr(tmp_path):
    done = run_script(tmp_path, NODES + HEARTBEAT)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "[0, 1, 2, 3, 4]\n"
    assert "heartbeat" not in done.stderr and "CommClosedError" not in done.stderr, done.stderr


# -- item 8: bad data never hangs, and the error names the node ---------------------------------


class Deep(Node):
    def run(self, data):
        def down(n):
            return down(n + 1)

        if data == 3:
            down(0)
        self.emit(data)


@pytest.mark.cluster
@pytest.mark.timeout(60)
@pytest.mark.parametrize("stateless", [True, False])
def test_deep_recursion_in_a_node_on_a_cluster_is_a_node_error(stateless, local_client):
    with pytest.raises(NodeError, match=r"^Node 'deep' raised RecursionError: maximum recursion depth") as info:
        Pipeline(N.Gen("g", size=10) | Deep("deep", stateless=stateless), client=local_client, quiet=True).run()
    assert (info.value.node, info.value.item) == ("deep", "3")
    assert isinstance(info.value.__cause__, RecursionError)
    assert "in down" in info.value.__notes__[0]
