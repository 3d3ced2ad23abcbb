"""The socket bridge end to end over real loopback sockets."""

from __future__ import annotations

import os
import re
import signal
import socket
import sys
import threading
import time
from pathlib import Path

import msgpack
import numpy as np
import pytest
from bridge_helpers import RunningBridge, raw_call, read_reply

from npcadapt.bench.bridge import start_server
from npcadapt.client import Client, RemoteError, read_message
from npcadapt.log import read_records
from npcadapt.protocol import INVALID_PARAMS, INVALID_REQUEST, METHOD_NOT_FOUND, UNAUTHORIZED
from npcadapt.server import ServerConfig

OBS = [0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.5]


@pytest.fixture
def server(tmp_path):
    with RunningBridge(tmp_path / "data") as running:
        yield running


def still_serves(server) -> None:
    with Client(port=server.port) as c:
        assert c.act("duelist", "healthy", "n", OBS)["action_name"]


def test_every_method_end_to_end(server):
    with Client(port=server.port) as c:
        archs = {a["name"]: a for a in c.archetypes()}
        duel = archs["duelist"]
        assert sum(o["size"] for o in duel["observation"]) == 8 and len(duel["actions"]) == 8
        assert set(duel) == {"name", "version", "observation", "actions"}
        d = c.act("duelist", "ann", "sparring", OBS)
        assert duel["actions"][d["action"]] == d["action_name"] and d["adapter_version"] == 0
        greedy = c.call("act", "duelist", "ann", "sparring", OBS, {"greedy": True, "mask": [False] * 7 + [True]})
        assert greedy["action"] == 7
        rows = c.act_batch("duelist", [["ann", "a", OBS], ["bob", "b", OBS, {"mask": [True] + [False] * 7}]])
        assert len(rows) == 2 and rows[1]["action"] == 0
        assert c.call("feedback", "ann", "sparring", 1.0, True) is True
        c.feedback("bob", "b", 0.5, True)  # notification: no reply
        assert c.adapter_info("duelist", "ann") is None
        assert c.reset_player("duelist", "ann") is False
        assert c.flush() == 0
        stats = c.stats()
        assert stats["decisions"] == 4 and stats["requests"] >= 7 and stats["notifications"] == 1
        assert stats["act_p50_ms"] > 0 and stats["batch_size_max"] >= 1


def test_one_method_table_names_every_method_and_the_server_none(tmp_path):
    """rpc.Methods.table declares each method with its kind; the modules that run them
    dispatch on the kind alone (no method name appears in them as a string), and the table
    lists exactly the methods docs/protocol.md documents."""
    import ast

    import npcadapt
    from npcadapt import bridge_connection, micro_batcher, server
    from npcadapt.rpc import Kind, Methods

    svc = npcadapt.open(tmp_path / "d", record=False, online=None)
    try:
        table = Methods(svc).table
    finally:
        svc.close()
    kinds = {name: method.kind for name, method in table.items()}
    assert kinds["act"] is kinds["act_batch"] is Kind.DECISION and kinds["feedback"] is Kind.FEEDBACK
    assert kinds["flush"] is kinds["reset_player"] is Kind.WORKER and kinds["auth"] is Kind.CONNECTION
    assert {kinds[n] for n in ("archetypes", "adapter_info", "prior_info", "action_probs", "stats")} == {Kind.DIRECT}
    for module in (server, bridge_connection, micro_batcher):
        strings = {
            node.value
            for node in ast.walk(ast.parse(Path(module.__file__).read_text()))
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
        }
        assert not strings & set(table), (module.__name__, strings & set(table))
    docs = (Path(__file__).parents[1] / "docs" / "protocol.md").read_text()
    block = docs.split("| method | params | result |", 1)[1].split("\n\n", 1)[0]
    assert set(re.findall(r"^\| `(\w+)` \|", block, re.M)) == set(table)


def test_pipelined_requests_and_binary_method_name(server):
    sock = server.connect()
    msgs = [[0, i, "act" if i % 2 else b"act", ["duelist", f"p{i}", "n", OBS]] for i in range(20)]
    msgs.append([0, 99, "archetypes", []])
    sock.sendall(b"".join(msgpack.packb(m, use_bin_type=True) for m in msgs))
    unpacker, replies = msgpack.Unpacker(raw=False), {}
    while len(replies) < 21:
        unpacker.feed(sock.recv(65536))
        for msg in unpacker:
            assert msg[0] == 1 and msg[2] is None
            replies[msg[1]] = msg[3]
    assert set(replies) == set(range(20)) | {99}
    assert len({r["decision"] for i, r in replies.items() if i != 99}) == 20
    stats = Client(port=server.port).stats()
    assert stats["batch_size_max"] > 1  # requests that arrived together shared one forward


