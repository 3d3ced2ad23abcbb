"""Tests for Haggle-v0: API compliance, determinism, exact sequential oracles, gaps, assets."""

from __future__ import annotations

import os

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")

import tomllib
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import sim  # noqa: F401  (registers the envs)
from sim import haggle
from sim.errors import SimError

ROOT = Path(__file__).resolve().parents[1]
ENV_ID = "npcadapt/Haggle-v0"
ALL = haggle.PERSONAS + haggle.HELDOUT


@pytest.fixture(scope="module")
def env() -> haggle.HaggleEnv:
    """One shared env for the oracle tests (the population policy is cached on it)."""
    return gym.make(ENV_ID).unwrapped


def _uniform(env) -> np.ndarray:
    S, A = env.episode_length * env.n_states, env.action_space.n
    return np.full((S, A), 1.0 / A)


def _random_policies(env, count: int, seed: int) -> np.ndarray:
    """(count, S, A) random stochastic policies, some nearly deterministic."""
    rng = np.random.default_rng(seed)
    S, A = env.episode_length * env.n_states, env.action_space.n
    alphas = np.geomspace(0.05, 3, count)
    return np.stack([rng.dirichlet(np.full(A, alpha), size=S) for alpha in alphas])


def _rollout(env, seed: int, episodes: int, action_seed: int = 0) -> tuple[list, list]:
    """Observations and rewards of ``episodes`` episodes under a fixed action sequence."""
    actions = np.random.default_rng(action_seed)
    obs_seq, rewards = [], []
    obs, _ = env.reset(seed=seed)
    for _ in range(episodes):
        done = False
        while not done:
            obs_seq.append(obs)
            obs, reward, done, truncated, _ = env.step(int(actions.integers(env.action_space.n)))
            assert not truncated
            rewards.append(reward)
        obs_seq.append(obs)
        obs, _ = env.reset()
    return obs_seq, rewards


def _greedy_mask(env, persona: str) -> np.ndarray:
    """(S, A) the actions of highest immediate expected reward in each situation."""
    R = env.expected_rewards(persona)
    return R.max(1, keepdims=True) - 1e-12 <= R


# ---- gymnasium API ---------------------------------------------------------------------------
def test_check_env_passes() -> None:
    env = gym.make(ENV_ID)
    check_env(env.unwrapped)  # also builds "human" and "rgb_array" instances from the spec
    env.close()


def test_same_seed_and_actions_give_identical_episodes() -> None:
    a = _rollout(gym.make(ENV_ID), seed=7, episodes=6)
    b = _rollout(gym.make(ENV_ID), seed=7, episodes=6)
    c = _rollout(gym.make(ENV_ID), seed=8, episodes=6)
    assert len(a[0]) == len(b[0]) and all(np.array_equal(x, y) for x, y in zip(a[0], b[0]))
    assert a[1] == b[1]
    assert len(a[0]) != len(c[0]) or not all(np.array_equal(x, y) for x, y in zip(a[0], c[0]))


def test_episodes_end_by_the_length_limit_at_the_latest() -> None:
    env = gym.make(ENV_ID, episode_length=5).unwrapped
    lengths = []
    obs, _ = env.reset(seed=0)
    rng = np.random.default_rng(0)
    for _ in range(200):
        for t in range(5):  # noqa: B007 (t is read after the loop)
            obs, reward, terminated, truncated, info = env.step(int(rng.integers(8)))
            assert obs in env.observation_space and -0.5 <= reward <= 1.0 and not truncated
            if terminated:
                break
        assert terminated and "situation" not in info
        assert obs[-1] == 1.0 and obs[:-1].sum() == 0.0
        lengths.append(t + 1)
        with pytest.raises(SimError, match="after the episode ended"):
            env.step(0)
        obs, _ = env.reset()
    assert 1 in lengths and 5 in lengths  # early sales / walk-outs and haggles that run out
    # a firm price pleases no_nonsense but never sells: the haggle runs out with reward 0
    env.reset(seed=1, options={"persona": "no_nonsense"})
    steps = [env.step(haggle.ACTIONS.index("firm_price")) for _ in range(5)]
    assert [s[2] for s in steps] == [False] * 4 + [True] and all(s[1] == 0.0 for s in steps)
    assert steps[-1][4]["response"] in ("mood_up", "unmoved", "mood_down")


