"""Building blocks of the population prior: conjugate posteriors, evidence, mixture
weights, and a last-layer weight delta expressed exactly as a LoRA adapter row."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from npcadapt.bench.baselines import NeuralLinearHost, ThompsonSettings
from npcadapt.engine import Engine
from npcadapt.errors import InvalidInputError
from npcadapt.prior.bayes import Stats, cohort_weights, log_evidence, mixture_mean, posterior
from npcadapt.prior.head import weight_delta_row

A, H = 3, 4


def _data(seed: int, n: int = 40):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, H, generator=g, dtype=torch.float64)
    actions = torch.randint(0, A, (n,), generator=g)
    return h, actions, torch.randn(n, generator=g, dtype=torch.float64)


def test_posterior_from_statistics_equals_rank_one_updates():
    """The same numbers as the NeuralLinear baseline's sequential (Kalman) updates."""
    h, actions, y = _data(0)
    host = NeuralLinearHost.__new__(NeuralLinearHost)  # only its update rule is used
    host.settings = ThompsonSettings(noise_std=0.5, weight_precision=2.0)
    host.n_actions, host.dim, host.index = A, H, {}
    host.prior_mean = np.zeros((A, H))
    host.mean, host.cov = np.empty((0, A, H)), np.empty((0, A, H, H))
    host._observe("p", list(h.numpy()), list(actions.numpy()), y.numpy())
    mean, cov = posterior(torch.zeros(A, H, dtype=torch.float64), torch.eye(H, dtype=torch.float64).expand(A, H, H) / 2.0,
                          Stats.empty(A, H).add(h, actions, y), 0.25)
    np.testing.assert_allclose(mean.numpy(), host.mean[0], atol=1e-10)
    np.testing.assert_allclose(cov.numpy(), host.cov[0], atol=1e-10)


def test_log_evidence_is_the_gaussian_marginal_likelihood():
    h, actions, y = _data(1, n=12)
    g = torch.Generator().manual_seed(2)
    m0 = torch.randn(A, H, generator=g, dtype=torch.float64)
    root = torch.randn(A, H, H, generator=g, dtype=torch.float64)
    s0 = root @ root.transpose(-1, -2) + torch.eye(H, dtype=torch.float64)
    noise = 0.3
    expected = 0.0
    for a in range(A):  # y_a ~ N(H_a m0_a, noise I + H_a S0_a H_a^T), actions independent
        rows = actions == a
        ha = h[rows]
        dist = torch.distributions.MultivariateNormal(ha @ m0[a], noise * torch.eye(len(ha), dtype=torch.float64) + ha @ s0[a] @ ha.T)
        expected += float(dist.log_prob(y[rows]))
    assert float(log_evidence(m0, s0, Stats.empty(A, H).add(h, actions, y), noise)) == pytest.approx(expected, abs=1e-8)


def test_cohort_weights_find_the_cohort_that_generated_the_rewards():
    g = torch.Generator().manual_seed(3)
    cohorts = torch.randn(4, A, H, generator=g, dtype=torch.float64)  # (K, A, H) true weights
    cov = torch.eye(H, dtype=torch.float64).expand(4, A, H, H) * 0.01
    h = torch.randn(24, H, generator=g, dtype=torch.float64)
    actions = torch.randint(0, A, (24,), generator=g)
    y = (h * cohorts[2, actions]).sum(-1) + 0.1 * torch.randn(24, generator=g, dtype=torch.float64)
    stats = Stats.empty(A, H).add(h, actions, y)
    log_w = torch.log(torch.full((4,), 0.25, dtype=torch.float64))
    weights = cohort_weights(log_w, cohorts, cov, stats, 0.01)
    assert int(weights.argmax()) == 2 and float(weights[2]) > 0.99
    assert torch.allclose(mixture_mean(log_w, cohorts, cov, stats, 0.01), cohorts[2], atol=0.1)
    # with no data the weights are the prior's
    assert torch.allclose(cohort_weights(log_w, cohorts, cov, Stats.empty(A, H), 0.01), log_w.exp())


@pytest.mark.parametrize("rank_deficit", [False, True])
def test_a_last_layer_delta_is_served_exactly_as_a_lora_row(tmp_path, arch_root, rank_deficit):
    """logits(adapter) = base logits + delta h on the engine's real forward (tiny: 4 actions, rank 8)."""
    eng = Engine(tmp_path / "d", archetype_dirs=[arch_root])
    rt = eng.runtime("tiny")
    policy, layout = rt.archetype.policy, rt.layout
    last = f"actor.{len(policy.actor) - 1}"
    d_out, d_in = policy.actor[-1].out_features, policy.actor[-1].in_features
    g = torch.Generator().manual_seed(4)
    delta = torch.randn(d_out, d_in, generator=g)
    if rank_deficit:
        delta = torch.randn(d_out, 1, generator=g) @ torch.randn(1, d_in, generator=g)
    eng.set_adapter_row("tiny", "p", weight_delta_row(layout, last, delta))
    obs = torch.randn(5, 6, generator=g)
    with torch.inference_mode():
        expected = policy.logits(obs) + policy.actor_features(obs) @ delta.T
    probs = eng.action_probs("tiny", ["p"] * 5, obs.numpy())
    np.testing.assert_allclose(probs, torch.softmax(expected, -1).numpy(), atol=1e-5)
    with pytest.raises(InvalidInputError, match="shape"):
        weight_delta_row(layout, last, delta.T)
    with pytest.raises(InvalidInputError, match="no LoRA"):
        weight_delta_row(layout, "critic.0", delta)
    eng.close()
