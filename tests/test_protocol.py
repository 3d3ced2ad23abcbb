"""Tests of the sans-I/O MessagePack-RPC core: round trips, splits, invalid messages,
limits, bombs and a seeded fuzz. Everything is real bytes; nothing is mocked."""

from __future__ import annotations

import ast
import itertools
import random
import re
import time
import tracemalloc
from pathlib import Path

import msgpack
import pytest

import npcadapt.protocol as protocol
import npcadapt.protocol_codec as protocol_codec
import npcadapt.protocol_headers as protocol_headers
from npcadapt.errors import InvalidInputError, ProtocolError
from npcadapt.protocol import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    InvalidMessage,
    Limits,
    Notification,
    Request,
    Response,
    RpcConnection,
    pack,
)

SMALL = Limits(max_buffer_size=256, max_str_len=24, max_bin_len=24, max_array_len=12, max_map_len=6)


def feed(chunks: list[bytes], limits: Limits = Limits(), role: str = "server"):
    """Feed chunks to a fresh connection; return (events, error message or None)."""
    conn = RpcConnection(limits, role=role)
    events: list = []
    for chunk in chunks:
        try:
            events += conn.receive_data(chunk)
        except ProtocolError as exc:
            return events + exc.events, str(exc)
    return events, None


def random_splits(data: bytes, rng: random.Random, max_cuts: int = 8) -> list[bytes]:
    cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(1, max_cuts))))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


# ---------------------------------------------------------------------- round trips


def test_request_response_round_trip():
    client, server = RpcConnection(role="client"), RpcConnection()
    params = [7, -3, 1.5, "héllo", b"\x00\xff", None, True, [1, [2]], {"k": {"n": 1}}]
    msgid, data = client.request("decide", params)
    assert msgid == 0
    assert server.receive_data(data) == [Request(0, "decide", params)]
    assert client.receive_data(server.response(msgid, None, {"action": 3})) == [Response(0, None, {"action": 3})]
    err = server.error_response(msgid, INTERNAL_ERROR, "boom")
    assert client.receive_data(err) == [Response(0, [INTERNAL_ERROR, "boom"], None)]
    assert client.request("decide", [])[0] == 1


def test_notifications_both_ways():
    client, server = RpcConnection(role="client"), RpcConnection()
    assert server.receive_data(client.notification("episode_end", ["p1", 3])) == [
        Notification("episode_end", ["p1", 3])
    ]
    assert client.receive_data(server.notification("adapter_updated", ["p1"])) == [
        Notification("adapter_updated", ["p1"])
    ]


def test_wire_format_is_the_spec():
    client = RpcConnection(role="client")
    _, data = client.request("ping", [1])
    assert data == bytes.fromhex("940000a470696e679101")
    assert client.response(5, None, "ok") == bytes.fromhex("940105c0a26f6b")
    assert client.notification("n", []) == bytes.fromhex("9302a16e90")


def test_msgid_wraps_at_2_32():
    client = RpcConnection(role="client")
    client._next_msgid = 2**32 - 1
    assert client.request("a", [])[0] == 2**32 - 1
    assert client.request("a", [])[0] == 0


def test_pipelined_requests_in_one_chunk():
    client = RpcConnection(role="client")
    stream = b"".join(client.request("m", [i])[1] for i in range(500))
    events = RpcConnection().receive_data(stream)
    assert events == [Request(i, "m", [i]) for i in range(500)]


def test_binary_method_name_is_decoded():
    events = RpcConnection().receive_data(pack([0, 9, "décide".encode(), []]) + pack([2, b"tick", [1]]))
    assert events == [Request(9, "décide", []), Notification("tick", [1])]


# ---------------------------------------------------------------------- splits


def _mixed_stream() -> bytes:
    client = RpcConnection(role="client")
    parts = [client.request("decide", [i, "x" * i, b"\x01" * (i * 300)])[1] for i in range(12)]
    parts += [
        client.notification("log", [{"a": [1, 2.5]}]),
        pack([1, 3, None, 1]),  # response sent to a server
        pack([0, 4, "m"]),  # wrong arity
        pack([0, 5, "m", 3]),  # params not an array
        pack([7, 1, 2]),  # unknown type
        client.request("last", [])[1],
    ]
    return b"".join(parts)


