"""One client of the socket bridge: bytes in -> events -> method calls by kind -> replies out.

:class:`Connection` is the asyncio protocol of one TCP connection. It feeds the bytes it
reads to its :class:`~npcadapt.protocol.RpcConnection`, looks each request's method up
in :attr:`Methods.table <npcadapt.rpc.Methods.table>` and runs it as its
:class:`~npcadapt.rpc.Kind` says: it knows no method by name. Every reply's bytes come
from :mod:`npcadapt.protocol_codec`.

Flow control lives here too: at most ``MAX_EVENTS_PER_TURN`` requests of one read are
handled per loop turn, and reading pauses while the input budget, that backlog or the
client's unread replies (the transport's high-water mark) say so. The replies made while
one read (or one turn of its backlog) is handled are held and written together, about
``HELD_WRITE`` bytes a write, not one system call per reply.

Before a connection authenticates (with a token), what a stranger can make the event loop
do is bounded per connection: its reads are decoded ``PRE_AUTH_SLICE`` bytes at a time,
and its ``MAX_PRE_AUTH_EVENTS + 1``-th message other than ``auth`` closes it (a client
that never authenticates gets that many ``UNAUTHORIZED`` replies, not one per message it
can send).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, cast

from .errors import NpcAdaptError, ProtocolError
from .protocol import (
    METHOD_NOT_FOUND,
    OVERLOADED,
    UNAUTHORIZED,
    InvalidMessage,
    Notification,
    Request,
    RpcConnection,
)
from .protocol_codec import encode_error, encode_response
from .rpc import NOT_AUTHENTICATED, WRONG_TOKEN, BridgeMethod, Kind, error_reply

if TYPE_CHECKING:
    from .micro_batcher import MicroBatcher
    from .server import Bridge

log = logging.getLogger(__name__)

MAX_AUTH_FAILURES = 3  # wrong tokens before the connection is closed
MAX_EVENTS_PER_TURN = 256  # requests of one read handled before other connections get a turn
MAX_PRE_AUTH_EVENTS = 64  # messages other than auth answered (or ignored) before auth; one more closes
# Replies to one read are written together, about HELD_WRITE bytes a write: a write per
# small reply costs a system call each. Not more: with 16 KiB writes, a client that
# connected with a 4 KiB receive buffer got its queued replies in a trickle (8 KiB per
# 0.2 s, Linux loopback) even after enlarging the buffer (tests/test_server.py, the client
# that stops reading); with 4 KiB writes, as with one write per reply, they all came at once.
HELD_WRITE = 4096
PRE_AUTH_SLICE = 2048  # bytes of an unauthenticated read decoded at a time (the rest may never be)

_DECISION, _DIRECT, _FEEDBACK, _WORKER = Kind.DECISION, Kind.DIRECT, Kind.FEEDBACK, Kind.WORKER


class Connection(asyncio.Protocol):
    """One client: bytes in -> events -> method calls -> responses out."""

    def __init__(self, bridge: Bridge):
        self.bridge = bridge
        config = bridge.config
        self.table = bridge.methods.table
        self.rpc = RpcConnection(config.limits)
        self.transport: asyncio.Transport | None = None
        self.authenticated = config.token is None
        if not self.authenticated:  # small until auth: a stranger cannot hold much memory
            self.rpc.cap_message_size(config.pre_auth_max_bytes, "pre_auth_max_bytes")
        self.last_activity = time.monotonic()
        self.open = False
        self.auth_failures = 0
        self.pre_auth_events = 0  # messages other than auth received before authenticating
        self.queued = 0  # decision requests queued in the batcher, not yet answered
        self.held = 0  # pending input bytes counted in the bridge's InputBudget
        self.backlog: list = []  # decoded events left for a later loop turn (one read held too many)
        self._pause_reasons: set[str] = set()  # "budget", "backlog", "output": read again once none is left
        self._out: list[bytes] | None = None  # replies held while a read is handled, written at its end
        self._held = 0  # bytes in self._out

    @property
    def batcher(self) -> MicroBatcher:
        """The bridge's micro-batcher (Bridge.start makes it before it accepts any connection)."""
        batcher = self.bridge.batcher
        assert batcher is not None
        return batcher

    # -- asyncio callbacks ---------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # a TCP server's connection: a full Transport
        stats = self.bridge.stats.counters
        if stats["connections"] >= self.bridge.config.max_connections:
            stats["connections_refused"] += 1
            self.transport.abort()
            return
        self.open = True
        stats["connections"] += 1
        stats["connections_total"] += 1
        self.bridge.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.open:
            self.open = False
            self.bridge.stats.counters["connections"] -= 1
            self.bridge.connections.discard(self)
            self.bridge.budget.closed(self)

    def data_received(self, data: bytes) -> None:
        bridge = self.bridge
        self.last_activity = time.monotonic()
        if bridge.config.busy_poll:
            bridge.keep_polling()
        self._out = []
        try:
            self._receive(data)
        finally:
            # with one client connected there is nobody to batch with: answer this read's rows now
            self.batcher.end_read(eager=len(bridge.connections) == 1 and bridge.config.batch_wait == 0)
            self._write_held()
            if self.open and (self.held or self.rpc.buffered):
                bridge.budget.update(self)

    def pause_writing(self) -> None:
        """The client reads its replies slower than we write them (the transport's buffer passed
        its high-water mark): read none of its requests until it catches up, so a slow reader
        costs no CPU and holds no more than the kernel's buffers (TCP pushes back on it)."""
        self.bridge.stats.counters["output_pauses"] += 1
        self.pause_reading("output")

    def resume_writing(self) -> None:
        self.resume_reading("output")
        if self.backlog and self.open:  # events read before the pause wait for this
            asyncio.get_running_loop().call_soon(self._drain_backlog)

    def pause_reading(self, reason: str) -> None:
        """Stop reading from the socket for `reason`; reading resumes when every reason is gone."""
        if self.open and not self._pause_reasons and self.transport is not None:  # open: it has a transport
            self.transport.pause_reading()
        self._pause_reasons.add(reason)

    def resume_reading(self, reason: str) -> None:
        self._pause_reasons.discard(reason)
        if self.open and not self._pause_reasons and self.transport is not None:  # open: it has a transport
            self.transport.resume_reading()

    # -- events ------------------------------------------------------------------------
    def _receive(self, data: bytes) -> None:
        if self.authenticated:
            self._receive_events(data)
            return
        # A stranger's read is decoded a slice at a time, so that its messages past
        # MAX_PRE_AUTH_EVENTS are never decoded (the connection is closed first); once a
        # slice authenticates it, the rest of the read is taken whole.
        view = memoryview(data)
        for start in range(0, len(view), PRE_AUTH_SLICE):
            if not self.open:
                return
            if self.authenticated:
                self._receive_events(view[start:])
                return
            self._receive_events(view[start : start + PRE_AUTH_SLICE])

    def _receive_events(self, data) -> None:
        try:
            events = self.rpc.receive_data(data)
        except ProtocolError as exc:
            self._handle_events(exc.events)  # what came before the bad bytes, in order (feedback after its act)
            self.bridge.stats.counters["protocol_errors"] += 1
            log.info("closing connection after protocol error: %s", exc)
            self.close()
            return
        if self.backlog:  # a read that raced the pause: keep the order
            self.backlog.extend(events)
            return
        self._dispatch(events)

    def _dispatch(self, events: list) -> None:
        """Handle at most MAX_EVENTS_PER_TURN events now; the rest wait for the next loop turn,
        with reading paused, so one pipelining client cannot hold up every other connection."""
        if len(events) > MAX_EVENTS_PER_TURN:
            events, self.backlog = events[:MAX_EVENTS_PER_TURN], events[MAX_EVENTS_PER_TURN:]
            self.pause_reading("backlog")
            asyncio.get_running_loop().call_soon(self._drain_backlog)
        self._handle_events(events)

    def _drain_backlog(self) -> None:
        if "output" in self._pause_reasons or not self.backlog:  # resume_writing calls again
            return
        events, self.backlog = self.backlog, []
        if not self.open:
            return
        self._out = []
        try:
            self._dispatch(events)
        finally:
            self.batcher.end_read(eager=False)
            self._write_held()
        if not self.backlog:
            self.resume_reading("backlog")

    def _handle_events(self, events: list) -> None:
        """Each event in order; a run of notifications of one FEEDBACK method is applied as
        one batch, and a FEEDBACK call first has this connection's queued decisions made."""
        table = self.table
        run: list[list] = []  # params of the notifications in the run
        run_method: BridgeMethod | None = None  # the run's method (set whenever run is not empty)
        for event in events:
            if not self.open:
                return
            kind = type(event)
            method = table.get(event.method) if kind is Request or kind is Notification else None
            if method is not None and method.kind is _FEEDBACK:
                if self.queued:  # feedback attaches to the decisions sent before it
                    self.batcher.flush_all()
                if kind is Notification:
                    if run and method is not run_method:
                        self._notified(cast(BridgeMethod, run_method), run)
                        run = []
                    run_method = method
                    run.append(event.params)
                    continue
            if run:
                self._notified(cast(BridgeMethod, run_method), run)
                run = []
            self._handle(event, method)
        if run:
            self._notified(cast(BridgeMethod, run_method), run)

    def _handle(self, event, method: BridgeMethod | None) -> None:
        """One event that is not a FEEDBACK notification (those come in runs); `method` is its
        entry in the method table, already looked up."""
        stats = self.bridge.stats.counters
        if isinstance(event, Request):
            stats["requests"] += 1
            self._request(event, method)
        elif isinstance(event, Notification):  # no other kind may be sent as a notification: ignored
            stats["notifications"] += 1
            if not self.authenticated:
                self._pre_auth_event()
        elif isinstance(event, InvalidMessage):
            if not self.authenticated and not self._pre_auth_event():
                return
            if event.msgid is not None:
                self.bridge.stats.error(event.error[0])
                self.send(encode_response(event.msgid, event.error, None))

    # -- dispatch by kind ------------------------------------------------------------------
    def _notified(self, method: BridgeMethod, params_list: list[list]) -> None:
        """Notifications of a FEEDBACK method: applied together, never answered; refusals are
        counted."""
        stats = self.bridge.stats.counters
        stats["notifications"] += len(params_list)
        if not self.authenticated:
            for _ in params_list:
                if not self._pre_auth_event():
                    break
            return
        assert method.many is not None  # every FEEDBACK method has one
        try:
            refused = method.many(params_list)
        except NpcAdaptError as exc:  # e.g. the log could not be written
            refused = [exc]
        stats["errors"] += len(refused)
        for refusal in refused:
            log.debug("notification refused: %s", refusal)

    def _request(self, req: Request, method: BridgeMethod | None) -> None:
        if not self.authenticated:
            if method is not None and method.kind is Kind.CONNECTION:
                self._authenticate(req, method)
            elif self._pre_auth_event():
                self.error(req.msgid, UNAUTHORIZED, NOT_AUTHENTICATED.format(method=req.method))
            return
        if method is None:
            self.error(req.msgid, METHOD_NOT_FOUND, f"unknown method {req.method!r}; known: {self.bridge.method_names}")
            return
        try:
            kind = method.kind
            if kind is _DECISION:
                self._decide(req, method)
            elif kind is _DIRECT or kind is _FEEDBACK:
                self.send(encode_response(req.msgid, None, method.call(req.params)))
            elif kind is _WORKER:
                self._in_worker(req, method)
            else:  # CONNECTION, already authenticated: the same check again (a wrong token is refused)
                self._authenticate(req, method)
        except Exception as exc:
            self.fail(req.msgid, exc, req.method)

    def _decide(self, req: Request, method: BridgeMethod) -> None:
        """Queue the request's rows for the next forward, or refuse it (OVERLOADED) when too
        many rows wait already."""
        archetype, block = method.call(req.params)
        batcher, limit = self.batcher, self.bridge.config.max_queued_rows
        if batcher.queued_rows and batcher.queued_rows + len(block) > limit:  # refused at once, nothing queued
            self.error(
                req.msgid,
                OVERLOADED,
                f"{batcher.queued_rows} decision rows are waiting for a forward (max_queued_rows={limit}); retry later",
            )
            return
        batcher.submit(archetype, (self, req.msgid, method.one_row, time.perf_counter(), block))

    def _in_worker(self, req: Request, method: BridgeMethod) -> None:
        """Answer `req` with the method run in a worker thread, once this connection's
        decisions still queued are made (so the call covers them); its reply may follow
        replies to later requests. A shared method's calls share runs (one runs, at most
        one more waits: :class:`~npcadapt.coalesce.Coalesced`)."""
        if method.shared:
            assert method.check is not None  # every shared WORKER method has one
            method.check(req.params)
        if self.queued:
            self.batcher.flush_all()
        if method.shared:
            done = self.bridge.shared_runs[req.method]()
        else:
            done = asyncio.get_running_loop().run_in_executor(None, method.call, req.params)
        done.add_done_callback(lambda fut: self._worker_done(req.msgid, fut, req.method))

    def _worker_done(self, msgid: int, fut: asyncio.Future, method: str) -> None:
        if fut.cancelled():  # shutting down
            return
        exc = fut.exception()
        if exc is None:
            self.send(encode_response(msgid, None, fut.result()))
        else:
            self.fail(msgid, exc, method)

    def _authenticate(self, req: Request, method: BridgeMethod) -> None:
        if method.call(req.params, self.bridge.config.token):
            self.authenticated = True
            self.rpc.cap_message_size(None)
            self.send(encode_response(req.msgid, None, True))
            return
        self.auth_failures += 1
        self.bridge.stats.counters["auth_failures"] += 1
        self.error(req.msgid, UNAUTHORIZED, WRONG_TOKEN)
        if self.auth_failures >= MAX_AUTH_FAILURES:
            log.info("closing a connection after %d wrong tokens", self.auth_failures)
            self.close()

    def _pre_auth_event(self) -> bool:
        """Count one message other than auth received before auth; past MAX_PRE_AUTH_EVENTS
        the connection is closed (False: it was, drop the message)."""
        self.pre_auth_events += 1
        if self.pre_auth_events <= MAX_PRE_AUTH_EVENTS:
            return True
        if self.open:
            self.bridge.stats.counters["pre_auth_closed"] += 1
            log.info("closing a connection that sent %d messages without authenticating", MAX_PRE_AUTH_EVENTS + 1)
            self.close()
        return False

    # -- output -----------------------------------------------------------------------
    def fail(self, msgid: int, exc: BaseException, method: str | None = None) -> None:
        """Answer a call that raised `exc` (`method` None: an engine forward of decisions)."""
        if not isinstance(exc, NpcAdaptError):
            log.error("internal error in %s", method or "a decision forward", exc_info=exc)
        self.error(msgid, *error_reply(exc, method))

    def error(self, msgid: int, code: int, message: str) -> None:
        self.bridge.stats.error(code)
        self.send(encode_error(msgid, code, message))

    def send(self, data: bytes) -> None:
        """Write `data`; while a read is being handled, replies are held and written together,
        up to HELD_WRITE bytes a write (one system call for many small replies)."""
        if not self.open or self.transport is None:  # open: it has a transport
            return
        out = self._out
        if out is None:
            self._write(data)
            return
        if len(data) >= HELD_WRITE:  # a large reply goes out as it is, after what is held
            self._write_held()
            self._out = []
            self._write(data)
            return
        out.append(data)
        self._held += len(data)
        if self._held >= HELD_WRITE:
            self._write_held()
            self._out = []

    def _write_held(self) -> None:
        """Write the replies held so far (see send) and stop holding."""
        out, self._out, self._held = self._out, None, 0
        if out and self.open:
            self._write(out[0] if len(out) == 1 else b"".join(out))

    def _write(self, data: bytes) -> None:
        transport = self.transport
        if not self.open or transport is None:  # open: it has a transport
            return
        config = self.bridge.config
        cap = config.max_output_buffer if self.authenticated else config.pre_auth_max_bytes
        waiting = transport.get_write_buffer_size()  # replies written before, not yet read by the client
        if waiting and waiting + len(data) > cap:  # one reply may be bigger than the cap; unread ones may not
            log.info("closing a client that does not read its responses (output buffer over %d bytes)", cap)
            transport.abort()
            self.connection_lost(None)
            return
        transport.write(data)

    def close(self) -> None:
        if self._out:  # replies to what came before the close go out first (transport.close() sends them)
            self._write_held()
        self._out = None
        if self.transport is not None:
            self.transport.close()
        self.connection_lost(None)
