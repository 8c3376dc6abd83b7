"""The README's samples are the real output of the current code."""

from __future__ import annotations

import ast
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


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """Each fenced block of ``text`` as (its language, or "" for an output sample; its text)."""
    blocks, lang, body = [], None, []
    for line in text.splitlines(keepends=True):
        if line.startswith("```"):
            if lang is None:
                lang, body = line[3:].strip(), []
            else:
                blocks.append((lang, "".join(body)))
                lang = None
        elif lang is not None:
            body.append(line)
    assert lang is None, "an unclosed fence"
    return blocks


def run_sample(code: str, namespace: dict | None = None, **names) -> str:
    """Run ``code`` as a script (in ``namespace``, given the ``names``); what it printed."""
    namespace = {} if namespace is None else namespace
    namespace.update(__name__="readme_sample", **names)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        exec(compile(code, "README.md", "exec"), namespace)
    return buf.getvalue()


#: The sections whose code is followed by the output it prints, each checked below.
CHECKED = ["Named streams", "How a pipeline is compiled"]


def test_every_output_sample_in_the_readme_is_one_a_test_checks():
    samples = [body for lang, body in fenced_blocks((ROOT / "README.md").read_text()) if not lang]
    assert sorted(samples) == sorted(code_and_output(title)[1] for title in CHECKED)


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


@pytest.mark.timeout(60)
def test_the_compiled_pipeline_prints_what_the_readme_shows():
    code, output = code_and_output("How a pipeline is compiled")
    assert run_sample(code) == output


@pytest.mark.cluster
@pytest.mark.timeout(60)
def test_the_quick_start_prints_and_returns_what_its_comments_say(local_client):
    (code,) = re.findall(r"```python\n(.*?)```", section("Quick start"), re.S)
    assert "n_threads=2" in code and "# prints 0, 1, 4, ... 81, and returns them too" in code
    said = ast.literal_eval(re.search(r'^result\["square"\]  # (.*)$', code, re.M)[1])
    namespace: dict = {}
    printed = run_sample(code.replace("n_threads=2", "client=CLIENT"), namespace, CLIENT=local_client)
    squares = [i * i for i in range(10)]
    assert printed == f"{namespace['pipeline']}\n" + "".join(f"{x}\n" for x in squares)
    assert namespace["result"]["square"] == said == squares
