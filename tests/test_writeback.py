"""No disk I/O under the serving lock: evicted adapters are written by the write-back thread,
cold loads read a pending write before the file, flush waits for the queue. Real files.

One documented exception to testing through the public API: :class:`WatchedStore` asks
each bank's ``threading.RLock`` whether the calling thread holds it with the lock's
private ``_is_owned()``, as the standard library has no public query for "held by this
thread" and that is exactly what these tests assert (no file I/O while it is held)."""

from __future__ import annotations

import random
import threading

import numpy as np
import pytest
import torch

from npcadapt.engine import Engine
from npcadapt.errors import StoreError, StoreUnavailableError
from npcadapt.store import AdapterStore
from npcadapt.writeback import WriteBehind


class WatchedStore(AdapterStore):
    """Records, for every file read and write, the thread and whether it held a bank lock."""

    def __init__(self, root, engine: Engine):
        super().__init__(root)
        self.engine = engine
        self.saves: list[tuple[str, bool]] = []
        self.loads: list[tuple[str, bool]] = []
        self.gate = threading.Event()  # cleared: saves wait (a stuck disk)
        self.gate.set()
        self.fail: BaseException | None = None  # set: saves raise it (a full disk)
        self.slow_loads: dict[str, threading.Event] = {}  # player -> event their file read waits for

    def _held(self) -> bool:
        engine = self.engine
        return any(engine.runtime(name).bank.lock._is_owned() for name in engine.archetypes)

    def save(self, tensors, meta):
        self.saves.append((threading.current_thread().name, self._held()))
        self.gate.wait(30)
        if self.fail is not None:
            raise self.fail
        return super().save(tensors, meta)

    def load(self, spec, player):
        self.loads.append((threading.current_thread().name, self._held()))
        if player in self.slow_loads:
            self.slow_loads[player].wait(30)
        return super().load(spec, player)


def watched_engine(path, arch_root, capacity: int) -> tuple[Engine, WatchedStore]:
    eng = Engine(path, archetype_dirs=[arch_root], capacity=capacity, seed=0)
    eng.store = store = WatchedStore(path, eng)
    return eng, store


def flat(eng: Engine, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(eng.runtime("tiny").layout.size, generator=gen) * 0.1


def test_many_players_through_a_tiny_bank_under_concurrent_training(tmp_path, arch_root):
    """40 players through a bank of 4 while a trainer thread installs updates: every write
    happens on the write-back thread with no bank lock held, and after flush and reopen
    each player's file is what was installed last."""
    eng, store = watched_engine(tmp_path / "d", arch_root, capacity=4)
    players = [f"p{i}" for i in range(40)]
    last: dict[str, torch.Tensor] = {}
    installs: dict[str, int] = {}
    errors: list[BaseException] = []

    def trainer() -> None:
        rng = random.Random(1)
        try:
            for step in range(150):
                chosen = rng.sample(players, 6)
                flats = torch.stack([flat(eng, 1000 * step + k) for k in range(6)])
                eng.put_adapter_rows("tiny", chosen, flats, updates=1)
                for player, row in zip(chosen, flats):
                    last[player], installs[player] = row, installs.get(player, 0) + 1
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=trainer, name="test-trainer")
    thread.start()
    rng = random.Random(2)
    obs = np.zeros((3, 6), np.float32)
    decisions = 0
    while thread.is_alive():
        eng.act_batch("tiny", rng.sample(players, 3), obs)
        decisions += 1
    thread.join()
    assert not errors, errors
    assert decisions > 0 and eng.runtime("tiny").bank.evictions > 100
    assert eng.flush() > 0
    stats = eng.stats()
    assert stats["writeback_pending"] == 0 and stats["writeback_failures"] == 0
    eng.close()

    assert store.saves and {name for name, _ in store.saves} == {"npcadapt-writeback"}
    assert not any(held for _, held in store.saves)  # no write ever ran under a bank lock
    under_lock = sum(held for _, held in store.loads)
    print(
        f"{decisions} batches, {len(store.saves)} writes, {len(store.loads)} file reads, "
        f"{under_lock} of them under the lock; {stats['locked_loads']} loads under the lock"
    )

    again = Engine(tmp_path / "d", archetype_dirs=[arch_root], capacity=4)
    for player in players:
        info = again.adapter_info("tiny", player)
        if player not in last:
            assert info is None
            continue
        assert info.version == installs[player] and info.updates == installs[player]
        assert torch.equal(again.adapter_row("tiny", player), last[player]), player
    again.close()