def test_many_connections_each_get_their_own_reply(server):
    socks = [server.connect() for _ in range(8)]
    for i, s in enumerate(socks):
        s.sendall(msgpack.packb([0, 100 + i, "act", ["duelist", f"p{i}", "n", OBS]]))
    decisions = set()
    for i, s in enumerate(socks):
        reply = read_reply(s)
        assert reply[:3] == [1, 100 + i, None]
        decisions.add(reply[3]["decision"])
    assert len(decisions) == 8 and Client(port=server.port).stats()["decisions"] == 8


@pytest.mark.parametrize(
    "params, code, fragment",
    [
        (["duelist", "p", "n"], INVALID_PARAMS, "takes 4 or 5 params"),
        (["nope", "p", "n", OBS], INVALID_PARAMS, "unknown archetype"),
        (["duelist", "p", "n", OBS[:7]], INVALID_PARAMS, "8 numbers"),
        (["duelist", "p", "n", [float("nan")] * 8], INVALID_PARAMS, "NaN"),
        (["duelist", "p", "n", [float("inf")] * 8], INVALID_PARAMS, "NaN or infinite"),
        (["duelist", "p", "n", ["x"] * 8], INVALID_PARAMS, "only numbers"),
        (["duelist", "p", "n", b"\x00" * 31], INVALID_PARAMS, "32 bytes"),
        (["duelist", "p", "n", OBS, {"mask": [False] * 8}], INVALID_PARAMS, "allows no action"),
        (["duelist", "p", "n", OBS, {"mask": [True] * 3}], INVALID_PARAMS, "8 bools"),
        (["duelist", "p", "n", OBS, {"colour": 1}], INVALID_PARAMS, "unknown options"),
        (["duelist", "x" * 300, "n", OBS], INVALID_PARAMS, "bytes"),
        (["duelist", "", "n", OBS], INVALID_PARAMS, "empty"),
        (["duelist", 5, "n", OBS], INVALID_PARAMS, "str"),
    ],
)
def test_bad_act_gets_an_error_with_its_msgid(server, params, code, fragment):
    sock = server.connect()
    reply = raw_call(sock, [0, 4242, "act", params])
    assert reply[0] == 1 and reply[1] == 4242 and reply[3] is None
    assert reply[2][0] == code and fragment in reply[2][1]
    reply = raw_call(sock, [0, 7, "act", ["duelist", "p", "n", OBS]])  # same connection keeps working
    assert reply[2] is None
    still_serves(server)


def test_wrong_requests(server):
    sock = server.connect()
    assert raw_call(sock, [0, 1, "fly", []])[2][0] == METHOD_NOT_FOUND
    assert raw_call(sock, [0, 2, "act"])[2][0] == INVALID_REQUEST  # envelope arity
    assert raw_call(sock, [0, 3, "act", "notalist"])[2][0] == INVALID_PARAMS
    assert raw_call(sock, [0, 4, "act_batch", ["duelist", [["p", "n", OBS], ["p", "n", OBS[:2]]]]])[2][1].startswith(
        "row 1"
    )
    assert raw_call(sock, [0, 5, "feedback", ["ghost", "n", 1.0, True]])[2][1].startswith("no decision")
    assert raw_call(sock, [0, 6, "feedback", ["p", "n", float("nan")]])[2][0] == INVALID_PARAMS
    sock.sendall(msgpack.packb([2, "no_such_notification", []]) + msgpack.packb([2, "feedback", ["ghost", "n", 1.0]]))
    assert raw_call(sock, [0, 8, "archetypes", []])[1] == 8  # notifications got no replies
    still_serves(server)