def test_any_split_gives_identical_events():
    stream = _mixed_stream()
    whole = feed([stream])
    assert whole[1] is None and len(whole[0]) == 18
    assert repr(feed(bytewise(stream))) == repr(whole)
    rng = random.Random(1234)
    for _ in range(50):
        assert repr(feed(random_splits(stream, rng, 40))) == repr(whole)


def test_events_before_an_error_are_attached_and_split_independent():
    stream = pack([0, 1, "a", []]) + pack([2, "b", []]) + b"\xc1" + pack([0, 2, "c", []])
    whole = feed([stream])
    assert whole == ([Request(1, "a", []), Notification("b", [])], whole[1])
    assert "not valid MessagePack" in whole[1] and "offset 11" in whole[1]
    assert feed(bytewise(stream)) == whole


# ---------------------------------------------------------------------- invalid messages

INVALID_CASES = [
    # (message, role, expected msgid, expected code, words in the message)
    ([0, 1, "m", 5], "server", 1, INVALID_PARAMS, "params must be an array, got int"),
    ([0, 1, "m", {"a": 1}], "server", 1, INVALID_PARAMS, "params must be an array, got map"),
    ([0, 1, "m"], "server", 1, INVALID_REQUEST, "got 3 elements"),
    ([0, 1, "m", [], 9], "server", 1, INVALID_REQUEST, "got 5 elements"),
    ([0, -1, "m", []], "server", None, INVALID_REQUEST, "msgid must be an unsigned 32-bit int"),
    ([0, 2**32, "m", []], "server", None, INVALID_REQUEST, "unsigned 32-bit"),
    ([0, "1", "m", []], "server", None, INVALID_REQUEST, "got str"),
    ([0, True, "m", []], "server", None, INVALID_REQUEST, "got bool"),
    ([0, 1.0, "m", []], "server", None, INVALID_REQUEST, "got float"),
    ([0, "x"], "server", None, INVALID_REQUEST, "got 2 elements"),
    ([0, 3, 42, []], "server", 3, INVALID_REQUEST, "method must be a str, got int"),
    ([0, 3, b"\xff\xfe", []], "server", 3, INVALID_REQUEST, "not valid UTF-8"),
    ([1, 3, None, 1], "server", None, INVALID_REQUEST, "server does not accept responses"),
    ([2, "n"], "server", None, INVALID_REQUEST, "got 2 elements"),
    ([2, 5, []], "server", None, INVALID_REQUEST, "method must be a str"),
    ([2, b"\xc3", []], "server", None, INVALID_REQUEST, "not valid UTF-8"),
    ([2, "n", "p"], "server", None, INVALID_PARAMS, "params must be an array, got str"),
    ([3, 1, "m", []], "server", None, INVALID_REQUEST, "got int 3"),
    (["0", 1, "m", []], "server", None, INVALID_REQUEST, "message type must be"),
    ([False, 1, "m", []], "server", None, INVALID_REQUEST, "got bool"),
    ([], "server", None, INVALID_REQUEST, "empty"),
    ([0, 8, "m", []], "client", 8, INVALID_REQUEST, "client does not accept requests"),
    ([1, 8, None], "client", None, INVALID_REQUEST, "got 3 elements"),
    ([1, -8, None, 1], "client", None, INVALID_REQUEST, "msgid must be"),
    ([2, "n", None], "client", None, INVALID_PARAMS, "params must be an array, got nil"),
]


@pytest.mark.parametrize("message,role,msgid,code,words", INVALID_CASES)
def test_invalid_messages_keep_the_connection_open(message, role, msgid, code, words):
    conn = RpcConnection(role=role)
    events = conn.receive_data(pack(message) + pack([2, "after", []]))
    assert events[0] == InvalidMessage(msgid, [code, events[0].error[1]])
    assert words in events[0].error[1]
    assert events[1] == Notification("after", [])
    assert not conn.closed


def test_invalid_message_can_be_answered():
    server, client = RpcConnection(), RpcConnection(role="client")
    (event,) = server.receive_data(pack([0, 11, "m", 5]))
    reply = server.error_response(event.msgid, *event.error)
    assert client.receive_data(reply) == [Response(11, event.error, None)]


# ---------------------------------------------------------------------- protocol errors

