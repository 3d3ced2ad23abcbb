"""The interaction log: append-only, CRC'd, crash-safe segment files of msgpack records.

This module owns the on-disk log format, appending (buffered, thread-safe, rotating by
size), crash recovery (cutting a torn tail, routing around mid-segment corruption) and
reading back (records in order, corruption reported, never silently dropped).

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

import errno
import fcntl
import logging
import os
import re
import struct
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, NamedTuple

import msgpack

from npcadapt.errors import InvalidInputError, LogCorruptionError, LogError

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
FILE_MAGIC = b"NPLOG\x00"
FILE_HEADER = FILE_MAGIC + bytes([FORMAT_VERSION, 0])
RECORD_MAGIC = b"\xa5\x5a"
_LEN = struct.Struct("<I")
_FRAME = struct.Struct("<2sII")  # magic, payload length, crc32
FRAME_HEADER_BYTES = _FRAME.size  # 10
_SEGMENT_RE = re.compile(r"^seg-(\d{8})\.npl$")
_BUFFER_BYTES = 1 << 20  # buffered bytes that trigger a write to the OS
_MAX_U32 = 2**32 - 1


@dataclass(frozen=True)
class CorruptRecord:
    """A bad region in a segment: where it starts, why it is bad, how much was skipped."""

    segment: Path
    offset: int
    reason: str
    skipped_bytes: int = 0


@dataclass(frozen=True)
class TornTail:
    """Bytes after the last complete record of the last segment (what a crash leaves)."""

    segment: Path
    offset: int
    bytes: int


@dataclass(frozen=True)
class Recovery:
    """What opening the log did to its last segment."""

    segment: Path
    bytes_truncated: int
    records_kept: int
    corrupt_records: int = 0
    header_rewritten: bool = False


@dataclass(frozen=True)
class LogSummary:
    """Counts over a whole log directory (see :func:`scan`)."""

    segments: int
    records: int
    bytes: int
    corrupt_records: list[CorruptRecord]
    torn_tail_bytes: int


# ---------------------------------------------------------------- framing (no I/O)


def _frame(payload: bytes) -> bytes:
    """The 10-byte record header for ``payload``."""
    n = len(payload)
    return _FRAME.pack(RECORD_MAGIC, n, zlib.crc32(payload, zlib.crc32(_LEN.pack(n))))


def _frame_end(data: bytes, pos: int) -> int:
    """End offset of the valid record at ``pos``, or -1 if there is none."""
    if len(data) - pos < FRAME_HEADER_BYTES:
        return -1
    magic, n, crc = _FRAME.unpack_from(data, pos)
    end = pos + FRAME_HEADER_BYTES + n
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


class _Span(NamedTuple):
    """A region [start, end) of a segment: a valid "record", a "corrupt" region, or a
    "torn" tail (always last: nothing valid follows it)."""

    kind: str
    start: int
    end: int
    reason: str = ""


def _segment_spans(path: Path, data: bytes) -> Iterator[_Span]:
    """Walk a segment's bytes from its file header to EOF."""
    n, head = len(data), len(FILE_HEADER)
    pos = head
    if n < head and data == FILE_HEADER[:n]:
        yield _Span("torn", 0, n, f"torn file header ({n} of {head} bytes)")
        return
    if data[: len(FILE_MAGIC)] != FILE_MAGIC or n < head:
        nxt = _resync(data, 1)
        pos = n if nxt == -1 else nxt
        yield _Span("corrupt", 0, pos, f"bad segment file header {data[:head].hex()}")
    elif data[6] != FORMAT_VERSION:
        raise LogError(
            f"log segment {path} has format version {data[6]}; this reader knows {FORMAT_VERSION}"
        )
    while pos < n:
        end = _frame_end(data, pos)
        if end != -1:
            yield _Span("record", pos, end)
            pos = end
            continue
        nxt = _resync(data, pos + 1)
        if nxt == -1:
            yield _Span("torn", pos, n, _frame_problem(data, pos))
            return
        yield _Span("corrupt", pos, nxt, _frame_problem(data, pos))
        pos = nxt


def _decode(data: bytes, pos: int, end: int) -> dict:
    """Unpack the payload of the valid record [pos, end); raises ValueError if not a map."""
    obj = msgpack.unpackb(
        memoryview(data)[pos + FRAME_HEADER_BYTES : end], raw=False, strict_map_key=False
    )
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


