"""Sans-I/O MessagePack-RPC core of the socket bridge: framing and parsing.

This module owns the byte-level protocol and nothing else: it never touches a socket,
a thread or an event loop. The asyncio server feeds it the bytes it reads and writes
the bytes the codec returns::

    events = conn.receive_data(data)          # 0..n Request / Notification / InvalidMessage
    transport.write(encode_response(ev.msgid, None, result))

Three modules make up the core: this one parses what arrives, :mod:`.protocol_headers`
checks the headers of a message still arriving, and :mod:`.protocol_codec` writes every
byte that goes out (names used here are re-exported from both).

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

Declared lengths are checked at the header, before the body arrives (msgpack does not;
:mod:`.protocol_headers`): a message still incomplete after a read has its headers
checked as far as the bytes go. Messages that arrive whole skip this (msgpack's C
decoder checks them); on an error the check runs over the complete message too, so the
error reported never depends on how the bytes were split.

Over 450 lines: 41 of them are this docstring; the rest is one parser (events, limits, the streaming connection) that only reads well in one place."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack

from .errors import InvalidInputError, ProtocolError
from .protocol_codec import (
    MSGID_LIMIT,
    NOTIFICATION,
    REQUEST,
    RESPONSE,
    encode_error,
    encode_notification,
    encode_request,
    encode_response,
    is_msgid,
    pack,
    packed_response,
)
from .protocol_headers import MAX_NESTING, TIMESTAMP_MARKERS, HeaderCheck, HeaderError, reject_ext

__all__ = [
    "INTERNAL_ERROR",
    "INVALID_PARAMS",
    "INVALID_REQUEST",
    "METHOD_NOT_FOUND",
    "MSGID_LIMIT",
    "OVERLOADED",
    "UNAUTHORIZED",
    "Event",
    "InvalidMessage",
    "Limits",
    "Notification",
    "Request",
    "Response",
    "RpcConnection",
    "pack",
    "packed_response",
]

log = logging.getLogger(__name__)

# Error codes used in error = [code, "message"].
INVALID_REQUEST = 1
METHOD_NOT_FOUND = 2
INVALID_PARAMS = 3
INTERNAL_ERROR = 4
UNAUTHORIZED = 5
OVERLOADED = 6

_SCANNER_READ_SIZE = 4096  # initial scanner buffer; it grows on demand up to max_buffer_size
_SCANNER_KEEP = 256 * 1024  # a scanner that held more is replaced once its pending bytes are few

_MAP_KEY_RE = re.compile(r"(\w+) is not allowed for map key")


@dataclass(frozen=True)
class Limits:
    """Per-connection limits on incoming bytes; exceeding any closes the connection."""

    max_buffer_size: int = 8 * 1024 * 1024  # bytes of one message, complete or pending
    max_str_len: int = 64 * 1024  # bytes of one str (UTF-8 encoded)
    max_bin_len: int = 4 * 1024 * 1024  # bytes of one bin
    max_array_len: int = 1_000_000  # elements of one array
    max_map_len: int = 4096  # entries of one map

    def __post_init__(self) -> None:
        for name in ("max_buffer_size", "max_str_len", "max_bin_len", "max_array_len", "max_map_len"):
            value = getattr(self, name)
            if type(value) is not int or value <= 0:
                raise InvalidInputError(f"Limits.{name} must be a positive int, got {value!r}")


@dataclass(frozen=True)
class Request:
    """``[0, msgid, method, params]``: must be answered with a response of the same msgid."""

    msgid: int
    method: str
    params: list[Any]


@dataclass(frozen=True)
class Notification:
    """``[2, method, params]``: never answered."""

    method: str
    params: list[Any]


@dataclass(frozen=True)
class InvalidMessage:
    """Decodable MessagePack that is not a valid RPC message for this role.

    ``msgid`` is set when one could be read, so the server can answer
    ``[1, msgid, error, nil]``; with ``None`` there is nothing to answer.
    """

    msgid: int | None
    error: list[Any]  # [code, "message"]


@dataclass(frozen=True)
class Response:
    """``[1, msgid, error, result]``, received by the client side."""

    msgid: int
    error: object
    result: object


Event = Request | Notification | InvalidMessage | Response


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
        self._scanner = self._new_scanner()
        self._scan_base = 0  # stream offset of the scanner's first byte (tell() counts from it)
        self._scan_peak = 0  # most bytes the scanner held at once: its buffer's size, about
        self._unpack_options = {
            "raw": False,
            "use_list": True,
            "strict_map_key": True,
            "ext_hook": reject_ext,
            "max_str_len": limits.max_str_len,
            "max_bin_len": limits.max_bin_len,
            "max_array_len": limits.max_array_len,
            "max_map_len": limits.max_map_len,
        }
        self._buf = bytearray()  # bytes of the pending message, from its first byte
        self._offset = 0  # stream offset of self._buf[0]
        self._check = HeaderCheck()  # the pending message's headers walked so far
        self._cap = limits.max_buffer_size  # bytes one message may take now
        self._cap_name = "max_buffer_size"
        self._next_msgid = 0
        self._error: str | None = None

    def _new_scanner(self) -> msgpack.Unpacker:
        return msgpack.Unpacker(
            max_buffer_size=self.limits.max_buffer_size, read_size=min(_SCANNER_READ_SIZE, self.limits.max_buffer_size)
        )

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
            raise InvalidInputError(f"message cap must be an int in 1..{self.limits.max_buffer_size}, got {limit!r}")
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
            raise InvalidInputError(f"receive_data needs bytes, got {type(data).__name__}") from exc
        events: list[Event] = []
        try:
            pos = 0
            while pos < len(view):
                # Feed no more than one message may hold, so the size check below fires
                # at the same stream position however the bytes were split.
                room = self._cap - len(self._buf)
                if room <= 0:
                    raise _at(f"message larger than {self._cap_name}={self._cap} bytes", self._offset)
                chunk = view[pos : pos + room]
                pos += len(chunk)
                self._buf += chunk
                self._scanner.feed(chunk)
                self._scan_peak = max(self._scan_peak, len(self._buf))
                self._drain(events)
            self._shrink_scanner()
        except ProtocolError as exc:
            self._error = str(exc)
            exc.events = events
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
                    raise _at("bytes are not valid MessagePack (a reserved type byte such as 0xc1)", at) from None
                except (msgpack.BufferFull, ValueError) as exc:  # defensive: not expected
                    raise _at(f"undecodable bytes: {type(exc).__name__} {exc}", at) from None
                end = self._scan_base + self._scanner.tell() - self._offset
                frame = bytes(self._buf[start:end])
                start = end
                if self._check.pos:
                    self._check = HeaderCheck()
                events.append(self._to_event(self._decode(frame, at)))
        finally:
            del self._buf[:start]
            self._offset += start

    def _walk(self, check: HeaderCheck, start: int, at: int, fast: bool = False) -> None:
        """Walk the headers of the message at ``self._buf[start:]``; ProtocolError if bad."""
        try:
            check.walk(self._buf, start, self.limits, self._cap, self._cap_name, self._unpack_options if fast else None)
        except HeaderError as exc:
            raise _at(str(exc), at) from None

    def _decode(self, frame: bytes, at: int) -> list[Any]:
        """Decode one complete message, mapping every msgpack failure to ProtocolError.
        A header problem anywhere in the message is reported first, as it would have been
        had the message arrived in pieces (found with the C fast path: only a run of items
        that fails to decode is walked in Python, so rejecting a large message stays cheap)."""
        try:
            obj = msgpack.unpackb(frame, **self._unpack_options)
        except (ValueError, TypeError) as exc:  # msgpack's errors, and reject_ext's
            try:
                HeaderCheck().walk(frame, 0, self.limits, self._cap, self._cap_name, self._unpack_options)
            except HeaderError as header:  # every limit and every ext value is reported here
                raise _at(str(header), at) from None
            if isinstance(exc, UnicodeDecodeError):
                raise _at(f"invalid UTF-8 in a str: {exc.reason} at byte {exc.start}", at) from None
            raise _at(self._explain(exc), at) from None
        # memchr first: the marker regex costs ~20x more and 0xff is rare in params.
        if b"\xff" in frame and TIMESTAMP_MARKERS.search(frame) and _contains_timestamp(obj):
            raise _at("ext type -1 (timestamp) not allowed", at)
        if not isinstance(obj, list):
            raise _at(f"top-level message must be an array, got {_describe(obj)}", at)
        return obj

    @staticmethod
    def _explain(exc: Exception) -> str:
        """What a decode error that the header walk did not report means: the walk checks
        every header against the same limits and rejects every ext header (timestamps
        included) before this runs, so only what needs a decode is left (a map key that is
        not str/bin, or, defensively, anything msgpack adds)."""
        text = str(exc)
        match = _MAP_KEY_RE.search(text)
        if match:
            return f"map key of type {match.group(1)} not allowed; keys must be str or bin"
        return f"undecodable message: {type(exc).__name__}: {text}"

    def _to_event(self, msg: list[Any]) -> Event:
        """Turn a decoded top-level array into an event for this role."""
        if not msg:
            return _invalid(None, INVALID_REQUEST, "message array is empty")
        kind = msg[0] if type(msg[0]) is int else None  # bool and float are not types
        if kind == NOTIFICATION:
            return self._notification(msg)
        if kind == REQUEST:
            if self.role == "client":
                msgid = msg[1] if len(msg) > 1 and is_msgid(msg[1]) else None
                return _invalid(msgid, INVALID_REQUEST, "a client does not accept requests")
            return self._request(msg)
        if kind == RESPONSE:
            if self.role == "server":
                return _invalid(None, INVALID_REQUEST, "a server does not accept responses (message type 1)")
            return self._response(msg)
        return _invalid(
            None,
            INVALID_REQUEST,
            f"message type must be 0 (request), 1 (response) or 2 (notification), got {_describe(msg[0])}",
        )

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

    def _request(self, msg: list[Any]) -> Event:
        msgid = msg[1] if len(msg) > 1 and is_msgid(msg[1]) else None
        if len(msg) != 4:
            return _invalid(
                msgid, INVALID_REQUEST, f"request must be [0, msgid, method, params], got {len(msg)} elements"
            )
        if msgid is None:
            return _invalid(None, INVALID_REQUEST, f"msgid must be an unsigned 32-bit int, got {_describe(msg[1])}")
        return self._call(msgid, msg[2], msg[3], lambda method, params: Request(msgid, method, params))

    def _notification(self, msg: list[Any]) -> Event:
        if len(msg) != 3:
            return _invalid(None, INVALID_REQUEST, f"notification must be [2, method, params], got {len(msg)} elements")
        return self._call(None, msg[1], msg[2], Notification)

    def _call(
        self, msgid: int | None, method: object, params: object, make: Callable[[str, list[Any]], Event]
    ) -> Event:
        """The method name and params array shared by requests and notifications."""
        try:
            name = self._method(method)
        except ValueError as exc:
            return _invalid(msgid, INVALID_REQUEST, str(exc))
        if not isinstance(params, list):
            return _invalid(msgid, INVALID_PARAMS, f"params must be an array, got {_describe(params)}")
        return make(name, params)

    def _response(self, msg: list[Any]) -> Event:
        if len(msg) != 4:
            return _invalid(
                None, INVALID_REQUEST, f"response must be [1, msgid, error, result], got {len(msg)} elements"
            )
        if not is_msgid(msg[1]):
            return _invalid(None, INVALID_REQUEST, f"msgid must be an unsigned 32-bit int, got {_describe(msg[1])}")
        return Response(msg[1], msg[2], msg[3])

    # ------------------------------------------------------------------ sending
    # (the bytes come from npcadapt.protocol_codec; a connection keeps the msgid count)

    def request(self, method: str, params: list[Any] | tuple[Any, ...]) -> tuple[int, bytes]:
        """Encode a request with the next msgid (wrapping at 2**32); return (msgid, bytes)."""
        msgid = self._next_msgid
        data = encode_request(msgid, method, params)
        self._next_msgid = (msgid + 1) % MSGID_LIMIT
        return msgid, data

    notification = staticmethod(encode_notification)  # (method, params) -> bytes
    response = staticmethod(encode_response)  # (msgid, error=None, result=None) -> bytes; error None = success
    error_response = staticmethod(encode_error)  # (msgid, code, message) -> bytes, result nil
