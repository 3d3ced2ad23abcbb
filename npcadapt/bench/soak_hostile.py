"""The soak benchmark's hostile connections, run in their own process.

From the moment ``start`` is set until ``stop``, :func:`hostile_main` opens about ``rate``
hostile connections per second (at most ``max_concurrent`` at once), each of one kind
drawn at random, each bounded in bytes and in time (a few seconds at most):

- ``garbage``: bytes that are not MessagePack (``0xc1`` and 1-4 KiB of random bytes),
  before or after auth -> the server should close the connection;
- ``bomb``: a request whose params hold a str/bin/array/map header announcing 2 GiB,
  then 1 byte every 50 ms (before or after auth) -> closed at the header;
- ``unauth_flood``: 20 requests other than ``auth`` and 20 feedback notifications without
  authenticating, replies read -> every request answered UNAUTHORIZED (5);
- ``wrong_token``: three ``auth`` calls with a wrong token -> closed after the third;
- ``slow_reader``: authenticated, a 4 KiB receive buffer, up to 12,000 pipelined
  ``archetypes`` calls (~1.2 KB replies each), never read -> aborted once 8 MiB of replies
  wait (``max_output_buffer``); at most 2 at once;
- ``slow_reader_unauth``: the same without auth, 3,000 ``stats`` calls -> closed at the
  65th message sent before auth (``MAX_PRE_AUTH_EVENTS`` in npcadapt/bridge_connection.py;
  before that limit, the server answered all 3,000, one write each, and most ended
  ``not_closed``: the kernel's socket buffers took the replies);
- ``budget_hog``: authenticated, one ``act_batch`` whose bin announces 4 MiB, 3.5 MiB of it
  sent, then held for 3 s -> counted against the input budget (paused or shed past it);
  at most 6 at once.

Outcomes per kind are written as JSON to ``out_path`` at the end: ``closed_by_server``,
``completed`` (the client finished and closed), ``not_closed`` (the server was expected to
close it and had not within the time bound), ``refused`` (no server listening: a restart).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import socket
import time
from collections import Counter, defaultdict

import msgpack

GIB2 = (2**31).to_bytes(4, "big")
BOMB_HEADERS = (b"\xdb" + GIB2, b"\xc6" + GIB2, b"\xdd" + GIB2, b"\xdf" + GIB2)  # str32, bin32, array32, map32
REQUEST_PREFIX = b"\x94\x00\x01\xa3act\x91"  # [0, 1, "act", [ ...: the bomb sits inside params
KINDS = {
    "garbage": 0.2,
    "bomb": 0.2,
    "unauth_flood": 0.25,
    "wrong_token": 0.1,
    "slow_reader": 0.08,
    "slow_reader_unauth": 0.07,
    "budget_hog": 0.1,
}
CAPS = {"slow_reader": 2, "budget_hog": 6}  # at most this many at once
HOG_DECLARED, HOG_SENT = 4 * 2**20 - 64, 7 * 2**19  # bytes announced, sent


class _Refused(Exception):
    pass


async def _open(port: int, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    try:
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port)), 5)
    except (TimeoutError, OSError):
        sock.close()
        raise _Refused from None
    return sock


async def _recv(sock: socket.socket, timeout: float) -> bytes | None:
    """Bytes, b"" on EOF or reset, None on timeout."""
    try:
        return await asyncio.wait_for(asyncio.get_running_loop().sock_recv(sock, 65536), timeout)
    except TimeoutError:
        return None
    except OSError:
        return b""


async def _closed(sock: socket.socket, timeout: float) -> bool:
    """Read (and drop) until the server closes the connection; False if it has not within `timeout`."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        data = await _recv(sock, left)
        if data is None:
            return False
        if data == b"":
            return True
    return False


