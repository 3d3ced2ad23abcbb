"""The soak benchmark's well-behaved clients: the good load, its ledger of acknowledged
data, and the designated good client whose latency is the benchmark's yardstick.

Good load (:func:`good_worker`, many per event loop, one connection each): every worker owns
``players`` players (no other connection touches them) and plays them in a loop with an
exponential think time between calls: ``act`` (45%), ``act_batch`` of several of its
players' NPCs (15%), ``feedback`` as a request, ending the episode with probability 0.35
(30%), ``adapter_info`` (4%), ``reset_player`` (0.5%) and ``flush`` (the rest, ~5.5%).
NPC ids carry the server's incarnation (``n1-i2``), so the interaction-log records of
each server run are told apart. A flush is acknowledged like this: ``adapter_info`` of
every owned player, then ``flush``; only when it succeeds does the :class:`Ledger` record
those versions and the decisions and feedback answered so far as acknowledged (a
``reset_player`` lowers the player's acknowledged version to 0 before it is sent).

Good client (:func:`good_client_main`, its own process, so the load generator's event loop
never delays it): one blocking socket, a single-row ``act`` every ``interval`` s (and a
``feedback`` notification ending the episode every 16 decisions), each round trip
recorded with its send time and outcome.
"""

from __future__ import annotations

import asyncio
import random
import socket
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import msgpack
import numpy as np

from ..client import AsyncClient, read_message
from ..errors import OverloadedError, ProtocolError, RemoteError
from .soak_faults import DISK_FULL_TEXT

ARCHETYPE, OBS_DIM = "duelist", 8
CALL_TIMEOUT = 15.0  # s: a reply slower than this counts as lost (the connection is dropped)


class Ledger:
    """What successful flushes acknowledged: adapter versions per player, decisions and
    feedback items per (player, npc)."""

    def __init__(self) -> None:
        self.versions: dict[str, int] = {}
        self.decisions: dict[tuple[str, str], int] = {}
        self.feedback: dict[tuple[str, str], int] = {}
        self.flushes = 0

    def reset(self, player: str) -> None:
        """A reset_player is being sent: the player's adapter may be erased from now on."""
        self.versions[player] = 0

    def ack(self, versions: dict[str, int], decisions: dict, feedback: dict) -> None:
        self.flushes += 1
        for player, version in versions.items():
            self.versions[player] = max(self.versions.get(player, 0), version)
        for mine, theirs in ((decisions, self.decisions), (feedback, self.feedback)):
            for key, count in mine.items():
                theirs[key] = max(theirs.get(key, 0), count)

    def snapshot(self) -> tuple[dict, dict, dict]:
        return dict(self.versions), dict(self.decisions), dict(self.feedback)


@dataclass
class Load:
    """State shared by the good-load workers and the orchestrator (one event loop)."""

    port: Callable[[], int]
    incarnation: Callable[[], int]
    token: str | None
    players: int = 4  # per connection
    npcs: int = 2  # per player
    think: float = 0.1  # mean seconds between a worker's calls
    stop: bool = False
    disk_full_now: bool = False
    ledger: Ledger = field(default_factory=Ledger)
    ok: Counter = field(default_factory=Counter)  # method -> successful calls
    errors: Counter = field(default_factory=Counter)  # str(code) or "connection_lost" / "timeout" -> n
    act_samples: list = field(default_factory=list)  # (time.time() at send, round trip s)
    disk_full_errors: Counter = field(default_factory=Counter)  # method -> code-4 replies naming a full disk
    disk_full_other_errors: Counter = field(default_factory=Counter)  # str(code) -> errors during the window
    served_during_disk_full: int = 0  # decision rows answered while the disk was full
    connects: int = 0


def obs_bytes(rng: random.Random) -> bytes:
    return np.asarray([rng.random() for _ in range(OBS_DIM)], "<f4").tobytes()


