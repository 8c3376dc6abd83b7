r"""Node classes the tests build pipelines from (pickled by value to workers).

Every class here takes an optional ``calls=`` keyword, a file path: each ``run``
call then appends one line ``f"{name}\t{data!r}\n"`` to that file (see
:func:`log_call`), a side effect that survives worker processes, so a test can
count how often each node was called and with what.
"""

from __future__ import annotations

import os
import time
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


def log_call(node: Node, data: Any) -> None:
    r"""Append ``f"{node.name}\t{data!r}\n"`` to the file named by ``node.calls``, if it has one.

    One ``os.write`` on an ``O_APPEND`` descriptor, opened and closed for each
    line: lines written by concurrent worker processes never interleave, and
    nothing is buffered in a process that may die or be discarded.
    """
    path = getattr(node, "calls", None)
    if path is None:
        return
    line = f"{node.name}\t{data!r}\n".encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def read_calls(path: Any) -> list[tuple[str, str]]:
    """The ``(node name, repr of data)`` lines :func:`log_call` wrote to ``path``, in file order."""
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8", newline="") as f:
        text = f.read()
    # split("\n"), not splitlines(): a node name may hold other line-breaking characters.
    pairs = (line.split("\t", 1) for line in text.split("\n")[:-1])
    return [(name, data) for name, data in pairs]


class Gen(Node):
    """Emits 0..size-1, ``per_call`` items per call; optionally prints each call, or sleeps ``pause`` s in each."""

    def setup(self, size: int, per_call: int = 1, loud: bool = False, pause: float = 0.0) -> None:
        self.pos = 0
        self.per_call = per_call
        self.loud = loud
        self.pause = pause

    def run(self, data: Any) -> None:
        log_call(self, data)
        if self.pause:
            time.sleep(self.pause)
        if self.loud:
            print(f"{self.name} call at {self.pos}")
        for _ in range(self.per_call):
            if self.pos >= self.size:
                self.close()
                return
            self.emit(self.item())
            self.pos += 1

    def item(self) -> Any:
        """What the source emits at its position."""
        return self.pos


class Map(Node):
    def setup(self, op: str = "sq") -> None:
        self.op = op

    def run(self, data: Any) -> None:
        log_call(self, data)
        x = num(data)
        self.emit({"sq": x * x, "inc": x + 1, "neg": -x, "str": f"<{x}>", "pair": (x, x % 3)}[self.op])


class Explode(Node):
    """Emits 0..n values per item."""

    def setup(self, n: int = 2) -> None:
        self.n = n

    def run(self, data: Any) -> None:
        log_call(self, data)
        for j in range(num(data) % (self.n + 1)):
            self.emit((num(data), j))


class Filter(Node):
    def setup(self, mod: int = 3) -> None:
        self.mod = mod

    def run(self, data: Any) -> None:
        log_call(self, data)
        if num(data) % self.mod != 1:
            self.emit(data)


class Echo(Node):
    """Prints what it gets, then passes it on."""

    def run(self, data: Any) -> None:
        log_call(self, data)
        print(f"{self.name} got {data!r}")
        self.emit(data)


class CloseAt(Node):
    """Passes items on; closes at the first item whose summary reaches ``limit``."""

    def setup(self, limit: int = 10) -> None:
        self.limit = limit

    def run(self, data: Any) -> None:
        log_call(self, data)
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
        log_call(self, data)
        self.seen += 1
        self.emit(data)
        if self.seen >= self.n:
            self.close()


class Batch(Node):
    """Emits each batch it gets (a tuple of exactly batch_size, or a list for ALL)."""

    def run(self, data: Any) -> None:
        log_call(self, data)
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
        log_call(self, data)
        self.count += 1
        self.total += num(data)
        self.emit((self.count, self.total))


class KeyedRunning(Node):
    """Keyed (give ``stateless=False``): per key, a running count and total; emits ``(count, total)``.

    The key is ``num(data) % keys`` (as text with ``text=True``). ``close_after``: a key's
    instance closes after that many calls; ``loud``: each call prints a line.
    """

    def setup(self, keys: int = 3, close_after: int = 0, loud: bool = False, text: bool = False) -> None:
        self.keys, self.close_after, self.loud, self.text = keys, close_after, loud, text
        self.count = 0
        self.total = 0

    def key(self, data: Any) -> Any:
        k = num(data) % self.keys
        return f"k{k}" if self.text else k

    def run(self, data: Any) -> None:
        log_call(self, data)
        batched = self.batch_size != 1
        if batched:
            assert len({self.key(d) for d in data}) == 1, f"a batch of one key: {data}"
            if self.batch_size != Node.BATCH_SIZE_ALL:
                assert len(data) <= self.batch_size, data
        self.count += 1
        self.total += num(data)
        if self.loud:
            print(f"{self.name} {self.key(data[0] if batched else data)} {self.count}")
        self.emit((self.count, self.total))
        if self.close_after and self.count >= self.close_after:
            self.close()


class InOrder(Node):
    """Stateful: asserts it sees 0, 1, 2, ... exactly once each."""

    def setup(self) -> None:
        self.expected = 0
        self.stateless = False

    def run(self, data: Any) -> None:
        log_call(self, data)
        assert data == self.expected, f"expected {self.expected}, got {data}"
        self.expected += 1


class Split(Node):
    """Writes two named streams: the item and twice its summary."""

    def run(self, data: Any) -> None:
        log_call(self, data)
        self.emit([data, num(data) * 2])


