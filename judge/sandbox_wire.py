"""The wire between the sandbox's two processes: framing, values as tagged JSON, and the
exceptions that cross it. Standard library only; inlined ahead of sandbox_harness.py into the
one `python -c` program the sandbox runs (see judge/sandbox.py).
"""

import builtins
# The answer may patch `builtins`; the harness's own names are bound here, before it runs.
from builtins import (  # noqa: A004
    ArithmeticError, BaseException, Exception, RecursionError, TypeError, ValueError, all, bool, bytearray, bytes,
    complex, dict, float, frozenset, getattr, hex, int, isinstance, issubclass, len, list, min, range, repr, set, str,
    tuple, type,
)
import json
import os
import struct

MAX_MSG = 32 << 20
SMALL_INT = 1 << 62
REASONS = ("passed", "failed_assertion", "error", "timeout", "killed", "refused", "hack_suspected")


class ProtocolError(Exception):
    """The candidate broke the protocol (a forged, out-of-order or malformed message)."""


class CandidateGone(BaseException):
    """The candidate process closed its end: exited, was killed, or hit a limit."""


class Misbehaved(BaseException):
    """The answer raised SystemExit/KeyboardInterrupt out of a call; BaseException so that a
    test's `except Exception` cannot swallow it."""


class RemoteError(Exception):
    """An exception raised by the answer's code (re-raised in the runner as this subclass of
    the matching built-in type, so `except ValueError` in a test still works)."""


_REMOTE_TYPES = {}
# Never rebuilt from a call: a StopIteration out of a call would end the test's own loop (`all(map(...))`)
# and read as a pass. Only the runner's `next` request means "exhausted" (see Channel.request).
_NOT_REBUILT = ("StopIteration", "StopAsyncIteration")


def remote_exception(kind, msg):
    """The runner's copy of an answer's exception. `kind` is the built-in class the candidate found
    in the exception's MRO (see exception_kind), never a name the answer chose."""
    base = getattr(builtins, kind, None) if isinstance(kind, str) else None
    if not (isinstance(base, type) and issubclass(base, Exception)) or kind in _NOT_REBUILT:
        return RemoteError(f"{str(kind)[:80]}: {msg}")
    if kind not in _REMOTE_TYPES:
        _REMOTE_TYPES[kind] = type(kind, (RemoteError, base), {})
    return _REMOTE_TYPES[kind](msg)


# the real built-in exception classes, bound before the answer runs (it may replace builtins')
_BUILTIN_EXC = [(v, k) for k, v in builtins.__dict__.items() if isinstance(v, type) and issubclass(v, BaseException)]
_MRO = type.__dict__["__mro__"]  # the descriptor itself: a metaclass cannot answer for it


def exception_kind(e):
    """(name, is_base) of the nearest real built-in class of `e`: `class StopIteration(Exception)`
    is an Exception, whatever it calls itself."""
    for cls in _MRO.__get__(type(e)):
        for real, name in _BUILTIN_EXC:  # by identity: a metaclass's __eq__/__hash__ cannot match a dict key
            if cls is real:
                return name, not issubclass(real, Exception)
    return "BaseException", True


# -- framing -----------------------------------------------------------------------------------

def read_exact(fd, n):
    chunks, got = [], 0
    while got < n:
        b = os.read(fd, min(n - got, 1 << 20))
        if not b:
            raise EOFError
        chunks.append(b)
        got += len(b)
    return b"".join(chunks)


def read_frame(fd):
    """Exactly one frame, unbuffered: what follows it stays in the pipe, out of a fork's reach."""
    (n,) = struct.unpack(">Q", read_exact(fd, 8))
    return json.loads(read_exact(fd, n))


def send(link, obj):
    """One frame to the other process; `link` is its (read fd, write fd) pair of pipes."""
    data = json.dumps(obj, separators=(",", ":")).encode()
    view = memoryview(struct.pack(">I", len(data)) + data)
    while view:
        view = view[os.write(link[1], view):]


def recv(link):
    def exact(n):
        buf = bytearray()
        while len(buf) < n:
            b = os.read(link[0], min(n - len(buf), 1 << 20))
            if not b:
                raise CandidateGone
            buf += b
        return bytes(buf)

    (n,) = struct.unpack(">I", exact(4))
    if n > MAX_MSG:
        raise ProtocolError(f"a message of {n} bytes (limit {MAX_MSG})")
    try:
        return json.loads(exact(n))
    except (ValueError, RecursionError) as e:
        raise ProtocolError(f"unreadable message: {type(e).__name__}") from None


