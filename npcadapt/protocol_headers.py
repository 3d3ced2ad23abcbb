"""The headers of a pending MessagePack message, checked as its bytes arrive.

Part of the protocol core (:mod:`npcadapt.protocol`), split out because it is its own
algorithm: :class:`HeaderCheck` walks the type headers of a message that has not fully
arrived and raises :class:`HeaderError` for the first one, in stream order, that declares
more than the connection's limits allow, could not fit in one message, opens an ext
value, nests too deep, or is the reserved byte 0xc1. No I/O.

Why by hand: msgpack (1.0.x when this was written) checks a declared length only once
the body exists. Fed only a header announcing 2 GiB,
``Unpacker(max_str_len=10, max_bin_len=10, max_array_len=10, max_map_len=10)`` gave:

    str32 / bin32, ``unpack()`` or ``skip()``: OutOfData, and still OutOfData after
        1 MiB more (the body is buffered; the limit is checked once it is complete)
    array32 / map32, ``unpack()``: ValueError "exceeds max_array_len" at once (but an
        allowed count pre-allocates its list); ``skip()``: OutOfData, and still after
        1 MiB more (skip checks no limit)

The walk resumes where the last check stopped, checks finished runs of items in C and
the rest in Python (:class:`HeaderCheck`). It also runs over every complete message that
fails to decode, before the decode error is explained, so limits and ext values are
always reported in its words, whichever way the bytes arrived.
"""

from __future__ import annotations

import itertools
import re
from collections import deque
from typing import TYPE_CHECKING, Any

import msgpack

if TYPE_CHECKING:
    from .protocol import Limits

MAX_NESTING = 1024  # msgpack's fixed C stack depth; deeper input raises StackError

# Byte pairs that can start a timestamp (ext type -1), which msgpack decodes itself
# without calling ext_hook: fixext4, fixext8 and ext8/16/32 of length 12.
TIMESTAMP_MARKERS = re.compile(b"\xd6\xff|\xd7\xff|\x0c\xff")


def reject_ext(code: int, data: bytes) -> object:
    """msgpack's ext_hook: any ext value fails the decode (a ValueError, as msgpack's own
    errors are), so a run holding one is walked header by header and reported as such."""
    raise ValueError(f"ext type {code} not allowed")


class HeaderError(Exception):
    """Raised by :class:`HeaderCheck`; the message names the problem."""


_SCALAR, _STR, _BIN, _ARRAY, _MAP, _EXT, _INVALID = range(7)


def _type_table() -> list[tuple[int, int]]:
    """First byte -> (kind, header bytes); for a scalar, its whole size."""
    table = [(_SCALAR, 1)] * 256  # positive and negative fixints, nil, bools
    for b in range(0x80, 0x90):
        table[b] = (_MAP, 1)
    for b in range(0x90, 0xA0):
        table[b] = (_ARRAY, 1)
    for b in range(0xA0, 0xC0):
        table[b] = (_STR, 1)
    sized = {
        0xC1: (_INVALID, 1),
        0xC4: (_BIN, 2),
        0xC5: (_BIN, 3),
        0xC6: (_BIN, 5),
        0xC7: (_EXT, 3),
        0xC8: (_EXT, 4),
        0xC9: (_EXT, 6),
        0xCA: (_SCALAR, 5),
        0xCB: (_SCALAR, 9),
        0xCC: (_SCALAR, 2),
        0xCD: (_SCALAR, 3),
        0xCE: (_SCALAR, 5),
        0xCF: (_SCALAR, 9),
        0xD0: (_SCALAR, 2),
        0xD1: (_SCALAR, 3),
        0xD2: (_SCALAR, 5),
        0xD3: (_SCALAR, 9),
        0xD9: (_STR, 2),
        0xDA: (_STR, 3),
        0xDB: (_STR, 5),
        0xDC: (_ARRAY, 3),
        0xDD: (_ARRAY, 5),
        0xDE: (_MAP, 3),
        0xDF: (_MAP, 5),
    }
    sized.update(dict.fromkeys(range(212, 217), (_EXT, 2)))  # fixext: type byte only
    for b, entry in sized.items():
        table[b] = entry
    return table


_TYPES = _type_table()


