"""Test helpers: a real bridge on a loopback port, run in a background event-loop thread."""

from __future__ import annotations

import asyncio
import socket
import threading
import weakref
from typing import Self

import msgpack

import npcadapt
from npcadapt.client import read_message
from npcadapt.server import Bridge, ServerConfig


class RunningBridge:
    """Start a Bridge over a fresh Service in its own thread; `stop()` flushes and closes."""

    def __init__(self, data_dir, config: ServerConfig | None = None, **service_options):
        self.service = npcadapt.open(data_dir, seed=0, **service_options)
        self.bridge = Bridge(self.service, config or ServerConfig(port=0))
        self.loop = asyncio.new_event_loop()
        started = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(self.bridge.start())
            started.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert started.wait(60), "the bridge did not start within 60 s"
        self.port = self.bridge.port

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def connect(self, timeout: float = 5.0) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def stop(self) -> None:
        if self.loop.is_running():
            # stopping flushes and ends the trainer child: generous, for a loaded 2-core machine
            asyncio.run_coroutine_threadsafe(self.bridge.stop(), self.loop).result(60)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)


def send(sock: socket.socket, msg) -> None:
    """Send one raw msgpack message."""
    sock.sendall(msgpack.packb(msg, use_bin_type=True))


_unpackers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # socket -> its bytes not yet read as replies


def read_reply(sock: socket.socket):
    """The next whole msgpack message from `sock` (a reply may come in several TCP reads,
    or several replies in one: what follows the message is kept for the next call)."""
    return read_message(sock, _unpackers.setdefault(sock, msgpack.Unpacker(raw=False)))


def raw_call(sock: socket.socket, msg):
    """Send one raw msgpack message, read one reply."""
    send(sock, msg)
    return read_reply(sock)
