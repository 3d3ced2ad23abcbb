"""PPO base training (npcadapt.training.base) on CartPole and tiny in-file envs."""

from __future__ import annotations

import json
import tomllib
from typing import ClassVar

import gymnasium as gym
import numpy as np
import pytest
import torch

from npcadapt.archetypes import init_archetype, load_archetype
from npcadapt.errors import ArchetypeError, InvalidInputError
from npcadapt.training import BaseTrainConfig, evaluate_policy, train_base

SHORT = dict(num_envs=4, num_steps=64, num_minibatches=4, update_epochs=2)  # 256 steps per update


def _pole(path, **kw):
    return init_archetype(path, "pole", [("state", 4)], ["left", "right"], hidden=(32, 32), **kw)


class MaskedEnv(gym.Env):
    """3 actions; action 0 pays +1 but the info's action_mask always forbids it."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    action_space = gym.spaces.Discrete(3)
    taken: ClassVar[list[int]] = []

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self.np_random.uniform(-1, 1, 2).astype(np.float32), {"action_mask": np.array([False, True, True])}

    def step(self, action):
        MaskedEnv.taken.append(int(action))
        self.t += 1
        obs = self.np_random.uniform(-1, 1, 2).astype(np.float32)
        return obs, float(action == 0), self.t >= 8, False, {"action_mask": np.array([False, True, True])}


def test_training_improves_cartpole_return(tmp_path):
    before = _pole(tmp_path / "pole")
    untrained = evaluate_policy(before.policy, "CartPole-v1", {}, episodes=20, seed=100, greedy=True)
    cfg = BaseTrainConfig("CartPole-v1", total_steps=25_000, num_envs=8, num_steps=128, seed=0)
    updates = []
    result = train_base(tmp_path / "pole", cfg, on_update=lambda i, m: updates.append((i, m)))
    trained = evaluate_policy(result.archetype.policy, "CartPole-v1", {}, episodes=20, seed=100, greedy=True)
    assert trained >= 3 * untrained, (untrained, trained)
    assert result.steps == 25 * 1024 and len(result.returns) == 25
    assert [i for i, _ in updates] == list(range(1, 26))
    assert {"charts/episodic_return", "losses/approx_kl", "losses/entropy"} <= set(updates[-1][1])
    first, last = np.nanmean(result.returns[:3]), np.nanmean(result.returns[-3:])
    assert last > 3 * first and result.final_return > 3 * first


def test_same_seed_gives_identical_weights_and_other_seed_differs(tmp_path):
    hashes, states = [], []
    for run, seed in enumerate((7, 7, 8)):
        _pole(tmp_path / f"run{run}")
        result = train_base(
            tmp_path / f"run{run}", BaseTrainConfig("CartPole-v1", total_steps=2_000, seed=seed, **SHORT)
        )
        hashes.append(result.archetype.base_hash)
        states.append(result.archetype.policy.state_dict())
        assert result.steps == 2_048
    assert hashes[0] == hashes[1] != hashes[2]
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert not all(torch.equal(states[0][k], states[2][k]) for k in states[0])


def test_space_mismatch_raises_and_leaves_archetype_untouched(tmp_path):
    wrong_obs = init_archetype(tmp_path / "a", "wide", [("state", 5)], ["left", "right"], hidden=(8,))
    with pytest.raises(ArchetypeError, match=r"\(5,\).*\(4,\)"):
        train_base(tmp_path / "a", BaseTrainConfig("CartPole-v1", total_steps=256, **SHORT))
    wrong_act = init_archetype(tmp_path / "b", "many", [("state", 4)], ["a", "b", "c"], hidden=(8,))
    with pytest.raises(ArchetypeError, match=r"Discrete\(3\).*Discrete\(2\)"):
        train_base(tmp_path / "b", BaseTrainConfig("CartPole-v1", total_steps=256, **SHORT))
    with pytest.raises(ArchetypeError, match="CartPole"):
        evaluate_policy(wrong_obs.policy, "CartPole-v1", {}, episodes=1, seed=0)
    for arch in (wrong_obs, wrong_act):
        again = load_archetype(arch.directory)
        assert again.base_hash == arch.base_hash and not again.spec.trained
        assert not (arch.directory / "train_result.json").exists()


def test_artefacts_written_beside_weights(tmp_path):
    before = _pole(tmp_path / "pole")
    cfg = BaseTrainConfig("CartPole-v1", total_steps=512, seed=3, **SHORT)
    result = train_base(tmp_path / "pole", cfg)
    after = load_archetype(tmp_path / "pole")
    assert after.spec.trained and not before.spec.trained
    assert after.base_hash == result.archetype.base_hash != before.base_hash
    assert tomllib.loads((tmp_path / "pole" / "archetype.toml").read_text())["trained"] is True
    saved_cfg = tomllib.loads((tmp_path / "pole" / "train_config.toml").read_text())
    assert BaseTrainConfig.from_dict(saved_cfg) == cfg
    info = json.loads((tmp_path / "pole" / "train_result.json").read_text())
    assert info["base_hash"] == after.base_hash and info["env_id"] == "CartPole-v1"
    assert info["seed"] == 3 and info["steps"] == 512 and len(info["returns"]) == 2
    assert info["torch"] == torch.__version__ and info["final_return"] == pytest.approx(result.final_return)
    assert not list((tmp_path / "pole").glob(".*tmp"))


def test_module_class_env_and_fresh_init(tmp_path):
    before = _pole(tmp_path / "pole")
    cfg = BaseTrainConfig(
        "gymnasium.envs.classic_control.cartpole:CartPoleEnv", total_steps=512, init_from_current=False, seed=5, **SHORT
    )
    result = train_base(tmp_path / "pole", cfg)
    assert result.steps == 512 and result.archetype.base_hash != before.base_hash
    assert np.isfinite(result.final_return) and result.final_return > 0
    with pytest.raises(ArchetypeError, match="NoSuchEnv"):
        train_base(tmp_path / "pole", BaseTrainConfig("gymnasium.envs.classic_control.cartpole:NoSuchEnv", **SHORT))


def test_action_mask_is_honoured(tmp_path):
    arch = init_archetype(tmp_path / "m", "masked", [("x", 2)], ["bad", "ok1", "ok2"], hidden=(8,))
    MaskedEnv.taken.clear()
    train_base(arch.directory, BaseTrainConfig(f"{__name__}:MaskedEnv", total_steps=512, **SHORT))
    assert len(MaskedEnv.taken) == 512 and 0 not in MaskedEnv.taken and {1, 2} <= set(MaskedEnv.taken)
    MaskedEnv.taken.clear()
    assert (
        evaluate_policy(load_archetype(arch.directory).policy, f"{__name__}:MaskedEnv", {}, episodes=5, seed=0) == 0.0
    )
    assert len(MaskedEnv.taken) == 40 and 0 not in MaskedEnv.taken


@pytest.mark.parametrize(
    "bad", [dict(num_minibatches=3), dict(gamma=1.5), dict(total_steps=0), dict(env_kwargs={"x": None})]
)
def test_bad_config_is_refused(bad):
    with pytest.raises(InvalidInputError, match=next(iter(bad))):
        BaseTrainConfig("CartPole-v1", **{**SHORT, **bad})
