"""The user's own modules reach the workers by value, and a node's traceback names the user's file and line once.

The cluster tests run a driver script from a folder of its own, next to the
user's module, against workers whose working directory and ``PYTHONPATH``
do not hold that module (an external ``dask scheduler``/``dask worker``), a
``LocalCluster`` (``n_threads=2``) and the calling process (``n_threads=1``).
"""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys
import textwrap
import threading
import traceback
from pathlib import Path

import pytest

from pypiper_dask import Node, NodeError, NodeModuleError, Pipeline
from pypiper_dask.model import pickling
from pypiper_dask.model.snapshot import load_node
from tests.conftest import ROOT
from tests.nodes import Gen as N_Gen

# Top-level code leaves a file named after the process that ran it.
USER_MODULE = """
import os
from pypiper_dask import Node

open(os.path.join({markers!r}, str(os.getpid())), "w").close()


class Gen(Node):
    def setup(self):
        self.pos = 0

    def run(self, data):
        if self.pos < self.size:
            self.emit(self.pos)
            self.pos += 1
        else:
            self.close()


class Square(Node):
    def run(self, data):
        if data == self.fail_at:
            raise ValueError(f"no square for {{data}}")
        self.emit(data * data)


class Total(Node):
    def setup(self):
        self.stateless = False
        self.total = 0

    def run(self, data):
        if data == self.fail_at:
            raise KeyError(data)
        self.total += data
        self.emit(self.total)
"""

DRIVER = """
import json, os, sys, traceback
from pypiper_dask import NodeError, Pipeline
from {module} import Gen, Square, Total

if __name__ == "__main__":
    where = json.loads(sys.argv[1])
    graph = Gen("gen", size=8) | [Square("square", fail_at=-1), Total("total", fail_at=-1)]
    print(json.dumps(dict(Pipeline(graph, quiet=True, **where).run())))
    print(os.getpid())
    runs = [where] if where.get("n_threads") == 1 else [where, {{"n_threads": 1}}]
    for options in runs:  # in the caller too, after a cluster run brought a stateful node back
        try:
            Pipeline(Gen("gen", size=8) | Total("total", fail_at=5), quiet=True, **options).run()
        except NodeError as err:
            print("=== caught", file=sys.stderr)
            traceback.print_exception(err)
    print("=== uncaught", file=sys.stderr)
    Pipeline(Gen("gen", size=8) | Square("square", fail_at=3), quiet=True, **where).run()
"""


def line_of(text: str, needle: str) -> int:
    (number,) = [i for i, line in enumerate(text.splitlines(), 1) if needle in line]
    return number


def run_driver(tmp_path: Path, module: str, where: dict) -> tuple[subprocess.CompletedProcess, Path, Path]:
    folder = tmp_path / "user"
    markers = tmp_path / "markers"
    folder.mkdir()
    markers.mkdir()
    path = folder / f"{module}.py"
    path.write_text(USER_MODULE.format(markers=str(markers)))
    (folder / "driver.py").write_text(textwrap.dedent(DRIVER.format(module=module)))
    done = subprocess.run(
        [sys.executable, "driver.py", json.dumps(where)],
        capture_output=True,
        text=True,
        timeout=150,
        cwd=folder,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    return done, path, markers


def assert_shown_once(section: str, path: Path, needle: str) -> None:
    """The traceback in ``section`` shows the user's file, line and source line, once, without carets."""
    source = path.read_text()
    lineno = line_of(source, needle)
    frame = f'File "{path}", line {lineno}, in run'
    assert section.count(frame) == 1, section
    lines = section.splitlines()
    at = next(i for i, line in enumerate(lines) if frame in line)
    assert lines[at + 1].strip() == needle, section
    assert "^" not in lines[at + 2], section  # no carets under the user's line (tblib's stub had them wrong)
    assert section.count(needle) == 1, section
    assert "<dynamic-code>" not in section
    assert "Traceback where the node ran" not in section


@pytest.mark.cluster
@pytest.mark.timeout(240)
@pytest.mark.parametrize("mode", ["external cluster", "n_threads=2", "n_threads=1"])
def test_user_module_nodes_run_anywhere_and_their_tracebacks_show_the_users_line_once(mode, tmp_path, request):
    module = "my_nodes_" + re.sub(r"\W", "_", mode)
    if mode == "external cluster":
        where: dict = {"client": request.getfixturevalue("external_cluster")}
    else:
        where = {"n_threads": int(mode[-1])}
    done, path, markers = run_driver(tmp_path, module, where)
    out, err = done.stdout.splitlines(), done.stderr
    assert done.returncode == 1, err
    assert json.loads(out[0]) == {
        "square": [i * i for i in range(8)],
        "total": [sum(range(i + 1)) for i in range(8)],
    }
    # The module's top-level code ran in the driver only: workers got its classes by value.
    assert {p.name for p in markers.iterdir()} == {out[1]}
    caught = err.split("=== caught")[1:]
    assert len(caught) == (1 if mode == "n_threads=1" else 2)
    for section in caught:
        section = section.split("=== ")[0]
        assert_shown_once(section, path, "raise KeyError(data)")
        assert "NodeError: Node 'total' raised KeyError: 5 on input 5." in section
    uncaught = err.split("=== uncaught")[1]
    assert_shown_once(uncaught, path, 'raise ValueError(f"no square for {data}")')
    assert uncaught.rstrip().endswith("NodeError: Node 'square' raised ValueError: no square for 3 on input 3.")


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
        # Only a run that leaves the process pickles (in the process it just runs).
        with pytest.raises(NodeModuleError, match=r"its global 'LOCK' holds lock") as info:
            Pipeline(N_Gen("g", size=3) | module.Locked("locked"), n_threads=2)
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


class Fails(Node):
    def run(self, data):
        raise ZeroDivisionError("no")


def test_in_process_error_shows_the_traceback_once():
    with pytest.raises(NodeError) as info:
        Pipeline(N_Gen("g", size=3) | Fails("fails"), n_threads=1, quiet=True).run()
    text = "".join(traceback.format_exception(info.value))
    assert text.count('raise ZeroDivisionError("no")') == 1
    assert f'File "{__file__}"' in text
    assert not getattr(info.value, "__notes__", None)


def test_unpicklable_error_keeps_its_traceback():
    from pypiper_dask.worker.values import error_text, failure

    def boom():
        raise RuntimeError("with a lock", threading.Lock())

    try:
        boom()
    except RuntimeError as exc:
        made = failure("n", 1, exc)
    # In its place, a stand-in that names its type (issue 19 item 12), with the traceback kept.
    assert error_text(made.error).startswith("RuntimeError: ") and made.error.__traceback__ is not None
    assert "boom" in "".join(traceback.format_tb(made.error.__traceback__))