@pytest.mark.parametrize(
    "garbage",
    [
        b"\xc1",
        b"\x91" * 100_000 + b"\xc0",
        msgpack.packb(msgpack.ExtType(5, b"x")),
        msgpack.packb("bare string"),
        b"\xdd\xff\xff\xff\xff" + b"\xc0" * (9 * 2**20),
    ],  # a declared 4G-element array: cut at max_buffer_size
)
def test_hostile_bytes_close_only_that_connection(server, garbage):
    bystander = server.connect()
    assert raw_call(bystander, [0, 1, "archetypes", []])[2] is None
    bad = server.connect()
    try:
        bad.sendall(garbage)
    except ConnectionError:
        pass  # the server closed it mid-send
    bad.settimeout(5)
    try:
        assert bad.recv(100) == b""  # closed by the server
    except ConnectionResetError:
        pass
    assert raw_call(bystander, [0, 2, "act", ["duelist", "p", "n", OBS]])[2] is None
    still_serves(server)


def test_notification_flood_gets_no_replies_and_memory_stays_bounded(server):
    sock = server.connect()
    note = msgpack.packb([2, "feedback", ["ghost", "n", 1.0]])
    sock.sendall(note * 20_000)
    reply = raw_call(sock, [0, 1, "archetypes", []])
    assert reply[1] == 1
    sock.settimeout(0.2)
    with pytest.raises(socket.timeout):
        sock.recv(1)
    assert server.service.tracker.open_count() == 0


def test_client_that_never_reads_is_cut_off(tmp_path):
    # Depending on the kernel's buffers, either the output cap fires (our queue for the hog
    # passes 64 KiB) or TCP stalls both directions with our queue empty; then the hog can no
    # longer send and the idle timeout closes it. Either way it is closed and costs nothing.
    with RunningBridge(tmp_path / "d", ServerConfig(port=0, max_output_buffer=64 * 1024, idle_timeout=2.0)) as running:
        hog = running.connect()
        hog.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        request = msgpack.packb([0, 1, "archetypes", []])
        for _ in range(2000):
            try:
                hog.sendall(request * 50)
            except OSError:
                break  # the server cut it off mid-send
        deadline = time.monotonic() + 30
        while running.bridge.stats.counters["connections"] and time.monotonic() < deadline:
            time.sleep(0.02)
        assert running.bridge.stats.counters["connections"] == 0  # the hog was closed by the server
        still_serves(running)


def test_connection_cap_and_idle_timeout(tmp_path):
    with RunningBridge(tmp_path / "d", ServerConfig(port=0, max_connections=2, idle_timeout=0.3)) as running:
        a, _b = running.connect(), running.connect()
        assert raw_call(a, [0, 1, "archetypes", []])[2] is None
        c = running.connect()
        c.settimeout(5)
        assert c.recv(10) == b""  # over the cap: closed at once
        assert running.bridge.stats.counters["connections_refused"] == 1
        time.sleep(1.0)  # a and b idle past the timeout
        a.settimeout(5)
        assert a.recv(10) == b""
        still_serves(running)


def test_token_required_off_loopback_and_auth_first(tmp_path):
    with pytest.raises(Exception, match="token"):
        ServerConfig(host="0.0.0.0")
    with RunningBridge(tmp_path / "d", ServerConfig(port=0, token="s3cret")) as running:
        sock = running.connect()
        reply = raw_call(sock, [0, 1, "act", ["duelist", "p", "n", OBS]])
        assert reply[2][0] == UNAUTHORIZED and "auth" in reply[2][1]
        assert raw_call(sock, [0, 2, "auth", ["wrong"]])[2][0] == UNAUTHORIZED
        assert raw_call(sock, [0, 3, "auth", ["s3cret"]])[3] is True
        assert raw_call(sock, [0, 4, "act", ["duelist", "p", "n", OBS]])[2] is None
        # auth again: checked again; a wrong token is refused, the connection stays authenticated
        assert raw_call(sock, [0, 5, "auth", ["wrong"]])[2] == [UNAUTHORIZED, "auth(token): wrong token"]
        assert raw_call(sock, [0, 6, "auth", ["s3cret"]])[3] is True
        assert raw_call(sock, [0, 7, "act", ["duelist", "p", "n", OBS]])[2] is None
        with Client(port=running.port, token="s3cret") as c:
            assert c.archetypes()
        with pytest.raises(RemoteError, match="wrong token"):
            Client(port=running.port, token="nope")


