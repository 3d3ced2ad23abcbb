"""Tests for npcadapt.log: round trips, rotation, torn-tail recovery at every byte,
mid-segment corruption, bad records, threads and a failing disk.

One documented exception to testing through the public API: the failing-disk tests
replace the open segment file's ``write`` (``log._file.write``) to inject faults
(a partial write, ENOSPC, EIO) at the file layer, where a real disk would fail."""

from __future__ import annotations

import errno
import random
import shutil
import struct
import sys
import threading
from pathlib import Path

import pytest

from npcadapt.errors import LogCorruptionError, LogError
from npcadapt.log import (
    FILE_HEADER,
    CorruptRecord,
    InteractionLog,
    read_records,
    scan,
)

HEAD = len(FILE_HEADER)


def small(i: int) -> dict:
    """A ~40-byte record."""
    return {"t": "feedback", "decision": i, "reward": 0.5 * i, "done": i % 2 == 0}


def write_log(directory: Path, records: list[dict], **kw) -> list[int]:
    """Write records with a fresh log; returns each record's byte offset in the segment."""
    offsets = []
    with InteractionLog(directory, fsync_on_flush=False, **kw) as log:
        pos = HEAD
        for rec in records:
            offsets.append(pos)
            pos += log.append(rec)
    return offsets


def only_segment(directory: Path) -> Path:
    (seg,) = sorted(directory.glob("seg-*.npl"))
    return seg


def test_round_trip_mixed_records(tmp_path: Path) -> None:
    recs = [
        {
            "t": "decision",
            "obs": struct.pack("<4f", 0.5, -1.0, 2.25, 3.0),
            "mask": None,
            "action": 3,
            "logp": -1.25,
            "value": 0.4,
            "nested": [[1, 2], ["a", None, 2.5], []],
            "flag": True,
            "big": 2**40,
            "text": "héllo",
        },
        {"t": "feedback", "mask": b"\x01\x00\x01", "reward": float("-inf"), "done": False},
        {},
    ]
    with InteractionLog(tmp_path, fsync_on_flush=False) as log:
        sizes = [log.append(r) for r in recs]
        log.append_many(recs)
        assert log.records_written == 6
    assert list(read_records(tmp_path)) == recs + recs
    assert log.bytes_written == 2 * sum(sizes) == only_segment(tmp_path).stat().st_size - HEAD
    assert only_segment(tmp_path).read_bytes()[:HEAD] == b"NPLOG\x00\x01\x00"


def test_reopen_after_clean_close_appends_to_same_segment(tmp_path: Path) -> None:
    write_log(tmp_path, [small(0), small(1)])
    with InteractionLog(tmp_path, fsync_on_flush=False) as log:
        assert log.recovery.bytes_truncated == 0 and log.recovery.records_kept == 2
        log.append(small(2))
        assert len(log.segments()) == 1
    assert list(read_records(tmp_path)) == [small(0), small(1), small(2)]


def test_rotation_by_size_keeps_order(tmp_path: Path) -> None:
    recs = [small(i) for i in range(300)]
    with InteractionLog(tmp_path, segment_bytes=1024, fsync_on_flush=False) as log:
        for r in recs[:100]:
            log.append(r)
        log.append_many(recs[100:])
        segs = log.segments()
    assert len(segs) >= 8
    assert [p.name for p in segs[:2]] == ["seg-00000001.npl", "seg-00000002.npl"]
    assert all(p.stat().st_size <= 1024 for p in segs)
    assert list(read_records(tmp_path)) == recs
    summary = scan(tmp_path)
    assert (summary.segments, summary.records) == (len(segs), 300)
    assert summary.bytes == sum(p.stat().st_size for p in segs)
    assert summary.corrupt_records == [] and summary.torn_tail_bytes == 0


