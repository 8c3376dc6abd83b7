"""``Pipeline(..., ordered=False)``: leaves get items as partitions finish (issue 22, item 4).

On a LocalCluster and on a hand-started ``dask scheduler``/``dask worker``
cluster: the same items as the ordered run, stateful nodes still fed in source
order, print lines of one item together, and a slow first partition holding
back no later one (made certain by a gate the test opens only after it saw a
later item; no timing).
"""

from __future__ import annotations

import contextlib
import io
import sys
import time
from pathlib import Path

import cloudpickle
import pytest

from pypiper_dask import Node, Pipeline
from pypiper_dask.errors import OptionError

# The workers get these node classes by value (an external worker need not import the tests).
cloudpickle.register_pickle_by_value(sys.modules[__name__])

CLUSTERS = ["local_client", "external_cluster"]


def client_of(request, fixture: str):
    value = request.getfixturevalue(fixture)
    return value  # a Client, or the external scheduler's address


class Source(Node):
    def setup(self, size):
        self.pos = 0

    def run(self, data):
        if self.pos < self.size:
            self.emit(self.pos)
            self.pos += 1
        else:
            self.close()


class Gate(Node):
    """Item 0 waits until ``path`` exists (at most ``wait`` seconds); the others pass at once."""

    def setup(self, path, wait=30.0):
        self.wait = wait

    def run(self, data):
        if data == 0:
            deadline = time.monotonic() + self.wait
            while not Path(self.path).exists() and time.monotonic() < deadline:
                time.sleep(0.02)
        self.emit(data)


class Leaf(Node):
    def run(self, data):
        self.emit(data)


class Loud(Node):
    """Prints two lines for each item, then emits it."""

    def run(self, data):
        print(f"a {data}")
        print(f"b {data}")
        self.emit(data * 10)


class Skew(Node):
    """Items of the first partition take a while (so later ones are likely to finish first)."""

    def run(self, data):
        if data < 5:
            time.sleep(0.05)
        self.emit(data)


class Count(Node):
    """Stateful: emits (how many items it saw before, the item): source order means they match."""

    def setup(self):
        self.n = 0

    def run(self, data):
        self.emit((self.n, data))
        self.n += 1


class KeyedSeen(Node):
    """Keyed (``x % 3``): emits (the key, the items of its key it saw before, the item)."""

    def setup(self):
        self.seen = []

    def key(self, data):
        return data % 3

    def run(self, data):
        self.emit((data % 3, list(self.seen), data))
        self.seen.append(data)


def printed(fn):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        value = fn()
    return out.getvalue(), value


@pytest.mark.cluster
@pytest.mark.timeout(180)
@pytest.mark.parametrize("fixture", CLUSTERS)
def test_unordered_gives_the_same_items_with_each_items_prints_together(request, fixture):
    client = client_of(request, fixture)

    def graph():
        return Source("src", size=60) | Skew("skew") | Loud("loud") | Leaf("leaf")

    ordered_text, ordered = printed(lambda: Pipeline(graph(), client=client, partition_size=5).run())
    text, unordered = printed(lambda: Pipeline(graph(), client=client, partition_size=5, ordered=False).run())
    assert sorted(unordered["leaf"]) == sorted(ordered["leaf"]) == [10 * x for x in range(60)]
    lines = text.splitlines()
    assert sorted(lines) == sorted(ordered_text.splitlines())
    # Each item's lines as the sequential run prints them: "a x", "b x", then its leaf item.
    for i in range(0, len(lines), 3):
        x = int(lines[i].split()[1])
        assert lines[i : i + 3] == [f"a {x}", f"b {x}", f"{10 * x}"], lines[i : i + 3]


@pytest.mark.cluster
@pytest.mark.timeout(180)
@pytest.mark.parametrize("fixture", CLUSTERS)
def test_unordered_stateful_nodes_still_see_source_order(request, fixture):
    client = client_of(request, fixture)
    count = Count("count", stateless=False)
    graph = Source("src", size=80) | Skew("skew") | [Leaf("leaf"), count]
    result = Pipeline(graph, client=client, partition_size=5, quiet=True, ordered=False).run()
    assert sorted(result["leaf"]) == list(range(80))
    assert sorted(result["count"]) == [(x, x) for x in range(80)]  # the n-th item it saw was item n
    assert count.n == 80  # its final state came back


@pytest.mark.cluster
@pytest.mark.timeout(180)
@pytest.mark.parametrize("fixture", CLUSTERS)
def test_unordered_keyed_nodes_see_each_keys_items_in_source_order(request, fixture):
    client = client_of(request, fixture)
    graph = Source("src", size=60) | Skew("skew") | [Leaf("leaf"), KeyedSeen("keyed", stateless=False)]
    result = Pipeline(graph, client=client, partition_size=5, quiet=True, ordered=False).run()
    assert sorted(result["leaf"]) == list(range(60))
    assert sorted(x for _, _, x in result["keyed"]) == list(range(60))
    for key, before, x in result["keyed"]:
        assert before == list(range(key, x, 3))  # every item of its key before it, in source order


@pytest.mark.cluster
@pytest.mark.timeout(180)
@pytest.mark.parametrize("fixture", CLUSTERS)
def test_unordered_a_later_partition_comes_out_before_a_slow_first_one(request, fixture, tmp_path):
    client = client_of(request, fixture)
    gate = tmp_path / "open"
    graph = Source("src", size=40) | Gate("gate", path=str(gate)) | Leaf("leaf")
    seen = []
    for _, item in Pipeline(graph, client=client, partition_size=5, ordered=False).stream():
        seen.append(item)
        if item >= 5:
            gate.touch()  # item 0 (the first partition) goes on only now
    assert sorted(seen) == list(range(40))
    assert seen[0] >= 5 and seen.index(0) > 0


@pytest.mark.timeout(60)
def test_ordered_false_in_this_process_is_the_sequential_order_and_not_with_a_checkpoint(tmp_path):
    graph = Source("src", size=12) | Skew("skew") | Leaf("leaf")
    p = Pipeline(graph, n_threads=1, quiet=True, ordered=False)
    assert p.ordered is False
    assert p.run()["leaf"] == list(range(12))
    with pytest.raises(OptionError, match="ordered"):
        p.run(checkpoint=str(tmp_path / "ck"))
    with pytest.raises(TypeError, match="ordered must be True or False"):
        p.ordered = "no"
