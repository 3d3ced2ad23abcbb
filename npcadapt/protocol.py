"""Sans-I/O MessagePack-RPC core of the socket bridge: framing, parsing, encoding.

This module owns the byte-level protocol and nothing else: it never touches a socket,
a thread or an event loop. The asyncio server feeds it the bytes it reads and writes
the bytes it returns::

    events = conn.receive_data(data)          # 0..n Request / Notification / InvalidMessage
    transport.write(conn.response(ev.msgid, result=...))

Messages follow the MessagePack-RPC spec: request ``[0, msgid, method, params]``,
response ``[1, msgid, error, result]`` (error nil on success, else ``[code, "message"]``),
notification ``[2, method, params]`` (never answered).

Two kinds of failure:

* Bytes that cannot be trusted as a stream (not MessagePack, a limit exceeded, nesting
  deeper than msgpack's 1024-level stack, an ext type, invalid UTF-8 in a str, a map key
  that is not str/bin, a top-level value that is not an array) raise
  :class:`~npcadapt.errors.ProtocolError` and close the connection for good. The error
  carries ``events``: whatever the same call decoded before the bad message.
* Well-formed MessagePack that is not a valid RPC message becomes an
  :class:`InvalidMessage` event; the stream stays usable and the server answers it when
  it has a ``msgid``.

Memory safety: each message is first located with msgpack's non-allocating ``skip()``
and only decoded (``unpackb``) once all of its bytes have arrived. A streaming Unpacker
would pre-allocate a list for every array header it sees before the elements arrive,
so ~5 KB of nested ``array32(1_000_000)`` headers would pin ~80 MB per connection.
Here a connection holds at most ``max_buffer_size`` bytes of one pending message twice
(ours and the scanner's), and every decoded container is backed by bytes that arrived.

Declared lengths are checked at the header (:class:`_HeaderCheck`), not when the bytes
exist. msgpack 1.0.x does not do this for us; fed only a header announcing 2 GiB,
``Unpacker(max_str_len=10, max_bin_len=10, max_array_len=10, max_map_len=10)`` gave:

    str32 / bin32, ``unpack()`` or ``skip()``: OutOfData, and still OutOfData after
        1 MiB more (the body is buffered; the limit is checked once it is complete)
    array32 / map32, ``unpack()``: ValueError "exceeds max_array_len" at once (but an
        allowed count pre-allocates its list, see above); ``skip()``: OutOfData, and
        still after 1 MiB more (skip checks no limit)

So whenever a message is still incomplete after the bytes that arrived, its headers
are checked as far as the bytes go (resuming where the last check stopped; finished runs
of items in C, the rest in Python, see :class:`_HeaderCheck`), and a str/bin/array/map
declared longer than its limit, a str/bin that could not fit in one message, or any ext
header, raises ProtocolError at once. Messages that arrive whole skip this (msgpack's C
decoder checks them); on an error the check runs over the complete message too, so the
error reported never depends on how the bytes were split.
"""

from __future__ import annotations

import itertools
import logging
import re
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Union

import msgpack

from .errors import InvalidInputError, ProtocolError

log = logging.getLogger(__name__)

# Error codes used in error = [code, "message"].
INVALID_REQUEST = 1
METHOD_NOT_FOUND = 2
INVALID_PARAMS = 3
INTERNAL_ERROR = 4
UNAUTHORIZED = 5
OVERLOADED = 6

REQUEST, RESPONSE, NOTIFICATION = 0, 1, 2
MSGID_LIMIT = 2**32
MAX_NESTING = 1024  # msgpack's fixed C stack depth; deeper input raises StackError
_SCANNER_READ_SIZE = 4096  # initial scanner buffer; it grows on demand up to max_buffer_size
_SCANNER_KEEP = 256 * 1024  # a scanner that held more is replaced once its pending bytes are few