async def connect(port: int, token: str | None, timeout: float = 5.0) -> AsyncClient:
    """An AsyncClient, authenticated; raises OSError / TimeoutError / RemoteError."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
    client = AsyncClient(reader, writer)
    if token is not None:
        try:
            await call(client, "auth", token, timeout=timeout)
        except BaseException:
            await client.close()
            raise
    return client


async def call(client: AsyncClient, method: str, *params, timeout: float = CALL_TIMEOUT):
    """client.call with a deadline, failing at once on a closed connection (a call made after
    the connection closed would otherwise wait forever: nothing is left to answer it)."""
    if client._reader_task.done():
        raise ProtocolError("server closed the connection")
    return await asyncio.wait_for(client.call(method, *params), timeout)


class _Broken(Exception):
    """The connection is gone or stuck: reconnect."""


async def good_worker(load: Load, wid: int, seed: int) -> None:
    """One connection playing `load.players` players until `load.stop` (see module docstring)."""
    rng = random.Random(seed * 1_000_003 + wid)
    players = [f"w{wid}-p{j}" for j in range(load.players)]
    answered_decisions: Counter = Counter()  # (player, npc) -> decisions answered (all server runs)
    answered_feedback: Counter = Counter()
    await asyncio.sleep(rng.random() * load.think * 4)  # spread the start
    backoff = 0.05
    while not load.stop:
        try:
            client = await connect(load.port(), load.token)
        except (TimeoutError, OSError, RemoteError, ProtocolError):
            await asyncio.sleep(backoff * (0.5 + rng.random()))
            backoff = min(backoff * 2, 1.0)
            continue
        load.connects += 1
        backoff = 0.05
        inc = load.incarnation()
        open_eps: set[tuple[str, str]] = set()
        try:
            while not load.stop:
                await _one_call(load, client, rng, players, inc, open_eps, answered_decisions, answered_feedback)
                await asyncio.sleep(rng.expovariate(1.0 / load.think))
        except _Broken:
            pass
        finally:
            await client.close()


async def _one_call(
    load: Load,
    client: AsyncClient,
    rng: random.Random,
    players: list[str],
    inc: int,
    open_eps: set,
    answered_decisions: Counter,
    answered_feedback: Counter,
) -> None:
    r = rng.random()
    if r < 0.45:
        method = "act"
    elif r < 0.60:
        method = "act_batch"
    elif r < 0.90:
        method = "feedback" if open_eps else "act"
    elif r < 0.94:
        method = "adapter_info"
    elif r < 0.945:
        method = "reset_player"
    else:
        method = "flush"
    try:
        if method in ("act", "act_batch"):
            n = 1 if method == "act" else rng.randint(2, min(6, len(players) * load.npcs))
            pairs = rng.sample([(p, f"n{k}-i{inc}") for p in players for k in range(load.npcs)], n)
            sent = time.time()
            start = time.perf_counter()
            if method == "act":
                await call(client, "act", ARCHETYPE, pairs[0][0], pairs[0][1], obs_bytes(rng))
            else:
                await call(client, "act_batch", ARCHETYPE, [[p, npc, obs_bytes(rng)] for p, npc in pairs])
            load.act_samples.append((sent, time.perf_counter() - start))
            for pair in pairs:
                answered_decisions[pair] += 1
                open_eps.add(pair)
            if load.disk_full_now:
                load.served_during_disk_full += n
        elif method == "feedback":
            pair = rng.choice(sorted(open_eps))
            done = rng.random() < 0.35
            await call(client, "feedback", pair[0], pair[1], rng.uniform(-1.0, 1.0), done)
            answered_feedback[pair] += 1
            if done:
                open_eps.discard(pair)
        elif method == "adapter_info":
            await call(client, "adapter_info", ARCHETYPE, rng.choice(players))
        elif method == "reset_player":
            player = rng.choice(players)
            load.ledger.reset(player)  # before sending: it may take effect even if the reply is lost
            await call(client, "reset_player", ARCHETYPE, player)
            open_eps.difference_update({pair for pair in open_eps if pair[0] == player})
        else:
            infos = await asyncio.gather(*(call(client, "adapter_info", ARCHETYPE, p) for p in players))
            versions = {p: 0 if info is None else int(info["version"]) for p, info in zip(players, infos)}
            suffix = f"-i{inc}"  # a flush acknowledges what this server run answered, nothing of earlier runs
            decisions = {k: n for k, n in answered_decisions.items() if k[1].endswith(suffix)}
            feedback = {k: n for k, n in answered_feedback.items() if k[1].endswith(suffix)}
            await call(client, "flush")
            load.ledger.ack(versions, decisions, feedback)
        load.ok[method] += 1
    except OverloadedError:
        load.errors["6"] += 1
        await asyncio.sleep(0.02 + 0.05 * rng.random())  # back off, as docs/architecture.md says
    except RemoteError as exc:
        load.errors[str(exc.code)] += 1
        if load.disk_full_now:
            load.disk_full_other_errors[str(exc.code)] += 1
        if exc.code == 4 and DISK_FULL_TEXT.search(exc.message or ""):
            load.disk_full_errors[method] += 1
        if exc.code == 3 and method == "feedback":
            open_eps.clear()  # e.g. "no decision to attach": the episode is gone
    except TimeoutError:
        load.errors["timeout"] += 1
        raise _Broken from None
    except (ProtocolError, ConnectionError, OSError):
        load.errors["connection_lost"] += 1
        raise _Broken from None


# -- the good client (its own process) ---------------------------------------------------------
def good_client_main(port, token: str | None, begin, stop, out_path: str, interval: float, seed: int) -> None:
    """Sequential single-row acts from `begin` until `stop` is set (multiprocessing Events);
    writes (send time, round trip s, code) rows to `out_path` (.npy): code 0 ok, a positive
    RPC error code, or -1 for a lost connection or a reply slower than 10 s. `port` is a
    shared int, read at each connect."""
    while not begin.wait(0.05):
        if stop.is_set():
            break
    rng = np.random.default_rng(seed)
    player = "good-client"
    rows: list[tuple[float, float, int]] = []
    msgid = 0
    unpacker = msgpack.Unpacker(raw=False)
    sock: socket.socket | None = None
    try:
        while not stop.is_set():
            if sock is None:
                try:
                    sock = socket.create_connection(("127.0.0.1", port.value), timeout=10)
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    unpacker = msgpack.Unpacker(raw=False)
                    if token is not None:
                        msgid += 1
                        sock.sendall(msgpack.packb([0, msgid, "auth", [token]]))
                        reply = read_message(sock, unpacker)
                        if reply[2] is not None:
                            raise OSError(f"auth refused: {reply[2]}")
                except OSError:
                    _drop(sock)
                    sock = None
                    time.sleep(0.05)
                    continue
            msgid = (msgid + 1) % 2**32
            obs = rng.random(OBS_DIM, dtype=np.float32).astype("<f4").tobytes()
            request = msgpack.packb([0, msgid, "act", [ARCHETYPE, player, "npc", obs]], use_bin_type=True)
            sent, start = time.time(), time.perf_counter()
            try:
                sock.sendall(request)
                reply = read_message(sock, unpacker)
                rtt = time.perf_counter() - start
                code = 0 if reply[2] is None else int(reply[2][0])
                rows.append((sent, rtt, code))
                if code == 0 and msgid % 16 == 0:  # an episode ends every 16 decisions
                    sock.sendall(msgpack.packb([2, "feedback", [player, "npc", float(rng.random()), True]]))
            except (OSError, ValueError):
                rows.append((sent, float("nan"), -1))
                _drop(sock)
                sock = None
                time.sleep(0.05)
                continue
            time.sleep(max(0.0, interval - (time.perf_counter() - start)))
    finally:
        _drop(sock)
        np.save(Path(out_path), np.asarray(rows, dtype=np.float64).reshape(-1, 3))


def _drop(sock: socket.socket | None) -> None:
    if sock is not None:
        try:
            sock.close()
        except OSError:
            pass