def test_online_adaptation_through_the_bridge_is_recorded(tmp_path):
    with (
        RunningBridge(tmp_path / "d", ServerConfig(port=0, train_interval=0.01)) as running,
        Client(port=running.port) as c,
    ):
        played, deadline = 0, time.monotonic() + 30
        while c.stats()["updates"] < 2 and time.monotonic() < deadline:
            for t in range(3):  # keep playing until two updates have landed
                d = c.act("duelist", "ann", "n", OBS)
                c.feedback("ann", "n", float(d["action"] == 2), t == 2)
            played += 1
            time.sleep(0.02)
        info = c.adapter_info("duelist", "ann")
        assert info is not None and info["version"] >= 2
        assert c.act("duelist", "ann", "n", OBS)["adapter_version"] >= 2
        c.flush()
    records = list(read_records(tmp_path / "d" / "logs"))
    assert sum(len(r["players"]) for r in records if r["t"] == "decisions") == 3 * played + 1
    assert sum(len(r["players"]) for r in records if r["t"] == "feedback") == 3 * played


def _play(port, episodes=6):
    with Client(port=port) as c:
        for _episode in range(episodes):
            for t in range(4):
                d = c.act("duelist", "ann", "n", OBS)
                c.feedback("ann", "n", float(d["action"] == 3), t == 3, wait=True)
        return c.stats()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_flushes_log_and_adapters(tmp_path, sig):
    proc, port = start_server(tmp_path / "d", "--episodes-per-update", "2")
    try:
        stats = _play(port)
        deadline = time.monotonic() + 20
        while Client(port=port).stats()["updates"] < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0 and "flushed" in out
    assert stats["decisions"] == 24
    records = list(read_records(tmp_path / "d" / "logs"))
    assert sum(len(r["players"]) for r in records if r["t"] == "decisions") == 24
    assert list((tmp_path / "d" / "adapters" / "duelist").rglob("*.safetensors"))


def _children(pid: int) -> list[int]:
    """Pids whose parent is `pid` (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _running(pid: int) -> bool:
    """Alive and not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the trainer process in /proc")
