"""The socket bridge: an asyncio TCP server speaking MessagePack-RPC over the Service.

This module owns sockets, limits, authentication and micro-batching; framing lives in :mod:`npcadapt.protocol` and method semantics in
:mod:`npcadapt.rpc`. ``act`` and ``act_batch`` rows from every connection are queued per
archetype and answered by one engine forward per archetype on the next turn of the event
loop (or after ``batch_wait``; with one client connected, at the end of the read that
brought them), with one socket write per connection per forward; a run of feedback
notifications from one read is applied as one batch, after the decisions of any act
rows that came before it on the same connection.

Memory: each connection's pending input is bounded by the protocol limits (and by
``pre_auth_max_bytes`` before it authenticates, output included); the input pending across
all connections by ``input_budget_bytes`` (:class:`InputBudget`). Load: past
``max_queued_rows`` decision rows waiting for a forward, new act/act_batch requests get
OVERLOADED. Feedback is never refused (it is O(1), and a lost ``done`` would merge two
episodes): past ``max_pending_feedback`` steps of completed episodes held for the trainer,
the oldest completed episodes are discarded (``dropped_episodes``).
``flush`` runs in a worker thread, so its disk writes never stall the event loop.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import hmac
import ipaddress
import logging
import os
import signal
import socket
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .coalesce import Coalesced
from .errors import InvalidInputError, NpcAdaptError, ProtocolError
from .input_budget import InputBudget
from .protocol import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    METHOD_NOT_FOUND,
    OVERLOADED,
    UNAUTHORIZED,
    InvalidMessage,
    Limits,
    Notification,
    Request,
    RpcConnection,
    packed_response,
)
from .rpc import ActBlock, EncodedRows, Methods
from .service import ROUND_PLAYERS, Service

log = logging.getLogger(__name__)

MAX_AUTH_FAILURES = 3  # wrong tokens before the connection is closed
INPUT_BUDGET_CAP = 256 * 2**20  # the default input budget: this, or 1/8 of the RAM if less


def default_input_budget() -> int:
    """min(256 MiB, 1/8 of physical memory), and at least one message of the default limits
    (counted twice: see :class:`~npcadapt.input_budget.InputBudget`)."""
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # not POSIX
        ram = 8 * INPUT_BUDGET_CAP
    return max(min(INPUT_BUDGET_CAP, ram // 8), 2 * Limits().max_buffer_size)


@dataclass(frozen=True)
class ServerConfig:
    """Bridge settings."""

    host: str = "127.0.0.1"
    port: int = 7777  # 0 picks a free port
    token: str | None = None  # required to bind anything but loopback
    max_connections: int = 1024
    idle_timeout: float = 300.0  # seconds without bytes from a client before it is closed
    max_output_buffer: int = 8 * 2**20  # bytes queued for a client that does not read
    batch_wait: float = 0.0  # seconds a batch waits for more rows; 0 = next loop turn
    max_batch: int = 4096  # rows per engine forward
    limits: Limits = field(default_factory=Limits)
    train_interval: float = 0.05  # background online training poll, seconds
    train_round_players: int = ROUND_PLAYERS  # players per background update round
    flush_interval: float = 1.0  # seconds between interaction-log flushes (what a kill -9 can lose)
    busy_poll: float = 0.0  # seconds the event loop keeps polling, not sleeping, after bytes arrive; 0 = off
    pre_auth_max_bytes: int = 64 * 1024  # with a token: one message, and replies queued, before auth
    input_budget_bytes: int = field(default_factory=default_input_budget)  # pending input, all connections
    budget_max_pause: float = 10.0  # seconds a connection may stay paused by the budget before the largest is closed
    max_queued_rows: int = 65_536  # act rows waiting for a forward; past it act/act_batch get OVERLOADED
    max_pending_feedback: int = 1_000_000  # completed-episode steps held for the trainer; past it the oldest are discarded

    def __post_init__(self) -> None:
        if not is_loopback(self.host) and not self.token:
            raise NpcAdaptError(f"refusing to bind {self.host!r} without --token: only loopback may be served unauthenticated")
        if not 0.0 <= self.busy_poll <= 1.0:
            raise InvalidInputError(f"busy_poll must be between 0 and 1 second, got {self.busy_poll!r}")
        if type(self.port) is not int or not 0 <= self.port <= 65535:
            raise InvalidInputError(f"port must be an int between 0 and 65535, got {self.port!r}")
        for name in ("max_connections", "max_output_buffer", "max_batch", "train_round_players",
                     "pre_auth_max_bytes", "input_budget_bytes", "max_queued_rows", "max_pending_feedback"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise InvalidInputError(f"{name} must be a positive int, got {value!r}")
        for name in ("idle_timeout", "train_interval", "flush_interval", "budget_max_pause"):
            if not getattr(self, name) > 0:
                raise InvalidInputError(f"{name} must be a positive number of seconds, got {getattr(self, name)!r}")
        if not self.batch_wait >= 0:
            raise InvalidInputError(f"batch_wait must be >= 0 seconds, got {self.batch_wait!r}")
        if self.pre_auth_max_bytes > self.limits.max_buffer_size:
            raise InvalidInputError(f"pre_auth_max_bytes ({self.pre_auth_max_bytes}) must not exceed "
                                    f"limits.max_buffer_size ({self.limits.max_buffer_size})")
        if self.input_budget_bytes < 2 * self.limits.max_buffer_size:
            raise InvalidInputError(f"input_budget_bytes ({self.input_budget_bytes} bytes) must hold at least one "
                                    f"message of limits.max_buffer_size ({self.limits.max_buffer_size} bytes), "
                                    f"counted twice (the buffer and msgpack's scanner)")


def bind_listener(host: str, port: int) -> socket.socket:
    """The listening socket, bound now: a busy port or a bad address is a one-line
    NpcAdaptError before anything else (the trainer process) has started."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise NpcAdaptError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock = socket.socket(family, kind, proto)
    try:
        if os.name == "posix":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio does
        sock.bind(address)
        sock.listen(128)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise NpcAdaptError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Stats:
    """Counters and rolling windows for `stats()`."""

    def __init__(self, window: int = 10_000):
        self.counters = {"connections": 0, "connections_total": 0, "connections_refused": 0, "requests": 0,
                         "notifications": 0, "errors": 0, "protocol_errors": 0, "auth_failures": 0,
                         "overloaded": 0, "budget_pauses": 0, "budget_shed": 0, "output_pauses": 0,
                         "log_flush_errors": 0}
        self.errors_by_code: dict[int, int] = {}  # error replies sent, by code
        self.latency = deque(maxlen=window)  # seconds, act/act_batch request -> response
        self.batch_sizes = deque(maxlen=window)

    def error(self, code: int) -> None:
        self.counters["errors"] += 1
        self.errors_by_code[code] = self.errors_by_code.get(code, 0) + 1

    def snapshot(self) -> dict:
        lat = np.asarray(self.latency) * 1e3
        sizes = np.asarray(self.batch_sizes)
        pct = {f"act_p{q}_ms": round(float(np.percentile(lat, q)), 4) if lat.size else None for q in (50, 90, 99)}
        return {**self.counters, **pct,
                "errors_by_code": {str(code): n for code, n in sorted(self.errors_by_code.items())},
                "batch_size_mean": round(float(sizes.mean()), 2) if sizes.size else None,
                "batch_size_max": int(sizes.max()) if sizes.size else None}


