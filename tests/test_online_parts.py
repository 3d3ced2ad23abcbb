"""The online trainer's parts one at a time: batch assembly, loss, optimizer step, KL guard, gate."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from npcadapt.archetypes import BUILTIN_DIR, find_archetypes
from npcadapt.episodes import Episode
from npcadapt.lora.bank import AdapterLayout
from npcadapt.lora.layout import fresh_row
from npcadapt.training.gate import held_out_evidence
from npcadapt.training.online import OnlineConfig, OnlineTrainer, PlayerUpdate, assemble_batch


@pytest.fixture(scope="module")
def duelist():
    arch = find_archetypes([BUILTIN_DIR])["duelist"]
    return arch.policy, AdapterLayout.from_spec(arch.spec)


def trainer_for(duelist, **settings) -> OnlineTrainer:
    policy, layout = duelist
    return OnlineTrainer(policy, layout, OnlineConfig(**settings))


def episodes(player, lengths, seed, masked=False, reward_scale=1.0, pays=None):
    """Random episodes of the duelist (8 observations, 8 actions); masked ones allow a random subset.
    `pays` (action -> reward): rewards that follow a style, plus noise of spread 0.1 (None: pure noise)."""
    rng = np.random.default_rng(seed)
    out = []
    for n in lengths:
        ep = Episode("duelist", player, "n")
        for _ in range(n):
            mask = (rng.random(8) < 0.5) if masked else None
            action = int(rng.integers(8))
            if mask is not None:
                mask[action] = True
            ep.obs.append(rng.standard_normal(8).astype(np.float32))
            ep.mask.append(mask)
            ep.action.append(action)
            ep.logp.append(float(np.log(1 / 8)))
            ep.value.append(float(rng.normal(0, 0.3)))
            noise = float(rng.normal())
            ep.reward.append(reward_scale * noise if pays is None else pays(action) + 0.1 * noise)
        out.append(ep)
    return out


def items_for(duelist, *specs):
    _, layout = duelist
    return [PlayerUpdate(p, fresh_row(layout, "duelist", p), eps) for p, eps in specs]


def test_batch_shapes_owners_and_per_player_advantage_normalisation(duelist):
    cfg = OnlineConfig()
    ann = episodes("ann", [3, 2], seed=1, masked=True)
    bob = episodes("bob", [4], seed=2)
    batch = assemble_batch(items_for(duelist, ("ann", ann), ("bob", bob)), cfg, 8, torch.device("cpu"))
    assert batch.obs.shape == (9, 8) and batch.obs.dtype == torch.float32
    assert batch.masks.shape == (9, 8) and batch.masks.dtype == torch.bool
    assert batch.actions.shape == batch.old_logp.shape == batch.adv.shape == (9,)
    assert batch.owner.tolist() == [0] * 5 + [1] * 4
    assert batch.episode.tolist() == [0, 0, 0, 1, 1, 2, 2, 2, 2]
    assert batch.counts.tolist() == [5.0, 4.0]
    assert torch.equal(batch.masks[:5], torch.from_numpy(np.stack([m for ep in ann for m in ep.mask])))
    assert batch.masks[5:].all()  # no mask: every action allowed
    for k in range(2):  # normalised over each player's own steps
        a = batch.adv[batch.owner == k].double()
        assert abs(float(a.mean())) < 1e-5 and float(a.std(unbiased=False)) == pytest.approx(1.0, abs=1e-4)
    # another player's rewards never rescale this player's advantages
    louder = assemble_batch(
        items_for(duelist, ("ann", ann), ("bob", episodes("bob", [4], seed=2, reward_scale=100.0))),
        cfg,
        8,
        torch.device("cpu"),
    )
    assert torch.equal(louder.adv[:5], batch.adv[:5])


def test_a_players_loss_is_unaffected_by_another_players_data(duelist):
    trainer = trainer_for(duelist, kl_coef=0.1)
    _, layout = duelist
    gen = torch.Generator().manual_seed(0)
    scalable = layout.scalable_mask()
    ann = episodes("ann", [3, 4], seed=3)
    losses = []
    for seed in (4, 5):  # bob's episodes and adapter differ between the two batches
        items = items_for(duelist, ("ann", ann), ("bob", episodes("bob", [2 + seed], seed=seed)))
        items[1].params[scalable] = 0.1 * torch.randn(int(scalable.sum()), generator=gen)
        batch = assemble_batch(items, trainer.config, 8, torch.device("cpu"))
        start = trainer.start(items, torch.device("cpu"))
        params = start.params.clone().requires_grad_(True)
        with torch.no_grad():
            base_logp = trainer.log_probs(batch.obs, batch.masks, None)
            ref = trainer.reference(batch, params.detach())
        loss = trainer.loss(params, batch, ref, base_logp, start.ent_coef)
        assert loss.shape == (2,) and torch.isfinite(loss).all()
        (grad,) = torch.autograd.grad(loss[0], params)
        assert grad[0].abs().sum() > 0 and not grad[1].any()  # rows are disjoint
        losses.append(loss.detach())
    assert torch.allclose(losses[0][0], losses[1][0], rtol=0, atol=1e-6)
    assert not torch.allclose(losses[0][1], losses[1][1])


def test_optimizer_step_leaves_an_unhealthy_players_row_and_moments_untouched(duelist):
    trainer = trainer_for(duelist, validation_gate=False)
    bad = episodes("bad", [3], seed=6)
    bad[0].reward[1] = float("nan")
    items = items_for(duelist, ("ann", episodes("ann", [4], seed=7)), ("bad", bad))
    batch = assemble_batch(items, trainer.config, 8, torch.device("cpu"))
    start = trainer.start(items, torch.device("cpu"))
    params = start.params.clone().requires_grad_(True)
    with torch.no_grad():
        base_logp = trainer.log_probs(batch.obs, batch.masks, None)
    ref = trainer.reference(batch, start.params)
    assert torch.equal(ref.logp, batch.old_logp) and torch.equal(ref.weight, torch.ones(7))  # no gate: on-policy PPO
    loss = trainer.loss(params, batch, ref, base_logp, start.ent_coef)
    healthy = torch.ones(2, dtype=torch.bool)
    adam, healthy = trainer.step(params, loss, start.adam, start.lr, healthy)
    assert healthy.tolist() == [True, False]
    assert torch.equal(params[1].detach(), start.params[1]) and not torch.equal(params[0].detach(), start.params[0])
    assert not adam.exp_avg[1].any() and not adam.exp_avg_sq[1].any() and adam.exp_avg[0].any()
    assert adam.steps.tolist() == [1.0, 0.0]


def test_kl_guard_scales_an_adapter_back_within_the_bound(duelist):
    trainer = trainer_for(duelist, kl_bound=0.02)
    _, layout = duelist
    items = items_for(duelist, ("ann", episodes("ann", [6], seed=8)), ("bob", episodes("bob", [6], seed=9)))
    batch = assemble_batch(items, trainer.config, 8, torch.device("cpu"))
    params = torch.stack([it.params for it in items])
    params[0, layout.scalable_mask()] = 0.5 * torch.randn(
        int(layout.scalable_mask().sum()), generator=torch.Generator().manual_seed(1)
    )
    base_logp = trainer.log_probs(batch.obs, batch.masks, None)
    bounded, kl, scale = trainer.bound_kl(params, batch.obs, batch.masks, batch.owner, batch.counts, base_logp)
    assert 0 < scale[0] < 1 and scale[1] == 1  # bob's adapter has no delta (zero B): nothing to pull back
    assert kl[0] <= 0.02 and torch.equal(bounded[1], params[1])


def test_gate_serves_the_base_without_evidence_and_a_restored_adapter_whole(duelist):
    trainer = trainer_for(duelist, kl_bound=0.0)
    _, layout = duelist
    scalable = layout.scalable_mask()
    items = items_for(
        duelist, ("new", episodes("new", [4, 4], seed=10)), ("restored", episodes("restored", [4, 4], seed=11))
    )
    items[1].params[scalable] = 0.05 * torch.randn(int(scalable.sum()), generator=torch.Generator().manual_seed(2))
    batch = assemble_batch(items, trainer.config, 8, torch.device("cpu"))
    start = trainer.start(items, torch.device("cpu"))
    with torch.no_grad():
        base_logp = trainer.log_probs(batch.obs, batch.masks, None)
        ref = trainer.reference(batch, start.params)
        ev = held_out_evidence(
            trainer.config, scalable, start.states, start.params, start.served, ref.logp, base_logp, batch
        )
    assert ev.n.tolist() == [0.0, 2.0]  # a fresh adapter (zero delta) is no evidence; each episode is one estimate
    assert ev.gate.tolist() == [0.0, 1.0] and not ev.locked.any()  # below gate_min_episodes: previous share kept
    new, restored = trainer.update(items)
    assert new.state.gate == 0.0 and not new.params[scalable].any()  # the base is served ...
    assert new.state.iterate[scalable].any()  # ... while training moved the iterate
    assert restored.state.gate == 1.0 and torch.equal(restored.params, restored.state.iterate)


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"learning_rate": -1}, "OnlineConfig.learning_rate must be > 0, got -1"),
        ({"episodes_per_update": 0}, "OnlineConfig.episodes_per_update must be >= 1, got 0"),
        ({"gamma": 1.5}, "OnlineConfig.gamma must be in [0, 1], got 1.5"),
        ({"gate_t_open": 3.0}, "OnlineConfig.gate_t_full must be > gate_t_open (3.0), got 3.0"),
    ],
)
def test_an_invalid_online_setting_is_an_input_error_naming_the_field(settings, message):
    from npcadapt.errors import InvalidInputError

    with pytest.raises(InvalidInputError) as info:
        OnlineConfig(**settings)
    assert str(info.value) == message