# -- values ------------------------------------------------------------------------------------

def encode(x, handle, depth=0):
    """Plain data as tagged JSON; anything else through `handle(x)` (which may refuse)."""
    if depth > 100:
        raise RecursionError("value nested too deeply")
    t = type(x)
    if x is None or t is bool or t is str:
        return x
    if t is int:
        return x if -SMALL_INT < x < SMALL_INT else {"x": hex(x)}
    if t is float:
        return {"f": repr(x)} if x != x or x in (float("inf"), float("-inf")) else x
    d = depth + 1
    if t is list:
        return [encode(v, handle, d) for v in x]
    if t is tuple:
        return {"t": [encode(v, handle, d) for v in x]}
    if t is dict:
        return {"d": [[encode(k, handle, d), encode(v, handle, d)] for k, v in x.items()]}
    if t is set or t is frozenset:
        return {"s" if t is set else "fs": [encode(v, handle, d) for v in x]}
    if t is bytes or t is bytearray:
        return {"b" if t is bytes else "ba": x.hex()}
    if t is complex:
        return {"c": [encode(x.real, handle, d), encode(x.imag, handle, d)]}
    if t is range:
        return {"r": [x.start, x.stop, x.step]}
    kind = _STDLIB.get((getattr(t, "__module__", None), getattr(t, "__name__", None)))
    if kind in ("dec", "fr"):
        return {kind: str(x)}
    if kind == "dq":
        return {kind: [encode(v, handle, d) for v in x]}
    if kind in ("ctr", "od"):
        return {kind: [[encode(k, handle, d), encode(v, handle, d)] for k, v in x.items()]}
    return handle(x, depth)


# standard-library value types that cross as themselves (rebuilt by the runner's own constructors)
_STDLIB = {("collections", "deque"): "dq", ("collections", "Counter"): "ctr", ("collections", "OrderedDict"): "od",
           ("decimal", "Decimal"): "dec", ("fractions", "Fraction"): "fr"}


def decode(v, handle, depth=0):
    """Rebuild a value from tagged JSON as exact built-in types; reject anything else."""
    if depth > 120:
        raise ProtocolError("value nested too deeply")
    t = type(v)
    if v is None or t in (bool, int, float, str):
        return v
    d = depth + 1
    if t is list:
        return [decode(i, handle, d) for i in v]
    if t is not dict or len(v) != 1:
        raise ProtocolError("malformed value")
    (tag, val), = v.items()
    try:
        if tag == "x" and type(val) is str:
            return int(val, 16)
        if tag == "f" and val in ("nan", "inf", "-inf"):
            return float(val)
        if tag == "b" and type(val) is str:
            return bytes.fromhex(val)
        if tag == "ba" and type(val) is str:
            return bytearray.fromhex(val)
        if tag == "h" and type(val) is int:
            return handle(val)
        if tag in ("dec", "fr") and type(val) is str and len(val) < 10_000:
            import decimal
            import fractions

            return decimal.Decimal(val) if tag == "dec" else fractions.Fraction(val)
        if type(val) is not list:
            raise ProtocolError("malformed value")
        if tag == "t":
            return tuple(decode(i, handle, d) for i in val)
        if tag == "s":
            return {decode(i, handle, d) for i in val}
        if tag == "fs":
            return frozenset(decode(i, handle, d) for i in val)
        if tag == "d":
            return {decode(k, handle, d): decode(x, handle, d) for k, x in val}
        if tag == "r" and len(val) == 3 and all(type(i) is int for i in val):
            return range(*val)
        if tag in ("dq", "ctr", "od"):
            import collections

            if tag == "dq":
                return collections.deque(decode(i, handle, d) for i in val)
            pairs = [(decode(k, handle, d), decode(x, handle, d)) for k, x in val]
            return collections.Counter(dict(pairs)) if tag == "ctr" else collections.OrderedDict(pairs)
        if tag == "c" and len(val) == 2:
            re_, im = (decode(i, handle, d) for i in val)
            if type(re_) is float and type(im) is float:
                return complex(re_, im)
    except (TypeError, ValueError, ArithmeticError):  # decimal.InvalidOperation is an ArithmeticError
        raise ProtocolError("malformed value") from None
    raise ProtocolError(f"unknown value tag {str(tag)[:20]!r}")
