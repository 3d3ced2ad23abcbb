"""Tests for the persona sim envs: API compliance, determinism, exact oracles, gaps, assets."""

from __future__ import annotations

import importlib
import tomllib
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import sim
from sim import companion, duel, merchant
from sim.errors import SimError

ROOT = Path(__file__).resolve().parents[1]
ENVS = {
    "npcadapt/Duel-v0": (duel, "duelist"),
    "npcadapt/Companion-v0": (companion, "companion"),
    "npcadapt/Merchant-v0": (merchant, "merchant"),
}
IDS = list(ENVS)


def _rollout(env: gym.Env, seed: int, episodes: int, action_seed: int = 0) -> tuple[list, list]:
    """Observations and rewards of ``episodes`` episodes under a fixed action sequence."""
    actions = np.random.default_rng(action_seed)
    obs_seq, rewards = [], []
    obs, _ = env.reset(seed=seed)
    for _ in range(episodes):
        terminated = False
        while not terminated:
            obs_seq.append(obs)
            obs, reward, terminated, truncated, _ = env.step(int(actions.integers(env.action_space.n)))
            assert not truncated
            rewards.append(reward)
        obs_seq.append(obs)
        obs, _ = env.reset()
    return obs_seq, rewards


@pytest.mark.parametrize("env_id", IDS)
def test_check_env_passes_for_registered_env(env_id: str) -> None:
    env = gym.make(env_id)
    check_env(env.unwrapped)  # also builds "human" and "rgb_array" instances from the spec
    env.close()


def test_registration_survives_reimport() -> None:
    importlib.reload(sim)
    assert all(env_id in gym.registry for env_id in IDS)


@pytest.mark.parametrize("env_id", IDS)
def test_same_seed_and_actions_give_identical_episodes(env_id: str) -> None:
    a = _rollout(gym.make(env_id, persona="average"), seed=7, episodes=4)
    b = _rollout(gym.make(env_id, persona="average"), seed=7, episodes=4)
    c = _rollout(gym.make(env_id, persona="average"), seed=8, episodes=4)
    assert all(np.array_equal(x, y) for x, y in zip(a[0], b[0], strict=True))
    assert a[1] == b[1]
    assert not all(np.array_equal(x, y) for x, y in zip(a[0], c[0], strict=True))


@pytest.mark.parametrize("env_id", IDS)
def test_observations_do_not_depend_on_persona(env_id: str) -> None:
    module, _ = ENVS[env_id]
    runs = {
        p: _rollout(gym.make(env_id, persona=p), seed=3, episodes=4)
        for p in (module.PERSONAS[0], module.PERSONAS[-1], "average", "noise")
    }
    first = next(iter(runs.values()))
    for obs_seq, _ in runs.values():
        assert all(np.array_equal(x, y) for x, y in zip(first[0], obs_seq, strict=True))
    assert len({tuple(rewards) for _, rewards in runs.values()}) > 1  # personas still matter


@pytest.mark.parametrize("env_id", IDS)
def test_episode_ends_after_episode_length(env_id: str) -> None:
    env = gym.make(env_id, episode_length=9).unwrapped
    obs, info = env.reset(seed=0)
    assert "persona" in info and obs in env.observation_space
    for t in range(9):
        obs, reward, terminated, truncated, _ = env.step(0)
        assert obs in env.observation_space and -1.0 <= reward <= 1.0
        assert terminated == (t == 8) and not truncated
    assert obs[-1] == 1.0 and obs[:-1].sum() == 0.0
    with pytest.raises(SimError, match="after the episode ended"):
        env.step(0)


@pytest.mark.parametrize("env_id", IDS)
def test_persona_catalogue_and_distinct_best_responses(env_id: str) -> None:
    module, _ = ENVS[env_id]
    assert len(module.PERSONAS) >= 8
    env = gym.make(env_id).unwrapped
    best = {p: tuple(env.expected_rewards(p).argmax(1)) for p in module.PERSONAS}
    assert len(set(best.values())) == len(module.PERSONAS)  # every persona wants something else
    for p in module.PERSONAS:  # outcome values are rewards in [-1, 1]
        assert np.abs(env.model.outcome_values[p]).max() <= 1.0
        assert np.allclose(env.model.outcome_probs[p].sum(-1), 1.0)


