"""Online adapter training: learning, isolation, batching, NaN guard, KL bound, logging."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import torch_forward

import npcadapt
from npcadapt.episodes import Episode
from npcadapt.log import read_records
from npcadapt.training.online import OnlineConfig, PlayerUpdate

OBS = np.random.default_rng(0).standard_normal((3, 6)).astype(np.float32)
FAVOURITE = {"ann": 2, "bob": 0}  # each simulated player rewards one action (others: action 1)


def policy_probs(svc, player, obs=OBS):
    rt = svc.engine.runtime("tiny")
    with torch.no_grad():
        logits, _ = torch_forward(svc.engine, "tiny").forward(
            torch.from_numpy(obs), rt.bank.lookup([player] * len(obs))
        )
    return torch.softmax(logits, -1)


def play(svc, players, episodes, steps=4, rng=None, train=True, states=OBS):
    """Bandit episodes: reward 1 for the player's favourite action; returns the total reward."""
    rng = rng or np.random.default_rng(1)
    total = 0.0
    for _ in range(episodes):
        for t in range(steps):
            obs = states[rng.integers(0, len(states), size=len(players))]
            out = svc.act_batch("tiny", players, obs, npcs=["n"] * len(players))
            rewards = [float(a == FAVOURITE.get(p, 1)) for a, p in zip(out.action, players)]
            total += sum(rewards)
            svc.feedback_batch(players, ["n"] * len(players), rewards, [t == steps - 1] * len(players))
        if train:
            svc.train_pending()
    return total


@pytest.fixture
def svc(tmp_path, arch_root):
    service = npcadapt.open(tmp_path / "data", archetype_dirs=[arch_root], seed=0, online=OnlineConfig(kl_bound=3.0))
    yield service
    service.close()


def test_adaptation_improves_one_player_and_leaves_others_bit_identical(svc):
    carl_before = policy_probs(svc, "carl")
    before = policy_probs(svc, "ann")[:, FAVOURITE["ann"]].mean()
    play(svc, ["ann"], episodes=40)
    after = policy_probs(svc, "ann")[:, FAVOURITE["ann"]].mean()
    assert after > before + 0.5
    assert torch.equal(policy_probs(svc, "carl"), carl_before)
    info = svc.adapter_info("tiny", "ann")
    assert info.version == svc.counters["updates"] == 10 and info.updates == 10


def test_batched_update_equals_each_player_alone(svc):
    trainer = svc.trainer.trainers["tiny"]
    rt = svc.engine.runtime("tiny")
    rng = np.random.default_rng(2)

    def episodes(player):
        eps = []
        for _ in range(3):
            ep = Episode("tiny", player, "n")
            for _ in range(5):
                ep.obs.append(OBS[rng.integers(0, 3)])
                ep.mask.append(None)
                ep.action.append(int(rng.integers(0, 4)))
                ep.logp.append(float(np.log(0.25)))
                ep.value.append(0.0)
                ep.reward.append(float(rng.normal()))
                ep.decision.append(0)
            eps.append(ep)
        return eps

    items = [
        PlayerUpdate(p, rt.layout.pack(svc.engine.new_adapter("tiny", p)), episodes(p)) for p in ("ann", "bob", "cid")
    ]
    scalable = rt.layout.scalable_mask()
    for _ in range(4):  # chained updates: served adapter, trained adapter and evidence all stay per player
        together = trainer.update(items)
        for item, joint in zip(items, together):
            alone = trainer.update([item])[0]
            assert torch.allclose(joint.params, alone.params, atol=1e-5)
            assert torch.allclose(joint.state.iterate, alone.state.iterate, atol=1e-5)
            assert joint.state.gate == pytest.approx(alone.state.gate, abs=1e-4)
            assert joint.state.gate_n == alone.state.gate_n
            assert joint.state.iterate[scalable].any()  # the trained adapter moved
        items = [PlayerUpdate(o.player, o.params, episodes(o.player), o.state) for o in together]


