"""Every byte the socket bridge and its clients write: the MessagePack-RPC encoders.

The writing half of the protocol core (:mod:`npcadapt.protocol` parses what arrives),
kept in one module as h11 keeps all of its writers together, so what goes on the wire
can be read in one place. No I/O: each function returns bytes.

* :func:`encode_request`, :func:`encode_notification`, :func:`encode_response`,
  :func:`encode_error`: whole messages from Python values (``msgpack.packb``).
* :func:`packed_response`: the success framing ``[1, msgid, nil, result]`` around a
  result that is already MessagePack, one value or the items of an array.
* :class:`DecisionEncoder`: the decision maps of a whole engine forward, packed
  column-wise straight to MessagePack (the hot path of ``act`` / ``act_batch``).
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgpack
import numpy as np

from .errors import InvalidInputError, ProtocolError

if TYPE_CHECKING:
    from .types import BatchDecision

REQUEST, RESPONSE, NOTIFICATION = 0, 1, 2  # message types, the first element of every message
MSGID_LIMIT = 2**32


def is_msgid(value: object) -> bool:
    """An unsigned 32-bit int (bool is not an int here)."""
    return type(value) is int and 0 <= value < MSGID_LIMIT


def pack(obj: object) -> bytes:
    """Encode ``obj`` as MessagePack (str as str, bytes as bin); ProtocolError if impossible."""
    try:
        packed: bytes = msgpack.packb(obj, use_bin_type=True)
        return packed
    except (TypeError, ValueError, OverflowError) as exc:
        raise ProtocolError(f"cannot encode {type(obj).__name__} as MessagePack: {exc}") from exc


# ---------------------------------------------------------------- whole messages


def encode_request(msgid: int, method: str, params: list[Any] | tuple[Any, ...]) -> bytes:
    """``[0, msgid, method, params]`` (a tuple of params is sent as an array too)."""
    return pack([REQUEST, msgid, *_checked(method, params)])


def encode_notification(method: str, params: list[Any] | tuple[Any, ...]) -> bytes:
    """``[2, method, params]``."""
    return pack([NOTIFICATION, *_checked(method, params)])


def encode_response(msgid: int, error: object = None, result: object = None) -> bytes:
    """``[1, msgid, error, result]``; ``error`` None means success."""
    if not is_msgid(msgid):
        raise InvalidInputError(f"msgid must be an unsigned 32-bit int, got {msgid!r}")
    return pack([RESPONSE, msgid, error, result])


def encode_error(msgid: int, code: int, message: str) -> bytes:
    """A failed response: error ``[code, message]``, result nil."""
    if type(code) is not int:
        raise InvalidInputError(f"error code must be an int, got {code!r}")
    if not isinstance(message, str):
        raise InvalidInputError(f"error message must be a str, got {type(message).__name__}")
    return encode_response(msgid, [code, message], None)


def _checked(method: object, params: object) -> tuple[str, list[Any]]:
    """Validate outgoing method and params (a tuple is sent as an array too)."""
    if not isinstance(method, str):
        raise InvalidInputError(f"method must be a str, got {type(method).__name__}")
    if not isinstance(params, (list, tuple)):
        raise InvalidInputError(f"params must be a list, got {type(params).__name__}")
    return method, list(params)


# ---------------------------------------------------------------- pre-encoded results

_RESPONSE_OK = [bytes((0x94, RESPONSE, i, 0xC0)) for i in range(128)]  # "[1, msgid, nil," for msgids < 128


def packed_response(msgid: int, result: bytes, count: int | None = None) -> bytes:
    """A success response ``[1, msgid, nil, result]`` around a result already encoded.

    `result` is one MessagePack value, or with `count` the `count` values back to back
    that make up an array result. Only the framing is written here; msgid is checked.
    """
    if not is_msgid(msgid):
        raise InvalidInputError(f"msgid must be an unsigned 32-bit int, got {msgid!r}")
    head = _RESPONSE_OK[msgid] if msgid < 128 else b"\x94\x01" + pack(msgid) + b"\xc0"
    if count is None:
        return head + result
    if count < 16:
        return head + bytes((0x90 | count,)) + result
    if count < 2**16:
        return head + b"\xdc" + count.to_bytes(2, "big") + result
    return head + b"\xdd" + count.to_bytes(4, "big") + result


@dataclass(frozen=True)
class EncodedRows:
    """Every row's result as one MessagePack map; row i is data[offsets[i]:offsets[i + 1]]."""

    data: bytes
    offsets: list[int]  # n + 1 byte offsets


