"""One trainer per player across servers sharing a Redis store (npcadapt/lease.py): the
lease holder trains, the others forward, a lapsed lease is taken over, and a server
SIGKILLed mid-round loses no forwarded update and applies none twice. Real redis-server
and, for the kill, a real `npcadapt serve` process."""

from __future__ import annotations

import signal
import threading
from dataclasses import replace

import numpy as np
import pytest
from redis_helpers import RedisServer, wait_for

import npcadapt
from npcadapt.bench.bridge import start_server, stop_process
from npcadapt.client import Client
from npcadapt.store_redis import RedisAdapterStore
from npcadapt.training.online import OnlineConfig

pytestmark = pytest.mark.timeout(120)
OBS = np.zeros(6, np.float32)
CONFIG = OnlineConfig(episodes_per_update=1, validation_gate=False)


def open_server(tmp_path, name, arch_root, url, ttl=10.0):
    return npcadapt.open(
        tmp_path / name, archetype_dirs=[arch_root], seed=0, online=CONFIG, record=False, store=url, lease_ttl=ttl
    )


def play(svc, player, episodes=1, steps=3):
    for _ in range(episodes):
        for t in range(steps):
            out = svc.act("tiny", player, OBS, npc="n")
            svc.feedback(player, "n", float(out.action == 1), done=t == steps - 1)


def stored(url, player):
    """The player's adapter metadata in Redis, as a third party reads it."""
    store = RedisAdapterStore(url)
    try:
        return store.read_meta("tiny", player)
    finally:
        store.close()


def test_the_lease_holder_trains_and_the_other_server_forwards(tmp_path, arch_root, redis_url):
    one = open_server(tmp_path, "one", arch_root, redis_url)
    two = open_server(tmp_path, "two", arch_root, redis_url)
    try:
        play(one, "p")
        assert one.train_pending() == 1  # takes the lease
        play(two, "p", episodes=2)
        assert two.train_pending() == 0  # the lease is one's: forwarded
        assert two.stats()["episodes_forwarded"] == 2 and two.stats()["updates"] == 0
        assert two.pending_feedback() == 0
        assert one.train_pending() == 1  # one's work set names p: trained with the forwarded episodes
        assert one.stats()["forwarded_trained"] == 2
        meta = one.adapter_info("tiny", "p")
        assert meta.version == 2
        assert one.engine.store.read_meta("tiny", "p").forwarded_upto  # the consumed episodes are in the version
        assert one.train_pending() == 0 and one.stats()["forwarded_trained"] == 2  # nothing twice
        wait_for(lambda: two.act("tiny", "p", OBS, npc="x").adapter_version == 2, what="two serving one's update")
    finally:
        one.close()
        two.close()


