"""Clients this project did not write, against a real bridge on a loopback port.

* The Node.js example (examples/node, @msgpack/msgpack over a plain ``net`` socket)
  plays a short session; the session must adapt the player and land in the log.
* pynvim's ``msgpack_rpc`` package (Neovim's Python client, a general MessagePack-RPC
  client) makes every kind of call, blocking and pipelined: this proves the wire format
  follows the spec rather than our own client's reading of it.

The server micro-batches with a 20 ms wait, so ``act`` answers are deterministically
later than direct methods sent after them: pipelined replies come back out of order.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import struct
import subprocess
import threading
from pathlib import Path

import pytest
from bridge_helpers import RunningBridge

from npcadapt.client import Client
from npcadapt.log import read_records
from npcadapt.protocol import INVALID_PARAMS, METHOD_NOT_FOUND
from npcadapt.server import ServerConfig

pytestmark = pytest.mark.timeout(120)

NODE_DIR = Path(__file__).resolve().parents[1] / "examples" / "node"
OBS = [0.5, 0.25, 1.0, 0.0, 0.0, 0.75, 0.5, 0.0]
OBS_F32 = struct.pack("<8f", *OBS)
BATCH_WAIT = 0.02


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with RunningBridge(
        tmp_path_factory.mktemp("bridge") / "data", ServerConfig(port=0, batch_wait=BATCH_WAIT)
    ) as running:
        yield running


# -- the Node.js example ----------------------------------------------------------------
@pytest.fixture(scope="module")
def node() -> str:
    """Path of `node`, with the example's dependencies installed (skip if impossible)."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not on PATH")
    if not (NODE_DIR / "node_modules" / "@msgpack" / "msgpack" / "package.json").is_file():
        npm = shutil.which("npm")
        if npm is None:
            pytest.skip("examples/node/node_modules is missing and npm is not on PATH")
        try:
            proc = subprocess.run(
                [npm, "ci", "--no-audit", "--no-fund"],
                check=False,
                cwd=NODE_DIR,
                capture_output=True,
                text=True,
                timeout=180,
            )
        except subprocess.TimeoutExpired:
            pytest.skip("npm ci in examples/node timed out")
        if proc.returncode != 0:
            pytest.skip(f"npm ci in examples/node failed: {proc.stderr.strip()[-300:]}")
    return node


def run_node(node: str, port: int, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [node, "client.js", "127.0.0.1", str(port)],
        check=False,
        cwd=NODE_DIR,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
    )


def test_node_example_plays_a_session_that_adapts_and_is_recorded(server, node):
    proc = run_node(node, server.port, EPISODES="4", STEPS="5", PLAYER="node-test")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "archetypes: companion, duelist, " in out and "; duelist obs 8, 8 actions" in out
    assert out.count("episode ") == 4 and "decisions: 20;" in out
    # the duelist has a population prior: one update per completed episode, so 1 to 4 by the time it looks
    seen = re.search(r"adapter: version (\d+), updates (\d+)", out)
    assert seen and 1 <= int(seen[1]) == int(seen[2]) <= 4, out
    assert out.rstrip().endswith("ok")

    with Client(port=server.port) as client:
        info = client.adapter_info("duelist", "node-test")
        assert int(seen[1]) <= info["version"] <= 4 and info["player"] == "node-test"
        client.flush()
    records = list(read_records(server.service.data_dir / "logs"))
    decided = sum(r["players"].count("node-test") for r in records if r["t"] == "decisions")
    fed = [d for r in records if r["t"] == "feedback" for p, d in zip(r["players"], r["done"]) if p == "node-test"]
    assert decided == 20
    assert len(fed) == 20 and sum(fed) == 4  # every step's reward, done at each episode's end


OVERLOAD_PROBE = r"""
const { RpcClient, OVERLOADED } = require("./client.js");
(async () => {
  const client = await RpcClient.connect("127.0.0.1", Number(process.argv[1]));
  const obs = [0.5, 0.25, 1, 0, 0, 0.75, 0.5, 0];
  const calls = [];
  for (let i = 0; i < 10; i++) calls.push(client.call("act", "duelist", `node-${i}`, "npc", obs));
  const settled = await Promise.allSettled(calls);
  const refused = settled.filter((s) => s.status === "rejected").map((s) => s.reason);
  console.log(JSON.stringify({
    decided: settled.filter((s) => s.status === "fulfilled").length,
    overloaded: refused.filter((e) => e.code === OVERLOADED && e.retryable === true && e.name === "OverloadedError").length,
    other: refused.filter((e) => e.code !== OVERLOADED).map((e) => e.message),
    retryable_other: refused.filter((e) => e.code !== OVERLOADED && e.retryable).length,
  }));
  client.close();
})().catch((err) => { console.error(err); process.exit(1); });
"""