def test_kill_9_recovers_log_and_complete_adapters(tmp_path):
    from npcadapt.log import InteractionLog
    from npcadapt.store import AdapterStore

    proc, port = start_server(tmp_path / "d", "--episodes-per-update", "1")
    try:
        _play(port)
        with Client(port=port) as c:
            deadline = time.monotonic() + 20
            while c.stats()["updates"] < 1 and time.monotonic() < deadline:  # the trainer process is up
                time.sleep(0.05)
            c.flush()
            _play(port, episodes=2)  # more, unflushed work in flight
        children = _children(proc.pid)
        assert children  # the online trainer process
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    deadline = time.monotonic() + 10  # the trainer sees its input close and exits too
    while any(_running(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_running(pid) for pid in children)
    log = InteractionLog(tmp_path / "d" / "logs")  # recovers a torn tail if any
    log.close()
    records = list(read_records(tmp_path / "d" / "logs"))  # raises on corruption
    assert sum(len(r["players"]) for r in records if r["t"] == "decisions") >= 24
    store = AdapterStore(tmp_path / "d")
    for player in store.players("duelist"):
        assert store.read_meta("duelist", player).version >= 1  # every file a complete version


def test_one_bad_request_never_fails_another_in_the_same_batch(tmp_path):
    with RunningBridge(tmp_path / "d", ServerConfig(port=0, batch_wait=0.05)) as running:
        good, bad = running.connect(), running.connect()
        good.sendall(msgpack.packb([0, 1, "act", ["duelist", "alice", "guard", OBS]]))
        bad.sendall(msgpack.packb([0, 1, "act", ["duelist", "mallory", "", OBS]]))
        assert raw_call(good, [0, 2, "archetypes", []]) is not None
        bad.settimeout(5)
        reply = read_reply(bad)
        assert reply[1] == 1 and reply[2][0] == INVALID_PARAMS and "npc id" in reply[2][1]
        # a failure inside the merged forward is retried per request: only the culprit errs
        original = running.bridge.methods.run_blocks

        def flaky(archetype, blocks):
            if any("mallory" in b.players for b in blocks):
                raise RuntimeError("boom")
            return original(archetype, blocks)

        running.bridge.methods.run_blocks = flaky
        socks = [running.connect() for _ in range(2)]
        socks[0].sendall(msgpack.packb([0, 5, "act", ["duelist", "alice", "n", OBS]]))
        socks[1].sendall(msgpack.packb([0, 6, "act", ["duelist", "mallory", "n", OBS]]))
        replies = []
        for s in socks:
            s.settimeout(5)
            replies.append(read_reply(s))
        assert replies[0][1] == 5 and replies[0][2] is None
        assert replies[1][1] == 6 and replies[1][2][0] == 4 and "boom" in replies[1][2][1]  # INTERNAL_ERROR


def test_wrong_tokens_close_the_connection_after_three_tries(tmp_path):
    with RunningBridge(tmp_path / "d", ServerConfig(port=0, token="t")) as running:
        sock = running.connect()
        for i in range(3):
            assert raw_call(sock, [0, i, "auth", ["nope"]])[2][0] == UNAUTHORIZED
        sock.settimeout(5)
        assert sock.recv(10) == b""


def test_log_is_flushed_periodically(tmp_path):
    with RunningBridge(tmp_path / "d", ServerConfig(port=0, flush_interval=0.05)) as running:
        with Client(port=running.port) as c:
            c.act("duelist", "ann", "n", OBS)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                if any(r["t"] == "decisions" for r in read_records(tmp_path / "d" / "logs")):
                    break
                time.sleep(0.05)
        assert any(r["t"] == "decisions" for r in read_records(tmp_path / "d" / "logs"))  # no flush() was called


def test_action_probs_method(server):
    with Client(port=server.port) as c:
        rows = [["ann", OBS], ["bob", np.asarray(OBS, "<f4").tobytes()]]
        now = np.asarray(c.call("action_probs", "duelist", rows))
        base = np.asarray(c.call("action_probs", "duelist", rows, {"base": True}))
        assert now.shape == (2, 8) and np.allclose(now.sum(1), 1) and np.allclose(now, base)  # no adapters yet
        with pytest.raises(RemoteError, match="rows"):
            c.call("action_probs", "duelist", [["ann"]])
        with pytest.raises(RemoteError, match="options"):
            c.call("action_probs", "duelist", rows, {"colour": 1})


def test_binary_act_batch_names_the_bad_row(server):
    sock = server.connect()
    good = np.asarray(OBS, "<f4").tobytes()
    bad = np.asarray([np.nan] + OBS[1:], "<f4").tobytes()
    rows = [["p", "n", good], ["q", "n", good], ["r", "n", bad]]
    reply = raw_call(sock, [0, 1, "act_batch", ["duelist", rows]])
    assert reply[2][0] == INVALID_PARAMS and reply[2][1].startswith("row 2") and "NaN" in reply[2][1]
    reply = raw_call(sock, [0, 2, "act_batch", ["duelist", rows[:2]]])
    assert reply[2] is None and len(reply[3]) == 2


def test_a_slow_disk_never_stalls_decisions(tmp_path, monkeypatch):
    """The periodic log flush (write + fsync) runs in a worker thread: while an fsync is
    stuck on the disk, act round trips are still answered, every one of them before the
    fsync returns (were the flush on the event loop, no reply could come until then)."""
    real_fsync = os.fsync
    stuck, release, returned = threading.Event(), threading.Event(), threading.Event()

    def stuck_fsync(fd):
        stuck.set()
        release.wait(30)
        returned.set()
        real_fsync(fd)

    with RunningBridge(tmp_path / "d", ServerConfig(port=0, flush_interval=0.05)) as running:
        try:
            with Client(port=running.port, timeout=10) as c:
                c.act("duelist", "ann", "n", OBS)  # a record for the log to flush
                monkeypatch.setattr(os, "fsync", stuck_fsync)
                assert stuck.wait(10)  # the periodic flush is in an fsync now, and stays there
                for step in range(20):
                    c.act("duelist", "ann", "n", OBS)
                    assert not returned.is_set(), f"reply {step} waited for the fsync"
                assert c.stats()["decisions"] == 21
        finally:
            release.set()
    monkeypatch.setattr(os, "fsync", real_fsync)


def test_busy_polling_spins_for_its_window_then_sleeps(tmp_path):
    # A documented exception to "tests use public API": the loop's poll hook is private, and
    # counting its turns is the only way to see spinning without timing the machine.
    with RunningBridge(tmp_path / "d", ServerConfig(port=0, busy_poll=0.05)) as running:
        bridge, turns = running.bridge, []
        poll = bridge._poll

        def counted():
            turns.append(time.perf_counter())
            poll()

        bridge._poll = counted
        with Client(port=running.port) as c:
            c.act("duelist", "ann", "n", OBS)
            time.sleep(0.3)
            assert not bridge._polling
            spun = len(turns)
            assert spun > 10  # the loop turned without sleeping (for its ~50 ms window)
            time.sleep(0.1)
            assert len(turns) == spun  # ... then stopped: an idle server does not burn CPU
            c.act("duelist", "ann", "n", OBS)  # new bytes start it again
            time.sleep(0.1)
            assert len(turns) > spun
    with RunningBridge(tmp_path / "e") as running:  # off by default: the loop never spins
        bridge, turns = running.bridge, []
        poll = bridge._poll
        bridge._poll = lambda: (turns.append(1), poll())
        with Client(port=running.port) as c:
            c.act("duelist", "ann", "n", OBS)
            time.sleep(0.1)
        assert turns == []


def test_busy_poll_setting_is_checked():
    from npcadapt.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match="busy_poll"):
        ServerConfig(port=0, busy_poll=5.0)


