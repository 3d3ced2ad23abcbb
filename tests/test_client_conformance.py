"""Every engine client (Python, C++, C#, GDScript in a real Godot 3.2 binary) passes the same
scenarios (tests/conformance.py) against real `npcadapt serve` processes on loopback.

The C++ driver is compiled with g++ (C++17) on msgpack-c, the C# one with mono's mcs;
Godot runs the GDScript driver headless. Each needs its Debian package (skipped naming it,
failed in CI: tests/system_packages.py).
"""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from conformance import BIN, SCENARIOS, TOKEN, Bench, SplittingProxy
from system_packages import require_package

from npcadapt.bench.bridge import start_server, stop_process
from npcadapt.bench.clients import BUILDERS, Driver, build_godot, build_python, compile_cpp, compile_csharp
from npcadapt.errors import MissingPackageError

pytestmark = pytest.mark.timeout(300)

ROOT = Path(__file__).resolve().parents[1]
SERVERS = {
    "plain": ["--batch-wait-ms", "20"],  # act replies come after direct calls sent later
    "token": ["--token", TOKEN, "--no-adapt"],
    "overload": ["--batch-wait-ms", "1000", "--max-queued-rows", "4", "--no-adapt"],
    "restartable": ["--no-adapt"],
}


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """The servers every scenario uses, started side by side: name -> [process, port]."""
    root = tmp_path_factory.mktemp("conformance-servers")
    running: dict[str, list] = {}
    failures: list[BaseException] = []

    def start(name: str) -> None:
        try:
            running[name] = list(start_server(root / name, *SERVERS[name], stderr_path=root / f"{name}.err"))
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=start, args=(name,)) for name in SERVERS]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    proxy = SplittingProxy(running["plain"][1]) if "plain" in running else None
    try:
        if failures:
            raise failures[0]
        yield running, proxy.port, root
    finally:
        if proxy:
            proxy.close()
        for proc, _ in running.values():
            stop_process(proc)


@pytest.fixture(scope="module")
def reference(servers, tmp_path_factory):
    """The Python driver's answers that other clients must repeat."""
    running, _, _ = servers
    log = tmp_path_factory.mktemp("reference") / "driver.err"
    driver = Driver(build_python(log.parent), "127.0.0.1", running["plain"][1], ROOT, log)
    try:
        return {
            "archetypes": driver.ok("archetypes"),
            "greedy_action": driver.ok(f"act duelist reference-greedy npc2 {BIN} greedy")["action"],
        }
    finally:
        driver.close()


@pytest.fixture(scope="module", params=list(BUILDERS))
def client(request, tmp_path_factory):
    """(name, driver command) for each client, built once per module."""
    out = tmp_path_factory.mktemp(f"driver-{request.param}")
    try:
        return request.param, BUILDERS[request.param](out)
    except MissingPackageError as exc:
        require_package(exc.package, False, f"{exc.what} is missing")
        raise


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.__name__)
def test_client_conformance(scenario, client, servers, reference, tmp_path):
    name, command = client
    running, split_port, root = servers
    drivers: list[Driver] = []

    def start_driver(port: int) -> Driver:
        driver = Driver(command, "127.0.0.1", port, ROOT, tmp_path / f"driver-{len(drivers)}.err")
        drivers.append(driver)
        return driver

    def restart_server() -> int:
        proc, port = running["restartable"]
        proc.kill()
        proc.wait()
        running["restartable"] = list(
            start_server(root / "restartable", *SERVERS["restartable"], port=port, stderr_path=root / "restartable.err")
        )
        return port

    ports = {name_: port for name_, (_, port) in running.items()} | {"split": split_port}
    bench = Bench(
        client=name, start_driver=start_driver, ports=ports, restart_server=restart_server, reference=reference
    )
    try:
        scenario(bench)
    finally:
        for driver in drivers:
            driver.close()


# -- the example programs, against the same plain server ---------------------------------
def _adapted(port: int, player: str) -> dict:
    """The player's adapter once the server's online trainer has updated it (60 s at most)."""
    from npcadapt.client import Client

    deadline = time.monotonic() + 60
    with Client(port=port) as check:
        while (info := check.adapter_info("duelist", player)) is None or info["version"] < 1:
            assert time.monotonic() < deadline, f"{player} never got an adapter: {info}"
            time.sleep(0.2)
    return info


def _run_example(command: list[str], env: dict | None = None) -> str:
    proc = subprocess.run(command, capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_cpp_example_plays_a_session_that_adapts(servers, tmp_path):
    try:
        exe = compile_cpp(ROOT / "clients/cpp/example/main.cpp", tmp_path / "example")
    except MissingPackageError as exc:
        require_package(exc.package, False, f"{exc.what} is missing")
    port = servers[0]["plain"][1]
    out = _run_example([str(exe), "127.0.0.1", str(port)])
    assert out.count("episode ") == 4 and "adapter version" in out, out
    assert _adapted(port, "cpp-example-player")["updates"] >= 1
    refused = subprocess.run([str(exe), "127.0.0.1", str(_free_port())], capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr


def test_csharp_example_plays_a_session_that_adapts(servers, tmp_path):
    examples = [ROOT / "clients/csharp/Example.cs", ROOT / "clients/csharp/NpcAdaptBehaviour.cs"]
    try:
        exe = compile_csharp(examples, tmp_path / "example.exe")
    except MissingPackageError as exc:
        require_package(exc.package, False, f"{exc.what} is missing")
    port = servers[0]["plain"][1]
    out = _run_example(["mono", str(exe), "127.0.0.1", str(port)], {"PLAYER": "csharp-example-player"})
    assert out.count("episode ") == 4 and out.rstrip().endswith("ok"), out
    assert _adapted(port, "csharp-example-player")["updates"] >= 1
    refused = subprocess.run(
        ["mono", str(exe), "127.0.0.1", str(_free_port())], capture_output=True, text=True, timeout=60
    )
    assert refused.returncode == 1 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr


def test_godot_example_scene_plays_rounds_that_adapt(servers):
    try:
        command = build_godot(ROOT)
    except MissingPackageError as exc:
        require_package(exc.package, False, f"{exc.what} is missing")
    port = servers[0]["plain"][1]
    scene = [*command[:4], "--run-seconds=8", f"--port={port}", "--player=godot-example-player"]
    out = _run_example(scene)
    assert "npc_duel: asking npcadapt at 127.0.0.1:" in out and out.count("round ") >= 3, out
    assert _adapted(port, "godot-example-player")["updates"] >= 1


def _free_port() -> int:
    """A port that was free a moment ago: nothing listens there."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