def test_a_cold_load_reads_the_pending_write_not_the_older_file(tmp_path, arch_root):
    eng, store = watched_engine(tmp_path / "d", arch_root, capacity=2)
    v1, v2 = flat(eng, 1), flat(eng, 2)
    eng.put_adapter_row("tiny", "ann", v1)
    assert eng.flush() == 1  # the file holds v1
    eng.put_adapter_row("tiny", "ann", v2)  # v2 in the bank only
    store.gate.clear()  # the disk stalls
    eng.put_adapter_row("tiny", "bob", v1)
    eng.put_adapter_row("tiny", "cat", v1)  # evicts ann (v2, dirty): its write is queued and stuck
    assert "ann" not in eng.runtime("tiny").bank
    assert eng.stats()["writeback_pending"] == 1
    decision = eng.act("tiny", "ann", np.zeros(6, np.float32))  # a cold load while the write waits
    assert decision.adapter_version == 2
    assert torch.equal(eng.adapter_row("tiny", "ann"), v2)
    assert eng.adapter_info("tiny", "ann").version == 2
    store.gate.set()
    eng.close()
    again = Engine(tmp_path / "d", archetype_dirs=[arch_root])
    assert torch.equal(again.adapter_row("tiny", "ann"), v2) and again.adapter_info("tiny", "ann").version == 2
    again.close()


def test_a_reset_drops_a_pending_write_and_waits_for_one_in_progress(tmp_path, arch_root):
    eng, store = watched_engine(tmp_path / "d", arch_root, capacity=1)
    eng.put_adapter_row("tiny", "ann", flat(eng, 1))
    store.gate.clear()
    eng.put_adapter_row("tiny", "bob", flat(eng, 2))  # evicts ann: the writer starts her write, stuck
    while len(store.saves) < 1:
        threading.Event().wait(0.01)
    reset = threading.Thread(target=lambda: eng.reset_player("tiny", "ann"))
    reset.start()
    reset.join(0.3)
    assert reset.is_alive()  # it waits for the write of ann in progress ...
    store.gate.set()
    reset.join(10)
    assert not reset.is_alive()
    assert not eng.store.path_for("tiny", "ann").exists()  # ... then deletes the file it made
    assert eng.adapter_info("tiny", "ann") is None
    assert eng.act("tiny", "ann", np.zeros(6, np.float32)).adapter_version == 0
    eng.close()
    again = Engine(tmp_path / "d", archetype_dirs=[arch_root])
    assert again.adapter_info("tiny", "ann") is None and again.adapter_info("tiny", "bob").version == 1
    again.close()


def test_a_failed_write_stays_pending_and_served_and_flush_reports_it(tmp_path, arch_root):
    eng, store = watched_engine(tmp_path / "d", arch_root, capacity=1)
    store.fail = StoreError("could not save adapter: disk full [ENOSPC]")
    eng.put_adapter_row("tiny", "ann", flat(eng, 1))
    eng.put_adapter_row("tiny", "bob", flat(eng, 2))  # evicts ann; her write fails
    with pytest.raises(StoreError, match=r"2 adapter write.*disk full"):
        eng.flush()  # ann's write and bob's: both fail
    stats = eng.stats()
    assert stats["writeback_pending"] == 2 and stats["writeback_failing"] == 2
    assert eng.act("tiny", "ann", np.zeros(6, np.float32)).adapter_version == 1  # served from memory
    store.fail = None  # space again
    assert eng.flush() == 2
    assert eng.stats()["writeback_pending"] == 0
    eng.close()
    again = Engine(tmp_path / "d", archetype_dirs=[arch_root])
    assert again.adapter_info("tiny", "ann").version == 1 and again.adapter_info("tiny", "bob").version == 1
    again.close()


def test_write_behind_writes_the_newest_version_once_in_order():
    written, gate = [], threading.Event()

    def write(key, row, meta):
        gate.wait(10)
        written.append((key, row))

    queue = WriteBehind(write)
    queue.submit("a", 1, None)  # the thread takes it and waits at the gate
    while queue.writing != "a":
        threading.Event().wait(0.01)
    queue.submit("a", 2, None)  # newer, while 1 is being written
    queue.submit("b", 1, None)
    queue.submit("b", 2, None)  # replaces b's pending 1
    assert queue.pending("a") == (2, None) and queue.pending("b") == (2, None)
    gate.set()
    assert queue.flush() == 2  # waited for a's newer version too
    assert written == [("a", 1), ("a", 2), ("b", 2)]
    assert queue.pending("a") is None and queue.stats()["writeback_written"] == 3
    queue.close()
    assert not queue.thread.is_alive()


