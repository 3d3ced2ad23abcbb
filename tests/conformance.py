"""The client conformance scenarios: one list, run against every client's driver.

A driver (clients/CONFORMANCE.md) reads one command per line and answers one JSON line.
Each scenario gets a :class:`Bench` (the running servers and a way to start a driver on
any of them) and asserts what every client must do. The Python client's driver is the
reference: where an answer is data (archetypes), other clients must give the same.
"""

from __future__ import annotations

import math
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import msgpack

from npcadapt.bench.clients import Driver

OBS = "0.5,0.25,1,0,0,0.75,0.5,0"  # a duelist observation (8 numbers)
BIN = f"bin:{OBS}"
LIST = f"list:{OBS}"
TOKEN = "conformance-secret"


class SplittingProxy:
    """A loopback TCP proxy that writes the server's bytes to the client one to three bytes
    at a time, so every reply arrives split across many reads."""

    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.upstream_port))
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._pump, args=(client, server, 1 << 16), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, 3), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket, piece: int) -> None:
        try:
            while data := source.recv(1 << 16):
                for i in range(0, len(data), piece):
                    sink.sendall(data[i : i + piece])
                    if piece < 16:
                        time.sleep(0.0002)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.listener.close()


@dataclass
class Bench:
    """What a scenario works with: the servers by name, and drivers started on them."""

    client: str
    start_driver: Callable[[int], Driver]
    ports: dict[str, int]  # "plain", "token", "overload", "split"
    restart_server: Callable[[], int]  # restarts the "restartable" server on its port
    reference: dict = field(default_factory=dict)  # answers of the Python driver, by command

    def driver(self, server: str) -> Driver:
        return self.start_driver(self.ports[server])


# -- checks shared by the scenarios ------------------------------------------------------
DECISION_KEYS = {"decision", "action", "action_name", "logp", "value", "entropy", "adapter_version"}


def check_decision(decision: dict, actions: list[str]) -> None:
    assert set(decision) == DECISION_KEYS, decision
    assert isinstance(decision["decision"], int) and decision["decision"] >= 1
    assert 0 <= decision["action"] < len(actions) and decision["action_name"] == actions[decision["action"]]
    assert decision["logp"] <= 0 and math.isfinite(decision["value"]) and decision["entropy"] >= 0
    assert isinstance(decision["adapter_version"], int)


def duelist_actions(driver: Driver) -> list[str]:
    return next(a for a in driver.ok("archetypes") if a["name"] == "duelist")["actions"]