async def _send(sock: socket.socket, data: bytes, timeout: float = 5.0) -> bool:
    """False if the server closed the connection (or did not take the bytes in time)."""
    try:
        await asyncio.wait_for(asyncio.get_running_loop().sock_sendall(sock, data), timeout)
        return True
    except (TimeoutError, OSError):
        return False


async def _replies(sock: socket.socket, n: int, timeout: float) -> list | None:
    """The next `n` messages, or None if the connection closed or they did not come in time."""
    unpacker = msgpack.Unpacker(raw=False)
    got: list = []
    deadline = time.monotonic() + timeout
    while len(got) < n:
        data = await _recv(sock, max(deadline - time.monotonic(), 0.001))
        if not data:
            return None
        unpacker.feed(data)
        got += list(unpacker)
    return got


async def _auth(sock: socket.socket, token: str | None) -> bool:
    if token is None:
        return True
    if not await _send(sock, msgpack.packb([0, 0, "auth", [token]])):
        return False
    reply = await _replies(sock, 1, 5)
    return bool(reply and reply[0][2] is None)


async def _garbage(sock, token, rng) -> str:
    if rng.random() < 0.5 and not await _auth(sock, token):
        return "closed_by_server"
    await _send(sock, b"\xc1" + rng.randbytes(rng.randint(1, 4096)))
    return "closed_by_server" if await _closed(sock, 5) else "not_closed"


async def _bomb(sock, token, rng) -> str:
    if rng.random() < 0.5 and not await _auth(sock, token):
        return "closed_by_server"
    if not await _send(sock, REQUEST_PREFIX + rng.choice(BOMB_HEADERS)):
        return "closed_by_server"
    for _ in range(40):  # trickle the "body"
        if await _recv(sock, 0.05) is not None:  # EOF, or something: the server acted
            return "closed_by_server"
        if not await _send(sock, b"x", 1.0):
            return "closed_by_server"
    return "closed_by_server" if await _closed(sock, 1) else "not_closed"


async def _unauth_flood(sock, token, rng, counts: Counter) -> str:
    methods = ["stats", "archetypes", "flush", "act", "reset_player", "adapter_info", "act_batch", "nope"]
    data = b"".join(
        msgpack.packb([0, i + 1, rng.choice(methods), ["duelist", "p", "n", b"\0" * 32]]) for i in range(20)
    )
    data += b"".join(msgpack.packb([2, "feedback", [f"x{i}", "n", 1.0, True]]) for i in range(20))
    if not await _send(sock, data):
        return "closed_by_server"
    replies = await _replies(sock, 20, 5)
    if replies is None:
        return "closed_by_server"
    for reply in replies:
        counts["reply_code_" + str(reply[2][0] if reply[2] else 0)] += 1
    return "completed"


async def _wrong_token(sock, token, rng) -> str:
    data = b"".join(msgpack.packb([0, i, "auth", [f"wrong-{rng.random()}"]]) for i in range(3))
    if not await _send(sock, data):
        return "closed_by_server"
    return "closed_by_server" if await _closed(sock, 5) else "not_closed"