def test_a_bounded_queue_drops_its_oldest_write_and_an_unreachable_store_pauses_every_write():
    """Past max_pending the oldest pending write is dropped (handed to on_drop); while the
    store is unreachable one write is tried per retry interval, a flush fails at once naming
    the outage, and once it is back everything left is written."""
    calls, dropped, down = [], [], threading.Event()
    down.set()

    def write(key, row, meta):
        calls.append(key)
        if down.is_set():
            raise StoreUnavailableError("could not save: Redis at redis://127.0.0.1:1/0 is unreachable")

    queue = WriteBehind(write, retry_interval=30, max_pending=3, on_drop=lambda k, r, m: dropped.append(k))
    queue.submit(0, "row0", None)
    while not calls:
        threading.Event().wait(0.01)
    for key in range(1, 5):  # while the writer is paused
        queue.submit(key, f"row{key}", None)
    assert queue.pending_keys() == [2, 3, 4] and dropped == [0, 1] and calls == [0]
    assert queue.stats()["writeback_dropped"] == 2
    with pytest.raises(StoreError, match="unreachable"):
        queue.flush(timeout=10)
    assert calls == [0, 2]  # the flush asked for one try, not one per write
    down.clear()
    queue.retry_now()
    assert queue.flush(timeout=10) == 3
    assert queue.pending_keys() == [] and calls[-3:] == [2, 3, 4]
    queue.close()


def test_close_names_the_adapters_it_could_not_write_and_never_hangs_on_a_stalled_disk(tmp_path, arch_root, caplog):
    eng, store = watched_engine(tmp_path / "d", arch_root, capacity=4)
    eng.put_adapter_row("tiny", "ann", flat(eng, 1))
    store.gate.clear()  # the disk stalls: the write of ann never finishes
    with pytest.raises(StoreError, match=r"still pending after 0\.3 s.*ann"), caplog.at_level("ERROR"):
        eng.close(timeout=0.3)
    assert "not written to disk (lost)" in caplog.text and "tiny/ann" in caplog.text
    store.gate.set()
    eng.writeback.thread.join(10)  # the writer finishes its write in progress and stops
    assert not eng.writeback.thread.is_alive()


def test_a_slow_cold_load_does_not_hold_up_decisions_for_resident_players(tmp_path, arch_root):
    eng, store = watched_engine(tmp_path / "d", arch_root, capacity=2)
    eng.put_adapter_row("tiny", "slow", flat(eng, 1))
    eng.flush()
    eng.put_adapter_row("tiny", "ann", flat(eng, 2))
    eng.put_adapter_row("tiny", "bob", flat(eng, 3))  # slow is evicted: only its file holds it
    assert "slow" not in eng.runtime("tiny").bank
    store.slow_loads["slow"] = threading.Event()  # its file read stalls (a slow disk)
    store.loads.clear()
    cold = threading.Thread(target=lambda: eng.act("tiny", "slow", np.zeros(6, np.float32)))
    cold.start()
    while not any(True for _ in store.loads):
        threading.Event().wait(0.01)
    assert store.loads == [(cold.name, False)]  # the file read runs with no bank lock held
    decision = eng.act("tiny", "ann", np.zeros(6, np.float32))  # served while the read waits
    assert decision.adapter_version == 1 and cold.is_alive()
    store.slow_loads["slow"].set()
    cold.join(10)
    assert not cold.is_alive() and eng.adapter_info("tiny", "slow").version == 1
    eng.close()


@pytest.fixture
def tiny_disk(tmp_path):
    """A real 16 MB filesystem (tmpfs; needs root, as CI has), unmounted afterwards."""
    import os
    import subprocess

    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)]).returncode:
        pytest.skip("mounting a small tmpfs needs root (CI runs as root)")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_decisions_are_served_while_the_disk_is_full_and_their_records_reach_it_afterwards(tiny_disk, arch_root):
    import npcadapt
    from npcadapt.errors import LogError
    from npcadapt.log import read_records

    svc = npcadapt.open(tiny_disk / "data", archetype_dirs=[arch_root], online=None, seed=0)
    obs = np.zeros((256, 6), np.float32)
    svc.act_batch("tiny", [f"p{i}" for i in range(256)], obs)
    svc.flush()
    filler = tiny_disk / "filler"
    with open(filler, "wb") as f:  # fill the disk
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError:
            pass
    served = 0
    for _ in range(200):  # about 2 MB of records: more than the log's 1 MiB write buffer
        served += len(svc.act_batch("tiny", [f"p{i}" for i in range(256)], obs).action)
    assert served == 200 * 256 and svc.stats()["log_records_dropped"] == 0  # held in memory
    with pytest.raises(LogError, match="disk full"):
        svc.flush()  # nothing can be promised while the disk is full
    filler.unlink()  # space again: every held record reaches the disk
    svc.flush()
    svc.close()
    decisions = sum(len(r["players"]) for r in read_records(tiny_disk / "data" / "logs") if r["t"] == "decisions")
    assert decisions == 201 * 256  # nothing was lost
