"""Conformance driver for the Python client (npcadapt.client.Client): see clients/CONFORMANCE.md.

Usage: python clients/python/driver.py HOST PORT, then one command per line on stdin.
"""

from __future__ import annotations

import json
import math
import sys
import time

import msgpack
import numpy as np

from npcadapt.client import Client
from npcadapt.errors import ConnectionLostError, RemoteError
from npcadapt.protocol import Limits, Response, RpcConnection

BENCH_RESPONSE = bytes.fromhex(
    "940101c087a86465636973696f6ece00000001a46c6f6770cabf69111ca576616c7565ca3e998751a7656e74726f7079ca3f97d5d3"
    "af616461707465725f76657273696f6ece00000000a6616374696f6e06ab616374696f6e5f6e616d65a56665696e74"
)
BENCH_OBS = [0.5, 0.25, 1, 0, 0, 0.75, 0.5, 0]


def jsonable(value):
    """A decoded msgpack value as JSON-ready data (bin as {"$bin": hex})."""
    if isinstance(value, bytes):
        return {"$bin": value.hex()}
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def parse_obs(token: str):
    """`list:...` -> a list of floats (sent as an array), `bin:...` -> float32 array (sent as bin)."""
    form, _, numbers = token.partition(":")
    values = [float(x) for x in numbers.split(",")] if numbers else []
    if form == "list":
        return values
    if form == "bin":
        return np.asarray(values, dtype="<f4").tobytes()
    raise ValueError(f"bad OBS token {token!r}")


def parse_mask(token: str) -> list[bool]:
    return [x == "1" for x in token.removeprefix("mask:").split(",")]


def act_params(archetype: str, player: str, npc: str, obs_token: str, extra: list[str]) -> list:
    params: list = [archetype, player, npc, parse_obs(obs_token)]
    options: dict = {}
    for token in extra:
        if token.startswith("mask:"):
            options["mask"] = parse_mask(token)
        elif token == "greedy":
            options["greedy"] = True
    return params + [options] if options else params


def encode(kind: str, value: str) -> bytes:
    if kind == "nil":
        return msgpack.packb(None)
    if kind == "bool":
        return msgpack.packb(value == "true")
    if kind == "int":
        return msgpack.packb(int(value))
    if kind == "float32":
        return msgpack.packb(float(value), use_single_float=True)
    if kind == "float64":
        return msgpack.packb(float(value))
    if kind == "str":
        return msgpack.packb(bytes.fromhex("" if value == "-" else value).decode())
    if kind == "bin":
        return msgpack.packb(bytes.fromhex("" if value == "-" else value), use_bin_type=True)
    if kind == "array_int":
        return msgpack.packb(list(range(int(value))))
    if kind == "map_str_int":
        return msgpack.packb({f"k{i}": i for i in range(int(value))})
    raise ValueError(f"unknown encode type {kind!r}")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


def bench(client: Client, seq: int, pipe: int, codec: int, archetype: str, player: str, npc: str) -> dict:
    obs = np.asarray(BENCH_OBS, dtype="<f4")
    rtts = []
    start = time.perf_counter()
    for _ in range(seq):
        t0 = time.perf_counter()
        client.act(archetype, player, npc, obs)
        rtts.append(time.perf_counter() - t0)
    sequential = seq / (time.perf_counter() - start)
    calls = [("act", [archetype, player, npc, obs.tobytes()])] * 64
    start = time.perf_counter()
    for done in range(0, pipe, 64):
        client.call_many(calls[: min(64, pipe - done)])
    pipelined = pipe / (time.perf_counter() - start)
    rpc = RpcConnection(Limits(), role="client")
    start = time.perf_counter()
    for _ in range(codec):
        rpc.request("act", [archetype, player, npc, obs.tobytes()])
    encode_s = time.perf_counter() - start
    parser = RpcConnection(Limits(), role="client")
    start = time.perf_counter()
    for _ in range(codec):
        for event in parser.receive_data(BENCH_RESPONSE):
            assert isinstance(event, Response) and event.result["action"] == 6
    decode_s = time.perf_counter() - start
    return {
        "sequential_per_s": sequential,
        "pipelined_per_s": pipelined,
        "p50_us": percentile(rtts, 0.5) * 1e6,
        "p99_us": percentile(rtts, 0.99) * 1e6,
        "codec_us": (encode_s + decode_s) / codec * 1e6,
    }