def test_torn_tail_at_every_byte_offset(tmp_path: Path) -> None:
    recs = [small(i) for i in range(5)]
    src = tmp_path / "src"
    offsets = write_log(src, recs)
    data = only_segment(src).read_bytes()
    ends = [*offsets[1:], len(data)]
    for cut in range(offsets[-3], len(data) + 1):
        d = tmp_path / f"cut{cut}"
        d.mkdir()
        (d / "seg-00000001.npl").write_bytes(data[:cut])
        kept = sum(1 for e in ends if e <= cut)
        good_end = HEAD if kept == 0 else ends[kept - 1]
        with InteractionLog(d, fsync_on_flush=False) as log:
            assert log.recovery.records_kept == kept, cut
            assert log.recovery.bytes_truncated == cut - good_end, cut
            assert (d / "seg-00000001.npl").stat().st_size == good_end
            size = log.append({"new": cut})
        seg = d / "seg-00000001.npl"
        assert seg.stat().st_size == good_end + size
        assert list(read_records(d)) == [*recs[:kept], {"new": cut}]
        shutil.rmtree(d)


@pytest.mark.parametrize(
    "tail",
    [b"\x00" * 37, random.Random(0).randbytes(200), b"\xa5\x5a\x10\x00\x00\x00" + b"\x00" * 30],
    ids=["zeros", "garbage", "partial-header"],
)
def test_torn_tail_of_appended_junk(tmp_path: Path, tail: bytes) -> None:
    recs = [small(i) for i in range(4)]
    write_log(tmp_path, recs)
    seg = only_segment(tmp_path)
    size = seg.stat().st_size
    seg.write_bytes(seg.read_bytes() + tail)
    torn: list = []
    assert list(read_records(tmp_path, on_torn=torn.append)) == recs
    assert [(t.offset, t.bytes) for t in torn] == [(size, len(tail))]
    assert scan(tmp_path).torn_tail_bytes == len(tail)
    with InteractionLog(tmp_path, fsync_on_flush=False) as log:
        assert (log.recovery.bytes_truncated, log.recovery.records_kept) == (len(tail), 4)
        assert seg.stat().st_size == size
        log.append(small(9))
    assert list(read_records(tmp_path)) == [*recs, small(9)]


def test_bad_crc_on_final_record_is_a_torn_tail(tmp_path: Path) -> None:
    recs = [small(i) for i in range(4)]
    offsets = write_log(tmp_path, recs)
    seg = only_segment(tmp_path)
    size = seg.stat().st_size
    flip(seg, size - 1)
    assert list(read_records(tmp_path)) == recs[:3]
    with InteractionLog(tmp_path, fsync_on_flush=False) as log:
        assert (log.recovery.records_kept, log.recovery.corrupt_records) == (3, 0)
        assert log.recovery.bytes_truncated == size - offsets[3]
    assert seg.stat().st_size == offsets[3]


def test_corrupt_middle_and_torn_tail_together(tmp_path: Path) -> None:
    recs = [small(i) for i in range(5)]
    offsets = write_log(tmp_path, recs)
    seg = only_segment(tmp_path)
    flip(seg, offsets[1] + 12)
    seg.write_bytes(seg.read_bytes()[:-4])
    with InteractionLog(tmp_path, fsync_on_flush=False) as log:
        assert (log.recovery.records_kept, log.recovery.corrupt_records) == (3, 1)
        assert seg.stat().st_size == offsets[4]
        log.append(small(7))
    found: list[CorruptRecord] = []
    out = list(read_records(tmp_path, on_corrupt=found.append))
    assert out == [recs[0], recs[2], recs[3], small(7)]
    assert [c.offset for c in found] == [offsets[1]]


@pytest.mark.parametrize("n", [0, 1, 3, 7])
def test_torn_header_is_rewritten(tmp_path: Path, n: int) -> None:
    seg = tmp_path / "seg-00000001.npl"
    seg.write_bytes(FILE_HEADER[:n])
    with InteractionLog(tmp_path, fsync_on_flush=False) as log:
        assert log.recovery.header_rewritten and log.recovery.bytes_truncated == n
        log.append(small(1))
    assert seg.read_bytes()[:HEAD] == FILE_HEADER
    assert list(read_records(tmp_path)) == [small(1)]