_LIMIT_RE = re.compile(r"(\d+) exceeds max_(str|bin|array|map)_len\((-?\d+)\)")
_MAP_KEY_RE = re.compile(r"(\w+) is not allowed for map key")
_LIMIT_WORDS = {
    "str": ("string", "bytes"),
    "bin": ("binary", "bytes"),
    "array": ("array", "elements"),
    "map": ("map", "entries"),
}
# Byte pairs that can start a timestamp (ext type -1), which msgpack decodes itself
# without calling ext_hook: fixext4, fixext8 and ext8/16/32 of length 12.
_TIMESTAMP_MARKERS = re.compile(b"\xd6\xff|\xd7\xff|\x0c\xff")


@dataclass(frozen=True)
class Limits:
    """Per-connection limits on incoming bytes; exceeding any closes the connection."""

    max_buffer_size: int = 8 * 1024 * 1024  # bytes of one message, complete or pending
    max_str_len: int = 64 * 1024  # bytes of one str (UTF-8 encoded)
    max_bin_len: int = 4 * 1024 * 1024  # bytes of one bin
    max_array_len: int = 1_000_000  # elements of one array
    max_map_len: int = 4096  # entries of one map

    def __post_init__(self) -> None:
        for name in ("max_buffer_size", "max_str_len", "max_bin_len", "max_array_len",
                     "max_map_len"):
            value = getattr(self, name)
            if type(value) is not int or value <= 0:
                raise InvalidInputError(f"Limits.{name} must be a positive int, got {value!r}")


@dataclass(frozen=True)
class Request:
    """``[0, msgid, method, params]``: must be answered with a response of the same msgid."""

    msgid: int
    method: str
    params: list


@dataclass(frozen=True)
class Notification:
    """``[2, method, params]``: never answered."""

    method: str
    params: list


@dataclass(frozen=True)
class InvalidMessage:
    """Decodable MessagePack that is not a valid RPC message for this role.

    ``msgid`` is set when one could be read, so the server can answer
    ``[1, msgid, error, nil]``; with ``None`` there is nothing to answer.
    """

    msgid: int | None
    error: list  # [code, "message"]


@dataclass(frozen=True)
class Response:
    """``[1, msgid, error, result]``, received by the client side."""

    msgid: int
    error: object
    result: object


Event = Union[Request, Notification, InvalidMessage, Response]


class _ExtRejected(Exception):
    """Raised from ext_hook to abort decoding; turned into a ProtocolError."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def _reject_ext(code: int, data: bytes) -> object:
    raise _ExtRejected(code)


def pack(obj: object) -> bytes:
    """Encode ``obj`` as MessagePack (str as str, bytes as bin); ProtocolError if impossible."""
    try:
        return msgpack.packb(obj, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ProtocolError(
            f"cannot encode {type(obj).__name__} as MessagePack: {exc}"
        ) from exc


def _describe(value: object) -> str:
    """A short, cheap description of a decoded value for error messages."""
    if value is None:
        return "nil"
    if isinstance(value, (bool, int, float)):
        return f"{type(value).__name__} {value!r}"
    if isinstance(value, (str, bytes)):
        short = value[:32]
        more = "..." if len(value) > 32 else ""
        return f"{'str' if isinstance(value, str) else 'bin'} {short!r}{more}"
    if isinstance(value, list):
        return f"array of {len(value)}"
    if isinstance(value, dict):
        return f"map of {len(value)}"
    return type(value).__name__


def _is_msgid(value: object) -> bool:
    return type(value) is int and 0 <= value < MSGID_LIMIT


def _invalid(msgid: int | None, code: int, message: str) -> InvalidMessage:
    return InvalidMessage(msgid, [code, message])


def _at(problem: str, offset: int) -> ProtocolError:
    """A ProtocolError naming the problem and where its message starts in the stream."""
    return ProtocolError(f"{problem} (message starting at stream offset {offset})")


def _contains_timestamp(obj: object) -> bool:
    """Iterative walk (nesting may exceed Python's recursion limit) for Timestamp values."""
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, msgpack.Timestamp):
            return True
        if isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.values())  # keys are str/bin under strict_map_key
    return False