def test_invalid_configuration_and_actions_are_rejected() -> None:
    with pytest.raises(SimError, match="unknown persona 'nobody'"):
        gym.make(ENV_ID, persona="nobody")
    with pytest.raises(SimError, match="render_mode"):
        haggle.HaggleEnv(render_mode="ascii")
    with pytest.raises(SimError, match="episode_length"):
        haggle.HaggleEnv(episode_length=0)
    env = gym.make(ENV_ID).unwrapped
    with pytest.raises(SimError, match="unknown persona"):
        env.reset(options={"persona": "nobody"})
    env.reset(seed=0)
    with pytest.raises(SimError, match="not in Discrete"):
        env.step(8)


def test_reset_option_switches_persona_and_keeps_it() -> None:
    env = gym.make(ENV_ID).unwrapped
    _, info = env.reset(seed=0)
    assert info["persona"] == "average" and info["player"] in haggle.PERSONAS
    _, info = env.reset(options={"persona": "skeptic"})
    assert info["persona"] == info["player"] == "skeptic"
    _, info = env.reset()
    assert info["player"] == "skeptic"
    _, info = env.reset(options={"persona": "show_off"})  # held-out personas are playable
    assert info["player"] == "show_off"


def test_heldout_personas_never_act_under_average() -> None:
    env = gym.make(ENV_ID).unwrapped
    env.reset(seed=3)
    players = {env.reset()[1]["player"] for _ in range(400)}
    assert players == set(haggle.PERSONAS)
    assert not set(haggle.HELDOUT) & set(haggle.PERSONAS) and len(haggle.PERSONAS) >= 8


@pytest.mark.parametrize("episode_length", [6, 12])
def test_situations_cover_every_observation_met(episode_length: int) -> None:
    env = gym.make(ENV_ID, episode_length=episode_length).unwrapped
    situations = env.situations()
    weights = np.array([w for _, w in situations])
    assert len(situations) == episode_length * 10 and np.all(weights > 0)
    assert weights.sum() <= episode_length
    assert len({obs.tobytes() for obs, _ in situations}) == len(situations)
    assert all(obs in env.observation_space for obs, _ in situations)
    index = {obs.tobytes(): s for s, (obs, _) in enumerate(situations)}
    counts = np.zeros(len(situations))
    obs, info = env.reset(seed=1)
    rng, episodes = np.random.default_rng(1), 3000
    for _ in range(episodes):
        done = False
        while not done:
            assert index[obs.tobytes()] == info["situation"]
            counts[info["situation"]] += 1
            obs, _, done, _, info = env.step(int(rng.integers(8)))
        obs, info = env.reset()
    # the weights are the reach probabilities of a uniform-random trader against "average"
    assert np.all(np.abs(counts / episodes - weights) < 5 * np.sqrt(weights / episodes) + 1e-3)


# ---- exact oracles ---------------------------------------------------------------------------
@pytest.mark.parametrize("persona", [*ALL, "average", "noise"])
def test_oracle_and_worst_bound_every_policy(env, persona: str) -> None:
    oracle, worst = env.oracle_return(persona), env.worst_return(persona)
    assert oracle == pytest.approx(env.expected_return(persona, env.best_probs(persona)))
    returns = [env.expected_return(persona, p) for p in _random_policies(env, 12, seed=4)]
    assert worst - 1e-9 <= min(returns) and max(returns) <= oracle + 1e-9
    if persona != "noise":
        assert worst < min(returns) < max(returns) < oracle


