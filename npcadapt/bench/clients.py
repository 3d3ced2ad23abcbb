"""Engine clients side by side: `npcadapt bench clients`.

Each client in clients/ (C++, C#, GDScript in Godot 3.2 headless, and the Python client as
the reference) ships a conformance driver (clients/CONFORMANCE.md); its `bench` command
measures, over one connection to a real `npcadapt serve` (``--no-adapt``, so training does
not share the cores): sequential `act` round trips (decisions per second, p50/p99), pipelined
`act` with up to 64 in flight, and the client-side cost of encoding one `act` request plus
decoding one decision reply, in microseconds, with no socket. One JSON line; ratios are
against the Python client measured in the same run. A client whose toolchain is missing
(Debian package named) is reported as skipped.

Run ``npcadapt bench clients [--quick] [--clients cpp,csharp,godot,python]``.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from ..errors import BenchmarkError, DriverError, MissingPackageError

ROOT = Path(__file__).resolve().parents[2]
CLIENTS = ROOT / "clients"


def _compile(command: list[str]) -> None:
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise BenchmarkError(f"{' '.join(command[:2])} failed:\n{proc.stdout}\n{proc.stderr}")


def build_python(out: Path) -> list[str]:
    return [sys.executable, str(CLIENTS / "python" / "driver.py")]


def compile_cpp(source: Path, exe: Path) -> Path:
    """g++ -std=c++17 of one program on the header-only client and msgpack-c
    (libmsgpack-cxx-dev); warnings are errors."""
    if shutil.which("g++") is None:
        raise MissingPackageError("g++", "g++")
    if not Path("/usr/include/msgpack.hpp").is_file():
        raise MissingPackageError("libmsgpack-cxx-dev", "/usr/include/msgpack.hpp")
    include = str(CLIENTS / "cpp" / "include")
    _compile(["g++", "-std=c++17", "-O2", "-Wall", "-Wextra", "-Werror", "-I", include, str(source), "-o", str(exe)])
    return exe


def compile_csharp(sources: list[Path], exe: Path) -> Path:
    """mcs (mono-mcs) of the single-file client with `sources`; warnings are errors."""
    if not (shutil.which("mcs") and shutil.which("mono")):
        raise MissingPackageError("mono-mcs", "mcs/mono")
    client = CLIENTS / "csharp" / "NpcAdaptClient.cs"
    _compile(
        ["mcs", "-optimize+", "-warnaserror+", "-r:System.Numerics", f"-out:{exe}", str(client), *map(str, sources)]
    )
    return exe


def build_cpp(out: Path) -> list[str]:
    return [str(compile_cpp(CLIENTS / "cpp" / "conformance" / "driver.cpp", out / "cpp-driver"))]


def build_csharp(out: Path) -> list[str]:
    return ["mono", str(compile_csharp([CLIENTS / "csharp" / "conformance" / "Driver.cs"], out / "cs-driver.exe"))]


def build_godot(out: Path) -> list[str]:
    """The GDScript driver, run by Godot 3.2 headless (godot3-server)."""
    if shutil.which("godot3-server") is None:
        raise MissingPackageError("godot3-server", "godot3-server")
    return ["godot3-server", "--no-window", "--path", str(CLIENTS / "godot"), "-s", "conformance/driver.gd"]


BUILDERS: dict[str, Callable[[Path], list[str]]] = {
    "python": build_python,
    "cpp": build_cpp,
    "csharp": build_csharp,
    "godot": build_godot,
}
# bench sizes (sequential calls, pipelined calls, codec iterations): the interpreted clients get fewer
SIZES = {
    "python": (2000, 20000, 50000),
    "cpp": (2000, 20000, 500000),
    "csharp": (2000, 20000, 200000),
    "godot": (1000, 5000, 5000),
}
TARGET_CODEC_US = {"cpp": 5.0, "csharp": 20.0, "godot": 200.0}


class Driver:
    """One driver process talking to one server; :meth:`run` sends a command, returns its answer."""

    def __init__(self, command: list[str], host: str, port: int, cwd: Path, log: Path):
        self.log = log
        self.stderr = open(log, "ab")  # noqa: SIM115 (closed in close())
        self.proc = subprocess.Popen(
            [*command, host, str(port)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            cwd=cwd,
            bufsize=0,
        )
        self.buffer = b""
        self.noise: list[str] = []  # stdout lines that are not answers (an engine's banner)

    def run(self, command: str, timeout: float = 60.0) -> dict:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write(command.encode() + b"\n")
        except BrokenPipeError as exc:
            raise DriverError(f"driver exited ({self.proc.poll()}) before {command[:80]!r}: {self.tail()}") from exc
        deadline = time.monotonic() + timeout
        while True:
            line, sep, rest = self.buffer.partition(b"\n")
            if sep:
                self.buffer = rest
                text = line.decode(errors="replace").strip()
                if text.startswith("{"):
                    return json.loads(text)
                self.noise.append(text)
                continue
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.proc.stdout], [], [], left)[0]:
                raise DriverError(f"no answer to {command[:80]!r} within {timeout:.0f}s: {self.tail()}")
            chunk = os.read(self.proc.stdout.fileno(), 1 << 20)
            if not chunk:
                raise DriverError(f"driver exited ({self.proc.wait()}) during {command[:80]!r}: {self.tail()}")
            self.buffer += chunk

    def ok(self, command: str, timeout: float = 60.0):
        """The result of a command that must succeed (DriverError naming the answer otherwise)."""
        answer = self.run(command, timeout)
        if answer.get("ok") is not True:
            raise DriverError(f"{command[:80]!r} failed: {answer}")
        return answer["result"]

    def error(self, command: str) -> dict:
        """The error answer of a command that must fail."""
        answer = self.run(command)
        if answer.get("ok") is not False or set(answer) != {"ok", "code", "message", "retryable"}:
            raise DriverError(f"{command[:80]!r} should have failed with code, message, retryable: {answer}")
        return answer

    def tail(self) -> str:
        self.stderr.flush()
        return self.log.read_text(errors="replace")[-800:]

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.run("quit", timeout=10)
            except (DriverError, OSError):
                pass
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.stderr.close()


def run(clients: list[str] | None = None, quick: bool = False) -> dict:
    from .bridge import start_server, stop_process

    names = clients or list(BUILDERS)
    result: dict = {"bench": "clients", "clients": {}, "skipped": {}}
    with tempfile.TemporaryDirectory(prefix="npcadapt-bench-clients-") as tmp:
        root = Path(tmp)
        proc, port = start_server(root / "data", "--no-adapt", stderr_path=root / "server.err")
        try:
            for name in names:
                try:
                    command = BUILDERS[name](root)
                except MissingPackageError as exc:
                    result["skipped"][name] = {"package": exc.package, "reason": str(exc)}
                    continue
                seq, pipe, codec = (max(1, n // 20) for n in SIZES[name]) if quick else SIZES[name]
                driver = Driver(command, "127.0.0.1", port, ROOT, root / f"{name}.err")
                try:
                    driver.ok(f"act duelist bench-{name} npc bin:0.5,0.25,1,0,0,0.75,0.5,0")  # warm the path
                    result["clients"][name] = driver.ok(
                        f"bench {seq} {pipe} {codec} duelist bench-{name} npc", timeout=600
                    )
                finally:
                    driver.close()
        finally:
            stop_process(proc)
    measured = result["clients"]
    if "python" in measured:
        reference = measured["python"]
        for figures in measured.values():
            figures["pipelined_vs_python"] = figures["pipelined_per_s"] / reference["pipelined_per_s"]
            figures["sequential_vs_python"] = figures["sequential_per_s"] / reference["sequential_per_s"]
    result["targets"] = {
        f"{name}_codec_us_at_most_{limit:g}": measured[name]["codec_us"] <= limit
        for name, limit in TARGET_CODEC_US.items()
        if name in measured
    }
    if "cpp" in measured and "python" in measured:
        result["targets"]["cpp_pipelined_within_2x_of_python"] = measured["cpp"]["pipelined_vs_python"] >= 0.5
    return result


if __name__ == "__main__":
    print(json.dumps(run()))
