"""The Redis store beyond the shared contract (tests/test_store.py): compare-and-set,
changes reaching other engines, and serving through a Redis outage. Real redis-server
processes on loopback ports (tests/redis_helpers.py), no mocks."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import random_adapter
from redis_helpers import RedisServer, wait_for
from test_store import ARCH, SPEC, meta_for, tensors_for

from npcadapt.engine import Engine
from npcadapt.errors import StaleAdapterError, StoreError, StoreUnavailableError
from npcadapt.store_redis import FAST_FAIL, RedisAdapterStore

pytestmark = pytest.mark.timeout(60)
OBS = np.zeros(6, np.float32)


@pytest.fixture
def store(redis_url):
    s = RedisAdapterStore(redis_url)
    yield s
    s.close()


def shared_engine(tmp_path, name, arch_root, url, **kw) -> Engine:
    return Engine(tmp_path / name, archetype_dirs=[arch_root], capacity=8, seed=0, store=url, **kw)


# -- compare-and-set ------------------------------------------------------------------------


def test_an_older_version_never_overwrites_a_newer_one(store):
    store.save(tensors_for(1), meta_for("p", version=5))
    with pytest.raises(StaleAdapterError, match="holds version 5") as info:
        store.save(tensors_for(2), meta_for("p", version=4))
    assert info.value.stored_version == 5
    with pytest.raises(StaleAdapterError):  # the same version with other numbers is another adapter
        store.save(tensors_for(3), meta_for("p", version=5))
    store.save(tensors_for(1), meta_for("p", version=5))  # the same write again (a retry) succeeds
    store.save(tensors_for(4), meta_for("p", version=6))
    assert store.read_meta(ARCH, "p").version == 6
    assert torch.equal(store.load(SPEC, "p")[0]["actor.0.lora_A"], tensors_for(4)["actor.0.lora_A"])


def test_racing_writers_leave_the_newest_version(store, redis_url):
    other = RedisAdapterStore(redis_url)  # a second server
    refused = []

    def write(s, versions):
        for v in versions:
            try:
                s.save(tensors_for(v), meta_for("race", version=v))
            except StaleAdapterError:
                refused.append(v)

    threads = [
        threading.Thread(target=write, args=(store, range(1, 60, 2))),
        threading.Thread(target=write, args=(other, range(2, 61, 2))),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    other.close()
    tensors, meta = store.load(SPEC, "race")
    assert meta.version == 60 and torch.equal(tensors["actor.2.lora_B"], tensors_for(60)["actor.2.lora_B"])
    assert 60 not in refused


def test_keys_never_hold_a_player_id(store):
    for player in ["a:b", "*", "x y", "../p", "\u0430dmin"]:
        store.save(tensors_for(7), meta_for(player))
    keys = sorted(k.decode() for k in store.client.keys("*"))
    assert keys and all(k.isascii() and ("*" not in k) and (" " not in k) for k in keys)
    assert not any("a:b" in k or "../p" in k for k in keys)


def test_a_reset_leaves_a_floor_that_refuses_late_writes_and_the_next_adapter_starts_above(
    tmp_path, arch_root, redis_url
):
    """A reset on one engine keeps the player's version as a tombstone: another server's late
    write of that version (or an older one) does not bring the reset adapter back, and the
    player's next adapter, on either engine, gets a version above it."""
    one = shared_engine(tmp_path, "one", arch_root, redis_url)
    two = shared_engine(tmp_path, "two", arch_root, redis_url)
    late = RedisAdapterStore(redis_url)  # a third server whose write was delayed past the reset
    try:
        for seed in (1, 2, 3):
            one.set_adapter("tiny", "p", random_adapter(one, "tiny", "p", seed=seed))
        one.flush()  # the writes go through the write-behind queue: wait until Redis has version 3
        stale = one.store.read_meta("tiny", "p")
        assert stale.version == 3
        wait_for(lambda: two.act("tiny", "p", OBS).adapter_version == 3, what="version 3 served on two")
        assert one.reset_player("tiny", "p")
        assert (
            one.store.read_meta("tiny", "p") is None and one.store.load(one.runtime("tiny").adapter_spec, "p") is None
        )
        assert not one.store.exists("tiny", "p") and list(one.store.players("tiny")) == []
        assert one.store.delete("tiny", "p") is False and one.store.version_floor("tiny", "p") == 3
        for version in (3, 2):
            with pytest.raises(StaleAdapterError, match="was reset at version 3") as info:
                late.save(random_adapter(one, "tiny", "p", seed=9), replace(stale, version=version))
            assert info.value.stored_version == 3
        assert one.store.read_meta("tiny", "p") is None
        wait_for(lambda: two.act("tiny", "p", OBS).adapter_version == 0, what="the reset reaching two")

        assert one.act("tiny", "p", OBS).adapter_version == 0  # known absent in one's bank
        info = one.set_adapter("tiny", "p", random_adapter(one, "tiny", "p", seed=4))
        assert info.version == 4
        one.flush()
        assert one.store.read_meta("tiny", "p").version == 4
        wait_for(lambda: two.act("tiny", "p", OBS).adapter_version == 4, what="version 4 served on two")
        two.set_adapter("tiny", "p", random_adapter(two, "tiny", "p", seed=5))
        two.flush()
        assert two.store.read_meta("tiny", "p").version == 5
        assert one.stats()["store_conflicts"] == two.stats()["store_conflicts"] == 0
    finally:
        one.close()
        two.close()
        late.close()