def test_empty_episodes_are_ignored_and_never_poison_the_evidence(svc):
    trainer = svc.trainer.trainers["tiny"]
    rt = svc.engine.runtime("tiny")
    rng = np.random.default_rng(7)

    def episode(steps):
        ep = Episode("tiny", "ann", "n")
        for _ in range(steps):
            action = int(rng.integers(0, 4))
            ep.obs.append(OBS[rng.integers(0, 3)])
            ep.mask.append(None)
            ep.action.append(action)
            ep.logp.append(float(np.log(0.25)))
            ep.value.append(0.0)
            ep.reward.append(float(action == 2))
            ep.decision.append(0)
        return ep

    item = PlayerUpdate("ann", rt.layout.pack(svc.engine.new_adapter("tiny", "ann")), [episode(5), episode(5)])
    decay, expected_n = svc.online.gate_decay, None
    for _ in range(6):
        out = trainer.update([replace(item, episodes=[episode(5), episode(0), episode(5), episode(0)])])[0]
        assert out.params is not None and torch.isfinite(out.params).all()
        assert np.isfinite([out.state.gate, out.state.gate_s1, out.state.gate_s2]).all()
        # the held-out evidence counts the two non-empty episodes only (the first update has no iterate to score)
        expected_n = 0.0 if expected_n is None else decay * expected_n + 2
        assert out.state.gate_n == pytest.approx(expected_n)
        item = PlayerUpdate("ann", out.params, [], out.state)


def test_optimizer_state_is_carried_per_player(svc):
    """Each player's Adam moments and evidence count travel from one update to the next."""
    play(svc, ["ann", "bob"], episodes=8)
    states = {p: svc.trainer.states[("tiny", p)] for p in ("ann", "bob")}
    assert (
        states["ann"].episodes == 8 and states["ann"].steps == 8 // svc.online.episodes_per_update * svc.online.epochs
    )
    assert not torch.equal(states["ann"].exp_avg, states["bob"].exp_avg)
    svc.reset_player("tiny", "ann")
    assert ("tiny", "ann") not in svc.trainer.states and ("tiny", "bob") in svc.trainer.states


def test_nan_update_is_skipped_and_last_good_adapter_kept(svc):
    play(svc, ["ann", "bob"], episodes=4)
    rt = svc.engine.runtime("tiny")
    good = {p: rt.layout.pack(svc.engine.get_adapter("tiny", p)) for p in ("ann", "bob")}
    ep_bad = Episode(
        "tiny",
        "ann",
        "n",
        obs=[OBS[0]],
        mask=[None],
        action=[1],
        logp=[-1.0],
        value=[0.0],
        reward=[float("nan")],
        decision=[0],
    )
    ep_ok = Episode(
        "tiny",
        "bob",
        "n",
        obs=[OBS[0], OBS[1]],
        mask=[None, None],
        action=[1, 0],
        logp=[-1.0, -1.0],
        value=[0.0, 0.0],
        reward=[1.0, 0.0],
        decision=[0, 0],
    )
    outcomes = svc.trainer.trainers["tiny"].update(
        [PlayerUpdate("ann", good["ann"], [ep_bad]), PlayerUpdate("bob", good["bob"], [ep_ok])]
    )
    assert outcomes[0].params is None and "non-finite" in outcomes[0].skipped
    assert outcomes[1].params is not None and not torch.equal(outcomes[1].params, good["bob"])
    # through the service: a NaN reward is refused at the door and nothing changes
    version = svc.adapter_info("tiny", "ann").version
    svc.act("tiny", "ann", OBS[0], npc="n")
    with pytest.raises(npcadapt.NpcAdaptError, match="finite"):
        svc.feedback("ann", "n", float("nan"), done=True)
    assert svc.adapter_info("tiny", "ann").version == version


def test_kl_bound_holds(tmp_path, arch_root):
    bound = 0.05
    svc = npcadapt.open(
        tmp_path / "d", archetype_dirs=[arch_root], online=OnlineConfig(kl_bound=bound, learning_rate=0.1)
    )
    play(svc, ["ann"], episodes=30, states=OBS[:1])  # the bound holds on each update's observations
    base = policy_probs(svc, "nobody", OBS[:1])
    adapted = policy_probs(svc, "ann", OBS[:1])
    kl = (adapted * (adapted.log() - base.log())).sum(-1).mean()
    assert 0.01 < kl <= bound + 1e-4
    assert svc.counters["kl_bounded"] > 0
    svc.close()


def test_decisions_and_feedback_are_recorded(svc):
    given = play(svc, ["ann", "bob"], episodes=2, train=False)
    svc.flush()
    records = list(read_records(svc.data_dir / "logs"))
    decisions = [r for r in records if r["t"] == "decisions"]
    feedback = [r for r in records if r["t"] == "feedback"]
    assert len(decisions) == 8 and len(feedback) == 8
    first = decisions[0]
    assert first["players"] == ["ann", "bob"] and first["archetype"] == "tiny"
    logged = np.frombuffer(first["obs"], np.float32).reshape(2, 6)
    assert all((row == OBS).all(1).any() for row in logged)  # each logged row is an observation played
    assert first["base"] == svc.engine.runtime("tiny").archetype.base_hash
    assert sum(sum(r["reward"]) for r in feedback) == given
    assert [r["done"] for r in feedback[:4]] == [[False, False]] * 3 + [[True, True]]
    logged_actions = np.concatenate([np.frombuffer(r["action"], np.int64) for r in decisions])
    assert logged_actions.shape == (16,) and set(logged_actions) <= {0, 1, 2, 3}