class _RecordingLoop:
    """Stands in for the batcher's loop reference: records what it schedules, then schedules it."""

    def __init__(self, loop):
        self.loop, self.scheduled = loop, []

    def call_soon(self, callback, *args):
        self.scheduled.append(callback.__name__)
        return self.loop.call_soon(callback, *args)

    def call_later(self, delay, callback, *args):
        self.scheduled.append(callback.__name__)
        return self.loop.call_later(delay, callback, *args)


def test_a_lone_client_is_answered_without_waiting_for_another_loop_turn(tmp_path):
    with RunningBridge(tmp_path / "d") as running:
        batcher = running.bridge.batcher
        batcher.loop = recording = _RecordingLoop(batcher.loop)
        with Client(port=running.port) as one:
            assert one.act("duelist", "ann", "n", OBS)["action_name"]
            assert recording.scheduled == []  # answered at the end of the read
            with Client(port=running.port) as two:
                assert two.act("duelist", "bob", "n", OBS)["action_name"]
                assert recording.scheduled == ["flush"]  # two clients: batched on the next turn


def test_feedback_in_a_later_write_waits_for_a_queued_act(tmp_path):
    """With a batch wait and two clients the act is still queued when its feedback arrives
    in the next write: the feedback makes it decided first rather than being refused."""
    with RunningBridge(tmp_path / "d", ServerConfig(port=0, batch_wait=0.2)) as running:
        other, sock = running.connect(), running.connect()
        sock.sendall(msgpack.packb([0, 1, "act", ["duelist", "ann", "n", OBS]]))
        time.sleep(0.02)
        sock.sendall(msgpack.packb([0, 2, "feedback", ["ann", "n", 5.0, True]]))
        replies = {r[1]: r for r in (read_reply(sock) for _ in range(2))}
        assert replies[1][2] is None and replies[2] == [1, 2, None, True]
        assert ("duelist", "ann") in running.service.tracker.ready(1)
        sock.close()
        other.close()


@pytest.mark.parametrize("clients", [1, 2])
def test_feedback_after_an_act_in_the_same_write_reaches_that_decision(tmp_path, clients):
    with RunningBridge(tmp_path / "d") as running:
        others = [running.connect() for _ in range(clients - 1)]  # deferred batching when > 1
        sock = running.connect()
        sock.sendall(
            msgpack.packb([0, 1, "act", ["duelist", "ann", "n", OBS]])
            + msgpack.packb([2, "feedback", ["ann", "n", 5.0, True]])
            + msgpack.packb([0, 2, "act", ["duelist", "bob", "n", OBS]])
            + msgpack.packb([0, 3, "feedback", ["bob", "n", 1.0, True]])
        )
        replies = {r[1]: r for r in (read_reply(sock) for _ in range(3))}
        assert replies[1][2] is None and replies[2][2] is None
        assert replies[3][2] is None and replies[3][3] is True  # bob's act was decided first
        assert running.bridge.stats.counters["errors"] == 0  # ann's notification was not refused
        ready = running.service.tracker.ready(1)
        assert ("duelist", "ann") in ready and ("duelist", "bob") in ready
        taken = running.service.tracker.take([("duelist", "ann")])
        assert taken[("duelist", "ann")][0].reward == [5.0]
        for s in (sock, *others):
            s.close()


def test_async_client_calls_fail_at_once_after_the_server_went_away(tmp_path):
    import asyncio

    from npcadapt.client import AsyncClient
    from npcadapt.errors import ConnectionLostError

    async def scenario() -> None:
        with RunningBridge(tmp_path / "d") as running:
            client = await AsyncClient.connect(port=running.port)
            assert (await client.call("stats"))["connections"] >= 1
        await asyncio.wait_for(client._reader_task, 10)  # the server closed the connection
        with pytest.raises(ConnectionLostError, match="closed the connection"):
            await asyncio.wait_for(client.call("stats"), 5)  # an error, not a call that waits forever
        await client.close()

    asyncio.run(scenario())