PROTOCOL_ERRORS = [
    (b"\xc1", "not valid MessagePack"),
    (b"\x01", "top-level message must be an array, got int 1"),
    (pack({"a": 1}), "got map"),
    (pack("hello"), "got str"),
    (pack([0, 1, "m", ["x" * 25]]), "string of 25 bytes exceeds max_str_len=24"),
    (pack([0, 1, "m", [b"x" * 25]]), "binary of 25 bytes exceeds max_bin_len=24"),
    (pack([0, 1, "m", [list(range(13))]]), "array of 13 elements exceeds max_array_len=12"),
    (pack([0, 1, "m", [{str(i): i for i in range(7)}]]), "map of 7 entries exceeds max_map_len=6"),
    (pack([0, 1, "m", [msgpack.ExtType(5, b"ab")]]), "ext type 5 not allowed"),
    (b"\x94\x00\x01\xa1m\x91\xd4\x80\x00", "ext type -128 not allowed"),
    (pack([0, 1, "m", [{"k": [msgpack.Timestamp(1, 5)]}]]), "ext type -1 (timestamp)"),
    (b"\x94\x00\x01\xa1m\x91\xd4\xff\x00", "ext type -1 (timestamp)"),
    (b"\x94\x00\x01\xa1m\x91\xa2\xff\xfe", "invalid UTF-8"),
    (pack([0, 1, "m", [{1: 2}]]), "map key of type int not allowed"),
    (b"\x94\x00\x01\xa1m\x91\x81\x91\x01\x02", "map key of type list"),
]


@pytest.mark.parametrize("data,words", PROTOCOL_ERRORS)
def test_protocol_errors_close_the_connection(data, words):
    conn = RpcConnection(SMALL)
    with pytest.raises(ProtocolError) as info:
        conn.receive_data(data)
    assert words in str(info.value)
    assert info.value.events == []
    assert conn.closed
    with pytest.raises(ProtocolError, match="connection closed after protocol error"):
        conn.receive_data(pack([2, "n", []]))
    assert feed(bytewise(data), SMALL)[1] == str(info.value)


def test_limits_at_the_edge_are_accepted():
    data = pack([0, 1, "m", ["x" * 24, b"y" * 24, list(range(12)), {str(i): i for i in range(6)}]])
    assert feed([data], SMALL) == ([Request(1, "m", msgpack.unpackb(data)[3])], None)


def test_max_buffer_size_bounds_one_message_not_the_stream():
    limits = Limits(max_buffer_size=64)
    fits = pack([0, 1, "m", ["x" * 56]])
    assert len(fits) == 64
    many = fits * 20  # 1280 bytes in one chunk: fine, each message fits
    assert feed([many], limits)[0] == [Request(1, "m", ["x" * 56])] * 20
    too_big = pack([0, 1, "m", ["x" * 57]])
    for chunks in ([too_big], bytewise(too_big), [fits + too_big]):
        _events, error = feed(chunks, limits)
        assert "message larger than max_buffer_size=64" in error
    assert feed([fits + too_big], limits)[0] == [Request(1, "m", ["x" * 56])]


def test_a_bin_that_cannot_fit_in_one_message_fails_at_its_header():
    conn = RpcConnection(Limits(max_buffer_size=1024, max_bin_len=4096))
    with pytest.raises(ProtocolError, match="message larger than max_buffer_size=1024"):
        conn.receive_data(b"\x94\x00\x01\xa1m\x91\xc5\x04\x00")  # bin16 of 1024 bytes
    assert conn.buffered <= 9


# ---------------------------------------------------------------------- header bombs

_REQUEST_PREFIX = b"\x94\x00\x01\xa1m\x91"  # [0, 1, "m", [ ...
_GIB2 = (2**31).to_bytes(4, "big")
HEADER_BOMBS = [  # (header announcing 2 GiB, words of the error)
    (b"\xdb" + _GIB2, "string of 2147483648 bytes exceeds max_str_len=65536"),
    (b"\xc6" + _GIB2, "binary of 2147483648 bytes exceeds max_bin_len=4194304"),
    (b"\xdd" + _GIB2, "array of 2147483648 elements exceeds max_array_len=1000000"),
    (b"\xdf" + _GIB2, "map of 2147483648 entries exceeds max_map_len=4096"),
    (b"\xc9" + _GIB2 + b"\x05", "ext type 5 not allowed"),
]


