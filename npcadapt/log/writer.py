"""Appending to an interaction log: buffered, thread-safe, rotating by size, recovering on open."""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

import msgpack

from npcadapt.errors import InvalidInputError, LogError
from npcadapt.fileio import fsync_dir

from .segments import (
    FILE_HEADER,
    FRAME_HEADER_BYTES,
    frame,
    list_segments,
    read_segment,
    segment_number,
    segment_path,
    segment_spans,
)

logger = logging.getLogger(__name__)

_BUFFER_BYTES = 1 << 20  # buffered bytes that trigger a write to the OS
HELD_BYTES = 64 << 20  # records held in memory while the disk refuses writes (full); past it appends fail
_RETRY_SECONDS = 1.0  # while the disk refuses writes, appends try to write out at most this often
_MAX_U32 = 2**32 - 1


@dataclass(frozen=True)
class Recovery:
    """What opening the log did to its last segment."""

    segment: Path
    bytes_truncated: int
    records_kept: int
    corrupt_records: int = 0
    header_rewritten: bool = False


def _fsync(fd: int, path: Path) -> None:
    try:
        os.fsync(fd)
    except OSError as e:
        raise LogError(f"cannot fsync log segment {path}: {_describe_oserror(e)}") from e


def _describe_oserror(e: OSError) -> str:
    if e.errno == errno.ENOSPC:
        return "disk full (ENOSPC)"
    if e.errno == errno.EDQUOT:
        return "disk quota exceeded (EDQUOT)"
    return e.strerror or str(e)


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
            raise InvalidInputError(f"max_record_bytes must be in [1, 2**32-1], got {max_record_bytes}")
        self.directory = Path(directory)
        self._segment_bytes = segment_bytes
        self._max_record_bytes = max_record_bytes
        self._fsync = fsync_on_flush
        self._lock = threading.Lock()
        self._chunks: list[bytes] = []  # framed records not yet written to the OS
        self._pending = 0  # bytes in _chunks
        self._retry_at = 0.0  # monotonic time before which appends do not try a failed disk again
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
            path = segment_path(self.directory, 1)
            self._open(path, create=True)
            return Recovery(path, 0, 0)
        path = segs[-1]
        data = read_segment(path)
        kept = corrupt = 0
        cut_at = len(data)
        for span in segment_spans(path, data):
            if span.kind == "record":
                kept += 1
            elif span.kind == "corrupt":
                corrupt += 1
                logger.warning("log segment %s: corrupt record at offset %d: %s", path, span.start, span.reason)
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
            nxt = segment_path(self.directory, segment_number(path) + 1)
            logger.warning("log segment %s has %d corrupt records; appending to %s", path, corrupt, nxt)
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
            raise LogError(f"cannot cut torn tail of log segment {path}: {_describe_oserror(e)}") from e

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
                    fsync_dir(self.directory)
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

    def _pack(self, record: Mapping[str, Any]) -> bytes:
        """Pack one record with the shared packer (lock held); raises LogError."""
        if type(record) is not dict:
            if not isinstance(record, Mapping):
                raise LogError(f"log record must be a mapping, got {type(record).__name__}")
            record = dict(record)
        try:
            payload: bytes = self._packer.pack(record)
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
        failing = self._retry_at > 0 and time.monotonic() < self._retry_at  # no clock read while the disk is fine
        if self._pending >= _BUFFER_BYTES and not failing:
            try:
                self._drain()
            except LogError as exc:  # the disk refuses (full): hold records in memory, up to a bound
                self._retry_at = time.monotonic() + _RETRY_SECONDS
                failing = True
                logger.warning("holding log records in memory while the disk refuses writes: %s", exc)
        if failing:
            if self._pending + size > HELD_BYTES:
                raise LogError(
                    f"interaction log {self.directory}: {self._pending} bytes of records held in memory "
                    "while the disk refuses writes; this record is refused"
                )
            return  # no rotation while the disk refuses writes: the segment grows past its size
        seg_size = self._disk_size + self._pending
        if seg_size + size > self._segment_bytes and seg_size > len(FILE_HEADER):
            self._rotate()

    def append(self, record: Mapping[str, Any]) -> int:
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
            self._chunks.append(frame(payload))
            self._chunks.append(payload)
            self._pending += size
            self.records_written += 1
            return size

    def append_many(self, records: Iterable[Mapping[str, Any]]) -> None:
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
                self._chunks += (frame(payload), payload)
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
        """Cut the segment back to its last whole record after a failed write. A new segment
        is not opened for appending, so the write position goes back too (else the next write
        would leave a hole of zeros where the partial write was)."""
        try:
            os.ftruncate(self._file.fileno(), self._disk_size)
            self._file.seek(self._disk_size)
        except OSError as e:  # reopening recovers the torn tail instead
            logger.warning("cannot cut log segment %s back to %d bytes: %s", self._path, self._disk_size, e)

    def _sync(self) -> None:
        if self._fsync:
            _fsync(self._file.fileno(), self._path)

    def _rotate(self) -> None:
        """Finish the current segment and start the next one (lock held)."""
        self._drain()
        self._sync()
        old = self._file
        self._open(segment_path(self.directory, segment_number(self._path) + 1), create=True)
        old.close()

    def flush(self) -> None:
        """Write buffered records to the OS, then fsync if ``fsync_on_flush``.

        This fsync runs outside the lock, on a duplicate of the segment's descriptor, so
        appends from other threads do not wait for it (a segment rotation and ``close``
        still sync under the lock); records appended before ``flush`` was called are
        durable when it returns.
        """
        with self._lock:
            if self._closed:
                return
            self._drain()
            self._retry_at = 0.0  # the disk takes writes again
            if not self._fsync:
                return
            path = self._path
            try:
                fd = os.dup(self._file.fileno())
            except OSError as e:  # e.g. out of descriptors
                raise LogError(f"cannot fsync log segment {path}: {_describe_oserror(e)}") from e
        try:
            _fsync(fd, path)
        finally:
            os.close(fd)

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


def _keys(record: Mapping[str, Any]) -> list[str]:
    """A short list of a record's keys, for error messages."""
    return [str(k) for k in list(record)[:8]]


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
        raise LogError(f"log directory {directory} is already open for append by another writer") from e
    return f
