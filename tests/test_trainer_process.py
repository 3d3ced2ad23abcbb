"""Online training in a child process: same adapters as in process, forget, death, priority, shutdown."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from dataclasses import replace

import numpy as np
import pytest
import torch
from test_online import FAVOURITE, play

import npcadapt
from npcadapt.errors import TrainerProcessError
from npcadapt.training.online import OnlineConfig
from npcadapt.training.trainer_process import TrainerProcess

CONFIG = OnlineConfig(kl_bound=3.0)


def open_service(tmp_path, arch_root, name, **options):
    return npcadapt.open(tmp_path / name, archetype_dirs=[arch_root], seed=0, online=CONFIG, **options)


def rows(svc, players=("ann", "bob")):
    return {p: svc.engine.adapter_row("tiny", p) for p in players}


def kill_child(trainer: TrainerProcess) -> None:
    """Kill the trainer's child and wait until the trainer sees it dead."""
    os.kill(trainer.pid, getattr(signal, "SIGKILL", signal.SIGTERM))
    deadline = time.monotonic() + 10
    while trainer.alive:
        assert time.monotonic() < deadline, "the killed trainer child is still running"
        time.sleep(0.01)


def kill_later(pid: int, delay: float = 1.0) -> threading.Timer:
    """SIGKILL `pid` after `delay` s (the trainer is then waiting on a child that was alive when asked)."""
    timer = threading.Timer(delay, os.kill, (pid, signal.SIGKILL))
    timer.start()
    return timer


def test_process_trainer_gives_the_in_process_adapters_bit_for_bit(tmp_path, arch_root):
    """Several updates (Adam moments, validation evidence carried in the child), a reset in
    between (the child forgets that player's state): every adapter identical to in-process."""
    results = {}
    for name, in_child in (("thread", False), ("child", True)):
        with open_service(tmp_path, arch_root, name, trainer_process=in_child) as svc:
            play(svc, ["ann", "bob"], episodes=12)
            svc.reset_player("tiny", "ann")
            play(svc, ["ann", "bob"], episodes=8, rng=np.random.default_rng(3))
            results[name] = (rows(svc), dict(svc.counters), svc.adapter_info("tiny", "ann").version)
    (thread_rows, thread_counters, thread_version), (child_rows, child_counters, child_version) = results.values()
    assert thread_counters["updates"] == child_counters["updates"] == 3 * 2 + 2 * 2
    assert thread_version == child_version == 2  # ann's adapter restarted from the reset
    for player in ("ann", "bob"):
        assert torch.equal(thread_rows[player], child_rows[player])
        assert thread_rows[player].abs().sum() > 0


def test_learning_through_the_child_changes_behaviour(tmp_path, arch_root):
    with open_service(tmp_path, arch_root, "d", trainer_process=True) as svc:
        rt = svc.engine.runtime("tiny")
        obs = np.random.default_rng(0).standard_normal((32, 6)).astype(np.float32)
        before = svc.action_probs("tiny", ["ann"] * 32, obs)[:, FAVOURITE["ann"]].mean()
        play(svc, ["ann"], episodes=40)
        after = svc.action_probs("tiny", ["ann"] * 32, obs)[:, FAVOURITE["ann"]].mean()
        assert after > before + 0.3
        assert rt.bank.meta("ann").updates == 10


def test_a_trainer_process_found_dead_is_replaced_with_a_warning(tmp_path, arch_root, caplog):
    with open_service(tmp_path, arch_root, "d", trainer_process=True) as svc:
        play(svc, ["ann"], episodes=4)
        first = svc.trainer.pid
        kill_child(svc.trainer)
        play(svc, ["ann"], episodes=4)  # the episodes go to a new child
        assert svc.trainer.pid not in (None, first) and svc.trainer.restarts == 1
        assert svc.counters["updates"] == 2 and svc.adapter_info("tiny", "ann").version == 2
        assert "starting a new online trainer process" in caplog.text


@pytest.mark.skipif(sys.platform == "win32", reason="stops the child with SIGSTOP")
def test_a_trainer_process_dying_mid_update_is_an_error_and_the_next_update_works(tmp_path, arch_root):
    with open_service(tmp_path, arch_root, "d", trainer_process=True) as svc:
        play(svc, ["ann"], episodes=4)
        trainer = svc.trainer
        pid = trainer.pid
        os.kill(pid, signal.SIGSTOP)  # alive when the update starts, but it will never answer ...
        play(svc, ["ann"], episodes=4, train=False)
        timer = kill_later(pid)  # ... and dies while the update waits for its reply
        with pytest.raises(TrainerProcessError, match="exited"):
            svc.train_pending()
        timer.join()
        assert trainer.exit_code == -signal.SIGKILL and trainer.pid is None
        assert svc.adapter_info("tiny", "ann").version == 1  # the served adapter is untouched
        play(svc, ["ann"], episodes=4)  # a new child takes over
        assert svc.counters["updates"] == 2 and svc.adapter_info("tiny", "ann").version == 2


