"""On-disk format of interaction-log segments: framing, validation, walking a segment.

Format. A log is a directory of segments ``seg-00000001.npl``, ``seg-00000002.npl``, ...
Each segment starts with an 8-byte header, ``b"NPLOG\\x00"`` + format version (1) + a
reserved zero byte, followed by records::

    magic b"\\xa5\\x5a" | u32 LE payload length | u32 LE crc32(length bytes + payload) | payload

where the payload is ``msgpack.packb(record, use_bin_type=True)`` of a dict. The engine
decides the records' schema; this module only stores maps.

A crash can leave the last segment with a torn tail: a partial record header, a length
running past EOF, or a bad CRC with no valid record after it. That is not corruption:
writers cut it on open and readers stop there quietly. A bad record with a valid record
after it is corruption: it is reported and readers resynchronise on the next record
whose magic, length and CRC check out.
"""

from __future__ import annotations

import os
import re
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import msgpack

from npcadapt.errors import LogError

FORMAT_VERSION = 1
FILE_MAGIC = b"NPLOG\x00"
FILE_HEADER = FILE_MAGIC + bytes([FORMAT_VERSION, 0])
RECORD_MAGIC = b"\xa5\x5a"
_LEN = struct.Struct("<I")
_FRAME = struct.Struct("<2sII")  # magic, payload length, crc32
FRAME_HEADER_BYTES = _FRAME.size  # 10
_SEGMENT_RE = re.compile(r"^seg-(\d{8})\.npl$")


def frame(payload: bytes) -> bytes:
    """The 10-byte record header for ``payload``."""
    n = len(payload)
    return _FRAME.pack(RECORD_MAGIC, n, zlib.crc32(payload, zlib.crc32(_LEN.pack(n))))


def _frame_end(data: bytes, pos: int) -> int:
    """End offset of the valid record at ``pos``, or -1 if there is none."""
    if len(data) - pos < FRAME_HEADER_BYTES:
        return -1
    magic, n, crc = _FRAME.unpack_from(data, pos)
    end: int = pos + FRAME_HEADER_BYTES + n
    if magic != RECORD_MAGIC or end > len(data):
        return -1
    view = memoryview(data)
    if zlib.crc32(view[pos + FRAME_HEADER_BYTES : end], zlib.crc32(view[pos + 2 : pos + 6])) != crc:
        return -1
    return end


def _frame_problem(data: bytes, pos: int) -> str:
    """Why the record at ``pos`` is not valid (for messages)."""
    left = len(data) - pos
    if left < FRAME_HEADER_BYTES:
        return f"partial record header ({left} of {FRAME_HEADER_BYTES} bytes)"
    magic, n, crc = _FRAME.unpack_from(data, pos)
    if magic != RECORD_MAGIC:
        return f"bad record magic {magic.hex()} (expected {RECORD_MAGIC.hex()})"
    if n > left - FRAME_HEADER_BYTES:
        return f"length {n} runs past end of file ({left - FRAME_HEADER_BYTES} bytes left)"
    return f"CRC mismatch on {n}-byte record (stored {crc:08x})"


def _resync(data: bytes, start: int) -> int:
    """Offset of the next valid record at or after ``start``, or -1."""
    i = data.find(RECORD_MAGIC, start)
    while i != -1:
        if _frame_end(data, i) != -1:
            return i
        i = data.find(RECORD_MAGIC, i + 1)
    return -1


class Span(NamedTuple):
    """A region [start, end) of a segment: a valid "record", a "corrupt" region, or a
    "torn" tail (always last: nothing valid follows it)."""

    kind: str
    start: int
    end: int
    reason: str = ""


def segment_spans(path: Path, data: bytes) -> Iterator[Span]:
    """Walk a segment's bytes from its file header to EOF."""
    n, head = len(data), len(FILE_HEADER)
    pos = head
    if n < head and data == FILE_HEADER[:n]:
        yield Span("torn", 0, n, f"torn file header ({n} of {head} bytes)")
        return
    if data[: len(FILE_MAGIC)] != FILE_MAGIC or n < head:
        nxt = _resync(data, 1)
        pos = n if nxt == -1 else nxt
        yield Span("corrupt", 0, pos, f"bad segment file header {data[:head].hex()}")
    elif data[6] != FORMAT_VERSION:
        raise LogError(f"log segment {path} has format version {data[6]}; this reader knows {FORMAT_VERSION}")
    while pos < n:
        end = _frame_end(data, pos)
        if end != -1:
            yield Span("record", pos, end)
            pos = end
            continue
        nxt = _resync(data, pos + 1)
        if nxt == -1:
            yield Span("torn", pos, n, _frame_problem(data, pos))
            return
        yield Span("corrupt", pos, nxt, _frame_problem(data, pos))
        pos = nxt


def decode(data: bytes, pos: int, end: int) -> dict[str, Any]:
    """Unpack the payload of the valid record [pos, end); raises ValueError if not a map."""
    obj = msgpack.unpackb(memoryview(data)[pos + FRAME_HEADER_BYTES : end], raw=False, strict_map_key=False)
    if not isinstance(obj, dict):
        raise ValueError(f"payload is a {type(obj).__name__}, not a map")
    return obj


def list_segments(directory: str | os.PathLike[str]) -> list[Path]:
    """Segment files of a log directory, in order."""
    d = Path(directory)
    if not d.is_dir():
        raise LogError(f"log directory {d} does not exist or is not a directory")
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := _SEGMENT_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def segment_path(directory: Path, number: int) -> Path:
    return directory / f"seg-{number:08d}.npl"


def segment_number(path: Path) -> int:
    m = _SEGMENT_RE.match(path.name)
    assert m is not None, path
    return int(m.group(1))


def read_segment(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise LogError(f"cannot read log segment {path}: {e.strerror or e}") from e