def error_code(exc: Exception) -> int:
    """Caller mistakes are INVALID_PARAMS; anything else (disk full, a bug) is INTERNAL_ERROR."""
    return INVALID_PARAMS if isinstance(exc, InvalidInputError) else INTERNAL_ERROR


# A queued act / act_batch request: (connection, msgid, single-row act?, arrival time, its rows).
Pending = tuple["Connection", int, bool, float, ActBlock]


class MicroBatcher:
    """Per-archetype queues of act rows, answered by one engine forward each.

    The answers of one forward go out as one write per connection, however many of its
    requests the forward answered.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, methods: Methods, config: ServerConfig, stats: Stats):
        self.loop, self.methods, self.config, self.stats = loop, methods, config, stats
        self._queues: dict[str, list[Pending]] = {}
        self._sizes: dict[str, int] = {}
        self._scheduled: set[str] = set()  # archetypes with a flush on the loop
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
        for archetype in self._queues.keys() - self._scheduled:
            self._scheduled.add(archetype)
            if self.config.batch_wait > 0:
                self.loop.call_later(self.config.batch_wait, self.flush, archetype)
            else:
                self.loop.call_soon(self.flush, archetype)

    def flush_all(self) -> None:
        for archetype in list(self._queues):
            self.flush(archetype)

    def flush(self, archetype: str) -> None:
        self._scheduled.discard(archetype)
        queue = self._queues.pop(archetype, None)
        self.queued_rows -= self._sizes.pop(archetype, 0)
        if queue:
            self._run(archetype, queue)

    def _run(self, archetype: str, queue: list[Pending]) -> None:
        try:
            encoded = self.methods.run_blocks(archetype, [p[4] for p in queue])
        except Exception as exc:  # noqa: BLE001 - every request must get an answer
            if len(queue) == 1:
                _fail(queue[0], exc)
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
        for conn, msgid, single, _, block in queue:
            conn.queued -= 1
            end = row + len(block)
            body = data[offsets[row] : offsets[end]]
            replies.setdefault(conn, []).append(packed_response(msgid, body, None if single else end - row))
            row = end
        for conn, parts in replies.items():
            conn.send(b"".join(parts))
        now = time.perf_counter()
        self.stats.latency.extend(now - p[3] for p in queue)
        self.stats.batch_sizes.append(row)


def _fail(pending: Pending, err: Exception) -> None:
    conn, msgid = pending[0], pending[1]
    conn.queued -= 1
    if not isinstance(err, NpcAdaptError):
        log.error("internal error while deciding: %r", err)
    conn.error(msgid, error_code(err), str(err) if isinstance(err, NpcAdaptError) else f"internal error: {err!r}")


TRIM_INTERVAL = 10.0  # seconds between hand-backs of freed heap memory to the OS


def release_free_memory() -> None:
    """glibc's malloc_trim(0): return free heap pages to the OS (a no-op elsewhere). ctypes
    releases the GIL for the call, so it runs beside the event loop."""
    if _malloc_trim is not None:
        _malloc_trim(0)


def _find_malloc_trim():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS, Windows)
        return None


_malloc_trim = _find_malloc_trim()

MAX_EVENTS_PER_TURN = 256  # requests of one read handled before other connections get a turn


class Connection(asyncio.Protocol):
    """One client: bytes in -> events -> method calls -> responses out."""

    def __init__(self, bridge: "Bridge"):
        self.bridge = bridge
        config = bridge.config
        self.rpc = RpcConnection(config.limits)
        self.transport: asyncio.Transport | None = None
        self.authenticated = config.token is None
        if not self.authenticated:  # small until auth: a stranger cannot hold much memory
            self.rpc.cap_message_size(config.pre_auth_max_bytes, "pre_auth_max_bytes")
        self.last_activity = time.monotonic()
        self.open = False
        self.auth_failures = 0
        self.queued = 0  # act requests queued in the batcher, not yet answered
        self.held = 0  # pending input bytes counted in the bridge's InputBudget
        self.backlog: list = []  # decoded events left for a later loop turn (one read held too many)
        self._pause_reasons: set[str] = set()  # "budget", "backlog", "output": read again once none is left

    # -- asyncio callbacks ---------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        stats = self.bridge.stats.counters
        if stats["connections"] >= self.bridge.config.max_connections:
            stats["connections_refused"] += 1
            transport.abort()
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
        try:
            self._receive(data)
        finally:
            # with one client connected there is nobody to batch with: answer this read's rows now
            bridge.batcher.end_read(eager=len(bridge.connections) == 1 and bridge.config.batch_wait == 0)
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
        if self.open and not self._pause_reasons:
            self.transport.pause_reading()
        self._pause_reasons.add(reason)

    def resume_reading(self, reason: str) -> None:
        self._pause_reasons.discard(reason)
        if self.open and not self._pause_reasons:
            self.transport.resume_reading()

    def _receive(self, data: bytes) -> None:
        try:
            events = self.rpc.receive_data(data)
        except ProtocolError as exc:
            for event in exc.events:
                self._handle(event)
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
        try:
            self._dispatch(events)
        finally:
            self.bridge.batcher.end_read(eager=False)
        if not self.backlog:
            self.resume_reading("backlog")

    def _handle_events(self, events: list) -> None:
        feedback: list[list] = []  # a run of feedback notifications, applied as one batch
        for event in events:
            if not self.open:
                return
            is_feedback = type(event) in (Notification, Request) and event.method == "feedback"
            if is_feedback and self.queued:  # feedback attaches to the decisions sent before it
                self.bridge.batcher.flush_all()
            if is_feedback and type(event) is Notification:
                feedback.append(event.params)
                continue
            if feedback:
                self._feedback(feedback)
                feedback = []
            self._handle(event)
        if feedback:
            self._feedback(feedback)

    # -- dispatch -------------------------------------------------------------------
    def _feedback(self, params_list: list[list]) -> None:
        """Feedback notifications: applied together, never answered; refusals are counted."""
        stats = self.bridge.stats.counters
        stats["notifications"] += len(params_list)
        if not self.authenticated:
            return
        try:
            refused = self.bridge.methods.feedback_many(params_list)
        except NpcAdaptError as exc:  # e.g. the log could not be written
            refused = [exc]
        stats["errors"] += len(refused)
        for exc in refused:
            log.debug("feedback notification refused: %s", exc)

    def _handle(self, event) -> None:
        stats = self.bridge.stats.counters
        if isinstance(event, Request):
            stats["requests"] += 1
            self._request(event)
        elif isinstance(event, Notification):
            if event.method == "feedback":
                self._feedback([event.params])
            else:
                stats["notifications"] += 1
        elif isinstance(event, InvalidMessage) and event.msgid is not None:
            self.bridge.stats.error(event.error[0])
            self.send(self.rpc.response(event.msgid, event.error, None))

    def _request(self, req: Request) -> None:
        methods = self.bridge.methods
        if not self.authenticated:
            if req.method == "auth":
                self._auth(req)
            else:
                self.error(req.msgid, UNAUTHORIZED, f"authenticate first: call auth(token) before {req.method!r}")
            return
        try:
            method = req.method
            if method == "act" or method == "act_batch":
                single = method == "act"
                archetype, block = (methods.parse_act if single else methods.parse_act_batch)(req.params)
                batcher, limit = self.bridge.batcher, self.bridge.config.max_queued_rows
                if batcher.queued_rows and batcher.queued_rows + len(block) > limit:
                    self.overloaded(req.msgid, f"{batcher.queued_rows} decision rows are waiting for a forward "
                                               f"(max_queued_rows={limit}); retry later")
                    return
                batcher.submit(archetype, (self, req.msgid, single, time.perf_counter(), block))
            elif req.method == "stats":
                self.send(self.rpc.response(req.msgid, None, self.bridge.stats_snapshot()))
            elif req.method == "auth":
                self.send(self.rpc.response(req.msgid, None, True))
            elif method == "flush":
                self._flush(req)
            elif method == "reset_player":  # deletes a file: off the event loop too
                self._in_worker(req, lambda: methods.direct["reset_player"](req.params))
            elif req.method in methods.direct:
                self.send(self.rpc.response(req.msgid, None, methods.direct[req.method](req.params)))
            else:
                self.error(req.msgid, METHOD_NOT_FOUND, f"unknown method {req.method!r}; known: {self.bridge.method_names}")
        except NpcAdaptError as exc:
            self.error(req.msgid, error_code(exc), str(exc))
        except Exception as exc:  # a bug must not take the server down
            log.exception("internal error in %s", req.method)
            self.error(req.msgid, INTERNAL_ERROR, f"internal error in {req.method}: {type(exc).__name__}: {exc}")

    def _flush(self, req: Request) -> None:
        """flush() in a worker thread (disk writes and fsyncs); the reply comes when it is done.
        Pipelined flushes share runs (:class:`~npcadapt.coalesce.Coalesced`)."""
        if req.params:
            raise InvalidInputError(f"flush takes 0 params, got {len(req.params)}")
        self._in_worker(req, self.bridge.flusher)

    def _in_worker(self, req: Request, call: Callable[[], object]) -> None:
        """Answer `req` with `call()` run in a worker thread (`call` returns a future itself
        when it is a :class:`Coalesced`). This connection's act rows still queued are
        decided first, so the call covers them; its reply may follow replies to later requests."""
        if self.queued:
            self.bridge.batcher.flush_all()
        done = call() if isinstance(call, Coalesced) else asyncio.get_running_loop().run_in_executor(None, call)
        done.add_done_callback(lambda fut: self._flushed(req.msgid, fut, req.method))

    def _flushed(self, msgid: int, fut: asyncio.Future, method: str) -> None:
        if fut.cancelled():  # shutting down
            return
        exc = fut.exception()
        if exc is None:
            self.send(self.rpc.response(msgid, None, fut.result()))
        elif isinstance(exc, NpcAdaptError):
            self.error(msgid, error_code(exc), str(exc))
        else:
            log.error("internal error in %s: %r", method, exc)
            self.error(msgid, INTERNAL_ERROR, f"internal error in {method}: {type(exc).__name__}: {exc}")

    def _auth(self, req: Request) -> None:
        token = req.params[0] if len(req.params) == 1 else None
        if isinstance(token, str) and hmac.compare_digest(token.encode(), self.bridge.config.token.encode()):
            self.authenticated = True
            self.rpc.cap_message_size(None)
            self.send(self.rpc.response(req.msgid, None, True))
            return
        self.auth_failures += 1
        self.bridge.stats.counters["auth_failures"] += 1
        self.error(req.msgid, UNAUTHORIZED, "auth(token): wrong token")
        if self.auth_failures >= MAX_AUTH_FAILURES:
            log.info("closing a connection after %d wrong tokens", self.auth_failures)
            self.close()

    # -- output -----------------------------------------------------------------------
    def error(self, msgid: int, code: int, message: str) -> None:
        self.bridge.stats.error(code)
        self.send(self.rpc.error_response(msgid, code, message))

    def overloaded(self, msgid: int, message: str) -> None:
        """OVERLOADED: refused at once, nothing queued; the client may retry."""
        self.bridge.stats.counters["overloaded"] += 1
        self.error(msgid, OVERLOADED, message)

    def send(self, data: bytes) -> None:
        if not self.open:
            return
        self.transport.write(data)
        config = self.bridge.config
        cap = config.max_output_buffer if self.authenticated else config.pre_auth_max_bytes
        if self.transport.get_write_buffer_size() > cap:
            log.info("closing a client that does not read its responses (output buffer over %d bytes)", cap)
            self.transport.abort()
            self.connection_lost(None)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        self.connection_lost(None)


class Bridge:
    """The server object: owns the listening socket, connections, batcher and stats."""

    def __init__(self, service: Service, config: ServerConfig = ServerConfig()):
        self.service = service
        self.config = config
        self.methods = Methods(service)
        self.method_names = sorted({*self.methods.direct, "act", "act_batch", "stats", "auth"})
        service.limit_pending_feedback(config.max_pending_feedback)
        self.flusher = Coalesced(lambda: service.flush())  # one flush running, at most one more waiting
        self.stats = Stats()
        self.connections: set[Connection] = set()
        self.budget = InputBudget(config.input_budget_bytes, self.stats.counters, self.connections,
                                  config.budget_max_pause)
        self.batcher: MicroBatcher | None = None
        self._server: asyncio.AbstractServer | None = None
        self._reaper: asyncio.Task | None = None
        self._flusher: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._poll_until = 0.0
        self._polling = False
        self.port: int | None = None

    async def start(self, sock: socket.socket | None = None) -> int:
        """Listen (on `sock` when given, bound by :func:`bind_listener`); returns the bound
        port. Online training runs in a background thread."""
        loop = self._loop = asyncio.get_running_loop()
        self.batcher = MicroBatcher(loop, self.methods, self.config, self.stats)
        if sock is not None:
            self._server = await loop.create_server(lambda: Connection(self), sock=sock)
        else:
            self._server = await loop.create_server(lambda: Connection(self), self.config.host, self.config.port)
        self.port = self._server.sockets[0].getsockname()[1]
        self._reaper = loop.create_task(self._reap_idle())
        self._flusher = loop.create_task(self._flush_log())
        if self.service.online:
            self.service.start_background_training(self.config.train_interval, self.config.train_round_players)
        log.info("npcadapt bridge listening on %s:%d", self.config.host, self.port)
        return self.port

    def keep_polling(self) -> None:
        """Busy polling: for `busy_poll` seconds after the latest bytes, the loop turns without
        sleeping, so the next request finds the process awake and its caches warm (light-load
        figures with and without it: docs/benchmarks.md). Costs up to that much CPU per burst
        of requests; off by default."""
        self._poll_until = time.perf_counter() + self.config.busy_poll
        if not self._polling:
            self._polling = True
            self._loop.call_soon(self._poll)

    def _poll(self) -> None:
        if time.perf_counter() < self._poll_until:
            self._loop.call_soon(self._poll)  # a ready callback makes the next select non-blocking
        else:
            self._polling = False

    async def _reap_idle(self) -> None:
        """Close idle connections, paused ones included (a paused transport never sees its
        peer's EOF), and let the input budget resume or shed paused connections."""
        config = self.config
        period = max(min(config.idle_timeout / 4, config.budget_max_pause / 4, 5.0), 0.01)
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            cutoff = now - config.idle_timeout
            for conn in [c for c in self.connections if c.last_activity < cutoff]:
                log.info("closing an idle connection")
                conn.close()
            self.budget.tick(now)

    async def _flush_log(self) -> None:
        """Flush the interaction log every `flush_interval` in a worker thread: the write and
        the fsync never stall the event loop (appends wait only while the buffer is handed
        to the OS, not for the disk). Every TRIM_INTERVAL the same thread hands freed heap
        pages back to the OS (glibc keeps them otherwise: the records held through a full
        disk, a burst of episodes), so RSS follows what is in use."""
        loop = asyncio.get_running_loop()
        next_trim = time.monotonic() + TRIM_INTERVAL
        while True:
            await asyncio.sleep(self.config.flush_interval)
            if time.monotonic() >= next_trim:
                next_trim = time.monotonic() + TRIM_INTERVAL
                await loop.run_in_executor(None, release_free_memory)
            if self.service.log is not None:
                try:
                    await loop.run_in_executor(None, self.service.log.flush)
                except NpcAdaptError as exc:  # e.g. disk full: keep serving, keep the records buffered
                    self.stats.counters["log_flush_errors"] += 1
                    log.error("interaction log flush failed: %s", exc)
                except Exception:  # a bug must not stop every later flush
                    log.exception("interaction log flush failed")

    def stats_snapshot(self) -> dict:
        return {**self.stats.snapshot(), **self.budget.snapshot(), "queued_rows": self.batcher.queued_rows,
                **self.service.stats()}

    async def stop(self) -> None:
        """Stop accepting, close connections, flush the log and changed adapters."""
        if self._server is not None:
            self._server.close()
        for task in (self._reaper, self._flusher):
            if task is not None:
                task.cancel()
        for conn in list(self.connections):
            conn.close()
        if self._server is not None:
            await self._server.wait_closed()
        self.service.close()  # stops the background trainer


def serve(service: Service, config: ServerConfig, *, ready: Callable[[int], None] | None = None,
          sock: socket.socket | None = None) -> None:
    """Run the bridge until SIGINT or SIGTERM; both flush everything before returning. The
    service is closed however this ends."""

    async def main() -> None:
        bridge = Bridge(service, config)
        try:
            port = await bridge.start(sock)
            if ready:
                ready(port)
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            await stop.wait()
            log.info("shutting down: flushing the interaction log and changed adapters")
        finally:
            await bridge.stop()

    asyncio.run(main())
