"""A node's traceback from a worker, printed like one from the calling process.

distributed carries an exception's traceback across with tblib, which
rebuilds each frame by running a stub ``raise`` under the frame's file name,
function name and line number. Python then reads the stub's columns as the
user's line's and underlines the wrong characters (``^^^^^`` under the
indentation). Here such frames are built again from a stub with no column
information, so file, line and source line print as they are, without carets.
"""

from __future__ import annotations

import contextlib
import sys
import types

__all__ = ["without_stub_carets"]

_MAKER = "__traceback_maker"  # the name tblib's stub raises


def _stub() -> types.CodeType | None:
    if sys.version_info < (3, 11):  # no columns in tracebacks before 3.11
        return None
    code = compile(f"raise {_MAKER}", "<stub>", "exec")
    # Python 3.11's location table: entries of up to 8 code units, each with code 13
    # ("no column information") and a line delta of 0, so every instruction is on
    # co_firstlineno, with no columns.
    units, table = len(code.co_code) // 2, bytearray()
    while units > 0:
        step = min(8, units)
        table += bytes([0x80 | (13 << 3) | (step - 1), 0])
        units -= step
    return code.replace(co_linetable=bytes(table))


_STUB = _stub()


class _Raised(Exception):
    pass


def _frame_tb(filename: str, name: str, lineno: int, f_globals: dict) -> types.TracebackType | None:
    """A one-entry traceback at ``filename:lineno`` in ``name``, without columns."""
    assert _STUB is not None
    code = _STUB.replace(co_firstlineno=lineno, co_filename=filename, co_name=name)
    space = {k: f_globals[k] for k in ("__name__", "__file__") if k in f_globals}
    space[_MAKER] = _Raised()
    try:
        exec(code, space)
    except _Raised:
        return sys.exc_info()[2].tb_next  # type: ignore[union-attr]
    return None


def _from_stub(tb: types.TracebackType) -> bool:
    code = tb.tb_frame.f_code
    return code.co_names == (_MAKER,) and len(code.co_code) <= 16


def _rebuilt(tb: types.TracebackType | None) -> types.TracebackType | None:
    entries = []
    while tb is not None:
        entries.append(tb)
        tb = tb.tb_next
    if not any(_from_stub(t) for t in entries):
        return entries[0] if entries else None
    out: types.TracebackType | None = None
    for t in reversed(entries):
        made = None
        if _from_stub(t):
            code = t.tb_frame.f_code
            made = _frame_tb(code.co_filename, code.co_name, t.tb_lineno, t.tb_frame.f_globals)
        if made is None:
            out = types.TracebackType(out, t.tb_frame, t.tb_lasti, t.tb_lineno)
        else:
            out = types.TracebackType(out, made.tb_frame, made.tb_lasti, t.tb_lineno)
    return out


def without_stub_carets(exc: BaseException | None) -> None:
    """Rebuild, in place, the tblib-made frames of ``exc``'s traceback and of the exceptions it chains."""
    if _STUB is None:
        return
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        with contextlib.suppress(Exception):  # a traceback is only ever made better here, never lost
            exc.__traceback__ = _rebuilt(exc.__traceback__)
        exc = exc.__cause__ or exc.__context__