def pipeline(client: Client, n: int, archetype: str, player: str, npc: str, obs: str, mode: str) -> list[dict]:
    calls = []
    for i in range(n):
        if mode == "mixed" and i % 2:
            calls.append(("adapter_info", [archetype, player]))
        else:
            calls.append(("act", [archetype, player, npc, parse_obs(obs)]))
    entries = []
    for result in client.call_many(calls, return_exceptions=True):  # all sent before any reply is read
        if isinstance(result, RemoteError):
            entries.append({"kind": "error", "code": result.code, "retryable": result.retryable})
        elif isinstance(result, dict) and "decision" in result:
            entries.append({"kind": "decision", "decision": result["decision"]})
        elif result is None or (isinstance(result, dict) and "player" in result):
            entries.append({"kind": "info"})
        else:
            entries.append({"kind": "other"})
    return entries


def run(client: Client, tokens: list[str]):
    command, args = tokens[0], tokens[1:]
    if command == "auth":
        return client.call("auth", args[0])
    if command == "archetypes":
        return client.archetypes()
    if command == "act":
        return client.call("act", *act_params(args[0], args[1], args[2], args[3], args[4:]))
    if command == "act_batch":
        rows = []
        for row in args[1:]:
            player, npc, obs, *rest = row.split("|")
            rows.append(act_params("", player, npc, obs, rest)[1:])
        return client.call("act_batch", args[0], rows)
    if command in ("feedback", "feedback_wait"):
        client.feedback(args[0], args[1], float(args[2]), args[3] == "1", wait=command == "feedback_wait")
        return True if command == "feedback_wait" else None
    if command == "action_probs":
        params = [args[0], [[args[1], parse_obs(args[2])]]]
        return client.call("action_probs", *params, *([{"base": True}] if "base" in args[3:] else []))
    if command == "adapter_info":
        return client.adapter_info(args[0], args[1])
    if command == "flush":
        return client.flush()
    if command == "call":
        return client.call(args[0])
    if command == "pipeline":
        return pipeline(client, int(args[0]), *args[1:6])
    if command == "act_retry":
        tries = int(args[0])
        for attempt in range(1, tries + 1):
            try:
                return {"attempts": attempt, "decision": client.call("act", *act_params(*args[1:5], []))}
            except ConnectionLostError:
                if attempt == tries:
                    raise
                time.sleep(0.1)
    if command == "encode":
        return encode(args[0], args[1] if len(args) > 1 else "-").hex()
    if command == "decode":
        return msgpack.unpackb(bytes.fromhex(args[0]), raw=False, strict_map_key=False)
    if command == "bench":
        return bench(client, int(args[0]), int(args[1]), int(args[2]), *args[3:6])
    raise ValueError(f"unknown command {command!r}")


def main() -> int:
    host, port = sys.argv[1], int(sys.argv[2])
    client = Client(host, port)
    for line in sys.stdin:
        tokens = line.rstrip("\n").split(" ")
        if tokens == ["quit"]:
            print(json.dumps({"ok": True, "result": True}), flush=True)
            break
        try:
            answer = {"ok": True, "result": jsonable(run(client, tokens))}
        except RemoteError as exc:
            answer = {"ok": False, "code": exc.code, "message": exc.message, "retryable": exc.retryable}
        except Exception as exc:
            answer = {"ok": False, "code": -1, "message": f"{type(exc).__name__}: {exc}", "retryable": False}
        print(json.dumps(answer), flush=True)
    client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