@pytest.mark.parametrize("nested", [False, True], ids=["top-level", "inside-a-request"])
@pytest.mark.parametrize("header,words", HEADER_BOMBS, ids=["str", "bin", "array", "map", "ext"])
def test_a_header_announcing_2_gib_fails_as_soon_as_the_header_is_complete(header, words, nested):
    data = (_REQUEST_PREFIX if nested else b"") + header
    # byte by byte: nothing until the header's last byte, which fails
    conn = RpcConnection()
    for byte in bytewise(data[:-1]):
        assert conn.receive_data(byte) == []
    with pytest.raises(ProtocolError, match=re.escape(words)) as info:
        conn.receive_data(data[-1:])
    assert "stream offset 0" in str(info.value) and conn.buffered <= len(data)
    # in random splits, followed by body bytes in the same chunk or not: the same error
    rng = random.Random(len(data))
    for _ in range(20):
        stream = data + b"\x00" * rng.randrange(0, 64)
        events, error = feed(random_splits(stream, rng), Limits())
        assert events == [] and words in error
    # in one piece after a complete request: that request is decoded, then the error
    ok = pack([0, 7, "ping", []])
    with pytest.raises(ProtocolError) as info:
        RpcConnection().receive_data(ok + data)
    assert info.value.events == [Request(7, "ping", [])] and f"offset {len(ok)}" in str(info.value)


def test_allowed_headers_pass_and_the_body_is_awaited():
    conn = RpcConnection(Limits(max_bin_len=1000))
    assert conn.receive_data(_REQUEST_PREFIX + b"\xc5\x03\xe8" + b"z" * 500) == []  # bin16 of 1000
    assert conn.buffered == 509
    assert conn.receive_data(b"z" * 500) == [Request(1, "m", [b"z" * 1000])]
    assert conn.buffered == 0


def test_a_header_problem_wins_over_a_decode_error_however_the_bytes_are_split():
    bad_utf8, too_long = b"\xa2\xff\xfe", b"\xd9\x19" + b"x" * 25  # str of 25 > max_str_len 24
    data = b"\x94\x00\x01\xa1m\x92" + bad_utf8 + too_long
    whole = feed([data], SMALL)
    assert "string of 25 bytes exceeds max_str_len=24" in whole[1]
    assert feed(bytewise(data), SMALL) == whole
    rng = random.Random(5)
    for _ in range(20):
        assert feed(random_splits(data, rng), SMALL) == whole


def test_the_message_cap_can_be_lowered_before_auth_and_restored():
    conn = RpcConnection()
    conn.cap_message_size(64, "pre_auth_max_bytes")
    assert conn.receive_data(pack([0, 1, "auth", ["t" * 40]])) == [Request(1, "auth", ["t" * 40])]
    with pytest.raises(ProtocolError, match="message larger than pre_auth_max_bytes=64"):
        conn.receive_data(b"\x94\x00\x02\xa1m\x91\xc5\x01\x00")  # declares a 256-byte bin
    conn = RpcConnection()
    conn.cap_message_size(64, "pre_auth_max_bytes")
    with pytest.raises(ProtocolError, match="pre_auth_max_bytes=64"):
        feed_all(conn, pack([0, 1, "m", ["x" * 30, "y" * 30]]))  # 70 bytes of small items
    conn = RpcConnection()
    conn.cap_message_size(64, "pre_auth_max_bytes")
    conn.cap_message_size(None)
    big = pack([0, 3, "m", [b"z" * 5000]])
    assert conn.receive_data(big) == [Request(3, "m", [b"z" * 5000])]
    with pytest.raises(InvalidInputError, match="message cap"):
        conn.cap_message_size(0)


def feed_all(conn: RpcConnection, data: bytes) -> list:
    return [event for byte in bytewise(data) for event in conn.receive_data(byte)]


def test_nesting_bomb_fails_fast():
    start = time.perf_counter()
    with pytest.raises(ProtocolError, match="nesting deeper than 1024"):
        RpcConnection().receive_data(b"\x91" * 100_000 + b"\xc0")
    assert time.perf_counter() - start < 1.0
    assert "nesting deeper" in feed(bytewise(b"\x91" * 1100), Limits())[1]


