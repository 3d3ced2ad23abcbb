"""Tests for Skirmish-v0: continuous contexts, smooth personas, fixed-sample oracles, archetype."""

from __future__ import annotations

import os

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")

import itertools
import tomllib
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import sim  # noqa: F401  (registers the envs)
from npcadapt.archetypes import load_archetype
from npcadapt.simulation import Evaluator
from sim import skirmish
from sim.errors import SimError

ENV_ID = "npcadapt/Skirmish-v0"
ROOT = Path(__file__).resolve().parents[1]
ARCHETYPE_DIR = ROOT / "assets" / "archetypes" / "skirmisher"
NAMED = skirmish.PERSONAS + skirmish.HELDOUT


@pytest.fixture(scope="module")
def env() -> skirmish.SkirmishEnv:
    return gym.make(ENV_ID).unwrapped


@pytest.fixture(scope="module")
def big_sample() -> np.ndarray:
    """(N, D) observations drawn from the true context distribution (round 0)."""
    u = np.random.default_rng(99).random((60_000, skirmish.CONTEXT_UNIFORMS))
    return skirmish.with_progress(skirmish.contexts_from_uniforms(u), 0.0)


def _rollout(env: gym.Env, seed: int, episodes: int) -> tuple[list, list]:
    """Observations and rewards of ``episodes`` episodes under a fixed action sequence."""
    actions = np.random.default_rng(0)
    obs_seq, rewards = [], []
    obs, _ = env.reset(seed=seed)
    for _ in range(episodes):
        terminated = False
        while not terminated:
            obs_seq.append(obs)
            obs, reward, terminated, truncated, _ = env.step(int(actions.integers(8)))
            assert not truncated
            rewards.append(reward)
        obs_seq.append(obs)
        obs, _ = env.reset()
    return obs_seq, rewards


_POLICY_RNG = np.random.default_rng(5)
_POLICY_W = _POLICY_RNG.normal(0, 2.0, (skirmish.OBS_DIM, 8))  # (D, A)
_POLICY_B = _POLICY_RNG.normal(0, 0.5, 8)  # (A,)


def _policy(obs: np.ndarray) -> np.ndarray:
    """(N, A) a fixed smooth stochastic policy of the observation (progress included)."""
    logits = np.atleast_2d(obs).astype(np.float64) @ _POLICY_W + _POLICY_B
    p = np.exp(logits - logits.max(1, keepdims=True))
    return p / p.sum(1, keepdims=True)


def _true_expected_return(persona: str, sample: np.ndarray, T: int) -> tuple[float, float]:
    """Expected return of :func:`_policy` over the true context distribution, with its
    standard error, estimated on ``sample`` (progress set per round)."""
    names = skirmish.PERSONAS if persona == "average" else (persona,)
    per_round = []
    for t in range(T):
        obs = sample.copy()
        obs[:, -1] = t / T
        rewards = np.mean([skirmish.rewards_at(p, obs) for p in names], axis=0)  # (N, A)
        per_round.append((_policy(obs) * rewards).sum(1))  # (N,)
    values = np.stack(per_round)  # (T, N)
    stderr = np.sqrt((values.var(1, ddof=1) / values.shape[1]).sum())
    return float(values.mean(1).sum()), float(stderr)


def _monte_carlo(env, persona: str, policy, episodes: int, seed: int) -> tuple[float, float]:
    """Mean and standard error of the realised return of ``policy(obs) -> (1, A)`` probs."""
    draws = np.random.default_rng(seed + 1).random((episodes, env.episode_length))
    returns = np.empty(episodes)
    obs, _ = env.reset(seed=seed, options={"persona": persona})
    for e in range(episodes):
        total = 0.0
        for t in range(env.episode_length):
            cdf = np.cumsum(policy(obs)[0])
            action = min(int(np.searchsorted(cdf, draws[e, t] * cdf[-1], side="right")), 7)
            obs, reward, _, _, _ = env.step(action)
            total += reward
        returns[e] = total
        obs, _ = env.reset()
    return returns.mean(), returns.std(ddof=1) / np.sqrt(episodes)


# ---- gymnasium API ------------------------------------------------------------------------
def test_check_env_passes() -> None:
    env = gym.make(ENV_ID)
    check_env(env.unwrapped)  # also builds "human" and "rgb_array" instances from the spec
    env.close()