class _HeaderError(Exception):
    """Raised by :class:`_HeaderCheck`; the message names the problem."""


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
    sized = {0xC1: (_INVALID, 1), 0xC4: (_BIN, 2), 0xC5: (_BIN, 3), 0xC6: (_BIN, 5),
             0xC7: (_EXT, 3), 0xC8: (_EXT, 4), 0xC9: (_EXT, 6), 0xCA: (_SCALAR, 5),
             0xCB: (_SCALAR, 9), 0xCC: (_SCALAR, 2), 0xCD: (_SCALAR, 3), 0xCE: (_SCALAR, 5),
             0xCF: (_SCALAR, 9), 0xD0: (_SCALAR, 2), 0xD1: (_SCALAR, 3), 0xD2: (_SCALAR, 5),
             0xD3: (_SCALAR, 9), 0xD9: (_STR, 2), 0xDA: (_STR, 3), 0xDB: (_STR, 5),
             0xDC: (_ARRAY, 3), 0xDD: (_ARRAY, 5), 0xDE: (_MAP, 3), 0xDF: (_MAP, 5)}
    sized.update({b: (_EXT, 2) for b in range(0xD4, 0xD9)})  # fixext: type byte only
    for b, entry in sized.items():
        table[b] = entry
    return table


_TYPES = _type_table()


