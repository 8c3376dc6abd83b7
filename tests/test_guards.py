"""Guards against silent wrong results: hidden state in a node left stateless (issue 10, item 1)."""

from __future__ import annotations

import pytest

from pypiper_dask import Pipeline
from tests import nodes as N

WARNING = "is stateless, but its run() keeps changing its attribute"


def warnings_of(capfd) -> list[str]:
    return [line for line in capfd.readouterr().err.splitlines() if WARNING in line]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("where", [{"n_threads": 1}, {"n_threads": 2, "partition_size": 50}], ids=["1", "2"])
def test_a_stateless_node_counting_into_a_dict_is_reported_once(where, capfd):
    graph = N.Gen("gen", size=2000) | N.WordCount("count") | N.Map("after")
    Pipeline(graph, quiet=True, progress=False, **where).run()
    found = warnings_of(capfd)
    assert len(found) == 1, found  # once per node, however many partitions
    assert "node 'count'" in found[0] and "attribute 'counts'" in found[0]
    assert "stateless=False" in found[0]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("where", [{"n_threads": 1}, {"n_threads": 2, "partition_size": 50}], ids=["1", "2"])
def test_a_lazily_built_cache_and_stateful_nodes_are_not_reported(where, capfd):
    graph = N.Gen("gen", size=2000) | [N.LazyTable("lazy"), N.WordCount("count", stateless=False)]
    Pipeline(graph, quiet=True, progress=False, **where).run()
    assert warnings_of(capfd) == []


def test_plain_nodes_are_not_reported(capfd):
    graph = N.Gen("gen", size=5000) | N.Map("m") | N.Running("r")
    Pipeline(graph, n_threads=1, quiet=True, progress=False).run()
    assert warnings_of(capfd) == []


# -- a source that never closes and emits nothing (item 3) ---------------------------------


@pytest.mark.timeout(120)
@pytest.mark.parametrize("n_threads", [1, 2])
def test_a_source_silent_for_a_million_calls_is_named_once(n_threads, capfd):
    result = Pipeline(N.Silent("quiet", quiet_calls=1_200_000) | N.Map("m"), n_threads=n_threads, quiet=True).run()
    assert result["m"] == [0]
    err = [line for line in capfd.readouterr().err.splitlines() if "has emitted nothing" in line]
    assert len(err) == 1, err
    assert "source 'quiet'" in err[0] and "close()" in err[0]


def test_a_source_that_emits_is_not_called_silent(capfd):
    Pipeline(N.Gen("gen", size=300_000) | N.Map("m"), n_threads=1, quiet=True).run(collect=False)
    assert "has emitted nothing" not in capfd.readouterr().err