def flip(path: Path, offset: int, mask: int = 0x40) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= mask
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "where,mask",
    [("payload", 0x40), ("length-low", 0x01), ("length-high", 0x80), ("magic", 0xFF)],
)
def test_mid_segment_corruption_is_reported_and_skipped(tmp_path: Path, where: str, mask: int) -> None:
    recs = [small(i) for i in range(6)]
    offsets = write_log(tmp_path, recs)
    seg = only_segment(tmp_path)
    bad = offsets[2]
    flip(seg, bad + {"payload": 14, "length-low": 2, "length-high": 5, "magic": 0}[where], mask)
    expected = recs[:2] + recs[3:]

    found: list[CorruptRecord] = []
    assert list(read_records(tmp_path, on_corrupt=found.append)) == expected
    assert [(c.segment, c.offset, c.skipped_bytes) for c in found] == [(seg, bad, offsets[3] - bad)]
    with pytest.raises(LogCorruptionError, match=rf"{seg.name}.* offset {bad}\b"):
        list(read_records(tmp_path))
    summary = scan(tmp_path)
    assert summary.records == 5 and [c.offset for c in summary.corrupt_records] == [bad]

    before = seg.read_bytes()
    with InteractionLog(tmp_path, fsync_on_flush=False) as log:
        assert log.recovery.corrupt_records == 1 and log.recovery.bytes_truncated == 0
        log.append(small(99))
        assert [p.name for p in log.segments()] == ["seg-00000001.npl", "seg-00000002.npl"]
    assert seg.read_bytes() == before
    found.clear()
    assert list(read_records(tmp_path, on_corrupt=found.append)) == [*expected, small(99)]
    assert len(found) == 1


def test_unpackable_payload_with_good_crc_is_reported(tmp_path: Path) -> None:
    from npcadapt.log.segments import frame as _frame

    write_log(tmp_path, [small(0)])
    seg = only_segment(tmp_path)
    junk = b"\xc1"  # msgpack's "never used" byte
    seg.write_bytes(seg.read_bytes() + _frame(junk) + junk)
    write_log(tmp_path, [small(1)])
    found: list[CorruptRecord] = []
    assert list(read_records(tmp_path, on_corrupt=found.append)) == [small(0), small(1)]
    assert len(found) == 1 and "unpackable" in found[0].reason


def test_torn_tail_in_earlier_segment_is_corruption(tmp_path: Path) -> None:
    recs = [small(i) for i in range(40)]
    write_log(tmp_path / "log", recs, segment_bytes=512)
    first = sorted((tmp_path / "log").glob("seg-*.npl"))[0]
    (tmp_path / "alone").mkdir()
    shutil.copy(first, tmp_path / "alone")
    k = len(list(read_records(tmp_path / "alone")))
    first.write_bytes(first.read_bytes()[:-3])
    found: list[CorruptRecord] = []
    assert list(read_records(tmp_path / "log", on_corrupt=found.append)) == recs[: k - 1] + recs[k:]
    assert len(found) == 1 and found[0].segment == first
    assert "non-final" in found[0].reason


@pytest.mark.parametrize(
    "record,match",
    [
        ({"obs": b"x" * 300}, r"packs to \d+ bytes, over max_record_bytes=200"),
        ({"bad": object()}, r"cannot pack log record with keys \['bad'\]"),
        ({"huge": 2**70}, r"cannot pack"),
        ([1, 2, 3], r"must be a mapping, got list"),
    ],
)
def test_bad_records_raise_and_write_nothing(tmp_path: Path, record, match: str) -> None:
    with InteractionLog(tmp_path, max_record_bytes=200, fsync_on_flush=False) as log:
        log.append(small(0))
        with pytest.raises(LogError, match=match):
            log.append(record)
        with pytest.raises(LogError, match=r"record 1 of append_many"):
            log.append_many([small(1), record, small(2)])
        assert log.records_written == 1
        log.append(small(3))
    assert list(read_records(tmp_path)) == [small(0), small(3)]