class _HeaderCheck:
    """The headers of one pending message, checked as its bytes arrive.

    ``walk`` resumes where the previous call stopped (``pos``: where the next item
    starts, relative to the message's first byte, possibly past the bytes that arrived
    when a str/bin body is still coming) with ``stack`` holding the items still due in
    each open array/map. It raises :class:`_HeaderError` for the first header, in stream
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

    __slots__ = ("pos", "stack", "done", "window")

    def __init__(self) -> None:
        self.pos = 0
        self.stack: list[int] = []
        self.done = False  # the message's last item has been seen
        self.window = _MIN_WINDOW

    def walk(self, buf, base: int, limits: Limits, cap: int, cap_name: str,
             decode_options: dict | None = None, stop: int | None = None) -> None:
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
                    if kind == _STR or kind == _BIN:
                        _check_length(kind, n, limits)
                        if pos + size + n > cap:
                            raise _HeaderError(f"message larger than {cap_name}={cap} bytes")
                        size += n
                    elif kind == _ARRAY or kind == _MAP:
                        _check_length(kind, n, limits)
                        if len(stack) >= MAX_NESTING:
                            raise _HeaderError(f"nesting deeper than {MAX_NESTING} levels")
                        items = n if kind == _ARRAY else 2 * n
                        if pos + size + items > cap:  # every item takes at least one byte
                            raise _HeaderError(f"message larger than {cap_name}={cap} bytes")
                        if items:
                            pos += size
                            stack.append(items)
                            finished = False
                            continue
                    elif kind == _EXT:
                        code = buf[base + pos + size - 1]
                        code = code - 256 if code > 127 else code
                        raise _HeaderError("ext type -1 (timestamp) not allowed" if code == -1
                                           else f"ext type {code} not allowed")
                    else:
                        raise _HeaderError("bytes are not valid MessagePack (a reserved type "
                                           "byte such as 0xc1)")
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


def _complete_run(buf, start: int, end: int, most: int, window: int) -> tuple[int, int]:
    """How many items (at most `most`) lie complete from ``buf[start]`` within `window`
    bytes, and their size, found by msgpack's skip (no allocation, no limits). A run of
    one-byte items (the cheapest to send, the dearest to count one by one) is counted by
    a regular expression."""
    length = min(end - start, window)
    window_bytes = bytes(buf[start : start + length])
    n = _ONE_BYTE_ITEMS.match(window_bytes).end()
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
    except Exception:  # OutOfData: the next item is not all here (the stream was scanned before)
        pass
    return n, first + size


# complete in one byte: fixints, nil, bools, and the empty fixstr, fixarray and fixmap
_ONE_BYTE_ITEMS = re.compile(rb"[\x00-\x80\x90\xa0\xc0\xc2\xc3\xe0-\xff]*")


def _decodes(run: bytes, n: int, options: dict) -> bool:
    """Whether `n` complete items decode within the limits, with no ext value."""
    if b"\xff" in run and _TIMESTAMP_MARKERS.search(run):
        return False  # maybe a timestamp, which msgpack decodes without asking ext_hook
    decoder = msgpack.Unpacker(max_buffer_size=len(run), **options)
    decoder.feed(run)
    try:
        deque(itertools.islice(decoder, n), maxlen=0)
    except (ValueError, TypeError, _ExtRejected, msgpack.StackError):
        return False
    return True


def _check_length(kind: int, n: int, limits: Limits) -> None:
    if kind == _STR and n > limits.max_str_len:
        raise _HeaderError(f"string of {n} bytes exceeds max_str_len={limits.max_str_len}")
    if kind == _BIN and n > limits.max_bin_len:
        raise _HeaderError(f"binary of {n} bytes exceeds max_bin_len={limits.max_bin_len}")
    if kind == _ARRAY and n > limits.max_array_len:
        raise _HeaderError(f"array of {n} elements exceeds max_array_len={limits.max_array_len}")
    if kind == _MAP and n > limits.max_map_len:
        raise _HeaderError(f"map of {n} entries exceeds max_map_len={limits.max_map_len}")


class RpcConnection:
    """One end of a MessagePack-RPC byte stream, with no I/O.

    ``role="server"`` accepts requests and notifications; ``role="client"`` accepts
    responses and notifications. Encoding (``request``, ``response``, ...) works in both
    roles and is unaffected by ``closed``, which concerns received bytes only.
    """

    def __init__(self, limits: Limits = Limits(), *, role: str = "server") -> None:
        if role not in ("server", "client"):
            raise InvalidInputError(f"role must be 'server' or 'client', got {role!r}")
        if not isinstance(limits, Limits):
            raise InvalidInputError(f"limits must be a Limits, got {type(limits).__name__}")
        self.limits = limits
        self.role = role
        self._scanner = self._new_scanner()
        self._scan_base = 0  # stream offset of the scanner's first byte (tell() counts from it)
        self._scan_peak = 0  # most bytes the scanner held at once: its buffer's size, about
        self._unpack_options = dict(
            raw=False, use_list=True, strict_map_key=True, ext_hook=_reject_ext,
            max_str_len=limits.max_str_len, max_bin_len=limits.max_bin_len,
            max_array_len=limits.max_array_len, max_map_len=limits.max_map_len,
        )
        self._buf = bytearray()  # bytes of the pending message, from its first byte
        self._offset = 0  # stream offset of self._buf[0]
        self._check = _HeaderCheck()  # the pending message's headers walked so far
        self._cap = limits.max_buffer_size  # bytes one message may take now
        self._cap_name = "max_buffer_size"
        self._next_msgid = 0
        self._error: str | None = None

    def _new_scanner(self) -> msgpack.Unpacker:
        return msgpack.Unpacker(max_buffer_size=self.limits.max_buffer_size,
                                read_size=min(_SCANNER_READ_SIZE, self.limits.max_buffer_size))

    def _shrink_scanner(self) -> None:
        """msgpack's buffer grows to the largest message and never shrinks: once what was
        large is done, start a fresh scanner holding only the pending bytes."""
        if self._scan_peak > _SCANNER_KEEP and 4 * len(self._buf) < self._scan_peak:
            self._scanner = self._new_scanner()
            self._scanner.feed(self._buf)
            self._scan_base, self._scan_peak = self._offset, len(self._buf)

    @property
    def scanner_peak(self) -> int:
        """Most bytes msgpack's scanner has held at once since it was last replaced (its
        buffer is about this size)."""
        return self._scan_peak

    @property
    def closed(self) -> bool:
        """True once a ProtocolError was raised; no further bytes are accepted."""
        return self._error is not None

    @property
    def buffered(self) -> int:
        """Bytes of the pending (incomplete) message held now."""
        return len(self._buf)

    @property
    def memory(self) -> int:
        """Bytes the pending input occupies: :attr:`buffered` twice, since msgpack's scanner
        holds a second copy (its buffer is replaced once a large message is done, so it does
        not keep the size of the largest message seen)."""
        return 2 * len(self._buf)

    def cap_message_size(self, limit: int | None, name: str = "max_buffer_size") -> None:
        """Bound one message to `limit` bytes (at most ``max_buffer_size``), e.g. before a
        connection authenticates; `name` is what the error calls the limit. None restores
        ``max_buffer_size``. Applies to the bytes received from now on."""
        if limit is None:
            limit, name = self.limits.max_buffer_size, "max_buffer_size"
        if type(limit) is not int or not 0 < limit <= self.limits.max_buffer_size:
            raise InvalidInputError(f"message cap must be an int in 1..{self.limits.max_buffer_size}, "
                                    f"got {limit!r}")
        self._cap, self._cap_name = limit, name

    # ------------------------------------------------------------------ receiving

    def receive_data(self, data: bytes) -> list[Event]:
        """Feed received bytes; return the events of every message they complete.

        Raises ProtocolError (with ``.events``: events decoded earlier in this call)
        for bytes that cannot be trusted as a stream; the connection is then closed.
        """
        if self._error is not None:
            raise ProtocolError(f"connection closed after protocol error: {self._error}")
        try:
            view = memoryview(data).cast("B")
        except TypeError as exc:
            raise InvalidInputError(
                f"receive_data needs bytes, got {type(data).__name__}"
            ) from exc
        events: list[Event] = []
        try:
            pos = 0
            while pos < len(view):
                # Feed no more than one message may hold, so the size check below fires
                # at the same stream position however the bytes were split.
                room = self._cap - len(self._buf)
                if room <= 0:
                    raise _at(f"message larger than {self._cap_name}={self._cap} bytes",
                              self._offset)
                chunk = view[pos:pos + room]
                pos += len(chunk)
                self._buf += chunk
                self._scanner.feed(chunk)
                self._scan_peak = max(self._scan_peak, len(self._buf))
                self._drain(events)
            self._shrink_scanner()
        except ProtocolError as exc:
            self._error = str(exc)
            exc.events = events  # type: ignore[attr-defined]
            log.debug("closing RPC connection: %s", exc)
            raise
        return events

    def _drain(self, events: list[Event]) -> None:
        """Decode every complete message in the buffer, then drop their bytes."""
        start = 0
        try:
            while True:
                at = self._offset + start
                try:
                    self._scanner.skip()
                except msgpack.OutOfData:
                    if start < len(self._buf):  # a message is pending: check its headers now
                        self._walk(self._check, start, at, fast=True)
                    return
                except msgpack.StackError:
                    self._walk(self._check, start, at, fast=True)  # an earlier header problem comes first
                    raise _at(f"nesting deeper than {MAX_NESTING} levels", at) from None
                except msgpack.FormatError:
                    self._walk(self._check, start, at, fast=True)
                    raise _at("bytes are not valid MessagePack (a reserved type byte "
                              "such as 0xc1)", at) from None
                except (msgpack.BufferFull, ValueError) as exc:  # defensive: not expected
                    raise _at(f"undecodable bytes: {type(exc).__name__} {exc}", at) from None
                end = self._scan_base + self._scanner.tell() - self._offset
                frame = bytes(self._buf[start:end])
                start = end
                if self._check.pos:
                    self._check = _HeaderCheck()
                events.append(self._to_event(self._decode(frame, at)))
        finally:
            del self._buf[:start]
            self._offset += start

    def _walk(self, check: _HeaderCheck, start: int, at: int, fast: bool = False) -> None:
        """Walk the headers of the message at ``self._buf[start:]``; ProtocolError if bad."""
        try:
            check.walk(self._buf, start, self.limits, self._cap, self._cap_name,
                       self._unpack_options if fast else None)
        except _HeaderError as exc:
            raise _at(str(exc), at) from None

    def _decode(self, frame: bytes, at: int) -> list:
        """Decode one complete message, mapping every msgpack failure to ProtocolError.
        A header problem anywhere in the message is reported first, as it would have been
        had the message arrived in pieces (found with the C fast path: only a run of items
        that fails to decode is walked in Python, so rejecting a large message stays cheap)."""
        try:
            obj = msgpack.unpackb(frame, **self._unpack_options)
        except (ValueError, TypeError, _ExtRejected) as exc:
            try:
                _HeaderCheck().walk(frame, 0, self.limits, self._cap, self._cap_name, self._unpack_options)
            except _HeaderError as header:
                raise _at(str(header), at) from None
            if isinstance(exc, _ExtRejected):
                raise _at(f"ext type {exc.code} not allowed", at) from None
            if isinstance(exc, UnicodeDecodeError):
                raise _at(f"invalid UTF-8 in a str: {exc.reason} at byte {exc.start}", at) from None
            raise _at(self._explain(exc), at) from None
        # memchr first: the marker regex costs ~20x more and 0xff is rare in params.
        if b"\xff" in frame and _TIMESTAMP_MARKERS.search(frame) and _contains_timestamp(obj):
            raise _at("ext type -1 (timestamp) not allowed", at)
        if not isinstance(obj, list):
            raise _at(f"top-level message must be an array, got {_describe(obj)}", at)
        return obj

    @staticmethod
    def _explain(exc: Exception) -> str:
        text = str(exc)
        match = _LIMIT_RE.search(text)
        if match:
            size, kind, limit = match.groups()
            noun, unit = _LIMIT_WORDS[kind]
            return f"{noun} of {size} {unit} exceeds max_{kind}_len={limit}"
        if "timestamp" in text:
            return "ext type -1 (timestamp) not allowed"
        match = _MAP_KEY_RE.search(text)
        if match:
            return f"map key of type {match.group(1)} not allowed; keys must be str or bin"
        return f"undecodable message: {type(exc).__name__}: {text}"

    def _to_event(self, msg: list) -> Event:
        """Turn a decoded top-level array into an event for this role."""
        if not msg:
            return _invalid(None, INVALID_REQUEST, "message array is empty")
        kind = msg[0] if type(msg[0]) is int else None  # bool and float are not types
        if kind == NOTIFICATION:
            return self._notification(msg)
        if kind == REQUEST:
            if self.role == "client":
                msgid = msg[1] if len(msg) > 1 and _is_msgid(msg[1]) else None
                return _invalid(msgid, INVALID_REQUEST, "a client does not accept requests")
            return self._request(msg)
        if kind == RESPONSE:
            if self.role == "server":
                return _invalid(None, INVALID_REQUEST,
                                "a server does not accept responses (message type 1)")
            return self._response(msg)
        return _invalid(None, INVALID_REQUEST,
                        f"message type must be 0 (request), 1 (response) or "
                        f"2 (notification), got {_describe(msg[0])}")

    @staticmethod
    def _method(value: object) -> str:
        """The method name, or raise ValueError with the problem."""
        if isinstance(value, bytes):
            try:
                return value.decode("utf-8")
            except UnicodeDecodeError:
                raise ValueError(f"method name {_describe(value)} is not valid UTF-8") from None
        if isinstance(value, str):
            return value
        raise ValueError(f"method must be a str, got {_describe(value)}")

    def _request(self, msg: list) -> Event:
        msgid = msg[1] if len(msg) > 1 and _is_msgid(msg[1]) else None
        if len(msg) != 4:
            return _invalid(msgid, INVALID_REQUEST,
                            f"request must be [0, msgid, method, params], got {len(msg)} elements")
        if msgid is None:
            return _invalid(None, INVALID_REQUEST,
                            f"msgid must be an unsigned 32-bit int, got {_describe(msg[1])}")
        return self._call(msgid, msg[2], msg[3], lambda method, params: Request(msgid, method, params))

    def _notification(self, msg: list) -> Event:
        if len(msg) != 3:
            return _invalid(None, INVALID_REQUEST,
                            f"notification must be [2, method, params], got {len(msg)} elements")
        return self._call(None, msg[1], msg[2], Notification)

    def _call(self, msgid: int | None, method: object, params: object, make: Callable[[str, list], Event]) -> Event:
        """The method name and params array shared by requests and notifications."""
        try:
            name = self._method(method)
        except ValueError as exc:
            return _invalid(msgid, INVALID_REQUEST, str(exc))
        if not isinstance(params, list):
            return _invalid(msgid, INVALID_PARAMS, f"params must be an array, got {_describe(params)}")
        return make(name, params)

    def _response(self, msg: list) -> Event:
        if len(msg) != 4:
            return _invalid(None, INVALID_REQUEST,
                            f"response must be [1, msgid, error, result], got {len(msg)} elements")
        if not _is_msgid(msg[1]):
            return _invalid(None, INVALID_REQUEST,
                            f"msgid must be an unsigned 32-bit int, got {_describe(msg[1])}")
        return Response(msg[1], msg[2], msg[3])

    # ------------------------------------------------------------------ sending

    def request(self, method: str, params: list) -> tuple[int, bytes]:
        """Encode a request with the next msgid (wrapping at 2**32); return (msgid, bytes)."""
        msgid = self._next_msgid
        data = pack([REQUEST, msgid, *_checked(method, params)])
        self._next_msgid = (msgid + 1) % MSGID_LIMIT
        return msgid, data

    def notification(self, method: str, params: list) -> bytes:
        """Encode a notification."""
        return pack([NOTIFICATION, *_checked(method, params)])

    def response(self, msgid: int, error: object = None, result: object = None) -> bytes:
        """Encode a response; ``error`` None means success."""
        if not _is_msgid(msgid):
            raise InvalidInputError(f"msgid must be an unsigned 32-bit int, got {msgid!r}")
        return pack([RESPONSE, msgid, error, result])

    def error_response(self, msgid: int, code: int, message: str) -> bytes:
        """Encode a failed response with error ``[code, message]`` and result nil."""
        if type(code) is not int:
            raise InvalidInputError(f"error code must be an int, got {code!r}")
        if not isinstance(message, str):
            raise InvalidInputError(f"error message must be a str, got {type(message).__name__}")
        return self.response(msgid, [code, message], None)


_RESPONSE_OK = [bytes((0x94, 0x01, i, 0xC0)) for i in range(128)]  # "[1, msgid, nil," for msgids < 128


def packed_response(msgid: int, result: bytes, count: int | None = None) -> bytes:
    """A success response ``[1, msgid, nil, result]`` around a result already encoded.

    `result` is one MessagePack value, or with `count` the `count` values back to back
    that make up an array result. Only the framing is written here; msgid is checked.
    """
    if not _is_msgid(msgid):
        raise InvalidInputError(f"msgid must be an unsigned 32-bit int, got {msgid!r}")
    head = _RESPONSE_OK[msgid] if msgid < 128 else b"\x94\x01" + pack(msgid) + b"\xc0"
    if count is None:
        return head + result
    if count < 16:
        return head + bytes((0x90 | count,)) + result
    if count < 2**16:
        return head + b"\xdc" + count.to_bytes(2, "big") + result
    return head + b"\xdd" + count.to_bytes(4, "big") + result


def _checked(method: object, params: object) -> tuple[str, list]:
    """Validate outgoing method and params (a tuple is sent as an array too)."""
    if not isinstance(method, str):
        raise InvalidInputError(f"method must be a str, got {type(method).__name__}")
    if not isinstance(params, (list, tuple)):
        raise InvalidInputError(f"params must be a list, got {type(params).__name__}")
    return method, list(params)