def test_array_header_bomb_allocates_nothing():
    """1000 nested headers each declaring 100k elements: a streaming Unpacker would
    pre-allocate ~85 MB for these 5 KB; the skip-first scanner holds only the bytes."""
    conn = RpcConnection(Limits(max_array_len=100_000))
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        assert conn.receive_data(b"\xdd\x00\x01\x86\xa0" * 1000) == []
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert peak < 256 * 1024, f"peak {peak} bytes"
    with pytest.raises(ProtocolError, match="nesting deeper"):
        conn.receive_data(b"\xdd\x00\x01\x86\xa0" * 100)


# ---------------------------------------------------------------------- encoding


def test_encoding_errors_are_clear():
    conn = RpcConnection()
    with pytest.raises(ProtocolError, match="cannot encode"):
        pack([object()])
    with pytest.raises(ProtocolError, match="cannot encode"):
        conn.response(1, None, 2**70)
    with pytest.raises(InvalidInputError, match="msgid"):
        conn.response(2**32)
    with pytest.raises(InvalidInputError, match="params must be a list"):
        conn.request("m", {"a": 1})
    with pytest.raises(InvalidInputError, match="method must be a str"):
        conn.notification(b"m", [])
    with pytest.raises(InvalidInputError, match="role"):
        RpcConnection(role="peer")
    with pytest.raises(InvalidInputError, match="max_str_len"):
        Limits(max_str_len=0)
    with pytest.raises(InvalidInputError, match="needs bytes"):
        conn.receive_data("text")


@pytest.mark.parametrize("module", [protocol, protocol_headers, protocol_codec])
def test_protocol_modules_do_no_io(module):
    tree = ast.parse(Path(module.__file__).read_text())
    imported = {
        alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
    }
    imported |= {
        node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module
    }
    assert not imported & {"asyncio", "socket", "threading", "selectors", "ssl"}


# ---------------------------------------------------------------------- fuzz

_HEADERS = [
    0x90,
    0x9F,
    0x80,
    0x8F,
    0xA0,
    0xBF,
    0xC4,
    0xC5,
    0xC6,
    0xC7,
    0xC8,
    0xC9,
    0xD4,
    0xD5,
    0xD6,
    0xD7,
    0xD8,
    0xDC,
    0xDD,
    0xDE,
    0xDF,
    0xD9,
    0xDA,
    0xDB,
    0xC1,
    0xFF,
]


def _value(rng: random.Random, depth: int = 0) -> object:
    kind = rng.randrange(9 if depth < 3 else 6)
    if kind == 0:
        return rng.choice([None, True, False])
    if kind == 1:
        return rng.choice([0, 1, -1, 127, 128, -33, 2**16, 2**32 - 1, 2**32, -(2**63), 2**64 - 1])
    if kind == 2:
        return rng.uniform(-1e9, 1e9)
    if kind == 3:
        return "".join(rng.choice("aé€😀z") for _ in range(rng.randrange(12)))
    if kind == 4:
        return rng.randbytes(rng.randrange(30))
    if kind == 5:
        return rng.randrange(2**32)
    if kind == 6 and rng.random() < 0.1:  # rare: ext types end the stream
        return msgpack.ExtType(rng.randrange(128), rng.randbytes(rng.randrange(5)))
    if kind in (6, 7):
        return [_value(rng, depth + 1) for _ in range(rng.randrange(7))]
    return {f"k{i}": _value(rng, depth + 1) for i in range(rng.randrange(5))}


def _message(rng: random.Random) -> bytes:
    method = rng.choice(["decide", b"tick", "m\u00e9", b"\xff", 3])
    params = [_value(rng) for _ in range(rng.randrange(4))] if rng.random() < 0.9 else _value(rng)
    msgid = rng.choice([rng.randrange(2**32), -1, 2**32, "x"]) if rng.random() < 0.2 else 7
    shape = rng.choice(
        [
            [0, msgid, method, params],
            [2, method, params],
            [1, msgid, None, params],
            [0, msgid, method],
            [rng.randrange(-2, 5), msgid],
            [],
            params,
        ]
        + [[0, msgid, rng.choice(["decide", b"tick"]), params], [2, "tick", params]] * 3
    )
    return msgpack.packb(shape, use_bin_type=True)