# -- changes reach the other servers ----------------------------------------------------------


def test_a_player_who_moves_gets_their_latest_adapter_on_the_other_engine(tmp_path, arch_root, redis_url):
    one = shared_engine(tmp_path, "one", arch_root, redis_url)
    two = shared_engine(tmp_path, "two", arch_root, redis_url)
    try:
        assert two.act("tiny", "mover", OBS).adapter_version == 0  # not stored yet: the base
        one.set_adapter("tiny", "mover", random_adapter(one, "tiny", "mover", seed=1))
        # the new version is written at once (no flush), and the other engine drops its cached absence
        wait_for(lambda: two.act("tiny", "mover", OBS).adapter_version == 1, what="version 1 served on two")
        assert two.adapter_info("tiny", "mover").version == 1
        for version in (2, 3):
            one.set_adapter("tiny", "mover", random_adapter(one, "tiny", "mover", seed=version))
            wait_for(lambda v=version: two.act("tiny", "mover", OBS).adapter_version == v, what=f"version {version}")
        probs_one = one.action_probs("tiny", ["mover"], OBS[None])
        np.testing.assert_allclose(two.action_probs("tiny", ["mover"], OBS[None]), probs_one, rtol=1e-6)
        assert two.stats()["store_invalidations"] >= 3 and one.stats()["store_invalidations"] == 0
        one.reset_player("tiny", "mover")
        wait_for(lambda: two.act("tiny", "mover", OBS).adapter_version == 0, what="the reset reaching two")
        assert two.adapter_info("tiny", "mover") is None
    finally:
        one.close()
        two.close()


def test_a_refused_write_drops_the_stale_copy_and_serves_the_stored_one(tmp_path, arch_root, redis_url):
    eng = shared_engine(tmp_path, "e", arch_root, redis_url)
    try:
        eng.set_adapter("tiny", "p", random_adapter(eng, "tiny", "p", seed=1))
        eng.flush()
        # a write this engine does not hear of (through its own store: its own announcements are skipped)
        meta = replace(eng.store.read_meta("tiny", "p"), version=7)
        eng.store.save(random_adapter(eng, "tiny", "p", seed=9), meta)
        eng.set_adapter("tiny", "p", random_adapter(eng, "tiny", "p", seed=2))  # version 2: refused
        eng.flush()  # a refused write is settled, not retried
        assert eng.stats()["store_conflicts"] == 1 and eng.stats()["store_pending"] == 0
        assert eng.act("tiny", "p", OBS).adapter_version == 7  # the stale copy was dropped
        assert eng.store.read_meta("tiny", "p").version == 7
    finally:
        eng.close()


# -- Redis down -------------------------------------------------------------------------------


def test_serving_through_a_redis_outage_and_nothing_flushed_is_lost(tmp_path, arch_root):
    """Kill redis-server: resident players keep their adapter, players not loaded yet get the
    base, a flush fails naming the outage (nothing is acknowledged) and stats say so; once
    Redis is back (restarted on its AOF) the queued write lands, and the player who got the
    base gets their adapter."""
    server = RedisServer(tmp_path / "redis")
    eng = shared_engine(tmp_path, "e", arch_root, server.url)
    writer = RedisAdapterStore(server.url)  # another server's store
    try:
        eng.set_adapter("tiny", "cached", random_adapter(eng, "tiny", "cached", seed=1))
        eng.flush()  # acknowledged: must survive the crash below
        assert eng.stats()["store_pending"] == 0
        away = replace(eng.store.read_meta("tiny", "cached"), player="away", version=4)
        writer.save(random_adapter(eng, "tiny", "away", seed=2), away)
        server.kill()

        assert eng.act("tiny", "cached", OBS).adapter_version == 1  # served from the bank
        assert eng.act("tiny", "away", OBS).adapter_version == 0  # not loaded before: the base
        eng.set_adapter("tiny", "cached", random_adapter(eng, "tiny", "cached", seed=3))  # version 2, queued
        started = time.monotonic()
        with pytest.raises(StoreError, match="unreachable"):
            eng.flush()
        assert time.monotonic() - started < 5
        stats = eng.stats()
        assert stats["store_reachable"] is False and stats["store_pending"] == 1 and stats["store_errors"] > 0
        assert stats["store_load_errors"] >= 1
        with pytest.raises(StoreUnavailableError):
            writer.read_meta("tiny", "cached")

        server.start()  # the same port and AOF: what a restarted Redis serves
        with server.client() as raw:  # the acknowledged version survived the crash (or the queued one landed)
            assert raw.hget(eng.store.key_for("tiny", "cached"), "version") in (b"1", b"2")
        wait_for(lambda: eng.stats()["store_pending"] == 0, timeout=10, what="the queued write landing")
        eng.flush()
        time.sleep(FAST_FAIL)  # the other store found Redis down moments ago: it tries again after this
        assert writer.read_meta("tiny", "cached").version == 2  # the version acknowledged last
        assert eng.stats()["store_reachable"] is True
        wait_for(lambda: eng.act("tiny", "away", OBS).adapter_version == 4, what="the resync")
    finally:
        eng.close()
        writer.close()
        server.stop()
