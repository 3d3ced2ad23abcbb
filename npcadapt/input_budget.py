"""The bridge's global input budget: memory held by incomplete messages, all connections.

Each connection's share is what its protocol core reports as ``memory`` (the pending
message counted twice: our buffer and msgpack's scanner both hold it). After each read:

* past the budget, the connections holding the most are closed until it fits
  (``budget_shed``);
* past half of it (the soft threshold), every connection holding more than a fair share
  (the threshold divided among the connections holding anything) stops being read
  (``budget_pauses``): its bytes wait in the kernel, where TCP pushes back on the sender,
  while connections holding less, such as a client in the middle of an ordinary
  message, are still read.

Paused connections resume together once the total is back under the soft threshold (when
a message completes or a connection closes, and on :meth:`tick`). If the total stays over
it with some connection paused for longer than ``max_pause`` seconds, :meth:`tick` closes
the largest holder, one per tick, so holders that never finish cannot pin the budget.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Set as AbstractSet
from typing import Protocol

log = logging.getLogger(__name__)


class _Pending(Protocol):  # a connection's protocol core, as far as the budget reads it
    @property
    def memory(self) -> int: ...


class _Conn(Protocol):  # what the budget needs of a connection
    held: int
    open: bool

    def pause_reading(self, reason: str) -> None: ...

    def resume_reading(self, reason: str) -> None: ...

    @property
    def rpc(self) -> _Pending: ...

    def close(self) -> None: ...


class InputBudget:
    """Bytes of pending input across `connections`, bounded by `budget` (see module doc)."""

    def __init__(
        self, budget: int, counters: dict[str, int], connections: AbstractSet[_Conn], max_pause: float = 10.0
    ) -> None:
        self.budget, self.counters, self.connections, self.max_pause = budget, counters, connections, max_pause
        self.soft = budget // 2
        self.total = 0
        self.peak = 0
        self.paused: dict[_Conn, float] = {}  # -> when it was paused (time.monotonic())

    def _account(self, conn: _Conn) -> int:
        held = conn.rpc.memory if conn.open else 0
        delta, conn.held = held - conn.held, held
        self.total += delta
        self.peak = max(self.peak, self.total)
        return delta

    def update(self, conn: _Conn) -> None:
        """After `conn` read: account for its pending bytes, then enforce the budget."""
        delta = self._account(conn)
        if self.total > self.budget:
            self._shed_until(self.budget)
        if self.total > self.soft:
            self._pause_largest()
        elif delta < 0 and self.paused:
            self.resume()

    def closed(self, conn: _Conn) -> None:
        """`conn` closed: its bytes are freed."""
        self.paused.pop(conn, None)
        if self._account(conn) < 0 and self.paused and self.total <= self.soft:
            self.resume()

    def tick(self, now: float | None = None) -> None:
        """Periodic: resume when under the soft threshold; else, if a connection has been
        paused longer than `max_pause`, close the largest holder."""
        if not self.paused:
            return
        if self.total > self.soft:
            now = time.monotonic() if now is None else now
            if now - min(self.paused.values()) > self.max_pause:
                victim = max(self.connections, key=lambda c: c.held)
                self._close(victim, f"paused past {self.max_pause:g} s with the input over half the budget")
        if self.total <= self.soft:
            self.resume()

    def resume(self) -> None:
        """Resume every paused connection (each pauses again on its next read if still needed)."""
        paused, self.paused = self.paused, {}
        for conn in paused:
            if conn.open:
                conn.resume_reading("budget")

    def _pause_largest(self) -> None:
        holders = [c for c in self.connections if c.held]
        fair = self.soft // max(len(holders), 1)
        now = time.monotonic()
        for conn in holders:
            if conn.held > fair and conn.open and conn not in self.paused:
                conn.pause_reading("budget")
                self.paused[conn] = now
                self.counters["budget_pauses"] += 1

    def _shed_until(self, limit: int) -> None:
        for victim in sorted((c for c in self.connections if c.held), key=lambda c: c.held, reverse=True):
            if self.total <= limit:
                return
            self._close(victim, f"over the input budget of {self.budget} bytes")

    def _close(self, victim: _Conn, why: str) -> None:
        log.info("closing a connection holding %d bytes of input: %s", victim.held, why)
        self.counters["budget_shed"] += 1
        victim.close()  # its closed() lowers the total

    def snapshot(self) -> dict[str, int]:
        return {
            "input_buffered": self.total,
            "input_buffered_peak": self.peak,
            "input_budget": self.budget,
            "connections_paused": len(self.paused),
        }