_MARKERS = {">u4": (b"\xce", "I"), ">u8": (b"\xcf", "Q"), ">f4": (b"\xca", "f")}  # msgpack type byte, struct code


class _FixedPart:
    """The fixed-width part of a decision map: map header, then key, type byte, value per field."""

    def __init__(self, fields: Sequence[tuple[str, str]], n_entries: int):
        dtype, fmt = [("map", "u1")], ">B"
        self.constants: dict[str, Any] = {"map": 0x80 | n_entries}
        for name, kind in fields:
            marker = msgpack.packb(name) + _MARKERS[kind][0]
            dtype += [(f"k_{name}", f"S{len(marker)}"), (name, kind)]
            self.constants[f"k_{name}"] = marker
            fmt += f"{len(marker)}s{_MARKERS[kind][1]}"
        self.fields = [name for name, _ in fields]
        self.record = np.dtype(dtype)  # packed: no alignment padding
        self.struct = struct.Struct(fmt)
        self.markers = [self.constants[f"k_{name}"] for name in self.fields]
        assert self.record.itemsize == self.struct.size


class DecisionEncoder:
    """MessagePack maps of a batch's decisions, built column-wise with no per-row dicts.

    Each map holds decision, logp, value, entropy, adapter_version, action, action_name
    (in that order). Floats go out as float32 (what the engine computes), the two ids as
    uint32, or uint64 for a batch where one needs it, so every row but its action part has
    one fixed layout: a few rows are packed with a ``struct``, a large batch as one numpy
    record array. The action part (action and action_name) is packed once per action.
    """

    VECTOR_ROWS = 80  # from this many rows on, one numpy record array beats struct.pack per row

    def __init__(self, action_names: Sequence[str]):
        self._tails = [
            msgpack.packb("action") + msgpack.packb(i) + msgpack.packb("action_name") + msgpack.packb(name)
            for i, name in enumerate(action_names)
        ]
        self._tail_len = np.array([len(t) for t in self._tails], np.int64)  # (A,)
        self._tail_bytes = np.zeros((len(self._tails), int(self._tail_len.max())), np.uint8)  # (A, W), zero-padded
        for i, tail in enumerate(self._tails):
            self._tail_bytes[i, : len(tail)] = np.frombuffer(tail, np.uint8)
        self._layouts = {
            (wide_ids, wide_versions): _FixedPart(
                [
                    ("decision", ">u8" if wide_ids else ">u4"),
                    ("logp", ">f4"),
                    ("value", ">f4"),
                    ("entropy", ">f4"),
                    ("adapter_version", ">u8" if wide_versions else ">u4"),
                ],
                7,
            )
            for wide_ids in (False, True)
            for wide_versions in (False, True)
        }

    def encode(self, out: BatchDecision) -> EncodedRows:
        """The rows of `out` as MessagePack maps, back to back."""
        n = len(out)
        wide = (n > 0 and int(out.decision.max()) >= 2**32, n > 0 and int(out.adapter_version.max()) >= 2**32)
        if n < self.VECTOR_ROWS:
            return self._encode_rows(out, self._layouts[wide])
        return self._encode_columns(out, self._layouts[wide])

    def _encode_rows(self, out: BatchDecision, part: _FixedPart) -> EncodedRows:
        pack_row, (kd, kl, kv, ke, ka), header = part.struct.pack, part.markers, part.constants["map"]
        rows = [
            pack_row(header, kd, d, kl, lp, kv, v, ke, e, ka, av) + self._tails[a]
            for d, lp, v, e, av, a in zip(
                out.decision.tolist(),
                out.logp.tolist(),
                out.value.tolist(),
                out.entropy.tolist(),
                out.adapter_version.tolist(),
                out.action.tolist(),
            )
        ]
        return EncodedRows(b"".join(rows), list(itertools.accumulate(map(len, rows), initial=0)))

    def _encode_columns(self, out: BatchDecision, part: _FixedPart) -> EncodedRows:
        n = len(out)
        fixed = np.empty(n, part.record)
        for name, value in part.constants.items():
            fixed[name] = value
        for name in part.fields:
            fixed[name] = getattr(out, name)
        width = part.record.itemsize
        padded = np.concatenate([fixed.view(np.uint8).reshape(n, width), self._tail_bytes[out.action]], axis=1)
        row_len = width + self._tail_len[out.action]  # (N,)
        keep = np.arange(padded.shape[1]) < row_len[:, None]  # (N, width + tail width)
        offsets = np.zeros(n + 1, np.int64)
        np.cumsum(row_len, out=offsets[1:])
        return EncodedRows(padded[keep].tobytes(), offsets.tolist())