class HeaderCheck:
    """The headers of one pending message, checked as its bytes arrive.

    ``walk`` resumes where the previous call stopped (``pos``: where the next item
    starts, relative to the message's first byte, possibly past the bytes that arrived
    when a str/bin body is still coming) with ``stack`` holding the items still due in
    each open array/map. It raises :class:`HeaderError` for the first header, in stream
    order, that declares more than its limit, could not fit in one message, opens an
    ext value, nests too deep, or is the reserved byte 0xc1.

    Speed: inside an array/map, a run of items that have all arrived is found by
    msgpack's ``skip()`` and checked by decoding it with the connection's limits, both in
    C; only the items still arriving (the path from the message's root to its last
    byte) and runs that fail to decode are walked header by header in Python. Each
    attempt reads at most ``window`` bytes (256 after a miss, growing 4x per hit up to
    64 KiB), and after ``_MAX_MISSES`` attempts in a row that found nothing (a deep chain
    of unfinished containers) none is made until a Python step has finished an item.
    """

    __slots__ = ("done", "pos", "stack", "window")

    def __init__(self) -> None:
        self.pos = 0
        self.stack: list[int] = []
        self.done = False  # the message's last item has been seen
        self.window = _MIN_WINDOW

    def walk(
        self,
        buf: bytes | bytearray,
        base: int,
        limits: Limits,
        cap: int,
        cap_name: str,
        decode_options: dict[str, Any] | None = None,
        stop: int | None = None,
    ) -> None:
        """Check ``buf[base + pos : base + stop]`` (default: to the end). With
        `decode_options` complete runs are checked in C; without, every header in Python."""
        pos, stack = self.pos, self.stack
        end = len(buf) - base if stop is None else stop
        misses, finished = 0, False  # C attempts in a row that found nothing; last step ended an item
        try:
            while pos < end and not self.done:
                if stack and decode_options is not None and (misses < _MAX_MISSES or finished):
                    n, size = _complete_run(buf, base + pos, base + end, stack[-1], self.window)
                    misses, finished = (0, False) if n else (misses + 1, False)
                    if n:
                        self.window = min(4 * self.window, _MAX_WINDOW)
                        run = bytes(buf[base + pos : base + pos + size])
                        if not _decodes(run, n, decode_options):  # walk it exactly: a header problem raises
                            self.pos = pos
                            self.walk(buf, base, limits, cap, cap_name, None, pos + size)
                            pos = self.pos
                            continue
                        pos += size
                        stack[-1] -= n - 1  # the last one is closed below, with its containers
                        self._close_item()
                        continue
                    self.window = _MIN_WINDOW
                b = buf[base + pos]
                kind, size = _TYPES[b]
                if kind != _SCALAR:
                    if pos + size > end:
                        break  # the header itself is not complete yet
                    if size == 1:
                        n = b & (0x1F if kind == _STR else 0x0F)
                    else:
                        n = int.from_bytes(buf[base + pos + 1 : base + pos + size], "big")
                    if kind in (_STR, _BIN):
                        check_length(kind, n, limits)
                        if pos + size + n > cap:
                            raise HeaderError(f"message larger than {cap_name}={cap} bytes")
                        size += n
                    elif kind in (_ARRAY, _MAP):
                        check_length(kind, n, limits)
                        if len(stack) >= MAX_NESTING:
                            raise HeaderError(f"nesting deeper than {MAX_NESTING} levels")
                        items = n if kind == _ARRAY else 2 * n
                        if pos + size + items > cap:  # every item takes at least one byte
                            raise HeaderError(f"message larger than {cap_name}={cap} bytes")
                        if items:
                            pos += size
                            stack.append(items)
                            finished = False
                            continue
                    elif kind == _EXT:
                        code = buf[base + pos + size - 1]
                        code = code - 256 if code > 127 else code
                        raise HeaderError(
                            "ext type -1 (timestamp) not allowed" if code == -1 else f"ext type {code} not allowed"
                        )
                    else:
                        raise HeaderError("bytes are not valid MessagePack (a reserved type byte such as 0xc1)")
                pos += size
                finished = True
                self._close_item()
        finally:
            self.pos = pos

    def _close_item(self) -> None:
        """One item is done: close the containers it completes (the message, at the root)."""
        stack = self.stack
        while stack:
            stack[-1] -= 1
            if stack[-1]:
                return
            stack.pop()
        self.done = True


_MIN_WINDOW, _MAX_WINDOW = 256, 64 * 1024
_MAX_MISSES = 4


def _complete_run(buf: bytes | bytearray, start: int, end: int, most: int, window: int) -> tuple[int, int]:
    """How many items (at most `most`) lie complete from ``buf[start]`` within `window`
    bytes, and their size, found by msgpack's skip (no allocation, no limits). A run of
    one-byte items (the cheapest to send, the dearest to count one by one) is counted by
    a regular expression."""
    length = min(end - start, window)
    window_bytes = bytes(buf[start : start + length])
    ones = _ONE_BYTE_ITEMS.match(window_bytes)
    assert ones is not None  # the pattern ends in "*": it matches, if only the empty string
    n = ones.end()
    if n >= most or n == length:
        return min(n, most), min(n, most)
    scanner = msgpack.Unpacker(max_buffer_size=length - n)
    scanner.feed(window_bytes[n:])
    size = 0
    first = n
    try:
        while n < most:
            scanner.skip()
            size = scanner.tell()
            n += 1
    except Exception:
        pass
    return n, first + size


# complete in one byte: fixints, nil, bools, and the empty fixstr, fixarray and fixmap
_ONE_BYTE_ITEMS = re.compile(rb"[\x00-\x80\x90\xa0\xc0\xc2\xc3\xe0-\xff]*")


def _decodes(run: bytes, n: int, options: dict[str, Any]) -> bool:
    """Whether `n` complete items decode within the limits, with no ext value."""
    if b"\xff" in run and TIMESTAMP_MARKERS.search(run):
        return False  # maybe a timestamp, which msgpack decodes without asking ext_hook
    decoder = msgpack.Unpacker(max_buffer_size=len(run), **options)
    decoder.feed(run)
    try:
        deque(itertools.islice(decoder, n), maxlen=0)
    except (ValueError, TypeError):  # msgpack's StackError and reject_ext's error are ValueErrors
        return False
    return True


def check_length(kind: int, n: int, limits: Limits) -> None:
    if kind == _STR and n > limits.max_str_len:
        raise HeaderError(f"string of {n} bytes exceeds max_str_len={limits.max_str_len}")
    if kind == _BIN and n > limits.max_bin_len:
        raise HeaderError(f"binary of {n} bytes exceeds max_bin_len={limits.max_bin_len}")
    if kind == _ARRAY and n > limits.max_array_len:
        raise HeaderError(f"array of {n} elements exceeds max_array_len={limits.max_array_len}")
    if kind == _MAP and n > limits.max_map_len:
        raise HeaderError(f"map of {n} entries exceeds max_map_len={limits.max_map_len}")
