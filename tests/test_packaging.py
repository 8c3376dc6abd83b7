"""What the installed package declares: dependencies without a cap, its license, classifiers."""

from __future__ import annotations

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