async def _slow_reader(sock, token, rng, authenticated: bool) -> str:
    if authenticated and not await _auth(sock, token):
        return "closed_by_server"
    method, total = ("archetypes", 12_000) if authenticated else ("stats", 3_000)
    chunk = b"".join(msgpack.packb([0, i, method, []]) for i in range(500))
    for _ in range(total // 500):
        if not await _send(sock, chunk, 2.0):
            return "closed_by_server"
        await asyncio.sleep(0.005)
    await asyncio.sleep(1.0)  # still not reading
    return "closed_by_server" if await _closed(sock, 5) else "not_closed"


async def _budget_hog(sock, token, rng) -> str:
    if not await _auth(sock, token):
        return "closed_by_server"
    head = b"\x94\x00\x07\xa9act_batch\x92\xa7duelist\xc6" + HOG_DECLARED.to_bytes(4, "big")
    if not await _send(sock, head):
        return "closed_by_server"
    piece = b"z" * 65536
    for _ in range(HOG_SENT // len(piece)):
        if not await _send(sock, piece, 3.0):  # paused by the budget: the kernel's buffers fill up
            return "closed_by_server" if await _closed(sock, 0.01) else "paused"
    data = await _recv(sock, 3.0)  # hold it
    return "closed_by_server" if data is not None else "held"


async def _one(kind: str, port: int, token: str | None, rng: random.Random, counts: Counter) -> str:
    sock = await _open(port, rcvbuf=4096 if kind.startswith("slow_reader") else None)
    try:
        if kind == "garbage":
            return await _garbage(sock, token, rng)
        if kind == "bomb":
            return await _bomb(sock, token, rng)
        if kind == "unauth_flood":
            return await _unauth_flood(sock, token, rng, counts)
        if kind == "wrong_token":
            return await _wrong_token(sock, token, rng)
        if kind == "budget_hog":
            return await _budget_hog(sock, token, rng)
        return await _slow_reader(sock, token, rng, authenticated=kind == "slow_reader")
    finally:
        sock.close()


async def _attack(
    port, token, start, stop, rate: float, max_concurrent: int, seed: int, kinds: dict[str, float]
) -> dict:
    rng = random.Random(seed)
    outcomes: dict[str, Counter] = defaultdict(Counter)
    extra: Counter = Counter()
    running: Counter = Counter()
    tasks: set[asyncio.Task] = set()
    intervals: list[tuple[str, float, float]] = []  # (kind, open, closed) of every hostile connection
    while not start.is_set():
        if stop.is_set():
            return {}
        await asyncio.sleep(0.05)
    started = time.time()

    async def launch(kind: str) -> None:
        running[kind] += 1
        began = time.time()
        try:
            outcome = await asyncio.wait_for(_one(kind, port.value, token, random.Random(rng.random()), extra), 30)
        except _Refused:
            outcome = "refused"
        except TimeoutError:
            outcome = "timeout"
        except OSError:
            outcome = "closed_by_server"
        finally:
            running[kind] -= 1
            intervals.append((kind, round(began, 3), round(time.time(), 3)))
        outcomes[kind][outcome] += 1

    names, weights = tuple(kinds), tuple(kinds.values())  # both empty for the control run (no hostile kind)
    while not stop.is_set():
        await asyncio.sleep(rng.expovariate(rate))
        if not names:
            continue
        if len(tasks) >= max_concurrent:
            extra["skipped_at_cap"] += 1
            continue
        kind = rng.choices(names, weights)[0]
        if running[kind] >= CAPS.get(kind, max_concurrent):
            extra["skipped_at_cap"] += 1
            continue
        task = asyncio.create_task(launch(kind))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    extra["cancelled_at_stop"] = len(tasks)
    for task in list(tasks):
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {
        "seconds": round(time.time() - started, 1),
        "launched": sum(sum(c.values()) for c in outcomes.values()),
        "by_kind": {k: dict(c) for k, c in sorted(outcomes.items())},
        **dict(extra.items()),
        "intervals": intervals,
    }


def hostile_main(
    port,
    token: str | None,
    start,
    stop,
    out_path: str,
    rate: float,
    max_concurrent: int,
    seed: int,
    kinds: list[str] | None = None,
) -> None:
    """Process entry: attack from `start` until `stop` (multiprocessing Events) with the
    given kinds (default all); `port` is a shared int read at each connect; the outcomes go
    to `out_path` as JSON."""
    chosen = {k: w for k, w in KINDS.items() if kinds is None or k in kinds}
    if hasattr(os, "nice"):
        os.nice(10)  # its own CPU is not the server's slowness (an attacker would be on another machine)
    result = asyncio.run(_attack(port, token, start, stop, rate, max_concurrent, seed, chosen))
    with open(out_path, "w") as fh:
        json.dump(result, fh)
