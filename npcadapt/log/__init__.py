"""The interaction log: append-only, CRC'd, crash-safe segment files of msgpack records.

Every decision and feedback event lands here; the same files are the recorded sessions
that offline training reads. ``segments`` owns the on-disk format, ``writer`` appending
and crash recovery, ``reader`` reading back (corruption reported, never silently dropped).
"""

from .reader import CorruptRecord, LogSummary, TornTail, read_records, scan
from .segments import FILE_HEADER, FORMAT_VERSION, FRAME_HEADER_BYTES, list_segments
from .writer import InteractionLog, Recovery

__all__ = [
    "FILE_HEADER",
    "FORMAT_VERSION",
    "FRAME_HEADER_BYTES",
    "CorruptRecord",
    "InteractionLog",
    "LogSummary",
    "Recovery",
    "TornTail",
    "list_segments",
    "read_records",
    "scan",
]