def test_same_seed_and_actions_give_identical_episodes() -> None:
    a = _rollout(gym.make(ENV_ID), seed=7, episodes=4)
    b = _rollout(gym.make(ENV_ID), seed=7, episodes=4)
    c = _rollout(gym.make(ENV_ID), seed=8, episodes=4)
    assert all(np.array_equal(x, y) for x, y in zip(a[0], b[0], strict=True))
    assert a[1] == b[1]
    assert not all(np.array_equal(x, y) for x, y in zip(a[0], c[0], strict=True))


def test_observations_do_not_depend_on_persona() -> None:
    runs = {
        p: _rollout(gym.make(ENV_ID, persona=p), seed=3, episodes=4) for p in (NAMED[0], NAMED[-1], "average", "noise")
    }
    first = next(iter(runs.values()))
    for obs_seq, _ in runs.values():
        assert all(np.array_equal(x, y) for x, y in zip(first[0], obs_seq, strict=True))
    assert len({tuple(rewards) for _, rewards in runs.values()}) > 1  # personas still matter


def test_episode_ends_after_episode_length() -> None:
    env = gym.make(ENV_ID, episode_length=9).unwrapped
    obs, info = env.reset(seed=0)
    assert info["persona"] == "average" and "response" not in info
    for t in range(9):
        assert obs in env.observation_space and obs[-1] == pytest.approx(t / 9)
        obs, reward, terminated, truncated, info = env.step(t % 8)
        assert -1.0 <= reward <= 1.0 and info["response"] in skirmish.PLAYER_MOVES
        assert terminated == (t == 8) and not truncated
    assert obs[-1] == 1.0 and not obs[:-1].any() and obs in env.observation_space
    with pytest.raises(SimError, match="after the episode ended"):
        env.step(0)
    env.reset()
    for bad in (8, -1, "shoot"):
        with pytest.raises(SimError, match="not in Discrete"):
            env.step(bad)


def test_bad_constructor_arguments_are_rejected() -> None:
    with pytest.raises(SimError, match="unknown persona 'nobody'"):
        gym.make(ENV_ID, persona="nobody")
    with pytest.raises(SimError, match="unknown persona"):
        gym.make(ENV_ID).unwrapped.reset(options={"persona": "nobody"})
    with pytest.raises(SimError, match="render_mode"):
        skirmish.SkirmishEnv(render_mode="ascii")
    for length in (0, 2.5):
        with pytest.raises(SimError, match="episode_length"):
            skirmish.SkirmishEnv(episode_length=length)


def test_reset_option_switches_persona_and_keeps_it() -> None:
    env = gym.make(ENV_ID).unwrapped
    _, info = env.reset(seed=0)
    assert info["persona"] == "average" and info["player"] in skirmish.PERSONAS
    _, info = env.reset(options={"persona": "gunslinger"})
    assert info["persona"] == info["player"] == "gunslinger"
    _, info = env.reset()
    assert info["player"] == "gunslinger"


def test_held_out_personas_never_act_for_average() -> None:
    env = gym.make(ENV_ID).unwrapped
    env.reset(seed=0)
    players = {env.reset()[1]["player"] for _ in range(600)}
    assert players == set(skirmish.PERSONAS)  # all of the population, no held-out persona
    assert not set(env.HELDOUT_PERSONAS) & set(env.PERSONAS) and len(env.HELDOUT_PERSONAS) >= 2
    assert env.DISCRETE_CONTEXT is False


# ---- fixed evaluation sample and exact oracles ---------------------------------------------
@pytest.mark.parametrize("episode_length", [8, 12])
def test_situations_are_a_fixed_sample_with_weights_summing_to_length(episode_length: int) -> None:
    env = gym.make(ENV_ID, episode_length=episode_length).unwrapped
    situations = env.situations()
    obs = np.stack([o for o, _ in situations])  # (S, D)
    weights = np.array([w for _, w in situations])
    assert obs.shape == (env.n_contexts * episode_length, skirmish.OBS_DIM)
    assert weights.sum() == pytest.approx(episode_length)
    assert all(o in env.observation_space for o in obs)
    progress = np.repeat(np.arange(episode_length) / episode_length, env.n_contexts)
    assert np.allclose(obs[:, -1], progress)
    env.reset(seed=123)  # env seeds never touch the evaluation sample
    other = gym.make(ENV_ID, episode_length=episode_length).unwrapped
    for again in (env.situations(), other.situations()):
        assert np.array_equal(obs, np.stack([o for o, _ in again]))
    assert len(np.unique(obs[:, :-1], axis=0)) == len(obs)  # every situation is a new context
    assert Evaluator(gym.make(ENV_ID, episode_length=episode_length)).obs.shape == obs.shape


