"""Plain data across the sandbox boundary: a tagged JSON encoding and length-prefixed frames.

Standard library only: ``child.py`` (the candidate's process) and ``judge.py`` (the trusted test process) load this
file by path. Decoding builds plain values only (no eval, no pickle, no user classes), so whatever the candidate
sends, the judge receives data, never code or objects with custom methods.
"""

from __future__ import annotations

import collections
import json
import os
import struct

_HEADER = struct.Struct(">Q")
_SMALL_INT = 1 << 53  # larger ints travel as hex: decimal conversion of huge ints is limited (and slow)


class ForbiddenReturnValue(Exception):
    """A value to send is not plain data (an object whose ``__eq__`` always holds, a subclass of a plain type...)."""


class FrameTooLarge(Exception):
    """A received frame is larger than the receiver accepts."""


def encode(value):
    """The JSON-ready form of ``value``; raises ForbiddenReturnValue unless it is made of the exact plain types."""
    return _encode(value, set())


def _encode(v, path: set):
    t = type(v)
    if v is None or t is bool or t is str or t is float:
        return v
    if t is int:
        return v if -_SMALL_INT < v < _SMALL_INT else {"I": hex(v)}
    if t is complex:
        return {"c": [v.real, v.imag]}
    if t is bytes:
        return {"b": v.hex()}
    if t is bytearray:
        return {"ba": v.hex()}
    if t is range:
        return {"r": [_encode(v.start, path), _encode(v.stop, path), _encode(v.step, path)]}
    tag = _SEQUENCES.get(t) or _MAPPINGS.get(t)
    if tag is None:
        raise ForbiddenReturnValue(f"value of type {t.__qualname__!r} is not plain data")
    if id(v) in path:
        raise ForbiddenReturnValue("a cyclic value is not plain data")
    path.add(id(v))
    try:
        if t in _MAPPINGS:
            items = [[_encode(k, path), _encode(x, path)] for k, x in dict.items(v)]
            return {tag: items}
        items = [_encode(x, path) for x in v]
        if t is list:
            return items
        if t is collections.deque:
            return {tag: items, "m": v.maxlen}
        return {tag: items}
    finally:
        path.discard(id(v))


_SEQUENCES = {list: "l", tuple: "t", set: "s", frozenset: "f", collections.deque: "q"}
_MAPPINGS = {dict: "d", collections.Counter: "C", collections.OrderedDict: "O", collections.defaultdict: "D"}


def decode(x):
    """The value that ``encode`` turned into ``x``; ValueError / TypeError on anything else."""
    t = type(x)
    if x is None or t in (bool, int, float, str):
        return x
    if t is list:
        return [decode(i) for i in x]
    if t is not dict or not 1 <= len(x) <= 2:
        raise ValueError(f"not an encoded value: {type(x).__name__}")
    tag, val = next(iter(x.items()))
    if tag == "I" and type(val) is str:
        return int(val, 16)
    if tag == "c":
        return complex(_number(val[0]), _number(val[1]))
    if tag == "b":
        return bytes.fromhex(val)
    if tag == "ba":
        return bytearray.fromhex(val)
    if tag == "r":
        return range(*[_integer(decode(i)) for i in val])
    if type(val) is not list:
        raise ValueError("not an encoded value")
    if tag in ("d", "C", "O", "D"):
        pairs = [(decode(k), decode(v)) for k, v in val]
        if tag == "C":
            return collections.Counter(dict(pairs))
        if tag == "D":
            return collections.defaultdict(None, pairs)
        return collections.OrderedDict(pairs) if tag == "O" else dict(pairs)
    items = [decode(i) for i in val]
    if tag == "t":
        return tuple(items)
    if tag == "s":
        return set(items)
    if tag == "f":
        return frozenset(items)
    if tag == "q":
        maxlen = x.get("m")
        return collections.deque(items, None if maxlen is None else _integer(maxlen))
    raise ValueError(f"unknown tag {tag!r}")


def _number(v):
    if type(v) not in (int, float):
        raise TypeError("not a number")
    return v


def _integer(v):
    if type(v) is not int:
        raise TypeError("not an int")
    return v


def send(fd: int, message) -> None:
    """Write one frame: 8-byte length, then the message as JSON."""
    data = json.dumps(message, separators=(",", ":")).encode()
    view = memoryview(_HEADER.pack(len(data)) + data)
    while view:
        view = view[os.write(fd, view):]


def recv(fd: int, limit: int):
    """Read one frame; None at end of file before a frame starts. EOFError for a cut frame, FrameTooLarge."""
    header = _read_exact(fd, _HEADER.size)
    if header is None:
        return None
    (size,) = _HEADER.unpack(header)
    if size > limit:
        raise FrameTooLarge(f"a message of {size} bytes (limit {limit})")
    data = _read_exact(fd, size) if size else b""
    if data is None:
        raise EOFError("the message was cut off")
    return json.loads(data)


def _read_exact(fd: int, size: int):
    chunks, got = [], 0
    while got < size:
        chunk = os.read(fd, min(size - got, 1 << 20))
        if not chunk:
            if got:
                raise EOFError("the message was cut off")
            return None
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)
