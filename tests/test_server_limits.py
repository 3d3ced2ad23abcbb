"""Bounded memory and load shedding over real loopback sockets: header bombs, the pre-auth
limit, the global input budget, OVERLOADED for queued decisions and pending feedback."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import msgpack
import pytest
from bridge_helpers import RunningBridge, raw_call, read_reply, send

from npcadapt.bench.bridge import start_server
from npcadapt.client import Client, read_message
from npcadapt.errors import NpcAdaptError, OverloadedError, RemoteError
from npcadapt.protocol import OVERLOADED, UNAUTHORIZED, Limits
from npcadapt.server import ServerConfig

pytestmark = pytest.mark.timeout(120)

OBS = [0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.5]
REQUEST_PREFIX = b"\x94\x00\x01\xa3act\x91"  # [0, 1, "act", [ ... : the bomb sits inside params
GIB2 = (2**31).to_bytes(4, "big")
BOMBS = {"str": b"\xdb" + GIB2, "bin": b"\xc6" + GIB2, "array": b"\xdd" + GIB2, "map": b"\xdf" + GIB2}


def closed_by_server(sock: socket.socket, timeout: float = 10.0) -> bool:
    """Whether the server closed `sock` (EOF or reset); waits up to `timeout` for it."""
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.parametrize("kind", sorted(BOMBS))
def test_a_2_gib_header_closes_the_connection_before_any_body_byte(tmp_path, kind):
    with RunningBridge(tmp_path / "d") as running:
        bomb = running.connect()
        bomb.sendall(REQUEST_PREFIX + BOMBS[kind])  # the header only: not one byte of the body
        assert closed_by_server(bomb)
        counters = running.bridge.stats.counters
        assert counters["protocol_errors"] == 1
        assert running.bridge.budget.total == 0 and running.bridge.budget.peak <= len(REQUEST_PREFIX) + 5
        with Client(port=running.port) as c:  # everyone else is served
            assert c.act("duelist", "p", "n", OBS)["action_name"]


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RSS from /proc")
def test_100_header_bombs_do_not_grow_the_servers_memory(tmp_path):
    """A real `npcadapt serve`: 100 connections each announce 2 GiB and try to send 1 MiB
    of it. Each is closed at its header, so the server's RSS grows by far less than the
    16 MB per connection this cost when the limit was checked only once bytes arrived."""
    proc, port = start_server(tmp_path / "d", "--no-adapt")
    try:
        with Client(port=port) as c:
            c.act("duelist", "warm", "n", OBS)  # warm up: first-call allocations out of the way
        before = rss_kib(proc.pid)
        socks, chunk = [], b"x" * 65536
        for i in range(100):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.sendall(REQUEST_PREFIX + BOMBS["str" if i % 2 else "bin"])
            try:
                for _ in range(16):  # 1 MiB of "body", if the server would take it
                    sock.sendall(chunk)
            except OSError:
                pass  # reset: the server closed it at the header
            socks.append(sock)
        assert all(closed_by_server(s) for s in socks)
        with Client(port=port) as c:
            stats = c.stats()
            assert c.act("duelist", "after", "n", OBS)["action_name"]
        after = rss_kib(proc.pid)
        for s in socks:
            s.close()
    finally:
        proc.terminate()
        proc.wait(30)
    print(
        f"server RSS {before / 1024:.1f} MB -> {after / 1024:.1f} MB after 100 bombs "
        f"(peak input buffered {stats['input_buffered_peak']} bytes)"
    )
    assert stats["protocol_errors"] == 100 and stats["input_buffered"] == 0
    assert stats["input_buffered_peak"] < 64 * 1024  # never more than one read's worth at once
    assert after - before < 8 * 1024  # KiB: < 8 MB for all 100, against 16 MB each before


def test_before_auth_only_auth_and_only_a_small_message(tmp_path):
    config = ServerConfig(port=0, token="s3cret", pre_auth_max_bytes=4096)
    with RunningBridge(tmp_path / "d", config) as running:
        sock = running.connect()
        reply = raw_call(sock, [0, 1, "stats", []])
        assert reply[2][0] == UNAUTHORIZED and "auth" in reply[2][1]
        send(sock, [0, 2, "act", ["duelist", "p", "n", b"\x00" * 5000]])  # a 5 KB message before auth
        assert closed_by_server(sock)
        # a header alone declaring more than the pre-auth limit: closed at the header
        sock = running.connect()
        sock.sendall(b"\x94\x00\x03\xa4auth\x91\xc5\x20\x00")  # bin16 of 8192 bytes
        assert closed_by_server(sock)
        assert running.bridge.stats.counters["protocol_errors"] == 2
        # after auth the connection may send the usual sizes
        sock = running.connect()
        assert raw_call(sock, [0, 4, "auth", ["s3cret"]])[3] is True
        rows = [[f"p{i}", "n", bytes(32)] for i in range(300)]  # ~14 KB
        reply = raw_call(sock, [0, 5, "act_batch", ["duelist", rows]])
        assert reply[2] is None and len(reply[3]) == 300


def _read_until_closed(sock: socket.socket) -> list:
    """Every reply `sock` gets until the server closes it."""
    sock.settimeout(10)
    unpacker, replies = msgpack.Unpacker(raw=False), []
    while True:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            return replies
        if not data:
            return replies
        unpacker.feed(data)
        replies += list(unpacker)


def test_a_connection_that_never_authenticates_is_answered_64_times_then_closed(tmp_path):
    """Before auth, 64 messages other than auth are refused (requests) or ignored
    (notifications); the 65th closes the connection, and what follows it in the same write
    is never decoded: a stranger's pipelined flood costs the event loop 65 messages, not
    one reply per message it can send."""
    from npcadapt.bridge_connection import MAX_PRE_AUTH_EVENTS

    assert MAX_PRE_AUTH_EVENTS == 64
    config = ServerConfig(port=0, token="s3cret")
    with RunningBridge(tmp_path / "d", config) as running:
        counters = running.bridge.stats.counters
        sock = running.connect()
        flood = b"".join(msgpack.packb([0, i, "stats", []]) for i in range(20_000))  # ~200 KB
        try:
            sock.sendall(flood)
        except OSError:
            pass  # closed mid-send
        replies = _read_until_closed(sock)
        assert [r[1] for r in replies] == list(range(64))
        assert all(r[2][0] == UNAUTHORIZED for r in replies)
        assert counters["requests"] == 65  # the 65th closed it; the other 19,935 were never decoded
        assert counters["pre_auth_closed"] == 1 and counters["connections"] == 0

        # notifications count too: 40 of them and 30 requests, then closed at the 65th message
        sock = running.connect()
        notes = b"".join(msgpack.packb([2, "feedback", ["p", "n", 1.0, True]]) for _ in range(40))
        sock.sendall(
            notes + b"".join(msgpack.packb([0, i, "act", ["duelist", "p", "n", b"\0" * 32]]) for i in range(30))
        )
        replies = _read_until_closed(sock)
        assert [r[1] for r in replies] == list(range(24))  # 40 notifications + 24 requests = 64
        assert counters["pre_auth_closed"] == 2
        assert running.bridge.service.tracker.open_count() == 0  # nothing was acted on

        # auth in the same write as a long pipeline (past the pre-auth decoding slices): all answered
        sock = running.connect()
        calls = [msgpack.packb([0, 0, "stats", []]), msgpack.packb([0, 1, "auth", ["s3cret"]])]
        calls += [msgpack.packb([0, i, "archetypes", []]) for i in range(2, 502)]
        sock.sendall(b"".join(calls))
        unpacker = msgpack.Unpacker(raw=False)
        replies = [read_message(sock, unpacker) for _ in range(502)]
        assert replies[0][2][0] == UNAUTHORIZED and replies[1][3] is True
        assert [r[1] for r in replies] == list(range(502)) and all(r[2] is None for r in replies[1:])
        with Client(port=running.port, token="s3cret") as c:
            assert c.stats()["pre_auth_closed"] == 2


def test_replies_to_one_read_share_writes(tmp_path, monkeypatch):
    """500 pipelined requests in one write: replies come back in order, a few KiB per
    write instead of one write (one system call) per reply."""
    from npcadapt.bridge_connection import HELD_WRITE, Connection

    writes: list[int] = []
    original = Connection._write

    def counted(self, data):
        writes.append(len(data))
        original(self, data)

    monkeypatch.setattr(Connection, "_write", counted)
    with RunningBridge(tmp_path / "d") as running:
        sock = running.connect()
        sock.sendall(b"".join(msgpack.packb([0, i, "adapter_info", ["duelist", f"p{i}"]]) for i in range(500)))
        unpacker = msgpack.Unpacker(raw=False)
        replies = [read_message(sock, unpacker) for _ in range(500)]
        assert [r[1] for r in replies] == list(range(500)) and all(r[2] is None for r in replies)
        total = sum(len(msgpack.packb(r)) for r in replies)
        assert len(writes) <= total // HELD_WRITE + 4, (len(writes), total)
        assert max(writes) < 2 * HELD_WRITE


def _partial(declared: int, sent: int) -> bytes:
    """A request whose one param is a bin of `declared` bytes, `sent` of them included."""
    return b"\x94\x00\x07\xa4noop\x91\xc6" + declared.to_bytes(4, "big") + b"z" * sent


def _large_holders(running, n: int, sent: int = 200_000) -> list[socket.socket]:
    """`n` connections, one after another, each sending `sent` bytes of a 400 KB message
    it never finishes (a trickling attacker)."""
    socks = []
    for _ in range(n):
        sock = running.connect()
        sock.sendall(_partial(400_000, sent))
        socks.append(sock)
        assert wait_for(
            lambda: (
                any(c.held for c in running.bridge.connections)
                and sum(1 for c in running.bridge.connections if c.held) == len(socks)
            )
        )
    return socks


def _budget_config(**overrides) -> ServerConfig:
    limits = Limits(max_buffer_size=512 * 1024, max_bin_len=500 * 1024)
    return ServerConfig(port=0, limits=limits, input_budget_bytes=2 * 2**20, **overrides)  # soft threshold 1 MiB


def test_past_half_the_budget_the_largest_holders_pause_and_a_normal_client_is_still_served(tmp_path):
    """Three holders of 400 KB (counted twice: 2.4 MB against a 1 MiB soft threshold) are
    paused; a client whose ordinary message spans two reads holds less than a fair share,
    keeps being read and is answered. (Before, everyone but the largest holder paused.)"""
    with RunningBridge(tmp_path / "d", _budget_config(budget_max_pause=60.0)) as running:
        budget = running.bridge.budget
        holders = _large_holders(running, 3)
        assert wait_for(lambda: len(budget.paused) == 3)
        normal = running.connect(timeout=10)
        message = _partial(60_000, 60_000)
        normal.sendall(message[:30_000])  # the first half: pending, 60 KB counted
        assert wait_for(lambda: sum(1 for c in running.bridge.connections if c.held) == 4)
        assert len(budget.paused) == 3 and budget.total > budget.soft
        normal.sendall(message[30_000:])
        assert read_reply(normal)[:2] == [1, 7]  # answered (an unknown method: an error reply)
        with Client(port=running.port) as c:
            stats = c.stats()
        assert stats["connections_paused"] == 3 and stats["budget_shed"] == 0
        for sock in holders:
            sock.close()


def test_a_connection_paused_past_the_limit_gets_the_largest_holder_closed(tmp_path):
    with RunningBridge(tmp_path / "d", _budget_config(budget_max_pause=0.2)) as running:
        budget = running.bridge.budget
        holders = _large_holders(running, 3)
        assert wait_for(lambda: running.bridge.stats.counters["budget_shed"] == 1)
        assert wait_for(lambda: not budget.paused)  # 0.8 MB left: under the threshold, the others resume
        assert sum(closed_by_server(s, timeout=0.5) for s in holders) == 1
        assert running.bridge.stats.counters["budget_shed"] == 1


def test_idle_paused_connections_are_reaped(tmp_path):
    """A paused transport never sees its peer's EOF: the idle reaper must close it anyway."""
    with RunningBridge(tmp_path / "d", _budget_config(budget_max_pause=60.0, idle_timeout=0.3)) as running:
        holders = _large_holders(running, 3, sent=120_000)
        assert all(closed_by_server(s) for s in holders)
        assert running.bridge.budget.total == 0 and not running.bridge.budget.paused


