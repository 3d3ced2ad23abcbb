"""The Thompson-sampling baselines of `npcadapt bench adapt`: exact posteriors, and they learn."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from npcadapt.archetypes import BUILTIN_DIR, find_archetypes
from npcadapt.bench.baselines import NeuralLinearHost, TableThompsonHost, ThompsonSettings
from npcadapt.errors import InvalidInputError
from npcadapt.numerics import gae
from npcadapt.simulation import run_simulation


@pytest.fixture(scope="module")
def archetypes():
    return find_archetypes([BUILTIN_DIR])


def test_reward_to_go_targets():  # gae without values and lambda 1: the baselines' regression targets
    assert gae([1.0, 0.0, 2.0], None, 0.0, 1.0).tolist() == [1.0, 0.0, 2.0]
    assert gae([1.0, 0.0, 2.0], None, 0.5, 1.0).tolist() == pytest.approx([1.5, 1.0, 2.0])


def test_settings_are_validated():
    with pytest.raises(InvalidInputError, match="Thompson settings"):
        ThompsonSettings(noise_std=0.0)
    with pytest.raises(InvalidInputError, match="Thompson settings"):
        ThompsonSettings(gamma=1.5)


def test_neural_linear_rank_one_updates_equal_the_closed_form_posterior(archetypes):
    policy = archetypes["duelist"].policy
    settings = ThompsonSettings(noise_std=0.7, weight_precision=2.0, prior_scale=0.3)
    host = NeuralLinearHost(policy, settings, seed=0)
    rng = np.random.default_rng(0)
    obs = rng.random((30, 8)).astype(np.float32)
    actions = rng.integers(0, 3, 30)
    targets = rng.normal(size=30)
    phi = host.features(obs)  # (30, D)
    host.observe("p", list(phi), list(actions), targets)
    for a in range(3):
        X, y = phi[actions == a], targets[actions == a]
        precision = settings.weight_precision * np.eye(host.dim) + X.T @ X / settings.noise_std**2
        mean = np.linalg.solve(
            precision, settings.weight_precision * host.prior_mean[a] + X.T @ y / settings.noise_std**2
        )
        row = host.index["p"]
        np.testing.assert_allclose(host.mean[row, a], mean, atol=1e-8)
        np.testing.assert_allclose(host.cov[row, a], np.linalg.inv(precision), atol=1e-8)
    # an untouched action keeps the prior; the prior ranks actions like the base policy
    prior_values = host.mean_values(["new"], obs[:1], phi[:1])[0]
    with torch.inference_mode():
        logits = policy.logits(torch.as_tensor(obs[:1]))[0].numpy()
    assert np.argsort(prior_values).tolist() == np.argsort(logits).tolist()


def test_table_posterior_is_the_conjugate_gaussian(archetypes):
    settings = ThompsonSettings(prior_std=0.5, noise_std=0.25, prior_scale=0.0)
    host = TableThompsonHost(archetypes["duelist"].policy, settings, seed=0)
    obs = np.zeros((1, 8), np.float32)
    s = host.features(obs)[0]
    host.observe("p", [s, s, s], [2, 2, 5], np.array([1.0, 0.5, -1.0]))
    mean, std = host.posterior("p", s)
    prec = 1 / 0.25 + 2 / 0.0625
    assert mean[2] == pytest.approx((1.5 / 0.0625) / prec) and std[2] == pytest.approx(prec**-0.5)
    assert mean[0] == 0.0 and std[0] == pytest.approx(0.5)
    # the progress feature does not make a new situation
    later = obs.copy()
    later[0, -1] = 0.5
    assert host.features(later)[0] == s


@pytest.mark.parametrize("host_class", [TableThompsonHost, NeuralLinearHost])
def test_each_baseline_reaches_near_oracle_on_an_easy_persona(archetypes, host_class):
    host = host_class(archetypes["duelist"].policy, seed=0)
    report = run_simulation(
        host, "npcadapt/Duel-v0", "duelist", players=0, episodes=40, seed=0, persona_counts={"brawler": 2}
    )
    assert report["personas"]["brawler"]["gain"] >= 0.9
    # and it explores: the realised returns early on differ from the base's greedy choice
    assert report["personas"]["brawler"]["gain_curve"][0] < report["personas"]["brawler"]["gain"]


def test_neural_linear_learns_on_continuous_observations(archetypes):
    host = NeuralLinearHost(archetypes["skirmisher"].policy, seed=0)
    report = run_simulation(
        host, "npcadapt/Skirmish-v0", "skirmisher", players=0, episodes=40, seed=0, persona_counts={"berserker": 2}
    )
    assert report["personas"]["berserker"]["gain"] >= 0.6


def test_base_probabilities_are_the_base_policy(archetypes):
    policy = archetypes["duelist"].policy
    host = NeuralLinearHost(policy, seed=0)
    obs = np.random.default_rng(1).random((4, 8)).astype(np.float32)
    with torch.inference_mode():
        expected = torch.softmax(policy.logits(torch.as_tensor(obs)), -1).numpy()
    np.testing.assert_allclose(host.action_probs("duelist", ["a"] * 4, obs, base=True), expected, atol=1e-6)
    greedy = host.action_probs("duelist", ["a"] * 4, obs)
    assert set(np.unique(greedy)) <= {0.0, 1.0} and (greedy.sum(1) == 1).all()


def test_full_finetune_evaluation_per_player_equals_the_row_wise_delta(archetypes):
    from npcadapt.bench.full_finetune import FullFinetuneHost
    from npcadapt.training.online import OnlineConfig

    policy = archetypes["skirmisher"].policy
    host = FullFinetuneHost(policy, "skirmisher", OnlineConfig())
    gen = torch.Generator().manual_seed(0)
    host.params = {p: 0.05 * torch.randn(host.family.size, generator=gen) for p in ("a", "b")}
    players = ["a", "b", "new", "a", "b", "a"]  # interleaved, and one player without a delta
    obs = np.random.default_rng(0).random((6, 8)).astype(np.float32)
    with torch.inference_mode():
        rows = torch.stack([host.params.get(p, torch.zeros(host.family.size)) for p in players])
        expected = torch.softmax(policy.logits(torch.as_tensor(obs), host.family.delta_fn(rows)), -1).numpy()
    np.testing.assert_allclose(host.action_probs("skirmisher", players, obs), expected, atol=1e-6)
    assert not np.allclose(expected[0], host.action_probs("skirmisher", ["new"], obs[:1])[0], atol=1e-3)