@pytest.mark.parametrize("persona", ["flattery_lover", "penny_pincher", "skeptic", "show_off"])
def test_backward_induction_is_optimal_against_every_single_change(env, persona: str) -> None:
    """No one-situation deviation improves the DP policy (nor worsens the worst one)."""
    best, worst = env.best_probs(persona), env.best_probs(persona, worst=True)
    oracle, low = env.oracle_return(persona), env.worst_return(persona)
    rng = np.random.default_rng(5)
    for s in rng.choice(len(best), size=40, replace=False):
        for a in range(env.action_space.n):
            for policy, bound, sign in ((best, oracle, 1), (worst, low, -1)):
                changed = policy.copy()
                changed[s] = np.eye(env.action_space.n)[a]
                assert sign * env.expected_return(persona, changed) <= sign * bound + 1e-9


def test_expected_returns_are_consistent_and_validated(env) -> None:
    policy = _random_policies(env, 1, seed=6)[0]
    named = [env.expected_return(p, policy) for p in haggle.PERSONAS]
    assert env.expected_return("average", policy) == pytest.approx(np.mean(named))
    mix = np.mean([env.expected_rewards(p) for p in haggle.PERSONAS], axis=0)
    assert np.allclose(env.expected_rewards("average"), mix)
    assert env.oracle_return("average") == pytest.approx(env.expected_return("average", env.population_best_probs()))
    low, high = env.return_range()
    for p in haggle.PERSONAS:
        assert low <= env.worst_return(p) < env.oracle_return(p) <= high
    uniform = _uniform(env)
    with pytest.raises(SimError, match=r"shape \(120, 8\)"):
        env.expected_return("joker", uniform[:-1])
    with pytest.raises(SimError, match="probability distribution"):
        env.expected_return("joker", uniform * 2)
    with pytest.raises(SimError, match="unknown persona"):
        env.expected_return("nobody", uniform)


def _monte_carlo_return(env, persona: str, probs: np.ndarray, episodes: int, seed: int):
    """Mean and standard error of the realised return of a policy given on situations()."""
    cdf = np.cumsum(probs, axis=1)
    rng = np.random.default_rng(seed + 1)
    returns = np.empty(episodes)
    _, info = env.reset(seed=seed, options={"persona": persona})
    for e in range(episodes):
        total, done = 0.0, False
        while not done:
            row = cdf[info["situation"]]
            action = min(int(np.searchsorted(row, rng.random() * row[-1], side="right")), 7)
            _, reward, done, _, info = env.step(action)
            total += reward
        returns[e] = total
        _, info = env.reset()
    return returns.mean(), returns.std(ddof=1) / np.sqrt(episodes)