@pytest.mark.parametrize("env_id", IDS)
def test_unknown_persona_is_rejected(env_id: str) -> None:
    with pytest.raises(SimError, match="unknown persona 'nobody'"):
        gym.make(env_id, persona="nobody")
    env = gym.make(env_id).unwrapped
    with pytest.raises(SimError, match="unknown persona"):
        env.reset(options={"persona": "nobody"})


@pytest.mark.parametrize("env_id", IDS)
def test_reset_option_switches_persona_and_keeps_it(env_id: str) -> None:
    module, _ = ENVS[env_id]
    env = gym.make(env_id).unwrapped
    _, info = env.reset(seed=0)
    assert info["persona"] == "average" and info["player"] in module.PERSONAS
    _, info = env.reset(options={"persona": module.PERSONAS[2]})
    assert info["persona"] == info["player"] == module.PERSONAS[2]
    _, info = env.reset()
    assert info["player"] == module.PERSONAS[2]


@pytest.mark.parametrize("env_id", IDS)
@pytest.mark.parametrize("episode_length", [8, 12])
def test_situations_cover_observations_with_weights_summing_to_length(env_id: str, episode_length: int) -> None:
    env = gym.make(env_id, episode_length=episode_length).unwrapped
    situations = env.situations()
    weights = np.array([w for _, w in situations])
    assert len(situations) == env.n_contexts * episode_length
    assert weights.sum() == pytest.approx(episode_length)
    assert len({obs.tobytes() for obs, _ in situations}) == len(situations)
    assert all(obs in env.observation_space for obs, _ in situations)
    index = {obs.tobytes(): s for s, (obs, _) in enumerate(situations)}
    obs, info = env.reset(seed=1)
    for step in range(20 * episode_length):
        assert index[obs.tobytes()] == info["situation"]
        obs, _, terminated, _, info = env.step(step % env.action_space.n)
        if terminated:
            assert "situation" not in info
            obs, info = env.reset()


@pytest.mark.parametrize("env_id", IDS)
def test_situation_frequencies_match_weights(env_id: str) -> None:
    env = gym.make(env_id, persona="noise").unwrapped
    weights = np.array([w for _, w in env.situations()])
    counts = np.zeros_like(weights)
    episodes = 1500
    _, info = env.reset(seed=2)
    for _ in range(episodes):
        for _ in range(env.episode_length):
            counts[info["situation"]] += 1
            _, _, _, _, info = env.step(0)
        _, info = env.reset()
    per_context = (counts / episodes).reshape(env.episode_length, -1).mean(0)  # (C,)
    expected = env.model.context_probs
    assert np.all(np.abs(per_context - expected) < 4 * np.sqrt(expected / (episodes * env.episode_length)))


@pytest.mark.parametrize("env_id", IDS)
def test_exact_returns_are_consistent(env_id: str) -> None:
    module, _ = ENVS[env_id]
    env = gym.make(env_id).unwrapped
    S, A = env.n_contexts * env.episode_length, env.action_space.n
    mix = np.mean([env.expected_rewards(p) for p in module.PERSONAS], axis=0)
    assert np.allclose(env.expected_rewards("average"), mix)
    pop = env.population_best_probs()
    assert env.oracle_return("average") == pytest.approx(env.expected_return("average", pop))
    noise = env.expected_rewards("noise")
    assert np.ptp(noise) == 0.0 and noise.shape == (S, A)
    uniform = np.full((S, A), 1.0 / A)
    assert env.oracle_return("noise") == pytest.approx(env.expected_return("noise", uniform))
    assert env.noise_mean * env.episode_length == pytest.approx(env.expected_return("average", uniform))
    low, high = env.return_range()
    for p in module.PERSONAS:
        assert low <= env.expected_return(p, uniform) < env.oracle_return(p) <= high
    with pytest.raises(SimError, match=r"shape \(\d+, 8\)"):
        env.expected_return(module.PERSONAS[0], uniform[:-1])
    with pytest.raises(SimError, match="probability distribution"):
        env.expected_return(module.PERSONAS[0], uniform * 2)