class _FakeTransport:
    def __init__(self):
        self.reading = True

    def pause_reading(self):
        self.reading = False

    def resume_reading(self):
        self.reading = True


class _FakeConn:
    """What InputBudget needs of a connection, with its pending bytes set by the test."""

    def __init__(self, budget, connections):
        self.budget, self.held, self.open, self.transport = budget, 0, True, _FakeTransport()
        self.rpc = type("Rpc", (), {"memory": 0})()
        connections.add(self)

    def read(self, memory: int):
        self.rpc.memory = memory
        self.budget.update(self)

    def pause_reading(self, reason: str):
        self.transport.pause_reading()

    def resume_reading(self, reason: str):
        self.transport.resume_reading()

    def close(self):
        self.open = False
        self.budget.closed(self)


def test_past_the_budget_the_largest_holders_are_closed_until_it_fits():
    """Deterministic (no socket read sizes): InputBudget alone."""
    from npcadapt.input_budget import InputBudget

    connections, counters = set(), {"budget_pauses": 0, "budget_shed": 0}
    budget = InputBudget(1000, counters, connections, max_pause=5.0)
    big, mid, small = (_FakeConn(budget, connections) for _ in range(3))
    big.read(450)
    mid.read(300)  # 750 > 500: big and mid hold more than a fair share (250): paused
    assert set(budget.paused) == {big, mid} and not big.transport.reading and counters["budget_pauses"] == 2
    small.read(200)  # 950: small holds less than a fair share (166)? no: 200 > 166, paused too
    assert small in budget.paused
    budget.paused.pop(small)
    small.transport.resume_reading()
    small.read(400)  # 1150 > 1000: the largest (big) is closed; 700 remains, still over 500
    assert not big.open and mid.open and small.open and counters["budget_shed"] == 1
    assert budget.total == 700 and budget.peak == 1150
    budget.tick(now=0.0)  # nobody paused too long yet (paused at monotonic() >> 0)
    assert mid.open
    budget.tick(now=budget.paused[mid] + 6.0)  # paused past max_pause: the largest goes, the rest resume
    assert not small.open and mid.open and budget.total == 300 and not budget.paused and mid.transport.reading
    assert counters["budget_shed"] == 2