@pytest.mark.parametrize("persona", ["collector", "average"])
def test_monte_carlo_matches_expected_return(env, persona: str) -> None:
    noise = _random_policies(env, 1, seed=7)[0]
    even = (np.arange(len(noise)) // env.n_states % 2 == 0)[:, None]  # (S, 1) lines 0, 2, ...
    plan = np.where(even, env.best_probs("collector"), env.best_probs("pushover"))
    probs = 0.6 * plan + 0.4 * noise  # tilted and time-varying: wrong tables show up
    mc_env = gym.make(ENV_ID).unwrapped
    mean, stderr = _monte_carlo_return(mc_env, persona, probs, episodes=4000, seed=11)
    assert abs(mean - env.expected_return(persona, probs)) < 4.0 * stderr


# ---- the game's design: planning pays, and what to plan differs per persona -----------------
@pytest.mark.parametrize("persona", ALL)
def test_optimal_play_beats_the_best_greedy_play(env, persona: str) -> None:
    oracle, worst = env.oracle_return(persona), env.worst_return(persona)
    greedy_policy = env.best_probs(persona, allowed=_greedy_mask(env, persona))
    greedy = env.expected_return(persona, greedy_policy)
    assert oracle - greedy >= 0.15 * (oracle - worst), (oracle, greedy, worst)
    first = env.best_probs(persona).argmax(1)[2]  # line 0, weapon, neutral customer
    assert haggle.ACTIONS[first] not in ("discount_offer", "close_deal")  # warm up first


def test_personas_want_different_play(env) -> None:
    best = {p: tuple(env.best_probs(p).argmax(1)) for p in ALL}
    assert len(set(best.values())) == len(ALL)
    openers = {p: env.best_probs(p).argmax(1)[:10].reshape(2, 5)[:, 2] for p in haggle.PERSONAS}
    assert len({tuple(o) for o in openers.values()}) >= 6  # the first line to a neutral customer


def test_population_policy_leaves_a_gap_for_every_persona(env) -> None:
    gaps = env.persona_gaps(ALL)
    assert set(env.persona_gaps()) == set(haggle.PERSONAS)
    shares = [g["gap_share"] for g in gaps.values()]
    assert min(shares) >= 0.15 and np.mean(shares) >= 0.25, gaps
    for g in gaps.values():
        assert g["worst"] < g["random"] < g["population_best"] < g["oracle"]
    uniform = env.expected_return("average", _uniform(env))
    assert env.oracle_return("average") > uniform + 0.3


def test_switches_pair_personas_with_different_best_play(env) -> None:
    assert len(env.SWITCHES) >= 2
    for before, after in env.SWITCHES:
        assert {before, after} <= set(haggle.PERSONAS)
        kept = env.expected_return(after, env.best_probs(before))
        oracle, worst = env.oracle_return(after), env.worst_return(after)
        assert oracle - kept >= 0.4 * (oracle - worst), (before, after)


def test_noise_ignores_the_npc(env) -> None:
    returns = [env.expected_return("noise", p) for p in _random_policies(env, 8, seed=8)]
    returns.append(env.expected_return("noise", env.best_probs("flattery_lover")))
    assert np.ptp(returns) < 1e-12 and env.oracle_return("noise") == pytest.approx(returns[0])
    assert np.ptp(env.expected_rewards("noise"), axis=1).max() == 0.0
    noise = gym.make(ENV_ID, persona="noise").unwrapped
    runs = [_rollout(noise, seed=9, episodes=300, action_seed=k) for k in range(3)]
    for obs_seq, rewards in runs[1:]:  # other lines, same seed: the very same haggles
        assert rewards == runs[0][1]
        assert all(np.array_equal(x, y) for x, y in zip(obs_seq, runs[0][0], strict=True))
    rewards = np.array(runs[0][1])
    assert len(set(rewards.tolist())) >= 3  # sales, walk-outs and nothing: noisy, not constant


# ---- rendering and assets --------------------------------------------------------------------
def test_rgb_array_frame_depicts_the_state() -> None:
    env = gym.make(ENV_ID, render_mode="rgb_array")
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


def test_archetype_matches_env_and_base_loads(env) -> None:
    from npcadapt.archetypes import load_archetype

    directory = ROOT / "assets" / "archetypes" / "haggler"
    with open(directory / "archetype.toml", "rb") as f:
        spec = tomllib.load(f)
    assert spec["name"] == "haggler" and spec["env"] == ENV_ID and spec["trained"] is True
    assert tuple(spec["actions"]) == haggle.ACTIONS
    assert tuple((o["name"], o["size"]) for o in spec["observation"]) == haggle.OBSERVATION_FEATURES
    assert spec["lora"]["rank"] == 8 and spec["network"]["hidden"] == [64, 64]
    arch = load_archetype(directory)
    assert arch.spec.obs_dim == env.observation_space.shape[0]
    assert arch.spec.n_actions == env.action_space.n
    # the trained base plays the population well and leaves every persona room to adapt
    import torch

    obs = torch.as_tensor(np.stack([o for o, _ in env.situations()]))
    with torch.no_grad():
        probs = torch.softmax(arch.policy.logits(obs), -1).double().numpy()
    probs /= probs.sum(1, keepdims=True)
    base, pop = env.expected_return("average", probs), env.oracle_return("average")
    uniform = env.expected_return("average", _uniform(env))
    assert uniform + 0.7 * (pop - uniform) <= base <= pop + 0.02, (uniform, base, pop)
    for p in ALL:
        oracle, worst = env.oracle_return(p), env.worst_return(p)
        assert oracle - env.expected_return(p, probs) >= 0.1 * (oracle - worst), p