def test_exact_returns_are_consistent(env) -> None:
    S, A = len(env.situations()), 8
    rng = np.random.default_rng(3)
    mix = np.mean([env.expected_rewards(p) for p in skirmish.PERSONAS], axis=0)
    assert np.allclose(env.expected_rewards("average"), mix)
    for persona in (*NAMED, "average"):
        rewards = env.expected_rewards(persona)
        best, worst = np.eye(A)[rewards.argmax(1)], np.eye(A)[rewards.argmin(1)]
        assert env.expected_return(persona, best) == pytest.approx(env.oracle_return(persona))
        assert env.expected_return(persona, worst) == pytest.approx(env.worst_return(persona))
        for probs in rng.dirichlet(np.full(A, 0.5), size=(3, S)):
            assert env.worst_return(persona) <= env.expected_return(persona, probs)
            assert env.expected_return(persona, probs) <= env.oracle_return(persona)
    assert env.oracle_return("average") == pytest.approx(env.expected_return("average", env.population_best_probs()))
    uniform = np.full((S, A), 1.0 / A)
    noise = env.expected_rewards("noise")
    assert np.ptp(noise) == 0.0 and noise.shape == (S, A)
    assert env.noise_mean * env.episode_length == pytest.approx(env.expected_return("average", uniform))
    low, high = env.return_range()
    for p in skirmish.PERSONAS:
        assert low <= env.expected_return(p, uniform) < env.oracle_return(p) <= high
    with pytest.raises(SimError, match=rf"shape \({S}, 8\)"):
        env.expected_return(NAMED[0], uniform[:-1])
    with pytest.raises(SimError, match="probability distribution"):
        env.expected_return(NAMED[0], uniform * 2)


@pytest.mark.parametrize("persona", ["marksman", "average"])
def test_monte_carlo_matches_expected_return(big_sample, persona: str) -> None:
    env = gym.make(ENV_ID).unwrapped
    mean, stderr = _monte_carlo(env, persona, _policy, episodes=2500, seed=100)
    truth, truth_err = _true_expected_return(persona, big_sample[:20_000], env.episode_length)
    assert abs(mean - truth) < 4.0 * np.hypot(stderr, truth_err), (mean, truth)
    # the fixed-sample oracle estimates the same expectation from T * M contexts
    obs = np.stack([o for o, _ in env.situations()])
    fixed = env.expected_return(persona, _policy(obs))
    per_context = (_policy(obs) * env.expected_rewards(persona)).sum(1)  # (S,)
    per_context = per_context.reshape(env.episode_length, -1)  # (T, M)
    fixed_err = np.sqrt((per_context.var(1, ddof=1) / per_context.shape[1]).sum())
    assert abs(fixed - truth) < 4.0 * np.hypot(fixed_err, truth_err), (fixed, truth)


def test_noise_rewards_ignore_the_npc() -> None:
    env = gym.make(ENV_ID, persona="noise").unwrapped
    for action in (0, 7):

        def policy(obs: np.ndarray, a: int = action) -> np.ndarray:
            return np.eye(8)[[a]]

        mean, stderr = _monte_carlo(env, "noise", policy, episodes=800, seed=5)
        assert abs(mean - env.oracle_return("noise")) < 4.0 * stderr
        assert stderr > 0.05  # rewards are noisy, not constant


# ---- personas ------------------------------------------------------------------------------
def test_payoff_has_a_distinct_best_counter_per_move() -> None:
    assert skirmish.PAYOFF.shape == (8, len(skirmish.PLAYER_MOVES))
    assert np.abs(skirmish.PAYOFF).max() <= 1.0
    assert len(set(skirmish.PAYOFF.argmax(0))) == len(skirmish.PLAYER_MOVES)
    assert (skirmish.PAYOFF.min(1) < 0).all()  # every action can be punished


