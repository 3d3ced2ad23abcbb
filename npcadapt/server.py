"""The socket bridge: an asyncio TCP server speaking MessagePack-RPC over the Service.

This module owns the listening socket, the settings, the counters and the server's
lifetime; the rest of the bridge is split by what it does:

* :mod:`npcadapt.bridge_connection`: one client, bytes in -> events -> method calls by
  kind -> replies out, with authentication and flow control;
* :mod:`npcadapt.micro_batcher`: decision rows of every connection, one engine forward
  per archetype;
* :mod:`npcadapt.rpc`: the method table (each method's :class:`~npcadapt.rpc.Kind`),
  parameter checks and results;
* :mod:`npcadapt.protocol` (parsing), :mod:`npcadapt.protocol_headers` (limits checked
  as headers arrive), :mod:`npcadapt.protocol_codec` (every byte written).

``act`` and ``act_batch`` rows from every connection are queued per archetype and
answered by one engine forward per archetype on the next turn of the event loop (or
after ``batch_wait``; with one client connected, at the end of the read that brought
them), with one socket write per connection per forward; a run of feedback
notifications from one read is applied as one batch, after the decisions of any act
rows that came before it on the same connection.

Memory: each connection's pending input is bounded by the protocol limits (and by
``pre_auth_max_bytes`` before it authenticates, output included); the input pending across
all connections by ``input_budget_bytes`` (:class:`InputBudget`). Load: past
``max_queued_rows`` decision rows waiting for a forward, new act/act_batch requests get
OVERLOADED. Feedback is never refused (it is O(1), and a lost ``done`` would merge two
episodes): past ``max_pending_feedback`` steps of completed episodes held for the trainer,
the oldest completed episodes are discarded (``dropped_episodes``).
``flush`` and ``reset_player`` run in worker threads, so their disk writes never stall
the event loop.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import signal
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .allocator import release_free_memory
from .bridge_connection import Connection
from .coalesce import Coalesced
from .errors import InvalidInputError, NpcAdaptError
from .input_budget import InputBudget
from .micro_batcher import MicroBatcher
from .protocol import OVERLOADED, Limits
from .rpc import Kind, Methods
from .service import ROUND_PLAYERS, Service

__all__ = ["Bridge", "Connection", "ServerConfig", "Stats", "bind_listener", "default_input_budget", "serve"]

log = logging.getLogger(__name__)

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
    max_pending_feedback: int = (
        1_000_000  # completed-episode steps held for the trainer; past it the oldest are discarded
    )

    def __post_init__(self) -> None:
        if not is_loopback(self.host) and not self.token:
            raise NpcAdaptError(
                f"refusing to bind {self.host!r} without --token: only loopback may be served unauthenticated"
            )
        if not 0.0 <= self.busy_poll <= 1.0:
            raise InvalidInputError(f"busy_poll must be between 0 and 1 second, got {self.busy_poll!r}")
        if type(self.port) is not int or not 0 <= self.port <= 65535:
            raise InvalidInputError(f"port must be an int between 0 and 65535, got {self.port!r}")
        for name in (
            "max_connections",
            "max_output_buffer",
            "max_batch",
            "train_round_players",
            "pre_auth_max_bytes",
            "input_budget_bytes",
            "max_queued_rows",
            "max_pending_feedback",
        ):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise InvalidInputError(f"{name} must be a positive int, got {value!r}")
        for name in ("idle_timeout", "train_interval", "flush_interval", "budget_max_pause"):
            if not getattr(self, name) > 0:
                raise InvalidInputError(f"{name} must be a positive number of seconds, got {getattr(self, name)!r}")
        if not self.batch_wait >= 0:
            raise InvalidInputError(f"batch_wait must be >= 0 seconds, got {self.batch_wait!r}")
        if self.pre_auth_max_bytes > self.limits.max_buffer_size:
            raise InvalidInputError(
                f"pre_auth_max_bytes ({self.pre_auth_max_bytes}) must not exceed "
                f"limits.max_buffer_size ({self.limits.max_buffer_size})"
            )
        if self.input_budget_bytes < 2 * self.limits.max_buffer_size:
            raise InvalidInputError(
                f"input_budget_bytes ({self.input_budget_bytes} bytes) must hold at least one "
                f"message of limits.max_buffer_size ({self.limits.max_buffer_size} bytes), "
                f"counted twice (the buffer and msgpack's scanner)"
            )


def bind_listener(host: str, port: int) -> socket.socket:
    """The listening socket, bound now: a busy port or a bad address is a one-line
    NpcAdaptError before anything else (the trainer process) has started."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
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
        self.counters = {
            "connections": 0,
            "connections_total": 0,
            "connections_refused": 0,
            "requests": 0,
            "notifications": 0,
            "errors": 0,
            "protocol_errors": 0,
            "auth_failures": 0,
            "pre_auth_closed": 0,
            "budget_pauses": 0,
            "budget_shed": 0,
            "output_pauses": 0,
            "log_flush_errors": 0,
        }
        self.errors_by_code: dict[int, int] = {}  # error replies sent, by code
        self.latency: deque[float] = deque(maxlen=window)  # seconds, act/act_batch request -> response
        self.batch_sizes: deque[int] = deque(maxlen=window)  # rows per engine forward

    def error(self, code: int) -> None:
        self.counters["errors"] += 1
        self.errors_by_code[code] = self.errors_by_code.get(code, 0) + 1

    @property
    def overloaded(self) -> int:
        """Calls refused with OVERLOADED: the error replies of that code (counted once, there)."""
        return self.errors_by_code.get(OVERLOADED, 0)

    def snapshot(self) -> dict:
        lat = np.asarray(self.latency) * 1e3
        sizes = np.asarray(self.batch_sizes)
        pct = {f"act_p{q}_ms": round(float(np.percentile(lat, q)), 4) if lat.size else None for q in (50, 90, 99)}
        counters = {}
        for name, value in self.counters.items():
            counters[name] = value
            if name == "auth_failures":  # where the key has always been in the reply
                counters["overloaded"] = self.overloaded
        return {
            **counters,
            **pct,
            "errors_by_code": {str(code): n for code, n in sorted(self.errors_by_code.items())},
            "batch_size_mean": round(float(sizes.mean()), 2) if sizes.size else None,
            "batch_size_max": int(sizes.max()) if sizes.size else None,
        }


