"""Guards against silent wrong results: hidden state in a node left stateless (issue 10, item 1)."""

from __future__ import annotations

import pytest

from pypiper_dask import Node, Pipeline
from tests import nodes as N

WARNING = "is stateless, but its run() keeps changing"


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


# -- state held by the class or the module, and caches (issue 19, item 11) -------------------

ISSUED = 0  # the last id handed out, by a node that means it to be unique
SEEN: set = set()


class ClassIds(Node):
    """Hands out "unique" ids from a class attribute: each worker counts on its own."""

    next_id = 0

    def run(self, data):
        ClassIds.next_id += 1
        self.emit(ClassIds.next_id)


class GlobalIds(Node):
    """The same with a module global, rebound."""

    def run(self, data):
        global ISSUED
        ISSUED += 1
        self.emit(ISSUED)


class FirstSeen(Node):
    """Emits whether it saw the item before: a module-level set, changed in place."""

    def run(self, data):
        self.emit(data % 100 not in SEEN)
        SEEN.add(data % 100)


class Memo(Node):
    """A memo cache: it changes all the time and never the output."""

    def setup(self):
        self.memo = {}

    def run(self, data):
        if data not in self.memo:
            self.memo[data] = data * data
        self.emit(self.memo[data])


class DeclaredMemo(Memo):
    cache_attributes = ("memo",)


def where_to_run(where, request):
    if where == "1":
        return {"n_threads": 1}
    return {"client": request.getfixturevalue("local_client"), "partition_size": 50}


WHERE = ["1", pytest.param("cluster", marks=pytest.mark.cluster)]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("where", WHERE)
@pytest.mark.parametrize(
    ("node", "what"),
    [
        (ClassIds, "its class attribute 'ClassIds.next_id'"),
        (GlobalIds, "the global 'ISSUED' of module"),
        (FirstSeen, "the global 'SEEN' of module"),
    ],
    ids=["class attribute", "global rebound", "global changed in place"],
)
def test_state_in_a_class_attribute_or_a_module_global_is_reported(node, what, where, request, capfd):
    SEEN.clear()  # as a new process would have it (a cluster gets a copy of it)
    graph = N.Gen("gen", size=2000) | node("ids") | N.Map("after")
    Pipeline(graph, quiet=True, progress=False, **where_to_run(where, request)).run()
    found = warnings_of(capfd)
    assert len(found) == 1, found
    assert "node 'ids'" in found[0] and what in found[0], found[0]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("where", WHERE)
def test_a_memo_cache_is_reported_unless_declared_in_cache_attributes(where, request, capfd):
    options = {"quiet": True, "progress": False, **where_to_run(where, request)}
    Pipeline(N.Gen("gen", size=2000) | Memo("memo"), **options).run()
    found = warnings_of(capfd)
    assert len(found) == 1 and "its attribute 'memo'" in found[0] and "cache_attributes" in found[0], found
    result = Pipeline(N.Gen("gen", size=2000) | DeclaredMemo("memo"), **options).run()
    assert result["memo"] == [i * i for i in range(2000)]
    assert warnings_of(capfd) == []


# -- a source that never closes and emits nothing (item 3) ---------------------------------


@pytest.mark.timeout(120)
@pytest.mark.parametrize("n_threads", [1, 2])
def test_a_source_silent_for_many_calls_is_named_once(n_threads, capfd, monkeypatch):
    from pypiper_dask.log import SilentSource

    calls = 1_200_000  # past the million in use
    if n_threads > 1:  # the source's calls cost more on a cluster's reader: the same rule, a tenth of them
        monkeypatch.setattr(SilentSource, "CALLS", 100_000)
        calls = 120_000
    result = Pipeline(N.Silent("quiet", quiet_calls=calls) | N.Map("m"), n_threads=n_threads, quiet=True).run()
    assert result["m"] == [0]
    err = [line for line in capfd.readouterr().err.splitlines() if "has emitted nothing" in line]
    assert len(err) == 1, err
    assert "source 'quiet'" in err[0] and "close()" in err[0]


def test_a_source_that_emits_is_not_called_silent(capfd):
    Pipeline(N.Gen("gen", size=300_000) | N.Map("m"), n_threads=1, quiet=True).run(collect=False)
    assert "has emitted nothing" not in capfd.readouterr().err
