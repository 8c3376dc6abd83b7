"""What the package declares (no cap on Dask, its license, classifiers, bokeh as an extra); the demo without bokeh."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import metadata, requires
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(30)
def test_dask_and_distributed_are_not_capped():
    # Dask releases by calendar version: an upper bound would block next year's release.
    needs = [r for r in requires("pypiper-dask") or [] if "extra ==" not in r]
    for name in ("dask", "distributed"):
        (spec,) = [r for r in needs if r.split(">")[0].split("<")[0].split("=")[0].strip() == name]
        assert "<" not in spec, spec


@pytest.mark.timeout(30)
def test_the_license_file_matches_the_declared_license():
    meta = metadata("pypiper-dask")
    assert meta["License-Expression"] == "MIT"
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")


@pytest.mark.timeout(30)
def test_classifiers_name_the_python_versions_and_the_status():
    classifiers = metadata("pypiper-dask").get_all("Classifier") or []
    assert {"Programming Language :: Python :: 3.10", "Programming Language :: Python :: 3.11"} <= set(classifiers)
    assert any(c.startswith("Development Status ::") for c in classifiers)
    assert "https://github.com/daniyall/pyPiper" in " ".join(metadata("pypiper-dask").get_all("Project-URL") or [])


@pytest.mark.timeout(30)
def test_the_dashboards_bokeh_is_an_extra_that_the_notebook_and_test_extras_bring():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {
        extra: {r.split(">")[0].split("=")[0] for r in reqs} for extra, reqs in project["optional-dependencies"].items()
    }
    assert not any(r.startswith("bokeh") for r in project["dependencies"])
    assert {"dashboard", "notebook", "test"} <= {extra for extra, reqs in names.items() if "bokeh" in reqs}


@pytest.mark.cluster
@pytest.mark.timeout(120)
def test_the_demo_runs_where_bokeh_is_not_installed(tmp_path):
    # `pip install . && python -m pypiper_dask.demo` installs no bokeh: the cluster starts without a dashboard.
    (tmp_path / "bokeh").mkdir()
    (tmp_path / "bokeh" / "__init__.py").write_text("raise ImportError('no bokeh here')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    done = subprocess.run(
        [sys.executable, "-m", "pypiper_dask.demo", "--size", "3000"],
        env=env,
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.endswith(
        "  the RunningTotal object in this process ended with total = 8995500500, as its copy on the cluster did\n"
    )