def test_node_client_sees_overloaded_as_a_distinct_retryable_error(tmp_path, node):
    config = ServerConfig(port=0, batch_wait=1.0, max_queued_rows=4)  # rows wait 1 s: the rest are shed
    with RunningBridge(tmp_path / "data", config) as running:
        proc = subprocess.run(
            [node, "-e", OVERLOAD_PROBE, str(running.port)], cwd=NODE_DIR, capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        result = json.loads(proc.stdout)
        assert result == {"decided": 4, "overloaded": 6, "other": [], "retryable_other": 0}
        assert running.bridge.stats.overloaded == 6


def test_node_example_exits_nonzero_when_it_cannot_connect(node):
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = run_node(node, port)
    assert proc.returncode == 1
    assert "ECONNREFUSED" in proc.stderr


# -- pynvim's msgpack_rpc -------------------------------------------------------------
@pytest.fixture(scope="module")
def msgpack_rpc():
    return pytest.importorskip("pynvim.msgpack_rpc")


def test_pynvim_session_makes_every_kind_of_call(server, msgpack_rpc):
    # tcp_session first sends a notification `nvim_set_client_info` with a *binary*
    # method name: the bridge must ignore it and keep the connection.
    session = msgpack_rpc.tcp_session("127.0.0.1", server.port)
    session.error_wrapper = msgpack_rpc.ErrorResponse  # keep [code, message] intact
    try:
        before = session.request("stats")
        archetypes = session.request(b"archetypes")  # method name as bin
        duelist = next(a for a in archetypes if a["name"] == "duelist")
        assert sum(f["size"] for f in duelist["observation"]) == 8 and len(duelist["actions"]) == 8

        d = session.request("act", "duelist", "pynvim-1", "npc", OBS)
        assert set(d) >= {
            "decision",
            "action",
            "action_name",
            "logp",
            "value",
            "entropy",
            "adapter_version",
        }
        assert d["action_name"] == duelist["actions"][d["action"]]
        # Binary float32 obs (sent as msgpack bin) decodes to the same observation.
        greedy_list = session.request("act", "duelist", "pynvim-1", "npc", OBS, {"greedy": True})
        greedy_bin = session.request("act", "duelist", "pynvim-1", "npc", OBS_F32, {"greedy": True})
        assert greedy_bin["decision"] > greedy_list["decision"]
        for key in ("action", "logp", "value", "entropy"):
            assert greedy_bin[key] == pytest.approx(greedy_list[key], abs=1e-6)

        mask = [False, False, False, False, False, True, True, False]
        rows = [
            ["pynvim-1", "npc", OBS],
            ["pynvim-2", "npc", OBS_F32],
            ["pynvim-3", "npc", OBS, {"mask": mask}],
        ]
        batch = session.request("act_batch", "duelist", rows)
        assert len(batch) == 3 and batch[2]["action_name"] in ("dodge", "feint")

        session.request("feedback", "pynvim-1", "npc", 1.0, True, async_=True)  # a notification
        assert session.request("feedback", "pynvim-2", "npc", 0.5) is True  # the same as a request
        after = session.request("stats")
        assert after["feedback"] - before["feedback"] == 2
        assert after["notifications"] - before["notifications"] == 1
        assert after["decisions"] - before["decisions"] == 6

        with pytest.raises(msgpack_rpc.ErrorResponse) as err:
            session.request("act", "duelist", "pynvim-1", "npc", OBS[:3])
        assert err.value.args[0] == [INVALID_PARAMS, "obs must have 8 numbers, got 3"]
        assert session.request("adapter_info", "duelist", "pynvim-nobody") is None
        assert session.request("reset_player", "duelist", "pynvim-nobody") is False
        assert isinstance(session.request("flush"), int)
    finally:
        session.close()


def test_pynvim_pipelined_requests_match_their_msgids(server, msgpack_rpc):
    loop = msgpack_rpc.EventLoop("tcp", "127.0.0.1", server.port)
    rpc = msgpack_rpc.AsyncSession(msgpack_rpc.MsgpackStream(loop))
    calls = [
        ("act", ["duelist", "pipe-1", "npc", OBS]),
        ("archetypes", []),
        ("act", ["duelist", "pipe-2", "npc", OBS[:5]]),  # wrong obs size: an error reply
        *(("act_batch", ["duelist", [[f"pipe-{k}", "npc", OBS_F32]] * k]) for k in (1, 2, 3, 4)),
        ("adapter_info", ["duelist", "pipe-nobody"]),
        ("act", ["duelist", "pipe-3", "npc", OBS_F32]),
        ("no_such_method", []),
    ]
    replies: dict[int, tuple] = {}
    order: list[int] = []

    def on_reply(i: int):
        def callback(error, result) -> None:
            replies[i] = (error, result)
            order.append(i)
            if len(replies) == len(calls):
                rpc.stop()

        return callback

    for i, (method, params) in enumerate(calls):  # all written before any reply is read
        rpc.request(method, params, on_reply(i))
    guard = threading.Timer(10.0, lambda: rpc.threadsafe_call(rpc.stop))
    guard.start()
    try:
        rpc.run(lambda *a: None, lambda *a: None)
    finally:
        guard.cancel()
        rpc.close()

    assert len(replies) == len(calls), f"only {sorted(replies)} of {len(calls)} answered"
    assert all(error is None for i, (error, _) in replies.items() if i not in (2, 9))
    assert replies[0][1]["action_name"] and replies[8][1]["action_name"]
    assert {"companion", "duelist", "merchant"} <= {a["name"] for a in replies[1][1]}
    assert replies[2] == ([INVALID_PARAMS, "obs must have 8 numbers, got 5"], None)
    assert [len(replies[i][1]) for i in (3, 4, 5, 6)] == [1, 2, 3, 4]
    assert replies[7] == (None, None)
    assert replies[9][0][0] == METHOD_NOT_FOUND and "no_such_method" in replies[9][0][1]
    # Direct methods are answered at once, acts after the batch wait: out of order.
    assert order != sorted(order)
    assert order.index(1) < order.index(0)