@pytest.mark.parametrize("env_id", IDS)
def test_population_policy_leaves_a_gap_for_every_persona(env_id: str) -> None:
    module, _ = ENVS[env_id]
    gaps = gym.make(env_id).unwrapped.persona_gaps()
    assert set(gaps) == set(module.PERSONAS)
    shares = [g["gap_share"] for g in gaps.values()]
    assert min(shares) >= 0.25, gaps
    assert np.mean(shares) >= 0.4, gaps
    for g in gaps.values():
        assert g["worst"] < g["random"] < g["oracle"] and g["population_best"] < g["oracle"]


def _monte_carlo_return(env, persona: str, probs: np.ndarray, episodes: int, seed: int):
    """Mean and standard error of the episode return of a policy given on situations()."""
    index = {obs.tobytes(): s for s, (obs, _) in enumerate(env.situations())}
    cdf = np.cumsum(probs, axis=1)
    uniforms = np.random.default_rng(seed + 1).random((episodes, env.episode_length))
    returns = np.empty(episodes)
    obs, _ = env.reset(seed=seed, options={"persona": persona})
    for e in range(episodes):
        total = 0.0
        for t in range(env.episode_length):
            row = cdf[index[obs.tobytes()]]
            action = min(int(np.searchsorted(row, uniforms[e, t] * row[-1], side="right")), len(row) - 1)
            obs, reward, _, _, _ = env.step(action)
            total += reward
        returns[e] = total
        obs, _ = env.reset()
    return returns.mean(), returns.std(ddof=1) / np.sqrt(episodes)


@pytest.mark.parametrize("env_id", IDS)
def test_monte_carlo_matches_expected_return(env_id: str) -> None:
    module, _ = ENVS[env_id]
    env = gym.make(env_id).unwrapped
    S, A = env.n_contexts * env.episode_length, env.action_space.n
    noise = np.random.default_rng(11).dirichlet(np.full(A, 0.7), size=S)
    for k, persona in enumerate((module.PERSONAS[1], "average")):
        best = np.eye(A)[env.expected_rewards(module.PERSONAS[1]).argmax(1)]
        probs = 0.6 * best + 0.4 * noise  # tilted to one persona: wrong tables show up
        mean, stderr = _monte_carlo_return(env, persona, probs, episodes=2000, seed=100 + k)
        assert abs(mean - env.expected_return(persona, probs)) < 4.0 * stderr, persona


def test_noise_rewards_ignore_the_npc() -> None:
    env = gym.make("npcadapt/Companion-v0", persona="noise").unwrapped
    S, A = env.n_contexts * env.episode_length, env.action_space.n
    for action in (0, A - 1):
        probs = np.eye(A)[np.full(S, action)]
        mean, stderr = _monte_carlo_return(env, "noise", probs, episodes=600, seed=5)
        assert abs(mean - env.oracle_return("noise")) < 4.0 * stderr
        assert stderr > 0.05  # rewards are noisy, not constant


@pytest.mark.parametrize("env_id", IDS)
def test_rgb_array_frame_depicts_the_state(env_id: str) -> None:
    env = gym.make(env_id, render_mode="rgb_array")
    frames = []
    for seed in range(6):
        env.reset(seed=seed)
        env.step(seed % env.action_space.n)
        frame = env.render()
        assert frame.shape == (320, 480, 3) and frame.dtype == np.uint8
        assert len(np.unique(frame.reshape(-1, 3), axis=0)) > 2
        frames.append(frame.tobytes())
    assert len(set(frames)) > 1
    env.close()


def test_human_render_opens_a_window() -> None:
    import pygame

    env = gym.make("npcadapt/Merchant-v0", render_mode="human")
    env.reset(seed=0)
    env.step(0)
    assert pygame.display.get_surface() is not None
    env.close()


@pytest.mark.parametrize("env_id", IDS)
def test_archetype_toml_matches_env(env_id: str) -> None:
    module, name = ENVS[env_id]
    with open(ROOT / "assets" / "archetypes" / name / "archetype.toml", "rb") as f:
        spec = tomllib.load(f)
    assert spec["name"] == name and spec["env"] == env_id and spec["trained"] is True
    assert tuple(spec["actions"]) == module.ACTIONS
    assert tuple((o["name"], o["size"]) for o in spec["observation"]) == module.OBSERVATION_FEATURES
    env = gym.make(env_id)
    assert env.observation_space.shape == (sum(o["size"] for o in spec["observation"]),)
    assert env.action_space.n == len(spec["actions"])
    assert spec["lora"]["rank"] == 8 and spec["network"]["hidden"] == [64, 64]
