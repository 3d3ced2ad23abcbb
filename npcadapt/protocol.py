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
"""

from __future__ import annotations

import logging
import re
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
        self._scanner = msgpack.Unpacker(
            max_buffer_size=limits.max_buffer_size,
            read_size=min(_SCANNER_READ_SIZE, limits.max_buffer_size),
        )
        self._unpack_options = dict(
            raw=False, use_list=True, strict_map_key=True, ext_hook=_reject_ext,
            max_str_len=limits.max_str_len, max_bin_len=limits.max_bin_len,
            max_array_len=limits.max_array_len, max_map_len=limits.max_map_len,
        )
        self._buf = bytearray()  # bytes of the pending message, from its first byte
        self._offset = 0  # stream offset of self._buf[0]
        self._next_msgid = 0
        self._error: str | None = None

    @property
    def closed(self) -> bool:
        """True once a ProtocolError was raised; no further bytes are accepted."""
        return self._error is not None

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
                room = self.limits.max_buffer_size - len(self._buf)
                if room <= 0:
                    raise _at(f"message larger than max_buffer_size="
                              f"{self.limits.max_buffer_size} bytes", self._offset)
                chunk = view[pos:pos + room]
                pos += len(chunk)
                self._buf += chunk
                self._scanner.feed(chunk)
                self._drain(events)
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
                    return
                except msgpack.StackError:
                    raise _at(f"nesting deeper than {MAX_NESTING} levels", at) from None
                except msgpack.FormatError:
                    raise _at("bytes are not valid MessagePack (a reserved type byte "
                              "such as 0xc1)", at) from None
                except (msgpack.BufferFull, ValueError) as exc:  # defensive: not expected
                    raise _at(f"undecodable bytes: {type(exc).__name__} {exc}", at) from None
                end = self._scanner.tell() - self._offset
                frame = bytes(self._buf[start:end])
                start = end
                events.append(self._to_event(self._decode(frame, at)))
        finally:
            del self._buf[:start]
            self._offset += start

    def _decode(self, frame: bytes, at: int) -> list:
        """Decode one complete message, mapping every msgpack failure to ProtocolError."""
        try:
            obj = msgpack.unpackb(frame, **self._unpack_options)
        except _ExtRejected as exc:
            raise _at(f"ext type {exc.code} not allowed", at) from None
        except UnicodeDecodeError as exc:
            raise _at(f"invalid UTF-8 in a str: {exc.reason} at byte {exc.start}", at) from None
        except (ValueError, TypeError) as exc:
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