def test_queued_decision_rows_past_the_bound_get_overloaded_at_once(tmp_path):
    config = ServerConfig(port=0, batch_wait=1.0, max_queued_rows=4)  # rows wait 1 s for company
    with RunningBridge(tmp_path / "d", config) as running:
        sock = running.connect()
        sock.sendall(b"".join(msgpack.packb([0, i, "act", ["duelist", f"p{i}", "n", OBS]]) for i in range(10)))
        replies = [read_reply(sock) for _ in range(10)]
        overloaded = [r for r in replies if r[2] is not None]
        assert [r[1] for r in replies[:6]] == [4, 5, 6, 7, 8, 9]  # refused at once, before any decision
        assert len(overloaded) == 6 and all(
            r[2][0] == OVERLOADED and "max_queued_rows=4" in r[2][1] for r in overloaded
        )
        assert sorted(r[1] for r in replies if r[2] is None) == [0, 1, 2, 3]
        # the Python client raises a distinct, retryable error
        sock.sendall(b"".join(msgpack.packb([0, 20 + i, "act", ["duelist", "q", "n", OBS]]) for i in range(4)))
        with Client(port=running.port) as c:
            assert wait_for(lambda: running.bridge.batcher.queued_rows == 4)
            with pytest.raises(OverloadedError) as info:
                c.act("duelist", "r", "n", OBS)
            err = info.value
            assert err.code == OVERLOADED and err.retryable and isinstance(err, RemoteError)
            assert isinstance(err, NpcAdaptError)
            assert wait_for(lambda: running.bridge.batcher.queued_rows == 0)
            assert c.act("duelist", "r", "n", OBS)["action_name"]  # ... and succeeds once they are decided
            stats = c.stats()
        assert stats["overloaded"] == 7 and stats["errors_by_code"] == {"6": 7}
        with pytest.raises(RemoteError) as info:
            Client(port=running.port).act("duelist", "r", "n", OBS[:2])
        assert not info.value.retryable and not isinstance(info.value, OverloadedError)