def test_the_child_refuses_an_archetype_that_changed_on_disk(tmp_path, arch_root):
    from npcadapt.archetypes import load_archetype

    arch = load_archetype(arch_root / "tiny")
    items = []
    trainer = TrainerProcess({"tiny": replace(arch, base_hash="0" * 16)}, CONFIG, capacity=8)
    try:
        with pytest.raises(TrainerProcessError, match="changed on disk"):
            trainer.update("tiny", items)
        assert trainer.pid is None and trainer.setup_error is not None  # the child was stopped ...
        with pytest.raises(TrainerProcessError, match="changed on disk"):
            trainer.update("tiny", items)  # ... and later updates fail at once, no new child
        assert trainer.pid is None and trainer.restarts == 0
    finally:
        trainer.close()


def test_stats_say_when_the_trainer_process_is_ready(tmp_path, arch_root):
    with open_service(tmp_path, arch_root, "d", trainer_process=True) as svc:
        assert svc.stats()["trainer_ready"] is False  # the child starts with the service; nobody has heard from it
        svc.start_background_training(interval=0.05)  # which waits for the child at once, not at the first update
        deadline = time.monotonic() + 60
        while not svc.stats()["trainer_ready"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert svc.stats()["trainer_ready"] is True and svc.counters["updates"] == 0
    with open_service(tmp_path, arch_root, "in", trainer_process=False) as svc:
        assert svc.stats()["trainer_ready"] is True
    with npcadapt.open(tmp_path / "off", archetype_dirs=[arch_root], online=False) as svc:
        assert svc.stats()["trainer_ready"] is None


def test_waiting_for_the_child_can_be_stopped_and_a_dead_child_is_not_ready(arch_root):
    from npcadapt.archetypes import load_archetype

    trainer = TrainerProcess({"tiny": load_archetype(arch_root / "tiny")}, CONFIG, capacity=8)
    try:
        stop = threading.Event()
        stop.set()
        assert trainer.wait_ready(stop) is False and trainer.ready is False  # shutdown need not wait for start-up
        assert trainer.wait_ready() is True and trainer.ready is True
        os.kill(trainer.pid, getattr(signal, "SIGKILL", signal.SIGTERM))
        deadline = time.monotonic() + 10
        while trainer.ready:  # stats() must not report a dead trainer as ready
            assert time.monotonic() < deadline, "a dead trainer child still counts as ready"
            time.sleep(0.01)
        assert trainer.alive is False
    finally:
        trainer.close()


def test_close_ends_the_child(tmp_path, arch_root):
    svc = open_service(tmp_path, arch_root, "d", trainer_process=True)
    play(svc, ["ann"], episodes=4)
    trainer = svc.trainer
    assert trainer.alive
    svc.close()
    assert trainer.exit_code == 0 and not trainer.alive and trainer.pid is None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="nice values per thread are Linux behaviour")
@pytest.mark.parametrize("in_child", [False, True])
def test_the_trainer_runs_at_lower_priority_and_serving_does_not(tmp_path, arch_root, in_child):
    base = os.getpriority(os.PRIO_PROCESS, 0)
    with open_service(tmp_path, arch_root, "d", trainer_process=in_child, trainer_nice=7) as svc:
        svc.start_background_training(interval=0.01)
        thread = next(t for t in threading.enumerate() if t.name == "npcadapt-online-trainer")
        deadline = time.monotonic() + 10
        if in_child:
            play(svc, ["ann"], episodes=4, train=False)
            while svc.counters["updates"] < 1 and time.monotonic() < deadline:  # the child is up
                time.sleep(0.01)
            assert os.getpriority(os.PRIO_PROCESS, svc.trainer.pid) == min(base + 7, 19)
            # the thread that hands the child its work holds the GIL briefly: it stays at normal priority
            assert os.getpriority(os.PRIO_PROCESS, thread.native_id) == base
        else:
            while os.getpriority(os.PRIO_PROCESS, thread.native_id) == base and time.monotonic() < deadline:
                time.sleep(0.01)
            assert os.getpriority(os.PRIO_PROCESS, thread.native_id) == min(base + 7, 19)
        assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == base  # decisions keep theirs
    assert not thread.is_alive()


def test_reset_with_a_dead_child_still_resets(tmp_path, arch_root):
    with open_service(tmp_path, arch_root, "d", trainer_process=True) as svc:
        play(svc, ["ann"], episodes=4)
        kill_child(svc.trainer)
        assert svc.reset_player("tiny", "ann")  # forget finds no child to tell: no error
        assert svc.adapter_info("tiny", "ann") is None