def test_background_training_runs_while_serving(svc):
    svc.start_background_training(interval=0.01)
    try:
        deadline = time.monotonic() + 30
        while svc.counters["updates"] < 4 and time.monotonic() < deadline:
            play(svc, ["ann", "bob"], episodes=2, train=False)  # serving goes on while it trains
            threading.Event().wait(0.01)
    finally:
        svc.stop_background_training()
    assert svc.counters["updates"] >= 4
    assert svc.adapter_info("tiny", "ann").version >= 1


def test_reset_erases_adapter_and_pending_episodes(svc):
    play(svc, ["ann"], episodes=8)
    svc.flush()
    assert svc.adapter_info("tiny", "ann") is not None
    assert svc.reset_player("tiny", "ann")
    assert svc.adapter_info("tiny", "ann") is None
    assert torch.equal(policy_probs(svc, "ann"), policy_probs(svc, "nobody"))


def test_feedback_without_decision_is_a_clear_error(svc):
    with pytest.raises(npcadapt.NpcAdaptError, match="no decision"):
        svc.feedback("ghost", "n", 1.0)


def kl_to_base(svc, player, obs=OBS):
    p, q = policy_probs(svc, player, obs), policy_probs(svc, "nobody", obs)
    return float((p * (p.log() - q.log())).sum(-1).mean())


def play_consistent_and_noisy(svc, episodes, seed=4):
    """ann rewards her favourite action; zed's rewards are coin flips whatever the NPC does."""
    rng = np.random.default_rng(seed)
    players, npcs = ["ann", "zed"], ["n", "n"]
    for _ in range(episodes):
        for t in range(4):
            out = svc.act_batch("tiny", players, OBS[rng.integers(0, len(OBS), size=2)], npcs=npcs)
            rewards = [float(out.action[0] == FAVOURITE["ann"]), float(rng.random() < 0.5)]
            svc.feedback_batch(players, npcs, rewards, [t == 3] * 2)
        svc.train_pending()


def test_validation_gate_serves_consistent_players_and_keeps_noise_at_base(svc):
    rt = svc.engine.runtime("tiny")
    scalable = rt.layout.scalable_mask()
    play_consistent_and_noisy(svc, episodes=svc.online.episodes_per_update)  # one update
    first = svc.trainer.states[("tiny", "zed")]
    served = rt.layout.pack(svc.engine.get_adapter("tiny", "zed"))
    assert first.gate == 0.0 and not served[scalable].any()  # no evidence yet: the base is served
    assert first.iterate[scalable].any()  # ... while the trained adapter already moved
    play_consistent_and_noisy(svc, episodes=36, seed=5)
    ann, zed = svc.trainer.states[("tiny", "ann")], svc.trainer.states[("tiny", "zed")]
    assert ann.gate > 0.5 and ann.gate_n >= 16
    assert zed.gate < 0.5 and not zed.gate_locked
    assert kl_to_base(svc, "ann") > 0.5
    assert kl_to_base(svc, "zed") < 0.2 * kl_to_base(svc, "ann")


def test_validation_gate_keeps_serving_an_adapter_restored_without_trainer_state(tmp_path, arch_root):
    config = OnlineConfig(kl_bound=3.0)
    first = npcadapt.open(tmp_path / "d", archetype_dirs=[arch_root], seed=0, online=config)
    play(first, ["ann"], episodes=24)
    trained = policy_probs(first, "ann")[:, FAVOURITE["ann"]].mean()
    assert first.trainer.states[("tiny", "ann")].gate > 0.5
    first.close()
    again = npcadapt.open(
        tmp_path / "d", archetype_dirs=[arch_root], seed=1, online=config
    )  # optimizer states are not persisted
    play(again, ["ann"], episodes=4)  # one update, with no evidence carried over
    assert again.trainer.states[("tiny", "ann")].gate == 1.0
    assert policy_probs(again, "ann")[:, FAVOURITE["ann"]].mean() > trained - 0.1
    again.close()


def test_a_round_updates_at_most_max_players_those_ready_first(svc):
    players = [f"p{i}" for i in range(5)]
    for p in players:  # one at a time: p0 completes its episodes first
        play(svc, [p], episodes=svc.online.episodes_per_update, train=False)
    assert svc.stats()["ready_players"] == 5
    assert svc.train_pending(max_players=2) == 2
    assert [svc.adapter_info("tiny", p) is not None for p in players] == [True, True, False, False, False]
    assert svc.stats()["ready_players"] == 3
    assert svc.train_pending() == 3