def test_closed_log_refuses_appends_and_close_is_idempotent(tmp_path: Path) -> None:
    log = InteractionLog(tmp_path, fsync_on_flush=False)
    log.close()
    log.close()
    with pytest.raises(LogError, match="closed"):
        log.append(small(0))


def test_second_writer_on_same_directory_is_refused(tmp_path: Path) -> None:
    with (
        InteractionLog(tmp_path, fsync_on_flush=False),
        pytest.raises(LogError, match="already open"),
    ):
        InteractionLog(tmp_path, fsync_on_flush=False)
    InteractionLog(tmp_path, fsync_on_flush=False).close()


def test_threads_append_concurrently(tmp_path: Path) -> None:
    def worker(log: InteractionLog, t: int) -> None:
        for i in range(2000):
            log.append({"thread": t, "i": i, "obs": bytes([t, i % 256]) * 8})

    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # make threads interleave inside append
    try:
        with InteractionLog(tmp_path, segment_bytes=64 * 1024, fsync_on_flush=False) as log:
            threads = [threading.Thread(target=worker, args=(log, t)) for t in range(4)]
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            assert log.records_written == 8000
            assert len(log.segments()) > 1
    finally:
        sys.setswitchinterval(switch)
    out = list(read_records(tmp_path))
    assert len(out) == 8000
    for t in range(4):
        mine = [r for r in out if r["thread"] == t]
        assert [r["i"] for r in mine] == list(range(2000))
        assert all(r["obs"] == bytes([t, r["i"] % 256]) * 8 for r in mine)