def _segment_path(directory: Path, number: int) -> Path:
    return directory / f"seg-{number:08d}.npl"


def _segment_number(path: Path) -> int:
    m = _SEGMENT_RE.match(path.name)
    assert m is not None, path
    return int(m.group(1))


# ---------------------------------------------------------------- reading


def read_records(
    directory: str | os.PathLike[str],
    *,
    on_corrupt: Callable[[CorruptRecord], None] | None = None,
    on_torn: Callable[[TornTail], None] | None = None,
) -> Iterator[dict]:
    """Yield every valid record of every segment, in order.

    A corrupt record is passed to ``on_corrupt`` (or raises :class:`LogCorruptionError`
    naming segment and offset when there is no callback); reading then resumes at the
    next valid record. A torn tail of the last segment ends reading quietly (it is passed
    to ``on_torn`` if given); in an earlier segment it counts as corruption.
    """
    segments = list_segments(directory)

    def report(bad: CorruptRecord) -> None:
        if on_corrupt is None:
            raise LogCorruptionError(
                f"corrupt record in log segment {bad.segment} at offset {bad.offset}: "
                f"{bad.reason} ({bad.skipped_bytes} bytes skipped)"
            )
        on_corrupt(bad)

    for i, path in enumerate(segments):
        data = _read(path)
        for kind, start, end, reason in _segment_spans(path, data):
            if kind == "record":
                try:
                    obj = _decode(data, start, end)
                except (ValueError, TypeError, msgpack.UnpackException) as e:
                    report(CorruptRecord(path, start, f"unpackable payload: {e}", end - start))
                    continue
                yield obj
            elif kind == "corrupt":
                report(CorruptRecord(path, start, reason, end - start))
            elif i == len(segments) - 1:
                if on_torn is not None:
                    on_torn(TornTail(path, start, end - start))
            else:
                reason = f"incomplete data at end of non-final segment: {reason}"
                report(CorruptRecord(path, start, reason, end - start))


def scan(directory: str | os.PathLike[str]) -> LogSummary:
    """Count segments, valid records, bytes, corrupt records and torn-tail bytes."""
    corrupt: list[CorruptRecord] = []
    torn: list[TornTail] = []
    records = sum(
        1 for _ in read_records(directory, on_corrupt=corrupt.append, on_torn=torn.append)
    )
    segments = list_segments(directory)
    return LogSummary(
        segments=len(segments),
        records=records,
        bytes=sum(p.stat().st_size for p in segments),
        corrupt_records=corrupt,
        torn_tail_bytes=sum(t.bytes for t in torn),
    )


# ---------------------------------------------------------------- writing


