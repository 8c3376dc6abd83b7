"""Every Python block of the README and the guide runs as it is, and prints the output shown under it.

A block is self-contained: it is run on its own, in a fresh namespace and an empty working
folder. Where ``prints`` and a fenced block without a language follow it, that block is what
it prints, compared exactly. Blocks that start a cluster carry the ``cluster`` marker.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import re
import textwrap
import warnings
from pathlib import Path

import pytest

from tests.conftest import ROOT

#: The documents whose code is checked: the README and the guide's pages.
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("**/*.md"))]
DOCUMENTS = [path for path in DOCUMENTS if "_build" not in path.parts]

#: ``n_threads=N`` that starts a local cluster of N workers when the pipeline runs.
OWN_CLUSTER = re.compile(r"\bn_threads=(?:[2-9]|\d\d)\b")
RUNS = re.compile(r"\.(?:run|stream|submit|open)\(|\bwith Pipeline\(")
#: A block that makes a cluster of its own or connects to one.
MAKES_CLUSTER = re.compile(r"\bClient\(|\bLocalCluster\(")


def needs_cluster(code: str) -> bool:
    return bool(MAKES_CLUSTER.search(code) or (OWN_CLUSTER.search(code) and RUNS.search(code)))


def fenced_blocks(text: str) -> list[tuple[str, str, str]]:
    """Each fenced block of ``text``: (its language, or "" for an output sample; its text; the text before it)."""
    blocks, lang, body, before = [], None, [], []
    for line in text.splitlines(keepends=True):
        stripped = line.strip()
        if stripped.startswith("```"):
            if lang is None:
                lang, body = stripped[3:].strip(), []
            else:
                blocks.append((lang, "".join(body), "".join(before)))
                lang, before = None, []
        elif lang is not None:
            body.append(line)
        else:
            before.append(line)
    assert lang is None, "an unclosed fence"
    # A block indented under a list item: without the item's indentation.
    return [(lang, textwrap.dedent(body), before) for lang, body, before in blocks]


def samples(path: Path) -> list[tuple[str, str | None]]:
    """Each Python block of ``path`` with the output stated under it (``None`` if none is)."""
    blocks = fenced_blocks(path.read_text())
    found = []
    for i, (lang, body, _) in enumerate(blocks):
        if lang != "python":
            continue
        output = None
        if i + 1 < len(blocks):
            next_lang, next_body, between = blocks[i + 1]
            if next_lang == "" and between.strip() == "prints":
                output = next_body
        found.append((body, output))
    return found


def run_sample(code: str, filename: str, **names) -> str:
    """Run ``code`` as a script of its own (given the ``names``); what it printed."""
    namespace = {"__name__": "readme_sample", **names}
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), warnings.catch_warnings():
        # A Client() in a block asks for the dashboard's usual port, which another cluster may hold.
        warnings.filterwarnings("ignore", message="Port 8787 is already in use")
        exec(compile(code, filename, "exec"), namespace)
    return buf.getvalue()


def _params() -> list:
    params = []
    for path in DOCUMENTS:
        name = path.relative_to(ROOT).as_posix()
        for n, (code, output) in enumerate(samples(path), 1):
            marks = [pytest.mark.cluster] if needs_cluster(code) else []
            params.append(pytest.param(name, code, output, id=f"{name}-{n}", marks=marks))
    return params


def test_the_guide_and_the_readme_have_python_blocks_with_stated_output():
    names = {path.relative_to(ROOT).as_posix() for path in DOCUMENTS}
    assert {"README.md", "docs/guide/concepts.md", "docs/guide/recovery.md"} <= names
    assert all(any(output is not None for _, output in samples(path)) for path in DOCUMENTS if "guide" in path.parts)


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_output_sample_follows_the_python_block_it_belongs_to(path):
    blocks = fenced_blocks(path.read_text())
    for i, (lang, body, between) in enumerate(blocks):
        if lang == "":
            assert i > 0 and blocks[i - 1][0] == "python" and between.strip() == "prints", (
                f"{path.name}: an output block that no Python block states:\n{body}"
            )
    kinds = {lang for lang, _, _ in blocks if not lang.startswith("{")}  # "{toctree}": a Sphinx directive
    assert kinds <= {"python", "bash", ""}, f"{path.name}: a block of a kind no test reads: {kinds}"


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("name", "code", "output"), _params())
def test_a_python_block_runs_and_prints_what_the_page_says(name, code, output, tmp_path, monkeypatch, request):
    monkeypatch.chdir(tmp_path)  # a block may write files (a checkpoint, a data file)
    names = {}
    if needs_cluster(code) and OWN_CLUSTER.search(code):
        # A run prints the same wherever it executes: the session's cluster stands in for the
        # one n_threads=N would start (a second or more each, on a busy machine).
        code = OWN_CLUSTER.sub("client=CLIENT", code)
        names["CLIENT"] = request.getfixturevalue("local_client")
    printed = run_sample(code, name, **names)
    if output is not None:
        assert printed == output


# -- the API reference and the README's size ---------------------------------------------------


def test_the_api_reference_documents_every_public_name_and_every_node_keyword():
    import pypiper_dask
    from pypiper_dask.model.node import RESERVED_KEYWORDS, Node

    api = (ROOT / "docs" / "api.rst").read_text()
    documented = set(re.findall(r"^\.\. auto(?:class|exception|function):: (\w+)", api, re.M))
    assert documented == set(pypiper_dask.__all__)
    # cleandoc: Python 3.13 strips the docstring's indentation itself, earlier ones do not.
    doc = inspect.cleandoc(Node.__doc__ or "")
    parameters = doc.split("Parameters\n----------\n", 1)[1].split("\n\nAttributes", 1)[0]
    named = set(re.findall(r"^(\w+) :", parameters, re.M))
    assert set(RESERVED_KEYWORDS) <= named
    signature = re.search(r"^\.\. autoclass:: Node\((.*)\)$", api, re.M)[1]
    assert all(f"{keyword}=" in signature for keyword in RESERVED_KEYWORDS)


def test_the_readme_stays_short_and_spells_installs_one_way():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) < 270
    assert text.splitlines()[2].startswith("Run [pyPiper](https://github.com/daniyall/pyPiper)")
    assert "pip install . && python -m pypiper_dask.demo" in text
    assert 'pip install ".[test]" && python -m pytest' in text
    assert "pypiper-dask[" not in text
