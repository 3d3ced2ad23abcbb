"""The bridge's micro-batcher: decision rows of every connection, one engine forward per archetype.

Requests of the :attr:`~npcadapt.rpc.Kind.DECISION` kind (``act``, ``act_batch``) are
queued here per archetype by the connections that parsed them and answered by one
:meth:`~npcadapt.rpc.Methods.run_blocks` call each; the replies of one forward go out as
one write per connection, however many of its requests the forward answered.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from .protocol_codec import EncodedRows, packed_response
from .rpc import ActBlock, Methods

if TYPE_CHECKING:
    from .bridge_connection import Connection
    from .server import ServerConfig, Stats

log = logging.getLogger(__name__)

# A queued request: (connection, msgid, one-row reply?, arrival time, its rows).
Pending = tuple["Connection", int, bool, float, ActBlock]


class MicroBatcher:
    """Per-archetype queues of decision rows, answered by one engine forward each."""

    def __init__(self, loop: asyncio.AbstractEventLoop, methods: Methods, config: ServerConfig, stats: Stats):
        self.loop, self.methods, self.config, self.stats = loop, methods, config, stats
        self._queues: dict[str, list[Pending]] = {}
        self._sizes: dict[str, int] = {}
        self._scheduled: dict[str, asyncio.Handle] = {}  # archetypes with a flush on the loop, and its handle
        self.queued_rows = 0  # rows of every archetype waiting for a forward

    def submit(self, archetype: str, pending: Pending) -> None:
        """Queue a request's rows (answered by :meth:`end_read`'s choice, or at `max_batch` rows)."""
        self._queues.setdefault(archetype, []).append(pending)
        pending[0].queued += 1
        self.queued_rows += len(pending[4])
        size = self._sizes[archetype] = self._sizes.get(archetype, 0) + len(pending[4])
        if size >= self.config.max_batch:
            self.flush(archetype)

    def end_read(self, eager: bool) -> None:
        """After a read was handled: `eager` answers every queue now; otherwise each queue is
        flushed on the next loop turn, or after `batch_wait`, so other connections' rows join."""
        if eager:
            self.flush_all()
            return
        for archetype in self._queues.keys() - self._scheduled.keys():
            if self.config.batch_wait > 0:
                self._scheduled[archetype] = self.loop.call_later(self.config.batch_wait, self.flush, archetype)
            else:
                self._scheduled[archetype] = self.loop.call_soon(self.flush, archetype)

    def flush_all(self) -> None:
        for archetype in list(self._queues):
            self.flush(archetype)

    def flush(self, archetype: str) -> None:
        handle = self._scheduled.pop(archetype, None)
        if handle is not None:  # flushed before its timer: the timer must not cut a later batch short
            handle.cancel()
        queue = self._queues.pop(archetype, None)
        self.queued_rows -= self._sizes.pop(archetype, 0)
        if queue:
            self._run(archetype, queue)

    def _run(self, archetype: str, queue: list[Pending]) -> None:
        try:
            encoded = self.methods.run_blocks(archetype, [p[4] for p in queue])
        except Exception as exc:
            if len(queue) == 1:
                conn, msgid = queue[0][0], queue[0][1]
                conn.queued -= 1
                conn.fail(msgid, exc)
                return
            log.info("a merged batch failed (%s); answering its requests one by one", exc)
            for pending in queue:  # so one request's problem never fails another's
                self._run(archetype, [pending])
            return
        self._answer(queue, encoded)

    def _answer(self, queue: list[Pending], encoded: EncodedRows) -> None:
        """One response per request, one write per connection."""
        data, offsets = encoded.data, encoded.offsets
        replies: dict[Connection, list[bytes]] = {}
        row = 0
        for conn, msgid, one_row, _, block in queue:
            conn.queued -= 1
            end = row + len(block)
            body = data[offsets[row] : offsets[end]]
            replies.setdefault(conn, []).append(packed_response(msgid, body, None if one_row else end - row))
            row = end
        for conn, parts in replies.items():
            conn.send(b"".join(parts))
        now = time.perf_counter()
        self.stats.latency.extend(now - p[3] for p in queue)
        self.stats.batch_sizes.append(row)