def close_floats(a, b, rel: float = 1e-9) -> bool:
    """Equal JSON values, floats to `rel` (float32 and float64 of 0.1 differ by 1.5e-8)."""
    if isinstance(a, float) or isinstance(b, float):
        return (
            isinstance(a, (int, float))
            and isinstance(b, (int, float))
            and math.isclose(a, b, rel_tol=rel, abs_tol=1e-300)
        )
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(close_floats(x, y, rel) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(close_floats(a[k], b[k], rel) for k in a)
    return a == b and type(a) is type(b)


def as_json(value):
    """A msgpack value as the driver's JSON answer writes it (bin as {"$bin": hex})."""
    if isinstance(value, bytes):
        return {"$bin": value.hex()}
    if isinstance(value, dict):
        return {k: as_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [as_json(v) for v in value]
    return value


# -- the codec vectors: produced by Python's msgpack -------------------------------------
INTS = [
    0,
    1,
    127,
    128,
    255,
    256,
    65535,
    65536,
    2**32 - 1,
    2**32,
    2**63 - 1,
    -1,
    -32,
    -33,
    -128,
    -129,
    -32768,
    -32769,
    -(2**31),
    -(2**31) - 1,
    -(2**63),
]
FLOATS = ["0.1", "-2.5", "1e-30", "3.4e38", "0"]
STR_LENGTHS = [0, 1, 31, 32, 255, 256, 65535, 65536]
BIN_LENGTHS = [0, 1, 255, 256, 65535, 65536]
CONTAINER_LENGTHS = [0, 1, 15, 16, 65535, 65536]


def encode_vectors() -> list[tuple[str, str]]:
    """(driver `encode` command, the hex Python's msgpack writes for that value)."""
    out = [
        ("encode nil -", msgpack.packb(None)),
        ("encode bool true", msgpack.packb(True)),
        ("encode bool false", msgpack.packb(False)),
    ]
    out += [(f"encode int {i}", msgpack.packb(i)) for i in INTS]
    out += [(f"encode float32 {f}", msgpack.packb(float(f), use_single_float=True)) for f in FLOATS]
    out += [(f"encode float64 {f}", msgpack.packb(float(f))) for f in FLOATS]
    for n in STR_LENGTHS:
        text = ("é" + "x" * n)[:n] if n else ""  # a two-byte UTF-8 character first
        raw = text.encode()
        out.append((f"encode str {raw.hex() or '-'}", msgpack.packb(text)))
    for n in BIN_LENGTHS:
        raw = bytes(i % 251 for i in range(n))
        out.append((f"encode bin {raw.hex() or '-'}", msgpack.packb(raw, use_bin_type=True)))
    for n in CONTAINER_LENGTHS:
        out.append((f"encode array_int {n}", msgpack.packb(list(range(n)))))
        out.append((f"encode map_str_int {n}", msgpack.packb({f"k{i}": i for i in range(n)})))
    return [(command, data.hex()) for command, data in out]


def decode_vectors() -> list[tuple[bytes, object]]:
    """(bytes of one value, the value as JSON) for every protocol type and width."""
    values: list = [
        None,
        True,
        False,
        *INTS,
        0.1,
        -2.5,
        "",
        "é" * 20,
        "x" * 300,
        "y" * 70000,
        b"",
        b"\x00\xff" * 10,
        b"\x01" * 300,
        b"\x02" * 70000,
        list(range(20)),
        list(range(70000)),
        {f"k{i}": i for i in range(20)},
        {"a": [1, {"b": b"\x00\x01", "c": None}], "d": -1.25, "e": [[], {}]},
    ]
    vectors = [(msgpack.packb(v, use_bin_type=True), as_json(v)) for v in values]
    vectors.append(
        (msgpack.packb(0.1, use_single_float=True), float(msgpack.unpackb(msgpack.packb(0.1, use_single_float=True))))
    )
    # wider forms than a packer would choose, which a decoder must read all the same
    vectors += [
        (bytes.fromhex("df00000001a16b01"), {"k": 1}),
        (bytes.fromhex("dd0000000105"), [5]),
        (bytes.fromhex("de0001a16bc0"), {"k": None}),
        (bytes.fromhex("dc0000"), []),
        (bytes.fromhex("db00000002c3a9"), "é"),
        (bytes.fromhex("c6000000017f"), {"$bin": "7f"}),
        (bytes.fromhex("cf0000000000000007"), 7),
        (bytes.fromhex("d3fffffffffffffffe"), -2),
        (bytes.fromhex("d07f"), 127),
        (bytes.fromhex("cb3ff8000000000000"), 1.5),
    ]
    return vectors


# -- the scenarios -----------------------------------------------------------------------
def archetypes_match_the_reference(bench: Bench) -> None:
    driver = bench.driver("plain")
    got = driver.ok("archetypes")
    assert close_floats(got, bench.reference["archetypes"]), got
    duelist = next(a for a in got if a["name"] == "duelist")
    assert sum(f["size"] for f in duelist["observation"]) == 8 and len(duelist["actions"]) == 8


def act_with_list_and_bin_obs(bench: Bench) -> None:
    driver = bench.driver("plain")
    actions = duelist_actions(driver)
    player = f"{bench.client}-act"
    as_list = driver.ok(f"act duelist {player} npc1 {LIST}")
    as_bin = driver.ok(f"act duelist {player} npc1 {BIN}")
    for decision in (as_list, as_bin):
        check_decision(decision, actions)
        assert decision["adapter_version"] == 0  # a new player gets the base
    assert as_bin["decision"] > as_list["decision"]
    assert math.isclose(as_list["value"], as_bin["value"], rel_tol=1e-6)  # same obs, same critic value
    greedy = [driver.ok(f"act duelist {player} npc2 {form} greedy")["action"] for form in (LIST, BIN)]
    assert greedy[0] == greedy[1] == bench.reference["greedy_action"]


def masks_restrict_the_action(bench: Bench) -> None:
    driver = bench.driver("plain")
    only_dodge = "mask:0,0,0,0,0,1,0,0"
    decision = driver.ok(f"act duelist {bench.client}-mask npc1 {BIN} {only_dodge}")
    assert decision["action"] == 5 and decision["action_name"] == "dodge" and abs(decision["logp"]) < 1e-5
    rows = [f"{bench.client}-b1|npc|{BIN}", f"{bench.client}-b2|npc|{LIST}|mask:1,1,1,0,0,0,0,0"]
    batch = driver.ok(f"act_batch duelist {' '.join(rows)}")
    assert len(batch) == 2 and batch[1]["decision"] == batch[0]["decision"] + 1
    assert batch[1]["action"] in (0, 1, 2)
    error = driver.error(f"act duelist {bench.client}-mask npc1 {BIN} mask:0,0,0,0,0,0,0,0")
    assert (error["code"], error["message"], error["retryable"]) == (3, "mask allows no action", False)


def errors_carry_code_and_message(bench: Bench) -> None:
    driver = bench.driver("plain")
    cases = [
        (f"act duelist {bench.client}-e npc1 list:0.5,0.25", 3, "obs must have 8 numbers, got 2"),
        (f"act duelist {bench.client}-e npc1 bin:0.5,0.25,1", 3, "binary obs must be 32 bytes (8 float32), got 12"),
        (f"act nope {bench.client}-e npc1 {BIN}", 3, "unknown archetype 'nope'"),
        ("call no_such_method", 2, "unknown method 'no_such_method'"),
        (
            f"feedback_wait {bench.client}-nobody npc1 1 0",
            3,
            f"no decision to attach feedback to for player '{bench.client}-nobody', npc 'npc1'",
        ),
    ]
    for command, code, message in cases:
        error = driver.error(command)
        assert error["code"] == code and error["message"].startswith(message), (command, error)
        assert error["retryable"] is False
    assert driver.ok(f"act duelist {bench.client}-e npc1 {BIN}")["action"] >= 0  # the connection still serves


def feedback_and_adaptation(bench: Bench) -> None:
    """Play episodes with feedback as notifications; the duelist's adapter version rises."""
    driver = bench.driver("plain")
    player = f"{bench.client}-learner"
    assert driver.ok(f"adapter_info duelist {player}") is None
    for _episode in range(3):
        for step in range(5):
            driver.ok(f"act duelist {player} npc1 {BIN}")
            assert driver.ok(f"feedback {player} npc1 {1.0 if step % 2 else -0.5} {int(step == 4)}") is None
    deadline = time.monotonic() + 60
    info = None
    while time.monotonic() < deadline:
        info = driver.ok(f"adapter_info duelist {player}")
        if info and info["version"] >= 1:
            break
        time.sleep(0.2)
    assert info and info["version"] >= 1 and info["player"] == player, info
    later = driver.ok(f"act duelist {player} npc1 {BIN}")
    assert later["adapter_version"] >= 1
    probs = driver.ok(f"action_probs duelist {player} {BIN}")
    base = driver.ok(f"action_probs duelist {player} {BIN} base")
    for row in (probs, base):
        assert len(row) == 1 and len(row[0]) == 8 and math.isclose(sum(row[0]), 1.0, rel_tol=1e-4)
    assert driver.ok(f"feedback_wait {player} npc1 0.5 1") is True
    written = driver.ok("flush")
    assert isinstance(written, int) and written >= 0


def auth_with_a_token(bench: Bench) -> None:
    driver = bench.driver("token")
    error = driver.error(f"act duelist {bench.client}-auth npc1 {BIN}")
    assert error["code"] == 5 and error["message"] == "authenticate first: call auth(token) before 'act'"
    wrong = driver.error("auth not-the-token")
    assert (wrong["code"], wrong["message"]) == (5, "auth(token): wrong token")
    assert driver.ok(f"auth {TOKEN}") is True
    assert driver.ok(f"act duelist {bench.client}-auth npc1 {BIN}")["action"] >= 0


def pipelining_100_requests(bench: Bench) -> None:
    driver = bench.driver("plain")
    entries = driver.ok(f"pipeline 100 duelist {bench.client}-pipe npc1 {BIN} mixed")
    assert [e["kind"] for e in entries] == ["decision", "info"] * 50, entries
    decisions = [e["decision"] for e in entries[::2]]
    assert decisions == sorted(decisions) and len(set(decisions)) == 50  # matched to their own requests


def overloaded_is_retryable(bench: Bench) -> None:
    driver = bench.driver("overload")  # rows wait 1 s for a batch, at most 4 queued
    entries = driver.ok(f"pipeline 10 duelist {bench.client}-busy npc1 {BIN} act")
    kinds = [e["kind"] for e in entries]
    assert kinds.count("decision") == 4, entries
    refused = [e for e in entries if e["kind"] == "error"]
    assert len(refused) == 6 and all(e["code"] == 6 and e["retryable"] is True for e in refused), entries


def replies_split_across_reads(bench: Bench) -> None:
    driver = bench.driver("split")  # the server's bytes arrive 1-3 at a time
    assert close_floats(driver.ok("archetypes"), bench.reference["archetypes"])
    check_decision(driver.ok(f"act duelist {bench.client}-split npc1 {BIN}"), duelist_actions(driver))
    entries = driver.ok(f"pipeline 20 duelist {bench.client}-split npc1 {BIN} mixed")
    assert [e["kind"] for e in entries] == ["decision", "info"] * 10


def reconnects_after_a_server_restart(bench: Bench) -> None:
    driver = bench.driver("restartable")
    first = driver.ok(f"act duelist {bench.client}-rc npc1 {BIN}")
    bench.restart_server()  # SIGKILL, then a new server on the same port
    again = driver.ok(f"act_retry 100 duelist {bench.client}-rc npc1 {BIN}")
    assert 1 <= again["attempts"] <= 100 and again["decision"]["action"] >= 0
    assert first["decision"] >= 1
    assert driver.ok(f"act duelist {bench.client}-rc npc1 {BIN}")["decision"] == again["decision"]["decision"] + 1


def codec_matches_python_msgpack(bench: Bench) -> None:
    driver = bench.driver("plain")
    wrong = []
    for command, expected in encode_vectors():
        got = driver.run(command)
        if got != {"ok": True, "result": expected}:
            wrong.append((command[:60], expected[:40], str(got)[:80]))
    for data, value in decode_vectors():
        got = driver.run(f"decode {data.hex()}")
        if not (got.get("ok") and close_floats(got["result"], value)):
            wrong.append((f"decode {data.hex()[:40]}", str(value)[:40], str(got)[:80]))
    assert not wrong, wrong


SCENARIOS: list[Callable[[Bench], None]] = [
    archetypes_match_the_reference,
    act_with_list_and_bin_obs,
    masks_restrict_the_action,
    errors_carry_code_and_message,
    feedback_and_adaptation,
    auth_with_a_token,
    pipelining_100_requests,
    overloaded_is_retryable,
    replies_split_across_reads,
    reconnects_after_a_server_restart,
    codec_matches_python_msgpack,
]