def _mutate(rng: random.Random, data: bytes, other: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randrange(1, 4)):
        op = rng.randrange(6)
        if op == 0 and buf:  # bit flips
            i = rng.randrange(len(buf))
            buf[i] ^= 1 << rng.randrange(8)
        elif op == 1 and buf:  # truncation
            del buf[rng.randrange(len(buf)) :]
        elif op == 2:  # splice in part of another message
            i, j = sorted(rng.sample(range(len(other) + 1), 2)) if len(other) > 1 else (0, 0)
            buf[rng.randrange(len(buf) + 1) : 0] = other[i:j]
        elif op == 3:  # insert a dangerous header byte
            buf.insert(rng.randrange(len(buf) + 1), rng.choice(_HEADERS))
        elif op == 4 and buf:  # overwrite with random bytes
            i = rng.randrange(len(buf))
            buf[i : i + 4] = rng.randbytes(4)
        else:  # duplicate a slice
            i = rng.randrange(len(buf) + 1)
            buf[i:i] = buf[max(0, i - 8) : i]
    return bytes(buf)


def _fuzz_inputs(n: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    inputs = []
    for k in range(n):
        if k % 4 == 0:
            inputs.append(rng.randbytes(rng.randrange(80)))
        elif k % 4 == 1:
            inputs.append(bytes(rng.choice(_HEADERS + [0x00, 0x01, 0x7F, 0xC0]) for _ in range(rng.randrange(60))))
        else:
            parts = [_message(rng) for _ in range(rng.randrange(1, 5))]
            bad = rng.randrange(len(parts))
            parts[bad] = _mutate(rng, parts[bad], _message(rng))
            inputs.append(b"".join(parts))
    return inputs


def _check_event(event: object) -> None:
    assert isinstance(event, (Request, Notification, InvalidMessage, Response))
    if isinstance(event, InvalidMessage):
        assert event.msgid is None or 0 <= event.msgid < 2**32
        assert event.error[0] in (INVALID_REQUEST, INVALID_PARAMS) and event.error[1]
    if isinstance(event, (Request, Notification)):
        assert isinstance(event.method, str) and isinstance(event.params, list)


def test_fuzz_only_events_or_protocol_errors_and_split_independent():
    rng = random.Random(99)
    stats = {"requests": 0, "events": 0, "errors": 0}
    tracemalloc.start()
    try:
        for data in _fuzz_inputs(2000, seed=7):
            base = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            try:
                whole = feed([data], SMALL)
            except Exception as exc:  # any non-ProtocolError escaping is a bug
                pytest.fail(f"{type(exc).__name__}: {exc} for input {data.hex()}")
            peak = tracemalloc.get_traced_memory()[1] - base
            # msgpack allocates a ~41 KB stack per Unpacker: the connection's scanner, plus
            # briefly one more while the header check looks at a run of finished items
            assert peak < 128 * 1024, f"peak {peak} bytes for input {data.hex()}"
            for event in whole[0]:
                _check_event(event)
            stats["events"] += len(whole[0])
            stats["requests"] += sum(isinstance(e, (Request, Notification)) for e in whole[0])
            stats["errors"] += whole[1] is not None
            if len(data) > 1:
                assert repr(feed(random_splits(data, rng), SMALL)) == repr(whole), data.hex()
            if len(data) <= 64:
                assert repr(feed(bytewise(data), SMALL)) == repr(whole), data.hex()
    finally:
        tracemalloc.stop()
    assert min(stats.values()) > 300, stats  # both paths exercised


def test_limits_and_ext_values_never_reach_the_decode_error_explainer(monkeypatch):
    """Why RpcConnection._explain knows only map keys: a complete message that fails to
    decode is walked first, against the same limits and rejecting every ext header, so a
    limit or an ext value (a timestamp, a malformed one included) is always reported in the
    walk's words, whole or split; only what needs a decode (a map key) is left to explain."""
    explained = []
    real = RpcConnection._explain
    monkeypatch.setattr(RpcConnection, "_explain", staticmethod(lambda exc: explained.append(str(exc)) or real(exc)))
    request = b"\x94\x00\x01\xa1m\x91"  # [0, 1, "m", [ ... ]] around one param
    cases = [
        (pack([0, 1, "m", ["x" * 30]]), "string of 30 bytes exceeds max_str_len=24"),
        (pack([0, 1, "m", [b"x" * 30]]), "binary of 30 bytes exceeds max_bin_len=24"),
        (pack([0, 1, "m", [list(range(13))]]), "array of 13 elements exceeds max_array_len=12"),
        (pack([0, 1, "m", [{f"k{i}": i for i in range(7)}]]), "map of 7 entries exceeds max_map_len=6"),
        (pack([0, 1, "m", [{"k": [msgpack.ExtType(5, b"ab")]}]]), "ext type 5 not allowed"),
        (request + b"\xd4\xff\x00", "ext type -1 (timestamp) not allowed"),  # 1 byte: msgpack says "invalid timestamp"
        (request + b"\xc7\x05\xff" + b"\x00" * 5, "ext type -1 (timestamp) not allowed"),
        (pack([0, 1, "m", [{1: 2}, "x" * 30]]), "string of 30 bytes"),  # a limit comes before a map key
    ]
    rng = random.Random(3)
    for data, words in cases:
        for chunks in ([data], random_splits(data, rng), bytewise(data)):
            assert words in feed(chunks, SMALL)[1], data.hex()
    for data in _fuzz_inputs(2000, seed=7):
        feed([data], SMALL)
    assert all("is not allowed for map key" in text for text in explained), explained
    assert "map key of type int" in feed([pack([0, 1, "m", [{1: 2}]])], SMALL)[1]
    assert explained[-1] == "int is not allowed for map key when strict_map_key=True"


def test_the_scanner_does_not_keep_the_size_of_the_largest_message():
    """msgpack's Unpacker buffer never shrinks: 5 connections that each completed a 4 MB
    message kept ~34 MB between them. The scanner is replaced once such a message is done
    (and the next one's first bytes are pending), so they keep next to nothing."""
    msg = msgpack.packb([0, 1, "x", [b"z" * (4 * 2**20 - 100)]])
    next_start = msgpack.packb([0, 2, "y", []])[:3]
    tracemalloc.start()
    try:
        conns = [RpcConnection() for _ in range(5)]
        base = tracemalloc.get_traced_memory()[0]
        for conn in conns:
            events = [e for i in range(0, len(msg), 65536) for e in conn.receive_data(msg[i : i + 65536])]
            assert len(events) == 1 and events[0].msgid == 1
            del events
            assert conn.receive_data(next_start) == []
        kept = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert all(c.buffered == 3 and c.memory == 6 and c.scanner_peak < 2**16 for c in conns)
    assert kept < 2**20, f"{kept} bytes kept by 5 connections"  # was ~34 MB
    for conn in conns:  # and the stream goes on at the right offsets
        events = conn.receive_data(msgpack.packb([0, 2, "y", []])[3:] + msgpack.packb([0, 3, "z", []]))
        assert [e.msgid for e in events] == [2, 3]


@pytest.mark.parametrize(
    "bad, error",
    [
        (b"\xa4\xff\xfe\xfd\xfc", "invalid UTF-8 in a str"),  # decode error
        (b"\x91" * 1100 + b"\xc0" + b"\xc0" * 3, "nesting deeper than 1024"),  # StackError in the scanner
        (b"\xc1\xc0\xc0\xc0\xc0", "not valid MessagePack"),  # FormatError in the scanner
    ],
)
def test_rejecting_a_large_bad_message_walks_few_headers_in_python(monkeypatch, bad, error):
    """A ~7 MB act_batch whose last row is bad: rejected with a clear error, and the
    header check behind the error checks runs of finished items in C, so Python looks at
    a few thousand headers, not the ~600,000 the message holds (this cost > 1 s of loop)."""
    rows = [[f"p{i}", "n", b"x" * 32] for i in range(150_000)]
    rows[-1][1] = "QQQQ"
    data = msgpack.packb([0, 1, "act_batch", ["duelist", rows]], use_bin_type=True)
    assert 6 * 2**20 < len(data) < 8 * 2**20 and data.count(b"\xa4QQQQ") == 1
    data = data.replace(b"\xa4QQQQ", bad)
    seen = []
    real = protocol_headers.check_length
    monkeypatch.setattr(
        protocol_headers, "check_length", lambda kind, n, limits: seen.append(kind) or real(kind, n, limits)
    )
    conn = RpcConnection()
    with pytest.raises(ProtocolError, match=error):
        conn.receive_data(data)
    assert len(seen) < 20_000, f"{len(seen)} headers walked in Python"