def test_feedback_past_the_pending_bound_is_applied_and_the_oldest_episodes_are_discarded(tmp_path):
    """Feedback is never refused or dropped for load: a lost `done` would merge two
    episodes. Past the bound the oldest completed episodes are discarded instead, so the
    bound never stays reached even when no player completes enough for an update."""
    config = ServerConfig(port=0, max_pending_feedback=2)
    with RunningBridge(tmp_path / "d", config) as running, Client(port=running.port) as c:
        for _ in range(2):
            c.act("duelist", "ann", "n", OBS)
        c.feedback("ann", "n", 1.0, True, wait=True)  # one 2-step episode waits (4 make an update)
        assert c.stats()["pending_feedback"] == 2
        c.act("duelist", "ann", "n", OBS)
        c.feedback("ann", "n", 1.0, wait=True)  # a request past the bound: applied
        c.feedback("ann", "n", 0.5, True)  # a notification: applied; the 2-step episode is discarded
        c.act("duelist", "bob", "n", OBS)
        c.feedback("bob", "n", 1.0)
        c.act("duelist", "bob", "n", OBS)
        c.feedback("bob", "n", 0.25, True, wait=True)  # bob's 2-step episode ends: ann's 1-step one goes
        stats = c.stats()
        assert stats["feedback"] == 5 and stats["overloaded"] == 0 and stats["errors_by_code"] == {}
        assert stats["pending_feedback"] == 2 and stats["dropped_episodes"] == 2
        (episode,) = running.service.tracker.take([("duelist", "bob")])[("duelist", "bob")]
        assert episode.reward == [1.0, 0.25]