def _describe_oserror(e: OSError) -> str:
    if e.errno == errno.ENOSPC:
        return "disk full (ENOSPC)"
    if e.errno == errno.EDQUOT:
        return "disk quota exceeded (EDQUOT)"
    return e.strerror or str(e)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class InteractionLog:
    """Buffered, thread-safe appender to one log directory, recovering it on open.

    ``recovery`` tells what opening did to the last segment. ``records_written`` and
    ``bytes_written`` count what this instance accepted (buffered or on disk). A write
    failure raises :class:`LogError`; the segment on disk stays a valid prefix and the
    unwritten records stay buffered, so a later ``flush()`` may still write them.
    One writer per directory (an advisory lock on ``directory/.lock`` enforces it).
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        segment_bytes: int = 64 * 2**20,
        max_record_bytes: int = 1 * 2**20,
        fsync_on_flush: bool = True,
    ) -> None:
        if segment_bytes <= len(FILE_HEADER) + FRAME_HEADER_BYTES:
            raise InvalidInputError(f"segment_bytes must exceed 18, got {segment_bytes}")
        if not 0 < max_record_bytes <= _MAX_U32:
            raise InvalidInputError(
                f"max_record_bytes must be in [1, 2**32-1], got {max_record_bytes}"
            )
        self.directory = Path(directory)
        self._segment_bytes = segment_bytes
        self._max_record_bytes = max_record_bytes
        self._fsync = fsync_on_flush
        self._lock = threading.Lock()
        self._chunks: list[bytes] = []  # framed records not yet written to the OS
        self._pending = 0  # bytes in _chunks
        self._drained = 0  # bytes this instance wrote to the OS
        self._packer = msgpack.Packer(use_bin_type=True)  # used under the lock only
        self._closed = False
        self.records_written = 0
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise LogError(f"cannot create log directory {self.directory}: {e}") from e
        self._lockfile = _take_dir_lock(self.directory)
        try:
            self.recovery = self._recover()
        except BaseException:
            self._lockfile.close()
            raise

    # -- opening and recovery

    def _recover(self) -> Recovery:
        """Repair the last segment and open the segment that appends go to."""
        segs = list_segments(self.directory)
        if not segs:
            path = _segment_path(self.directory, 1)
            self._open(path, create=True)
            return Recovery(path, 0, 0)
        path = segs[-1]
        data = _read(path)
        kept = corrupt = 0
        cut_at = len(data)
        for span in _segment_spans(path, data):
            if span.kind == "record":
                kept += 1
            elif span.kind == "corrupt":
                corrupt += 1
                logger.warning(
                    "log segment %s: corrupt record at offset %d: %s", path, span.start, span.reason
                )
            else:
                cut_at = span.start
        recovery = Recovery(path, len(data) - cut_at, kept, corrupt, cut_at == 0)
        if cut_at < len(data) or cut_at == 0:
            logger.warning(
                "log segment %s: cutting %d torn bytes after %d records at offset %d",
                path,
                len(data) - cut_at,
                kept,
                cut_at,
            )
            self._cut(path, cut_at)
        if corrupt:
            nxt = _segment_path(self.directory, _segment_number(path) + 1)
            logger.warning(
                "log segment %s has %d corrupt records; appending to %s", path, corrupt, nxt
            )
            self._open(nxt, create=True)
        else:
            self._open(path, create=False)
        return recovery

    def _cut(self, path: Path, size: int) -> None:
        """Truncate a torn tail; a segment cut to nothing gets a fresh file header."""
        try:
            with open(path, "r+b") as f:
                f.truncate(size)
                if size == 0:
                    f.write(FILE_HEADER)
                    f.flush()
                if self._fsync:
                    os.fsync(f.fileno())
        except OSError as e:
            raise LogError(
                f"cannot cut torn tail of log segment {path}: {_describe_oserror(e)}"
            ) from e

    def _open(self, path: Path, *, create: bool) -> None:
        """Make ``path`` the segment appends go to (creating it with a header if asked)."""
        try:
            f = open(path, "xb" if create else "ab", buffering=0)  # noqa: SIM115
        except OSError as e:
            raise LogError(f"cannot open log segment {path}: {_describe_oserror(e)}") from e
        try:
            if create:
                f.write(FILE_HEADER)
                if self._fsync:
                    os.fsync(f.fileno())
                    _fsync_dir(self.directory)
            size = os.fstat(f.fileno()).st_size
        except OSError as e:
            f.close()
            if create:  # leave no half-made segment behind to block the next try
                path.unlink(missing_ok=True)
            raise LogError(f"cannot create log segment {path}: {_describe_oserror(e)}") from e
        self._file = f
        self._path = path
        self._disk_size = size  # bytes of the segment known to be on disk (a valid prefix)

    # -- appending

    def _pack(self, record: Mapping) -> bytes:
        """Pack one record with the shared packer (lock held); raises LogError."""
        if type(record) is not dict:
            if not isinstance(record, Mapping):
                raise LogError(f"log record must be a mapping, got {type(record).__name__}")
            record = dict(record)
        try:
            payload = self._packer.pack(record)
        except (TypeError, ValueError, OverflowError) as e:
            raise LogError(f"cannot pack log record with keys {_keys(record)}: {e}") from e
        if len(payload) > self._max_record_bytes:
            raise LogError(
                f"log record with keys {_keys(record)} packs to {len(payload)} bytes, "
                f"over max_record_bytes={self._max_record_bytes}"
            )
        return payload

    def _make_room(self, size: int) -> None:
        """Before buffering ``size`` bytes: check open, write out, rotate (lock held)."""
        if self._closed:
            raise LogError(f"interaction log {self.directory} is closed")
        if self._pending >= _BUFFER_BYTES:
            self._drain()
        seg_size = self._disk_size + self._pending
        if seg_size + size > self._segment_bytes and seg_size > len(FILE_HEADER):
            self._rotate()

    def append(self, record: Mapping) -> int:
        """Append one record; returns its size on disk. Raises LogError, writing nothing."""
        with self._lock:
            payload = self._pack(record)
            n = len(payload)
            size = FRAME_HEADER_BYTES + n
            if (
                self._closed
                or self._pending >= _BUFFER_BYTES
                or self._disk_size + self._pending + size > self._segment_bytes
            ):
                self._make_room(size)
            self._chunks.append(_frame(payload))
            self._chunks.append(payload)
            self._pending += size
            self.records_written += 1
            return size

    def append_many(self, records: Iterable[Mapping]) -> None:
        """Append records in order; if any cannot be packed, none is appended."""
        records = list(records)
        with self._lock:
            payloads = []
            for i, rec in enumerate(records):
                try:
                    payloads.append(self._pack(rec))
                except LogError as e:
                    raise LogError(f"record {i} of append_many: {e}") from e
            for payload in payloads:
                size = FRAME_HEADER_BYTES + len(payload)
                self._make_room(size)
                self._chunks += (_frame(payload), payload)
                self._pending += size
                self.records_written += 1

    # -- writing out

    @property
    def bytes_written(self) -> int:
        """Bytes of records this instance accepted (written out or still buffered)."""
        return self._drained + self._pending

    def _drain(self) -> None:
        """Write the buffer to the OS (lock held). On failure cut back to the valid prefix."""
        if not self._chunks:
            return
        data = b"".join(self._chunks)
        self._chunks = [data]
        try:
            with memoryview(data) as view:
                done = 0
                while done < len(view):
                    done += self._file.write(view[done:])
        except OSError as e:
            self._rollback()
            raise LogError(
                f"cannot write {len(data)} buffered bytes to log segment {self._path}: "
                f"{_describe_oserror(e)}; the segment keeps its first {self._disk_size} bytes "
                "and the unwritten records stay buffered for the next flush"
            ) from e
        self._disk_size += len(data)
        self._drained += len(data)
        self._chunks = []
        self._pending = 0

    def _rollback(self) -> None:
        try:
            os.ftruncate(self._file.fileno(), self._disk_size)
        except OSError as e:  # reopening recovers the torn tail instead
            logger.warning(
                "cannot cut log segment %s back to %d bytes: %s", self._path, self._disk_size, e
            )

    def _sync(self) -> None:
        if not self._fsync:
            return
        try:
            os.fsync(self._file.fileno())
        except OSError as e:
            raise LogError(f"cannot fsync log segment {self._path}: {_describe_oserror(e)}") from e

    def _rotate(self) -> None:
        """Finish the current segment and start the next one (lock held)."""
        self._drain()
        self._sync()
        old = self._file
        self._open(_segment_path(self.directory, _segment_number(self._path) + 1), create=True)
        old.close()

    def flush(self) -> None:
        """Write buffered records to the OS, then fsync if ``fsync_on_flush``."""
        with self._lock:
            if self._closed:
                return
            self._drain()
            self._sync()

    def close(self) -> None:
        """Flush and close; idempotent. The file is closed even if the final flush fails."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._drain()
                self._sync()
            finally:
                self._file.close()
                self._lockfile.close()

    def segments(self) -> list[Path]:
        """This log's segment files, in order."""
        return list_segments(self.directory)

    def __enter__(self) -> InteractionLog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"appending to {self._path.name}"
        return f"InteractionLog({str(self.directory)!r}, {state}, {self.records_written} records)"


def _keys(record: Mapping) -> list[str]:
    """A short list of a record's keys, for error messages."""
    return [str(k) for k in list(record)[:8]]


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise LogError(f"cannot read log segment {path}: {e.strerror or e}") from e


def _take_dir_lock(directory: Path) -> BinaryIO:
    """Hold an advisory exclusive lock so that two writers never share a directory."""
    path = directory / ".lock"
    try:
        f = open(path, "a+b")  # noqa: SIM115 (held until close)
    except OSError as e:
        raise LogError(f"cannot open lock file {path}: {_describe_oserror(e)}") from e
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        f.close()
        raise LogError(
            f"log directory {directory} is already open for append by another writer"
        ) from e
    return f
