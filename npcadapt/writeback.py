"""Adapter writes off the serving path: a queue of pending writes and the one thread that does them.

Every forward holds its archetype's bank lock, so a file written under that lock (the
write-back of an evicted adapter) made a decision wait for the disk. Instead the bank
hands a copy of the row to :meth:`WriteBehind.submit` (a dict insert) and a worker
thread writes it. Until that write has succeeded the row stays readable here:
:meth:`WriteBehind.pending` is what a cold load asks first, so it never reads a file
older than the newest version. One thread writes, so the versions of a player reach
the disk in order; a newer submit replaces a pending one (only the newest matters).

A failed write (disk full) stays pending: it is served from memory, counted, retried
every ``retry_interval`` seconds and at once by :meth:`flush`, which waits for every
write pending when it was called and raises :class:`~npcadapt.errors.StoreError` naming
the ones that failed. Pending writes are bounded by the players whose adapters changed
and left the bank before they reached the disk (``stats()["writeback_pending"]``), and
by ``max_pending``: past it the oldest pending write is dropped (``writeback_dropped``)
and handed to ``on_drop`` (the engine marks that version changed again if its bank still
holds it, so a later flush writes it; otherwise the player's stored version stays older).

A store that cannot be reached (:class:`~npcadapt.errors.StoreUnavailableError`, a shared
store while Redis is down) pauses every write for ``retry_interval`` rather than trying
each in turn, and a flush that meets it fails at once instead of waiting for the outage.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Hashable, Iterable
from typing import Any, Generic, TypeVar

from .errors import StoreError, StoreUnavailableError

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)  # what a write is keyed by

# (key, packed adapter row, meta) -> None; raises on failure
Write = Callable[[K, Any, Any], None]


class _Entry:
    __slots__ = ("error", "failed_at", "meta", "row", "seq")

    def __init__(self, row: Any, meta: Any, seq: int):
        self.row, self.meta, self.seq = row, meta, seq
        self.failed_at: float | None = None  # monotonic time of the last failed attempt
        self.error: BaseException | None = None


class WriteBehind(Generic[K]):
    """Pending writes by key, written in order of submission by one daemon thread."""

    def __init__(
        self,
        write: Write[K],
        *,
        retry_interval: float = 1.0,
        max_pending: int | None = None,
        on_drop: Callable[[K, Any, Any], None] | None = None,
        name: str = "npcadapt-writeback",
    ):
        self._write = write
        self.retry_interval = retry_interval
        self.max_pending = max_pending  # None: unbounded
        self._on_drop = on_drop
        self._pending: dict[K, _Entry] = {}  # insertion order = write order
        self._cond = threading.Condition()
        self._seq = itertools.count(1)
        self._last_seq = 0
        self._writing: K | None = None  # the key being written now
        self._retry_after = 0.0  # failures before this monotonic time are due again (set by flush)
        self._closed = False
        self._down: tuple[float, BaseException] | None = None  # (monotonic time, error): the store was unreachable
        self.written = 0
        self.failures = 0
        self.dropped = 0
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    # -- the serving side ------------------------------------------------------------------
    def submit(self, key: K, row: Any, meta: Any) -> None:
        """Queue a write of `row` (not copied: the caller hands over its copy)."""
        with self._cond:
            if self._closed:
                raise StoreError("adapter writer is closed")
            old = self._pending.get(key)
            dropped = None
            if old is None and self.max_pending is not None and len(self._pending) >= self.max_pending:
                dropped = self._drop_oldest()
            seq = old.seq if old is not None else next(self._seq)  # flushes waiting for it still wait
            self._last_seq = max(self._last_seq, seq)
            self._pending[key] = _Entry(row, meta, seq)
            self._cond.notify_all()
        if dropped is not None and self._on_drop is not None:
            self._on_drop(dropped[0], dropped[1].row, dropped[1].meta)

    def pending(self, key: K) -> tuple[Any, Any] | None:
        """The newest row and meta waiting (or being written) for `key`, or None."""
        with self._cond:
            entry = self._pending.get(key)
            return None if entry is None else (entry.row, entry.meta)

    def _drop_oldest(self) -> tuple[K, _Entry] | None:
        """Past `max_pending`: drop the oldest write not in progress (lock held)."""
        victim = next((k for k in self._pending if k != self._writing), None)
        if victim is None:
            return None
        entry = self._pending.pop(victim)
        self.dropped += 1
        if self.dropped == 1 or self.dropped % 1000 == 0:
            log.error(
                "adapter write queue full (%d pending): dropped the oldest write (%d so far); that player's "
                "stored version stays older",
                self.max_pending,
                self.dropped,
            )
        return victim, entry

    def discard_older(self, key: K, version: int) -> bool:
        """Drop `key`'s pending write if its meta's version is below `version` (a newer one is
        stored elsewhere); a write in progress is left to the store's compare-and-set."""
        with self._cond:
            entry = self._pending.get(key)
            if entry is None or getattr(entry.meta, "version", 0) >= version or self._writing == key:
                return False
            del self._pending[key]
            self._cond.notify_all()
            return True

    def retry_now(self) -> None:
        """Retry failed writes now (the store is reachable again)."""
        with self._cond:
            self._retry_after = time.monotonic()
            self._down = None
            self._cond.notify_all()

    def wait(self, keys: Iterable[K], timeout: float) -> None:
        """Wait until no write of `keys` is pending; StoreError if one fails (or the store is
        unreachable) after this call began, or after `timeout` seconds."""
        keys = set(keys)
        with self._cond:
            started = time.monotonic()
            deadline = started + timeout
            while True:
                waiting = [self._pending[k] for k in keys if k in self._pending]
                if not waiting:
                    return
                failed = next((e for e in waiting if e.failed_at is not None and e.failed_at >= started), None)
                if failed is not None:
                    raise StoreError(f"adapter write failed: {failed.error}")
                if self._down is not None and self._down[0] >= started:
                    raise StoreError(f"adapter store unreachable: {self._down[1]}")
                if time.monotonic() >= deadline:
                    raise StoreError(f"{len(waiting)} adapter write(s) still pending after {timeout:g} s")
                self._cond.wait(max(0.0, min(1.0, deadline - time.monotonic())))

    def discard(self, key: K) -> bool:
        """Drop `key`'s pending write and wait for one in progress; True if one was pending.
        After it returns no write for `key` is queued or running (e.g. before deleting its file)."""
        with self._cond:
            had = self._pending.pop(key, None) is not None
            while self._writing == key:
                self._cond.wait()
            return had

    def flush(self, timeout: float | None = None) -> int:
        """Wait until every write pending now has been made; returns how many there were.
        Failed ones are retried at once; if one fails again, raises StoreError naming it
        (it stays pending and is served from memory). With `timeout` (seconds), a writer
        that has not finished by then (a stalled disk) raises StoreError naming the keys."""
        with self._cond:
            started, last = time.monotonic(), self._last_seq
            deadline = None if timeout is None else started + timeout
            self._retry_after = max(self._retry_after, started)
            self._cond.notify_all()

            def due() -> list[_Entry]:
                return [
                    e
                    for e in self._pending.values()
                    if e.seq <= last and (e.failed_at is None or e.failed_at < started)
                ]

            count = len(due())
            while due():
                if not self.thread.is_alive():
                    raise StoreError("adapter writer thread is not running")
                if self._down is not None and self._down[0] >= started:
                    raise StoreError(
                        f"{len(self._pending)} adapter write(s) pending in memory, not stored: the adapter store "
                        f"is unreachable ({self._down[1]}); they are retried, flush again once it is back"
                    )
                if deadline is not None and time.monotonic() >= deadline:
                    raise StoreError(f"adapter writes still pending after {timeout:g} s: {self.pending_keys()}")
                self._cond.wait(1.0 if deadline is None else max(0.0, min(1.0, deadline - time.monotonic())))
            failed = [e for e in self._pending.values() if e.seq <= last]
            if failed:
                raise StoreError(
                    f"{len(failed)} adapter write(s) failed and stay pending in memory; first: {failed[0].error}"
                )
            return count

    @property
    def writing(self) -> K | None:
        """The key whose write is in progress now; None while the writer thread is not writing."""
        with self._cond:
            return self._writing

    def pending_keys(self) -> list[K]:
        """The keys whose newest version has not reached the disk yet."""
        with self._cond:
            return list(self._pending)

    def close(self) -> None:
        """Stop the thread after the write in progress (pending writes are not made: flush first)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if threading.current_thread() is not self.thread:
            self.thread.join()

    def stats(self) -> dict[str, int]:
        with self._cond:
            failing = sum(e.failed_at is not None for e in self._pending.values())
            return {
                "writeback_pending": len(self._pending),
                "writeback_failing": failing,
                "writeback_written": self.written,
                "writeback_failures": self.failures,
                "writeback_dropped": self.dropped,
            }

    # -- the writer thread ----------------------------------------------------------------
    def _next(self) -> tuple[K, _Entry] | None:
        """The oldest write that is due (never tried, or failed before a retry was due); lock held."""
        now = time.monotonic()
        down = self._down
        if down is not None and down[0] >= self._retry_after and down[0] + self.retry_interval > now:
            return None  # the store is unreachable: every write waits (a flush asks for one try)
        for key, entry in self._pending.items():
            if (
                entry.failed_at is None
                or entry.failed_at < self._retry_after
                or entry.failed_at + self.retry_interval <= now
            ):
                return key, entry
        return None

    def _run(self) -> None:
        while True:
            with self._cond:
                while (job := self._next()) is None:
                    if self._closed:
                        return
                    self._cond.wait(self.retry_interval if self._pending else None)
                if self._closed:
                    return
                key, entry = job
                self._writing = key
            error = None
            try:
                self._write(key, entry.row, entry.meta)
            except Exception as exc:
                error = exc
            with self._cond:
                self._writing = None
                if error is None:
                    self._down = None
                    self.written += 1
                    if self._pending.get(key) is entry:  # not replaced by a newer version meanwhile
                        del self._pending[key]
                else:
                    if isinstance(error, StoreUnavailableError):
                        self._down = (time.monotonic(), error)
                    self.failures += 1
                    if entry.error is None:  # once per pending version, not at every retry
                        log.error("adapter write failed (kept in memory, retried): %s", error)
                    entry.failed_at, entry.error = time.monotonic(), error
                self._cond.notify_all()