def test_background_training_works_through_a_backlog_round_after_round(svc):
    """A full round's worth waiting: the next round starts at once, not after the (here very
    long) interval; fewer than a round wait for it, so a trickle is still batched."""
    players = [f"p{i}" for i in range(10)]
    play(svc, players, episodes=svc.online.episodes_per_update, train=False)
    rounds = []
    real = svc.train_pending
    svc.train_pending = lambda max_players=None: rounds.append(real(max_players)) or rounds[-1]
    svc.start_background_training(interval=30.0, players_per_round=3)
    try:
        deadline = time.monotonic() + 20
        while svc.counters["updates"] < 9 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.3)
        assert rounds == [3, 3, 3] and svc.stats()["ready_players"] == 1  # the tenth waits for the interval
    finally:
        svc.stop_background_training()
    with pytest.raises(ValueError, match="players_per_round"):
        svc.start_background_training(players_per_round=0)


def test_the_trainer_gets_no_adapter_for_a_new_player_and_the_served_one_after(svc):
    """A new player's fresh adapter is made by the trainer host (params None), the same
    seeded adapter the engine would make; a known player's update starts from the served one."""
    from npcadapt.training.trainer_host import InProcessTrainer

    seen = []
    real = svc.trainer.update
    svc.trainer.update = lambda archetype, items: seen.append(items) or real(archetype, items)
    play(svc, ["ann"], episodes=2 * svc.online.episodes_per_update)
    assert [item.params is None for items in seen for item in items] == [True, False]
    served_after_first = seen[1][0].params
    assert svc.engine.get_adapter("tiny", "ann") is not None and served_after_first.abs().sum() > 0

    play(svc, ["bob"], episodes=svc.online.episodes_per_update, train=False)
    episodes = svc.tracker.take(svc.tracker.ready(svc.online.episodes_per_update))[("tiny", "bob")]
    rt = svc.engine.runtime("tiny")
    results = []
    for params in (None, svc.engine.fresh_adapter_row("tiny", "bob")):
        trainer = InProcessTrainer({"tiny": (rt.policy, rt.layout)}, svc.online, capacity=8)
        results.append(trainer.update("tiny", [PlayerUpdate("bob", params, episodes)])[0].params)
    assert results[0] is not None and torch.equal(results[0], results[1])


def test_a_round_larger_than_the_adapter_bank_installs_every_player(tmp_path, arch_root):
    with npcadapt.open(
        tmp_path / "d", archetype_dirs=[arch_root], seed=0, capacity=4, online=OnlineConfig(kl_bound=3.0)
    ) as small:
        players = [f"p{i}" for i in range(8)]
        for _ in range(2):  # the second round's players are mostly on disk, not in the bank
            for half in (players[:4], players[4:]):  # a decision batch may hold at most 4 adapters
                play(small, half, episodes=small.online.episodes_per_update, train=False)
            assert small.train_pending() == 8
        assert small.counters["updates"] == 16
        assert all(small.adapter_info("tiny", p).version == 2 for p in players)


def test_a_non_finite_result_skips_that_player_only(svc):
    real = svc.trainer.update

    def poisoned(archetype, items):
        outcomes = real(archetype, items)
        bad = replace(outcomes[0], params=torch.full_like(outcomes[1].params, float("nan")))
        return [bad, *outcomes[1:]]

    svc.trainer.update = poisoned
    play(svc, ["ann", "bob"], episodes=svc.online.episodes_per_update)
    assert svc.adapter_info("tiny", "ann") is None and svc.adapter_info("tiny", "bob").version == 1
    assert (svc.counters["updates"], svc.counters["skipped_updates"]) == (1, 1)


def test_a_player_whose_decisions_carry_action_masks_adapts(svc):
    """A masked action has log-probability -inf; the entropy bonus and KL must not turn it into NaN gradients."""
    mask = np.array([[True, True, True, False]])  # action 3 is never allowed
    before = policy_probs(svc, "ann")[:, FAVOURITE["ann"]].mean()
    rng = np.random.default_rng(1)
    for _ in range(40):
        for t in range(4):
            out = svc.act_batch("tiny", ["ann"], OBS[rng.integers(0, 3, size=1)], npcs=["n"], masks=mask)
            assert out.action[0] != 3
            svc.feedback_batch(["ann"], ["n"], [float(out.action[0] == FAVOURITE["ann"])], [t == 3])
        svc.train_pending()
    assert svc.adapter_info("tiny", "ann").updates == 10  # no update was skipped as non-finite
    assert policy_probs(svc, "ann")[:, FAVOURITE["ann"]].mean() > before + 0.5
