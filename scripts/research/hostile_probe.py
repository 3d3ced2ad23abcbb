"""Good-client p99 and server main-thread CPU per hostile kind (short, one kind per run).

.venv/bin/python scripts/research/hostile_probe.py KIND [--seconds 10] [--rate 15] [--profile out.prof]
KIND: none | garbage | bomb | unauth_flood | wrong_token | ...
"""
import argparse, json, multiprocessing as mp, os, re, secrets, signal, subprocess, sys, tempfile, time
from pathlib import Path
import numpy as np
from npcadapt.bench.soak_clients import good_client_main
from npcadapt.bench.soak_hostile import hostile_main

TICK = os.sysconf("SC_CLK_TCK")

def cpu(pid, tid=None):
    path = f"/proc/{pid}/task/{tid}/stat" if tid else f"/proc/{pid}/stat"
    f = open(path).read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / TICK

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("kind")
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--rate", type=float, default=15)
    ap.add_argument("--conc", type=int, default=40)
    ap.add_argument("--profile")
    a = ap.parse_args()
    token = secrets.token_hex(8)
    tmp = Path(tempfile.mkdtemp(prefix="probe-"))
    pre = [sys.executable] + (["-m", "cProfile", "-o", a.profile] if a.profile else [])
    cmd = pre + ["-m", "npcadapt.cli", "serve", "--port", "0", "--data", str(tmp / "data"), "--seed", "0",
                 "--threads", "1", "--input-budget-mb", "16", "--token", token]
    err = open(tmp / "stderr", "w")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    for line in proc.stdout:
        m = re.search(r"bridge on [\d.]+:(\d+)", line)
        if m:
            port = int(m.group(1)); break
    ctx = mp.get_context("spawn")
    pv = ctx.Value("i", port)
    begin, attack, stop = ctx.Event(), ctx.Event(), ctx.Event()
    good = ctx.Process(target=good_client_main, args=(pv, token, begin, stop, str(tmp / "good.npy"), 0.01, 0), daemon=True)
    good.start()
    hostile = None
    if a.kind != "none":
        hostile = ctx.Process(target=hostile_main, args=(pv, token, attack, stop, str(tmp / "h.json"), a.rate, a.conc, 1, None if a.kind == "all" else [a.kind]), daemon=True)
        hostile.start()
    time.sleep(2.0)
    begin.set()
    time.sleep(1.0)  # warm-up, dropped
    t0 = time.time(); c0, m0 = cpu(proc.pid), cpu(proc.pid, proc.pid)
    attack.set()
    time.sleep(a.seconds)
    c1, m1 = cpu(proc.pid), cpu(proc.pid, proc.pid); t1 = time.time()
    stop.set()
    good.join(15)
    if hostile: hostile.join(40)
    proc.send_signal(signal.SIGINT); proc.wait(60)
    rows = np.load(tmp / "good.npy")
    sel = rows[(rows[:, 0] >= t0) & (rows[:, 0] <= t1)]
    ok = sel[sel[:, 2] == 0, 1] * 1e3
    h = json.load(open(tmp / "h.json")) if hostile else {}
    n = h.get("launched", 0)
    out = {"kind": a.kind, "calls": int(len(ok)), "p50_ms": round(float(np.percentile(ok, 50)), 2),
           "p99_ms": round(float(np.percentile(ok, 99)), 2), "max_ms": round(float(ok.max()), 1),
           "server_cpu_s": round(c1 - c0, 2), "loop_thread_cpu_s": round(m1 - m0, 2), "hostile_launched": n,
           "loop_ms_per_hostile": round((m1 - m0) * 1e3 / n, 2) if n else None, "by_kind": h.get("by_kind")}
    print(json.dumps(out))
    st = open(tmp / "stderr").read()
    print("stderr lines:", st.count("\n"), st[-300:])

if __name__ == "__main__":
    main()
