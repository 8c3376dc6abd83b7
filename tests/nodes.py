"""Node classes the tests build pipelines from (pickled by value to workers)."""

from __future__ import annotations

from typing import Any

from pypiper_dask import Node


def num(data: Any) -> int:
    """A stable integer summary of any item the test nodes produce."""
    if isinstance(data, bool):
        return int(data)
    if isinstance(data, int):
        return data
    if isinstance(data, (list, tuple)):
        return sum(num(d) for d in data)
    if isinstance(data, str):
        return len(data)
    return 0


class Gen(Node):
    """Emits 0..size-1, ``per_call`` items per call; optionally prints each call."""

    def setup(self, size: int, per_call: int = 1, loud: bool = False) -> None:
        self.pos = 0
        self.per_call = per_call
        self.loud = loud

    def run(self, data: Any) -> None:
        if self.loud:
            print(f"{self.name} call at {self.pos}")
        for _ in range(self.per_call):
            if self.pos >= self.size:
                self.close()
                return
            self.emit(self.pos)
            self.pos += 1


class Map(Node):
    def setup(self, op: str = "sq") -> None:
        self.op = op

    def run(self, data: Any) -> None:
        x = num(data)
        self.emit({"sq": x * x, "inc": x + 1, "neg": -x, "str": f"<{x}>", "pair": (x, x % 3)}[self.op])


class Explode(Node):
    """Emits 0..n values per item."""

    def setup(self, n: int = 2) -> None:
        self.n = n

    def run(self, data: Any) -> None:
        for j in range(num(data) % (self.n + 1)):
            self.emit((num(data), j))


class Filter(Node):
    def setup(self, mod: int = 3) -> None:
        self.mod = mod

    def run(self, data: Any) -> None:
        if num(data) % self.mod != 1:
            self.emit(data)


class Echo(Node):
    """Prints what it gets, then passes it on."""

    def run(self, data: Any) -> None:
        print(f"{self.name} got {data!r}")
        self.emit(data)


class CloseAt(Node):
    """Passes items on; closes at the first item whose summary reaches ``limit``."""

    def setup(self, limit: int = 10) -> None:
        self.limit = limit

    def run(self, data: Any) -> None:
        self.emit(data)
        if num(data) >= self.limit:
            self.close()


class Take(Node):
    """Stateful: passes on the first ``n`` items, then closes."""

    def setup(self, n: int = 5) -> None:
        self.n = n
        self.seen = 0
        self.stateless = False

    def run(self, data: Any) -> None:
        self.seen += 1
        self.emit(data)
        if self.seen >= self.n:
            self.close()


class Batch(Node):
    """Emits each batch it gets (a tuple of exactly batch_size, or a list for ALL)."""

    def run(self, data: Any) -> None:
        assert isinstance(data, (tuple, list)) and data, data
        if self.batch_size == Node.BATCH_SIZE_ALL:
            assert isinstance(data, list)
        else:
            assert isinstance(data, tuple) and len(data) <= self.batch_size
        self.emit((len(data), num(data)))


class Running(Node):
    """Stateful running total; emits (count, total)."""

    def setup(self) -> None:
        self.count = 0
        self.total = 0
        self.stateless = False

    def run(self, data: Any) -> None:
        self.count += 1
        self.total += num(data)
        self.emit((self.count, self.total))


class InOrder(Node):
    """Stateful: asserts it sees 0, 1, 2, ... exactly once each."""

    def setup(self) -> None:
        self.expected = 0
        self.stateless = False

    def run(self, data: Any) -> None:
        assert data == self.expected, f"expected {self.expected}, got {data}"
        self.expected += 1


class Split(Node):
    """Writes two named streams: the item and twice its summary."""

    def run(self, data: Any) -> None:
        self.emit([data, num(data) * 2])


class Collect(Node):
    """A leaf that keeps what it gets (for final-state checks) and emits it."""

    def setup(self) -> None:
        self.items = []

    def run(self, data: Any) -> None:
        self.items.append(data)
        self.emit(data)