def test_a_client_that_stops_reading_gets_nothing_computed_until_it_reads(tmp_path):
    """Backpressure: once a connection's unread replies pass the high-water mark, its requests
    stay in the kernel (no CPU, no memory spent on it); when it reads again, every request it
    sent is answered, in order."""
    with RunningBridge(tmp_path / "d") as running:
        slow = running.connect(timeout=30)
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        total = 20000
        payload = b"".join(msgpack.packb([0, i, "archetypes", []]) for i in range(total))  # ~1.5 KB reply each
        sender = threading.Thread(target=slow.sendall, args=(payload,), daemon=True)
        sender.start()
        counters = running.bridge.stats.counters
        deadline = time.monotonic() + 10
        while counters["output_pauses"] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert counters["output_pauses"] >= 1
        time.sleep(0.5)
        handled = counters["requests"]
        time.sleep(0.5)
        assert counters["requests"] == handled < total // 2  # nothing more is computed for it meanwhile
        still_serves(running)  # other connections are served
        # a 4 KiB window would make the ~30 MB of replies trickle in (minutes on some kernels)
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        unpacker = msgpack.Unpacker(raw=False)
        ids = [read_message(slow, unpacker)[1] for _ in range(total)]  # now it reads: every reply comes
        assert ids == list(range(total))
        sender.join(10)


def test_a_reply_bigger_than_the_output_cap_is_sent_whole(tmp_path):
    """An act_batch of 100,000 rows (5 MB in) answers about 10 MB, past the 8 MiB cap on
    unread replies: one reply on an empty buffer goes out whole; the log keeps every row."""
    rows = [[f"p{i}", "n", np.full(8, 0.5, np.float32).tobytes()] for i in range(100_000)]
    with RunningBridge(tmp_path / "d") as running:
        sock = running.connect(timeout=120)
        reply = raw_call(sock, [0, 1, "act_batch", ["duelist", rows]])
        assert reply[2] is None and len(reply[3]) == 100_000
        assert [d["decision"] for d in reply[3][:3]] == [1, 2, 3]
        with Client(port=running.port) as c:
            c.flush()  # raises if a record was dropped: every row was recorded
            assert c.stats()["log_records_dropped"] == 0


def test_a_client_whose_reconnect_auth_fails_reconnects_again(tmp_path):
    """A refused auth on reconnect leaves no unauthenticated socket behind: the next call
    connects again (with the token the client then has)."""
    from npcadapt.errors import ConnectionLostError

    with RunningBridge(tmp_path / "d", ServerConfig(port=0, token="s3cret")) as running:
        client = Client(port=running.port, token="s3cret")
        assert client.act("duelist", "p", "n", OBS)["action_name"]
        client.sock.close()  # the connection drops
        client.token = "wrong"
        with pytest.raises((ConnectionLostError, OSError)):
            client.act("duelist", "p", "n", OBS)
        with pytest.raises(RemoteError, match="wrong token"):
            client.act("duelist", "p", "n", OBS)  # reconnects; its auth is refused
        assert client.sock is None
        client.token = "s3cret"
        assert client.act("duelist", "p", "n", OBS)["action_name"]  # connects and authenticates again
        client.close()


def test_requests_before_bad_bytes_keep_their_order(tmp_path):
    """One read holds an act, a feedback for it, then bytes that are not MessagePack: the act is
    decided and answered, the feedback attaches to it, then the connection is closed."""
    with RunningBridge(tmp_path / "d") as running:
        sock = running.connect()
        obs = np.full(8, 0.5, np.float32).tobytes()
        data = msgpack.packb([0, 1, "act", ["duelist", "ord", "n", obs]]) + msgpack.packb(
            [0, 2, "feedback", ["ord", "n", 1.0, True]]
        )
        sock.sendall(data + b"\xc1")
        unpacker = msgpack.Unpacker(raw=False)
        replies = {}
        while len(replies) < 2:
            reply = read_message(sock, unpacker)
            replies[reply[1]] = reply
        assert replies[1][2] is None and replies[1][3]["decision"] >= 1
        assert replies[2][2] is None and replies[2][3] is True  # attached to the act before it
        assert sock.recv(10) == b""  # then closed for the bad bytes
