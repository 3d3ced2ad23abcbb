"""The bridge's per-request cost without sockets: one started Bridge, one Connection with a
fake transport, N single-row `act` requests through `data_received` with the real engine.
Usage: python scripts/research/bridge_per_request.py N [profile]; run it alternately against two
checkouts (PYTHONPATH=OTHER) to compare them (docs/benchmarks.md, issue 16 before and after)."""

import asyncio, struct, sys, time, tempfile, cProfile, pstats
import msgpack, npcadapt
from npcadapt.server import Bridge, ServerConfig, Connection

class T:
    def __init__(self): self.n = 0
    def write(self, data): self.n += len(data)
    def get_write_buffer_size(self): return 0
    def pause_reading(self): pass
    def resume_reading(self): pass
    def close(self): pass
    def abort(self): pass
    def get_extra_info(self, *a, **k): return None
    def is_closing(self): return False

async def main(n, prof):
    with tempfile.TemporaryDirectory() as d:
        svc = npcadapt.open(d, seed=0, online=None, record=False)
        bridge = Bridge(svc, ServerConfig(port=0)); await bridge.start()
        conn = Connection(bridge); t = T(); conn.connection_made(t)
        obs = struct.pack("<8f", 0.5, 0.25, 1, 0, 0, 0.75, 0.5, 0)
        reqs = [msgpack.packb([0, i % 1000, "act", ["duelist", f"p{i%64}", "n", obs]], use_bin_type=True) for i in range(n)]
        for r in reqs[:500]: conn.data_received(r)
        pr = cProfile.Profile() if prof else None
        t0 = time.perf_counter()
        if pr: pr.enable()
        for r in reqs: conn.data_received(r)
        if pr: pr.disable()
        dt = time.perf_counter() - t0
        print(f"{dt / n * 1e6:.1f} us per single-row act ({t.n} bytes out)")
        if pr: pstats.Stats(pr).sort_stats("tottime").print_stats(14)
        svc.close()

asyncio.run(main(int(sys.argv[1]), len(sys.argv) > 2))
