"""The user's own modules reach the workers by value."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from pypiper_dask import NodeModuleError, Pipeline
from pypiper_dask.model import pickling
from pypiper_dask.model.snapshot import load_node
from tests.conftest import ROOT
from tests.nodes import Gen as N_Gen

LOCKED_MODULE = """
import threading
from pypiper_dask import Node

LOCK = threading.Lock()


class Locked(Node):
    def run(self, data):
        with LOCK:
            self.emit(data + 1)
"""


def test_a_module_that_cannot_go_by_value_goes_by_reference_and_a_worker_that_cannot_import_it_says_so(
    tmp_path, monkeypatch
):
    """In the caller it runs; unpickled where the module is missing, the error names it and the remedy."""
    (tmp_path / "locked_nodes.py").write_text(LOCKED_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    locked_nodes = importlib.import_module("locked_nodes")
    try:
        node = locked_nodes.Locked("locked")
        blob = pickling.dumps_node(node)  # by value fails (the lock): by reference
        assert type(load_node(blob)) is locked_nodes.Locked
        assert Pipeline(N_Gen("g", size=3) | locked_nodes.Locked("locked"), n_threads=1, quiet=True).run()[
            "locked"
        ] == [1, 2, 3]
        # A process without the module (a worker without the file):
        probe = "import sys; from pypiper_dask.model.snapshot import load_node; load_node(sys.stdin.buffer.read())"
        done = subprocess.run(
            [sys.executable, "-c", probe],
            input=blob,
            capture_output=True,
            timeout=60,
            cwd=ROOT,
            env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        )
        message = done.stderr.decode().strip().splitlines()[-1]
        assert message.startswith("pypiper_dask.errors.NodeModuleError: Node 'locked' needs module 'locked_nodes'")
        for part in ("its global 'LOCK' holds lock", "cannot pickle '_thread.lock' object", "client.upload_file("):
            assert part in message
        assert str(tmp_path / "locked_nodes.py") in message
    finally:
        sys.modules.pop("locked_nodes", None)


@pytest.mark.cluster
@pytest.mark.timeout(120)
def test_upload_file_is_the_remedy_on_a_remote_cluster(tmp_path, monkeypatch, external_cluster):
    (tmp_path / "locked_upload.py").write_text(LOCKED_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    locked_upload = importlib.import_module("locked_upload")
    from distributed import Client

    try:
        graph = N_Gen("g", size=3) | locked_upload.Locked("locked")
        with pytest.raises(NodeModuleError, match=r"needs module 'locked_upload' .*client\.upload_file") as info:
            Pipeline(graph, client=external_cluster, quiet=True).run()
        assert info.value.module == "locked_upload"
        with Client(external_cluster, set_as_default=False) as client:
            client.upload_file(str(tmp_path / "locked_upload.py"))
        graph = N_Gen("g", size=3) | locked_upload.Locked("locked")
        assert Pipeline(graph, client=external_cluster, quiet=True).run()["locked"] == [1, 2, 3]
    finally:
        sys.modules.pop("locked_upload", None)


def test_a_script_whose_code_cannot_go_by_value_is_refused_naming_the_global(tmp_path):
    """A module workers can never import by name (``__main__``, a file the CLI ran) goes by value or not at all."""
    import types

    module = types.ModuleType("value_only_script")
    module.__file__ = str(tmp_path / "script.py")
    sys.modules[module.__name__] = module
    try:
        exec(compile(LOCKED_MODULE, module.__file__, "exec"), vars(module))
        pickling.send_by_value(module)
        with pytest.raises(NodeModuleError, match=r"its global 'LOCK' holds lock") as info:
            Pipeline(N_Gen("g", size=3) | module.Locked("locked"), n_threads=1)
        assert info.value.module == "value_only_script"
        assert "setup() or run()" in str(info.value)
    finally:
        sys.modules.pop("value_only_script", None)


def test_code_sent_by_value_keeps_its_file_name(tmp_path, monkeypatch):
    code = "from pypiper_dask import Node\n\nclass Named(Node):\n    def run(self, data):\n        self.emit(data)\n"
    (tmp_path / "named_nodes.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    named_nodes = importlib.import_module("named_nodes")
    try:
        assert pickling.is_user_module(named_nodes)
        blob = pickling.dumps_node(named_nodes.Named("n"))
        assert b"<dynamic-code>" not in blob
        assert str(tmp_path / "named_nodes.py").encode() in blob
        assert "named_nodes" in __import__("cloudpickle").list_registry_pickle_by_value()
    finally:
        sys.modules.pop("named_nodes", None)


def test_installed_and_standard_modules_are_not_the_users():
    import json as stdlib_module

    import cloudpickle

    import pypiper_dask

    assert not pickling.is_user_module(stdlib_module)
    assert not pickling.is_user_module(cloudpickle)
    assert not pickling.is_user_module(pypiper_dask)
    assert not pickling.is_user_module(sys.modules["__main__"])
    assert pickling.is_user_module(sys.modules[__name__])  # the tests are the user's here
