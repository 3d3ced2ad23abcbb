"""The shared math (npcadapt.numerics): twins agree, special cases are what they claim."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from npcadapt.numerics import (
    draw_categorical,
    draw_categorical_torch,
    gae,
    gae_torch,
    kl_rows,
    masked_entropy_rows,
    masked_kl_rows,
    masked_log_probs,
    masked_log_probs_np,
    ppo_clip_loss,
)


def test_gae_with_no_values_and_lambda_one_is_the_discounted_reward_to_go():
    rewards = [0.5, -1.0, 2.0, 0.25]
    expected, running = [], 0.0
    for r in reversed(rewards):
        running = r + 0.9 * running
        expected.insert(0, running)
    out = gae(rewards, None, 0.9, 1.0)
    assert out.dtype == np.float64 and out.tolist() == expected
    assert gae(rewards, None, 0.0, 1.0).tolist() == rewards


def test_gae_of_one_episode_equals_the_rollout_twin_and_keeps_float32():
    rng = np.random.default_rng(0)
    rewards, values = rng.normal(size=7).astype(np.float32), rng.normal(size=7).astype(np.float32)
    out = gae(rewards, values, 0.9, 0.5)
    assert out.dtype == np.float32
    ends = torch.zeros(7, 1)
    ends[-1] = 1.0
    rollout = gae_torch(
        torch.from_numpy(rewards)[:, None], torch.from_numpy(values)[:, None], ends, torch.tensor([3.0]), 0.9, 0.5
    )  # the bootstrap value is cut by the episode's end
    np.testing.assert_allclose(rollout[:, 0].numpy(), out, rtol=1e-6)
    # one step by hand: delta_t = r_t + gamma v_{t+1} - v_t, A_t = delta_t + gamma lambda A_{t+1}
    assert out[-1] == pytest.approx(rewards[-1] - values[-1])
    assert out[-2] == pytest.approx(rewards[-2] + 0.9 * values[-1] - values[-2] + 0.45 * out[-1], rel=1e-6)


def test_ppo_clip_loss_is_the_pessimistic_clipped_surrogate():
    ratio = torch.tensor([0.5, 1.0, 1.5, 1.5, 0.5])
    adv = torch.tensor([1.0, 2.0, 1.0, -1.0, -1.0])
    loss = ppo_clip_loss(ratio, adv, 0.2)
    assert loss.tolist() == pytest.approx([-0.5, -2.0, -1.2, 1.5, 0.8])
    assert torch.equal(loss, torch.max(-adv * ratio, -adv * ratio.clamp(0.8, 1.2)))


def test_log_probs_twins_kl_and_entropy_agree_with_masks():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(5, 4)).astype(np.float32)
    mask = np.ones((5, 4), bool)
    mask[:, 0] = False
    mask[2, 3] = False
    logp_t = masked_log_probs(torch.from_numpy(logits), torch.from_numpy(mask))
    logp_np, probs_np = masked_log_probs_np(logits, mask)  # (A, N)
    np.testing.assert_allclose(logp_np.T[mask], logp_t.numpy()[mask], rtol=1e-5)
    assert (probs_np.T[~mask] == 0).all() and np.isneginf(logp_t.numpy()[~mask]).all()
    base = masked_log_probs(torch.zeros(5, 4), torch.from_numpy(mask))
    kl_t = masked_kl_rows(logp_t, base, torch.from_numpy(mask))
    np.testing.assert_allclose(kl_t.numpy(), kl_rows(logp_t.exp().numpy(), base.exp().numpy()), rtol=1e-5)
    entropy = masked_entropy_rows(logp_t, torch.from_numpy(mask))
    p = probs_np.T
    np.testing.assert_allclose(entropy.numpy(), -(p * np.where(mask, logp_np.T, 0.0)).sum(-1), rtol=1e-5)
    # masked actions give no NaN gradient
    x = torch.from_numpy(logits).requires_grad_(True)
    lp = masked_log_probs(x, torch.from_numpy(mask))
    (
        masked_entropy_rows(lp, torch.from_numpy(mask)) + masked_kl_rows(lp, base, torch.from_numpy(mask))
    ).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_draws_follow_the_probabilities_and_their_generators():
    probs = np.array([0.0, 3.0, 1.0])  # unnormalised: proportional
    draws = [draw_categorical(np.random.default_rng(s), probs) for s in range(400)]
    assert 0 not in draws and 0.65 < draws.count(1) / 400 < 0.85
    assert draws == [draw_categorical(np.random.default_rng(s), probs) for s in range(400)]
    rows = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    assert draw_categorical_torch(rows, torch.Generator().manual_seed(0)).tolist() == [1, 0]
    assert draw_categorical_torch(torch.tensor([0.0, 0.0, 2.0]), None).item() == 2  # one row: a 0-d index