def test_two_servers_racing_for_one_player_train_it_once(tmp_path, arch_root, redis_url):
    servers = [open_server(tmp_path, f"s{i}", arch_root, redis_url) for i in range(2)]
    try:
        for _ in range(3):
            for svc in servers:
                play(svc, "both")
            barrier = threading.Barrier(2)
            done = [0, 0]

            def train(i, barrier=barrier, done=done):
                barrier.wait()
                done[i] = servers[i].train_pending()

            threads = [threading.Thread(target=train, args=(i,)) for i in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert sum(done) <= 1, done  # never both
        for svc in servers:  # drain what was forwarded
            svc.train_pending()
        stats = [svc.stats() for svc in servers]
        assert sum(s["forwarded_trained"] for s in stats) == sum(s["episodes_forwarded"] for s in stats)
        assert sum(s["updates"] for s in stats) == servers[0].engine.store.read_meta("tiny", "both").version
        assert sum(s["lease_claims"] for s in stats) == 1
    finally:
        for svc in servers:
            svc.close()


def test_a_lapsed_lease_is_taken_over(tmp_path, arch_root, redis_url, redis_server):
    one = open_server(tmp_path, "one", arch_root, redis_url)
    two = open_server(tmp_path, "two", arch_root, redis_url)
    try:
        play(one, "p")
        assert one.train_pending() == 1
        play(two, "p")
        two.train_pending()
        assert two.stats()["episodes_forwarded"] == 1
        lease = one.leased._key("lease", "tiny", "p")
        with redis_server.client() as raw:  # one stops renewing (as if it had died): its lease lapses
            raw.pexpire(lease, 1)
            wait_for(lambda: not raw.exists(lease), what="the lease lapsing")
        play(two, "p")
        assert two.train_pending() == 1
        assert two.stats()["forwarded_trained"] == 1 and two.stats()["lease_claims"] == 1
        assert two.engine.store.read_meta("tiny", "p").version == 2
        assert one.train_pending() == 0  # one's work set still named p: the lease moved, so it passes it on
        assert two.train_pending() == 0 and two.stats()["forwarded_trained"] == 1  # nothing left to train
        assert one.stats()["updates"] == 1
        wait_for(lambda: one.adapter_info("tiny", "p").version == 2, 10, "server one serving version 2")  # change feed
    finally:
        one.close()
        two.close()


def test_forwarded_episodes_stay_in_the_stream_when_the_holders_write_is_refused(tmp_path, arch_root, redis_url):
    """The holder trains forwarded episodes, but its write is refused by compare-and-set (a
    newer version landed first): the episodes were consumed by no stored version, so they
    stay in the stream (and the holder's work set keeps the player) and the next round
    trains them on top of the stored version; once that is stored, the stream is empty."""
    one = open_server(tmp_path, "one", arch_root, redis_url)
    two = open_server(tmp_path, "two", arch_root, redis_url)
    try:
        play(one, "p")
        assert one.train_pending() == 1  # one holds the lease
        play(two, "p", episodes=2)
        assert two.train_pending() == 0 and two.stats()["episodes_forwarded"] == 2
        stream = one.leased._key("episodes", "tiny", "p")
        work = one.leased._work_key(one.leased.server)
        raw = one.engine.store.client
        forwarded = [entry_id.decode() for entry_id, _ in raw.xrange(stream)]
        assert len(forwarded) == 2
        # a newer version one does not hear of (written through its own store: its own announcements are skipped)
        newer = replace(one.engine.store.read_meta("tiny", "p"), version=7, forwarded_upto="")
        one.engine.store.save(one.engine.get_adapter("tiny", "p"), newer)

        assert one.train_pending() == 1  # trained on version 1: installed, but its write is refused
        assert one.stats()["store_conflicts"] == 1 and one.stats()["forwarded_trained"] == 2
        assert stored(redis_url, "p").version == 7
        assert [entry_id.decode() for entry_id, _ in raw.xrange(stream)] == forwarded  # nothing trimmed
        assert raw.smembers(work)  # the holder is still told to train them

        assert one.train_pending() == 1  # again, on top of version 7
        final = stored(redis_url, "p")
        assert final.version == 8 and final.forwarded_upto == forwarded[-1]
        assert one.stats()["forwarded_trained"] == 4
        assert raw.xlen(stream) == 0  # the last consumed entry too (XTRIM MINID keeps the id it names)
        assert not raw.smembers(work)
        assert one.train_pending() == 0 and one.stats()["forwarded_trained"] == 4
    finally:
        one.close()
        two.close()


@pytest.mark.parametrize("kill", ["at_once", "after_its_round"])
def test_a_server_killed_mid_round_loses_no_forwarded_update_and_applies_none_twice(tmp_path, arch_root, kill):
    """Server A (a real `npcadapt serve`) holds player p's lease; server B forwards p's
    episodes to it, and A is SIGKILLed at once (before or during its round) or once it has
    stored their update. Whatever A stored says which forwarded episodes it consumed
    (`forwarded_upto`); once the lease lapses B takes it and trains exactly the rest."""
    redis = RedisServer(tmp_path / "redis")
    proc, port = start_server(
        tmp_path / "a",
        "--store", redis.url,
        "--lease-ttl", "30",
        "--trainer", "thread",
        "--episodes-per-update", "1",
        "--no-gate",
        "--archetypes", str(arch_root),
    )  # fmt: skip
    b = None
    try:
        with Client("127.0.0.1", port) as client:
            for t in range(3):
                out = client.act("tiny", "p", "n", OBS.tolist())
                client.feedback("p", "n", 1.0, done=t == 2, wait=True)
        wait_for(lambda: stored(redis.url, "p") is not None, 30, "server A training")  # A holds p's lease
        assert out["adapter_version"] == 0

        b = open_server(tmp_path, "b", arch_root, redis.url)
        play(b, "p", episodes=3)
        assert b.train_pending() == 0 and b.stats()["episodes_forwarded"] == 3
        with redis.client() as raw:
            stream = b.leased._key("episodes", "tiny", "p")
            forwarded = [entry_id.decode() for entry_id, _ in raw.xrange(stream)]
        if kill == "after_its_round":
            wait_for(
                lambda: stored(redis.url, "p").forwarded_upto == forwarded[-1], 30, "server A training the forwarded"
            )
        proc.send_signal(signal.SIGKILL)  # at once: A may be training them right now
        proc.wait(10)

        meta = stored(redis.url, "p")
        consumed_by_a = [i for i in forwarded if meta.forwarded_upto and _id(i) <= _id(meta.forwarded_upto)]
        assert len(consumed_by_a) in ((0, 3) if kill == "at_once" else (3,))
        lease = b.leased._key("lease", "tiny", "p")
        with redis.client() as raw:  # A's lease lapses (it died: nobody renews it)
            raw.pexpire(lease, 1)
            wait_for(lambda: not raw.exists(lease), what="A's lease lapsing")
        play(b, "p")
        assert b.train_pending() == 1
        final = stored(redis.url, "p")
        assert final.version == meta.version + 1  # B trained on top of A's last stored version
        assert final.forwarded_upto == forwarded[-1]  # every forwarded episode is in it
        assert b.stats()["forwarded_trained"] == len(forwarded) - len(consumed_by_a)  # the rest, once
        assert b.train_pending() == 0 and b.stats()["forwarded_trained"] == len(forwarded) - len(consumed_by_a)
    finally:
        if b is not None:
            b.close()
        stop_process(proc)
        redis.stop()


def _id(stream_id: str) -> tuple[int, int]:
    ms, seq = stream_id.split("-")
    return int(ms), int(seq)