def test_flush_runs_off_the_event_loop_and_covers_what_was_sent_before_it(tmp_path):
    import threading

    from npcadapt.log import read_records

    config = ServerConfig(port=0, batch_wait=1.0, flush_interval=60.0)
    with RunningBridge(tmp_path / "d", config) as running:
        service = running.service
        real_flush, gate, started = service.flush, threading.Event(), threading.Event()

        def slow_flush():
            started.set()
            gate.wait(30)  # a disk that takes its time
            return real_flush()

        service.flush = slow_flush
        sock = running.connect()
        # an act still waiting for its batch (1 s), then flush, in one write
        sock.sendall(msgpack.packb([0, 1, "act", ["duelist", "ann", "n", OBS]]) + msgpack.packb([0, 2, "flush", []]))
        assert started.wait(10)
        with Client(port=running.port) as other:  # the event loop serves while the flush waits on "disk"
            assert other.stats()["decisions"] == 1  # ann's act was decided before the flush began
        gate.set()
        replies = {r[1]: r for r in (read_reply(sock) for _ in range(2))}
        assert replies[1][2] is None and replies[2][2] is None
        decided = [p for r in read_records(tmp_path / "d" / "logs") if r["t"] == "decisions" for p in r["players"]]
        assert decided == ["ann"]  # on disk when flush answered


def test_pipelined_flushes_share_runs_and_reset_player_runs_off_the_event_loop(tmp_path):
    import threading

    config = ServerConfig(port=0, flush_interval=60.0)
    with RunningBridge(tmp_path / "d", config) as running:
        service = running.service
        real_flush, real_reset = service.flush, service.reset_player
        gate, started, calls = threading.Event(), threading.Event(), []

        def slow_flush():
            calls.append("flush")
            started.set()
            gate.wait(30)
            return real_flush()

        def slow_reset(archetype, player):
            calls.append("reset")
            started.set()
            gate.wait(30)  # a disk that takes its time to delete
            return real_reset(archetype, player)

        service.flush, service.reset_player = slow_flush, slow_reset
        sock = running.connect(timeout=30)
        sock.sendall(b"".join(msgpack.packb([0, i, "flush", []]) for i in range(50)))
        assert started.wait(10)
        other = running.connect(timeout=30)
        assert raw_call(other, [0, 1, "act", ["duelist", "ann", "n", OBS]])[2] is None
        started.clear()
        send(other, [0, 900, "reset_player", ["duelist", "ann"]])
        assert started.wait(10)
        with Client(port=running.port) as c:
            assert c.stats()["decisions"] == 1  # the loop serves while flush and reset wait on "disk"
        gate.set()
        assert read_reply(other)[1:] == [900, None, False]  # (ann had no adapter yet: nothing erased)
        replies = [read_reply(sock) for _ in range(50)]
        assert all(r[2] is None for r in replies) and sorted(r[1] for r in replies) == list(range(50))
        assert (
            calls.count("flush") == 2 and running.bridge.shared_runs["flush"].runs == 2
        )  # one running, one for the other 49


def test_one_pipelining_connection_does_not_hold_up_the_others(tmp_path):
    """20,000 requests in one write from a client that never reads: the server handles them
    256 per loop turn, so another client's act is answered long before the flood is done."""
    from npcadapt.client import Client

    flood = 20_000
    with RunningBridge(tmp_path / "d") as running, Client(port=running.port) as other:
        packer = msgpack.Packer()
        payload = b"".join(packer.pack([0, i, "adapter_info", ["duelist", "nobody"]]) for i in range(flood))
        hog = socket.create_connection(("127.0.0.1", running.port))
        try:
            hog.sendall(payload)  # about 0.7 MB: several reads of thousands of requests each
            other.act("duelist", "p", "npc", [0.0] * 8)
            handled = other.stats()["requests"]
        finally:
            hog.close()
    assert handled < flood / 4, handled  # one read's events used to be handled in one go (~7,000)