def test_disk_full_on_flush_keeps_a_valid_prefix(tmp_path: Path) -> None:
    flushed = [small(i) for i in range(10)]
    log = InteractionLog(tmp_path, fsync_on_flush=True)
    log.append_many(flushed)
    log.flush()
    seg = only_segment(tmp_path)
    good_size = seg.stat().st_size
    for i in range(10, 30):
        log.append(small(i))

    real_write = log._file.write

    def write_half_then_fail(data) -> int:
        real_write(bytes(data[: len(data) // 2]))  # a partial write reaches the disk
        raise OSError(errno.ENOSPC, "No space left on device")

    log._file.write = write_half_then_fail
    with pytest.raises(LogError, match="disk full") as info:
        log.flush()
    assert seg.name in str(info.value)
    assert seg.stat().st_size == good_size  # cut back to the last whole flush
    with pytest.raises(LogError, match="disk full"):
        log.close()  # the final flush fails too; the file is closed anyway
    log.close()

    with InteractionLog(tmp_path, fsync_on_flush=False) as again:
        assert again.recovery.records_kept == 10 and again.recovery.bytes_truncated == 0
        again.append(small(99))
    assert list(read_records(tmp_path)) == [*flushed, small(99)]


def test_write_failure_keeps_records_buffered_for_retry(tmp_path: Path) -> None:
    log = InteractionLog(tmp_path, fsync_on_flush=False)
    log.append_many([small(i) for i in range(5)])
    real_write = log._file.write

    def fail(data) -> int:
        raise OSError(errno.EIO, "Input/output error")

    log._file.write = fail
    with pytest.raises(LogError, match="Input/output error"):
        log.flush()
    log._file.write = real_write
    log.close()
    assert list(read_records(tmp_path)) == [small(i) for i in range(5)]


def test_missing_directory_is_named(tmp_path: Path) -> None:
    with pytest.raises(LogError, match="nowhere"):
        list(read_records(tmp_path / "nowhere"))


def test_fsync_runs_outside_the_lock_so_appends_never_wait_for_the_disk(tmp_path: Path, monkeypatch) -> None:
    import os

    log = InteractionLog(tmp_path, fsync_on_flush=True)
    log.append(small(0))
    in_fsync, release = threading.Event(), threading.Event()
    real_fsync = os.fsync

    def slow_fsync(fd: int) -> None:
        in_fsync.set()
        assert release.wait(10)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", slow_fsync)
    flusher = threading.Thread(target=log.flush)
    flusher.start()
    assert in_fsync.wait(10)
    appended = threading.Thread(target=log.append, args=(small(1),))  # while the disk is "busy"
    appended.start()
    appended.join(2)
    assert not appended.is_alive()  # did not wait for the fsync
    release.set()
    flusher.join(10)
    log.close()
    assert list(read_records(tmp_path)) == [small(0), small(1)]


@pytest.mark.parametrize(
    ("call", "err", "text"),
    [
        ("fsync", errno.EIO, "Input/output error"),  # the disk fails
        ("dup", errno.EMFILE, "Too many open files"),  # no descriptor for the fsync
    ],
)
def test_a_failed_fsync_is_named_and_loses_nothing(tmp_path: Path, monkeypatch, call, err, text) -> None:
    import os

    log = InteractionLog(tmp_path, fsync_on_flush=True)
    log.append(small(0))

    def fail(fd: int) -> None:
        raise OSError(err, text)

    monkeypatch.setattr(os, call, fail)
    with pytest.raises(LogError, match=f"cannot fsync log segment .*{text}"):
        log.flush()
    monkeypatch.undo()
    log.append(small(1))  # the log stays usable once the disk recovers
    log.flush()
    log.close()
    assert list(read_records(tmp_path)) == [small(0), small(1)]


def test_a_huge_batch_is_recorded_in_several_records_and_flush_still_succeeds(tmp_path):
    """The log refuses a record over 1 MiB; a 20,000-row act_batch (about 1.7 MB of rows)
    is cut into records under it, so nothing is dropped and flush keeps its promise."""
    import numpy as np

    import npcadapt

    svc = npcadapt.open(tmp_path / "data", seed=0)
    players = [f"player-{i:05d}" for i in range(20_000)]
    obs = np.random.default_rng(0).random((len(players), 8), dtype=np.float32)
    out = svc.act_batch("duelist", players, obs, npcs=["npc"] * len(players))
    svc.feedback_batch(players, ["npc"] * len(players), np.ones(len(players)), np.ones(len(players), bool))
    svc.flush()  # raises if any record was dropped
    assert svc.stats()["log_records_dropped"] == 0
    svc.close()
    records = list(read_records(tmp_path / "data" / "logs"))
    decisions = [r for r in records if r["t"] == "decisions"]
    feedback = [r for r in records if r["t"] == "feedback"]
    assert len(decisions) > 1 and len(feedback) > 1
    assert [p for r in decisions for p in r["players"]] == players  # every row, in order
    assert b"".join(r["action"] for r in decisions) == out.action.astype(np.int64).tobytes()
    assert sum(len(r["players"]) for r in feedback) == len(players)


def test_ids_may_come_as_any_sequence(tmp_path):
    """act_batch and feedback_batch take ids as any sequence (here tuples); the log holds them as arrays."""
    import numpy as np

    import npcadapt

    svc = npcadapt.open(tmp_path / "data", seed=0)
    ids = ("a", "b")
    out = svc.act_batch("duelist", ids, np.zeros((2, 8), np.float32), npcs=ids)
    assert len(out.action) == 2
    svc.feedback_batch(ids, ids, [1.0, 0.0], [True, True])
    svc.flush()
    svc.close()
    records = list(read_records(tmp_path / "data" / "logs"))
    assert [r["players"] for r in records] == [["a", "b"], ["a", "b"]]