@pytest.mark.skipif(sys.platform == "win32", reason="stops the child with SIGSTOP")
def test_a_child_dying_during_set_up_is_not_taken_for_a_refusal(tmp_path, arch_root):
    with open_service(tmp_path, arch_root, "d", trainer_process=True) as svc:
        trainer = svc.trainer
        pid = trainer.pid
        os.kill(pid, signal.SIGSTOP)  # still importing torch: alive, so the update waits for its set-up reply ...
        assert not trainer.ready
        play(svc, ["ann"], episodes=4, train=False)
        timer = kill_later(pid)  # ... and it dies meanwhile
        with pytest.raises(TrainerProcessError, match="closed its output"):
            svc.train_pending()
        timer.join()
        assert trainer.setup_error is None and trainer.exit_code == -signal.SIGKILL
        play(svc, ["ann"], episodes=4)  # the next update starts a new child
        assert svc.counters["updates"] == 1


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="stops the child with SIGSTOP")
def test_a_hung_child_is_stopped_after_the_reply_timeout(tmp_path, arch_root):
    import signal

    with open_service(tmp_path, arch_root, "d", trainer_process=True) as svc:
        play(svc, ["ann"], episodes=4)
        trainer = svc.trainer
        trainer.reply_timeout = 0.5
        hung = trainer.pid
        os.kill(hung, signal.SIGSTOP)
        play(svc, ["ann"], episodes=4, train=False)
        started = time.monotonic()
        with pytest.raises(TrainerProcessError, match="no reply within"):
            svc.train_pending()
        assert time.monotonic() - started < 10
        assert trainer.pid is None and trainer.exit_code == -signal.SIGKILL  # killed
        trainer.reply_timeout = 600.0  # a new child needs seconds to import torch
        play(svc, ["ann"], episodes=4)
        assert svc.counters["updates"] == 2


def test_a_reset_during_an_update_does_not_wait_and_the_update_cannot_undo_it(tmp_path, arch_root):
    """reset_player while the trainer is busy: it returns at once, the update's result for
    that player is dropped, and the player's next update starts from fresh trainer state
    (in process: 4 episodes, not 12; in the child: the same adapter as in process)."""
    final = {}
    for in_child in (False, True):
        with open_service(tmp_path, arch_root, f"d{in_child}", trainer_process=in_child) as svc:
            play(svc, ["ann", "bob"], episodes=4)  # both have adapters and trainer state
            trainer = svc.trainer
            inner = trainer.update
            in_update, release = threading.Event(), threading.Event()

            def slow_update(archetype, items, inner=inner, in_update=in_update, release=release):
                in_update.set()
                assert release.wait(20)
                return inner(archetype, items)

            trainer.update = slow_update
            play(svc, ["ann", "bob"], episodes=4, train=False)
            training = threading.Thread(target=svc.train_pending)
            training.start()
            assert in_update.wait(20)
            started = time.monotonic()
            assert svc.reset_player("tiny", "ann")
            assert time.monotonic() - started < 1.0  # did not wait for the update in flight
            release.set()
            training.join(30)
            trainer.update = inner
            assert svc.adapter_info("tiny", "ann") is None  # the update's result did not bring it back
            assert svc.adapter_info("tiny", "bob").version == 2  # bob's update still landed
            play(svc, ["ann"], episodes=4)
            assert svc.adapter_info("tiny", "ann").version == 1
            if not in_child:
                assert svc.trainer.states[("tiny", "ann")].episodes == 4
            final[in_child] = svc.engine.adapter_row("tiny", "ann")
    assert torch.equal(final[False], final[True])


def test_the_codec_carries_a_new_players_missing_adapter(tmp_path, arch_root):
    from npcadapt.archetypes import load_archetype
    from npcadapt.episodes import Episode
    from npcadapt.training.online import PlayerUpdate
    from npcadapt.training.trainer_process import decode_items, encode_items

    arch = load_archetype(arch_root / "tiny")
    ep = Episode(
        "tiny",
        "ann",
        "n",
        obs=[np.zeros(6, np.float32)],
        mask=[None],
        action=[1],
        logp=[-1.0],
        value=[0.0],
        reward=[1.0],
        decision=[7],
    )
    known = torch.arange(3, dtype=torch.float32)
    decoded = decode_items(arch, encode_items([PlayerUpdate("ann", None, [ep]), PlayerUpdate("bob", known, [ep])]))
    assert decoded[0].params is None and torch.equal(decoded[1].params, known)
    assert decoded[0].episodes[0].decision == [7]