class Collect(Node):
    """A leaf that keeps what it gets (for final-state checks) and emits it."""

    def setup(self) -> None:
        self.items = []

    def run(self, data: Any) -> None:
        log_call(self, data)
        self.items.append(data)
        self.emit(data)


class Ledger(Node):
    """The issue's node: a side effect per item (``calls=``), a print every ``every``-th item.

    Passes each item on; calls ``close()`` at item ``close_at`` and raises at item ``fail_at``
    (with ``emit_first``, after emitting it: a sequential run drops what a failing call emitted).
    """

    def setup(self, every: int = 10, close_at: Any = None, fail_at: Any = None, emit_first: bool = False) -> None:
        self.every = every
        self.close_at = close_at
        self.fail_at = fail_at
        self.emit_first = emit_first

    def run(self, data: Any) -> None:
        log_call(self, data)
        if data == self.fail_at:
            if self.emit_first:
                self.emit(data)
            raise ValueError(f"{self.name} fails at {data!r}")
        if num(data) % self.every == 0:
            print(f"{self.name} at {data!r}")
        self.emit(data)
        if data == self.close_at:
            self.close()


class Reuse(Node):
    """Reuses one output list, as a fast node filling a buffer does.

    Emits ``self.buf`` = ``[data, num(data) * 10 + j]`` for ``j`` in ``range(times)``,
    mutating the same list in place between emits and between calls.
    """

    def setup(self, times: int = 1) -> None:
        self.times = times
        self.buf = [None, None]

    def run(self, data: Any) -> None:
        log_call(self, data)
        for j in range(self.times):
            self.buf[0] = data
            self.buf[1] = num(data) * 10 + j
            self.emit(self.buf)


class ReuseGen(Gen):
    """A source like :class:`Gen` that emits one reused list ``[pos, pos * 10]``, mutated in place."""

    def setup(self, size: int, per_call: int = 1, loud: bool = False) -> None:
        super().setup(size, per_call, loud)
        self.buf = [None, None]

    def item(self) -> Any:
        self.buf[0] = self.pos
        self.buf[1] = self.pos * 10
        return self.buf


class Times10(Node):
    """Emits ten times the first element of a list or tuple item (or of the item itself)."""

    def run(self, data: Any) -> None:
        log_call(self, data)
        first = data[0] if isinstance(data, (list, tuple)) and data else data
        self.emit(num(first) * 10)


class SetupSource(Gen):
    """A ``Gen`` whose ``setup`` emits ``"start"`` (pyPiper sends it with the first call's items)."""

    def setup(self, size: int, per_call: int = 1, loud: bool = False) -> None:
        super().setup(size, per_call, loud)
        self.emit("start")


class SetupEmitter(Node):
    """Passes items on; its ``setup`` emits ``word``, which goes out with its first call."""

    def setup(self, word: str = "hello") -> None:
        self.emit(word)

    def run(self, data: Any) -> None:
        self.emit(data)


class WordCount(Node):
    """Counts words in ``self.counts`` and emits each word's count so far: hidden state if stateless."""

    def setup(self) -> None:
        self.counts: dict = {}

    def run(self, data: Any) -> None:
        word = f"w{num(data) % 7}"
        self.counts[word] = self.counts.get(word, 0) + 1
        self.emit(self.counts[word])


class LazyTable(Node):
    """Builds a lookup table on its first call and then only reads it: no hidden state."""

    def run(self, data: Any) -> None:
        if not hasattr(self, "table"):
            import re

            self.table = {i: i * i for i in range(10)}
            self.pattern = re.compile(r"\d+")
        self.emit(self.table[num(data) % 10] + len(self.pattern.findall(str(data))))


class Silent(Node):
    """A source that is called ``quiet_calls`` times without emitting, then emits 0 and closes."""

    def setup(self, quiet_calls: int) -> None:
        self.calls_made = 0

    def run(self, data: Any) -> None:
        self.calls_made += 1
        if self.calls_made == self.quiet_calls:
            self.emit(0)
        elif self.calls_made > self.quiet_calls:
            self.close()


class Endless(Node):
    """A source that never closes: 0, 1, 2, ... (``sleep`` seconds per call, like a live feed)."""

    def setup(self, sleep: float = 0.0) -> None:
        self.pos, self.sleep = 0, sleep

    def run(self, data: Any) -> None:
        if self.sleep:
            import time

            time.sleep(self.sleep)
        self.emit(self.pos)
        self.pos += 1


class Stamped(Node):
    """A live source: every ``every`` seconds one ``(position, time.time())`` reading; closes after ``size``."""

    def setup(self, size: int, every: float = 0.02) -> None:
        self.pos, self.every = 0, every

    def run(self, data: Any) -> None:
        import time

        if self.pos >= self.size:
            self.close()
            return
        time.sleep(self.every)
        self.emit((self.pos, time.time()))
        self.pos += 1


class Slow(Node):
    """Passes items on after ``seconds`` of sleep each."""

    def setup(self, seconds: float = 0.05) -> None:
        self.seconds = seconds

    def run(self, data: Any) -> None:
        import time

        time.sleep(self.seconds)
        self.emit(data)


# -- plain functions for function nodes (as_node), drawn by tests/strategies.py ----------------


def fn_inc(data: Any) -> int:
    return num(data) + 1


def fn_none(data: Any) -> None:
    """Returns nothing: the node emits None."""


def fn_repeat(n: int, data: Any) -> Any:
    """A generator function: ``num(data)`` ``n`` times (bound with functools.partial)."""
    for _ in range(n):
        yield num(data)


def fn_odd(data: Any) -> bool:
    return num(data) % 2 == 1


def fn_sum(batch: Any) -> int:
    return sum(num(v) for v in batch)