def test_population_policy_leaves_a_gap_for_every_persona(env) -> None:
    gaps = env.persona_gaps()
    assert set(gaps) == set(NAMED)
    assert min(g["gap_share"] for g in gaps.values()) >= 0.15, gaps
    for g in gaps.values():
        assert g["worst"] < g["random"] < g["oracle"] and g["population_best"] < g["oracle"]


def test_best_responses_vary_and_no_coarse_table_is_exact(env, big_sample) -> None:
    bins = 3  # a 3-level table of every feature: 3^7 cells
    codes = np.zeros(len(big_sample), np.int64)
    for j in range(skirmish.OBS_DIM - 1):
        low = skirmish.OBS_LOW[j]
        level = ((big_sample[:, j] - low) / (1.0 - low) * bins).astype(np.int64)
        codes = codes * bins + np.minimum(level, bins - 1)
    for persona in NAMED:
        assert len(set(env.expected_rewards(persona).argmax(1))) >= 3, persona
        best = skirmish.rewards_at(persona, big_sample).argmax(1)
        table = np.zeros((bins ** (skirmish.OBS_DIM - 1), 8))
        np.add.at(table, (codes, best), 1)
        accuracy = table.max(1).sum() / len(best)  # the best table's share of right actions
        assert accuracy < 0.95, (persona, accuracy)


def test_personas_are_distinct_and_switches_differ_strongly(env) -> None:
    best = {p: env.expected_rewards(p).argmax(1) for p in NAMED}
    for p, q in itertools.combinations(NAMED, 2):
        assert (best[p] == best[q]).mean() < 0.5, (p, q)
    assert len(env.SWITCHES) >= 2
    for before, after in env.SWITCHES:
        assert before in env.PERSONAS and after in env.PERSONAS
        assert (best[before] != best[after]).mean() > 0.75


def test_move_probs_are_smooth_distributions(big_sample) -> None:
    for persona in NAMED:
        probs = skirmish.move_probs(persona, big_sample[:2000])
        assert np.allclose(probs.sum(1), 1.0) and (probs > 0).all()
        nudged = big_sample[:2000].copy()
        nudged[:, [0, 3, 4, 5, 6]] += 1e-3  # a small move in context, a small move in habit
        assert np.abs(skirmish.move_probs(persona, nudged) - probs).max() < 0.05


# ---- rendering and the archetype -----------------------------------------------------------
def test_rgb_array_frame_depicts_the_state() -> None:
    env = gym.make(ENV_ID, render_mode="rgb_array")
    frames = []
    for seed in range(4):
        env.reset(seed=seed)
        first = env.render()
        env.step(seed % 8)
        frame = env.render()
        assert frame.shape == (320, 480, 3) and frame.dtype == np.uint8
        assert len(np.unique(frame.reshape(-1, 3), axis=0)) > 2
        assert not np.array_equal(first, frame)
        frames.append(frame.tobytes())
    assert len(set(frames)) == len(frames)
    env.close()


def test_archetype_matches_env_and_base_is_sensible(env) -> None:
    with open(ARCHETYPE_DIR / "archetype.toml", "rb") as f:
        spec = tomllib.load(f)
    assert spec["name"] == "skirmisher" and spec["env"] == ENV_ID and spec["trained"] is True
    assert tuple(spec["actions"]) == skirmish.ACTIONS
    features = tuple((o["name"], o["size"]) for o in spec["observation"])
    assert features == skirmish.OBSERVATION_FEATURES and features[-1] == ("round_progress", 1)
    assert env.observation_space.shape == (sum(size for _, size in features),)
    assert spec["lora"]["rank"] == 8 and spec["network"]["hidden"] == [64, 64]
    arch = load_archetype(ARCHETYPE_DIR)
    obs = torch.as_tensor(np.stack([o for o, _ in env.situations()]))
    with torch.no_grad():
        probs = torch.softmax(arch.policy.logits(obs), -1).double().numpy()  # (S, A)
    uniform = np.full(probs.shape, 1.0 / probs.shape[1])
    base = env.expected_return("average", probs)
    assert base > env.expected_return("average", uniform) + 1.0
    for persona in NAMED:  # adaptation still has room for every persona
        oracle, worst = env.oracle_return(persona), env.worst_return(persona)
        assert (oracle - env.expected_return(persona, probs)) / (oracle - worst) >= 0.15