TRIM_INTERVAL = 10.0  # seconds between hand-backs of freed heap memory to the OS


class Bridge:
    """The server object: owns the listening socket, connections, batcher and stats."""

    def __init__(self, service: Service, config: ServerConfig = ServerConfig()):
        self.service = service
        self.config = config
        self.methods = Methods(service, stats=self.stats_snapshot)
        self.method_names = sorted(self.methods.table)
        # the WORKER methods whose calls share runs: one running, at most one more waiting
        self.shared_runs = {
            name: Coalesced(method.call)
            for name, method in self.methods.table.items()
            if method.kind is Kind.WORKER and method.shared
        }
        service.limit_pending_feedback(config.max_pending_feedback)
        self.stats = Stats()
        self.connections: set[Connection] = set()
        self.budget = InputBudget(
            config.input_budget_bytes, self.stats.counters, self.connections, config.budget_max_pause
        )
        self.batcher: MicroBatcher | None = None
        self._server: asyncio.AbstractServer | None = None
        self._reaper: asyncio.Task | None = None
        self._log_flusher: asyncio.Task | None = None
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
        self._log_flusher = loop.create_task(self._flush_log())
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
            assert self._loop is not None  # set by start(): bytes arrive only once it has run
            self._loop.call_soon(self._poll)

    def _poll(self) -> None:
        if time.perf_counter() < self._poll_until:
            assert self._loop is not None  # set by start(), which keep_polling follows
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
        assert self.batcher is not None  # the stats method is served once start() has made it
        return {
            **self.stats.snapshot(),
            **self.budget.snapshot(),
            "queued_rows": self.batcher.queued_rows,
            **self.service.stats(),
        }

    async def stop(self) -> None:
        """Stop accepting, close connections, flush the log and changed adapters."""
        if self._server is not None:
            self._server.close()
        for task in (self._reaper, self._log_flusher):
            if task is not None:
                task.cancel()
        for conn in list(self.connections):
            conn.close()
        if self._server is not None:
            await self._server.wait_closed()
        self.service.close()  # stops the background trainer


def serve(
    service: Service,
    config: ServerConfig,
    *,
    ready: Callable[[int], None] | None = None,
    sock: socket.socket | None = None,
) -> None:
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
