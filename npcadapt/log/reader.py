"""Reading an interaction log back: every valid record in order, corruption reported."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack

from npcadapt.errors import LogCorruptionError

from .segments import decode, list_segments, read_segment, segment_spans


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
class LogSummary:
    """Counts over a whole log directory (see :func:`scan`)."""

    segments: int
    records: int
    bytes: int
    corrupt_records: list[CorruptRecord]
    torn_tail_bytes: int


def read_records(
    directory: str | os.PathLike[str],
    *,
    on_corrupt: Callable[[CorruptRecord], None] | None = None,
    on_torn: Callable[[TornTail], None] | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield every valid record of every segment, in order.

    A corrupt record is passed to ``on_corrupt`` (or raises :class:`LogCorruptionError`
    naming segment and offset when there is no callback); reading then resumes at the
    next valid record. A torn tail of the last segment ends reading quietly (it is passed
    to ``on_torn`` if given); in an earlier segment it counts as corruption.
    """
    return _read(list_segments(directory), on_corrupt, on_torn)


def _read(
    segments: list[Path],
    on_corrupt: Callable[[CorruptRecord], None] | None,
    on_torn: Callable[[TornTail], None] | None,
) -> Iterator[dict[str, Any]]:
    """:func:`read_records` over an already listed set of segments."""

    def report(bad: CorruptRecord) -> None:
        if on_corrupt is None:
            raise LogCorruptionError(
                f"corrupt record in log segment {bad.segment} at offset {bad.offset}: "
                f"{bad.reason} ({bad.skipped_bytes} bytes skipped)"
            )
        on_corrupt(bad)

    for i, path in enumerate(segments):
        data = read_segment(path)
        for kind, start, end, reason in segment_spans(path, data):
            if kind == "record":
                try:
                    obj = decode(data, start, end)
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
    segments = list_segments(directory)  # listed once: counts and bytes describe what was read
    records = sum(1 for _ in _read(segments, corrupt.append, torn.append))
    return LogSummary(
        segments=len(segments),
        records=records,
        bytes=sum(p.stat().st_size for p in segments),
        corrupt_records=corrupt,
        torn_tail_bytes=sum(t.bytes for t in torn),
    )
