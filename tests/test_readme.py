"""The README's samples are the real output of the current code."""

from __future__ import annotations

import contextlib
import io
import re

import pytest

from tests.conftest import ROOT


def section(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    return text.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def code_and_output(title: str) -> tuple[str, str]:
    code, output = re.findall(r"```(?:python)?\n(.*?)```", section(title), re.S)[:2]
    return code, output


def run_sample(code: str, **names) -> str:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        exec(compile(code, "README.md", "exec"), {"__name__": "readme_sample", **names})
    return buf.getvalue()


@pytest.mark.timeout(60)
def test_the_named_streams_sample_prints_what_the_readme_shows():
    code, output = code_and_output("Named streams")
    assert run_sample(code) == output


@pytest.mark.cluster
@pytest.mark.timeout(60)
def test_the_named_streams_sample_prints_the_same_on_a_cluster(local_client):
    code, output = code_and_output("Named streams")
    assert "n_threads=1" in code
    assert run_sample(code.replace("n_threads=1", "client=CLIENT"), CLIENT=local_client) == output
