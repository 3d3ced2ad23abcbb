"""Single-row act throughput over loopback: 64 connections x 16 in flight, one `npcadapt serve
--no-adapt`. Usage: python scripts/research/bridge_single_row.py [SECONDS] (whatever npcadapt is
on sys.path: PYTHONPATH=OTHER compares a second checkout)."""
import asyncio, sys, time, tempfile, struct
from pathlib import Path
import msgpack
from npcadapt.bench.bridge import start_server, stop_process

async def conn(port, player, stop, counts):
    r, w = await asyncio.open_connection("127.0.0.1", port)
    obs = struct.pack("<8f", 0.5, 0.25, 1, 0, 0, 0.75, 0.5, 0)
    req = msgpack.packb([0, 1, "act", ["duelist", player, "n", obs]], use_bin_type=True)
    w.write(req * 16)
    up = msgpack.Unpacker()
    while not stop.is_set():
        data = await r.read(65536)
        up.feed(data)
        n = sum(1 for _ in up)
        counts[0] += n
        w.write(req * n)
    w.close()

async def main(port, seconds):
    stop = asyncio.Event(); counts = [0]
    tasks = [asyncio.create_task(conn(port, f"p{i}", stop, counts)) for i in range(64)]
    await asyncio.sleep(1.0); start = counts[0]; t0 = time.perf_counter()
    await asyncio.sleep(seconds); n = counts[0] - start; dt = time.perf_counter() - t0
    stop.set(); await asyncio.sleep(0.2)
    for t in tasks: t.cancel()
    return n / dt

with tempfile.TemporaryDirectory() as d:
    proc, port = start_server(Path(d) / "data", "--no-adapt")
    try:
        print(round(asyncio.run(main(port, float(sys.argv[1]) if len(sys.argv) > 1 else 6.0))))
    finally:
        stop_process(proc)
