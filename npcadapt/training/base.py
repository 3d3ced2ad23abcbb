"""Base-policy training: PPO (clipped surrogate, GAE) for one archetype on a gymnasium env.

Reads top to bottom like CleanRL's ``ppo.py``, but as a library function: build the
vectorised env, collect a rollout, compute advantages, run the clipped update, repeat;
then write the new base weights beside the config and a result summary.

Vector envs use gymnasium's ``SAME_STEP`` autoreset: when an episode ends, the step
returns the next episode's first observation and the final one in ``info["final_obs"]``,
so every stored transition is real (none has to be masked out). Truncated episodes
(time limits) are bootstrapped with the value of their final observation.

An env may put a boolean ``info["action_mask"]`` of shape (n_actions,) in its reset and
step infos; masked actions get logit -inf when sampling and in the loss.

Over 450 lines: one PPO training loop read top to bottom (CleanRL-style) plus its evaluation, as one unit."""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import gymnasium as gym
import numpy as np
import tomli_w
import torch
from gymnasium.vector import AutoresetMode, SyncVectorEnv
from gymnasium.wrappers.vector import RecordEpisodeStatistics
from torch import nn
from tqdm.auto import tqdm

from ..archetypes import Archetype, fresh_policy, load_archetype, save_base
from ..config import ArchetypeSpec
from ..envs import make as make_gym_env
from ..errors import ArchetypeError, InvalidInputError
from ..fileio import write_atomic
from ..numerics import draw_categorical_torch, gae_torch, masked_logits, ppo_clip_loss
from ..policy import ActorCritic

log = logging.getLogger(__name__)

CONFIG_NAME = "train_config.toml"
RESULT_NAME = "train_result.json"


@dataclass(frozen=True)
class BaseTrainConfig:
    """PPO settings for training an archetype's base policy (saved as train_config.toml)."""

    env_id: str  # gymnasium id ("npcadapt/Duel-v0") or "module:Class" (the class is constructed)
    env_kwargs: dict = field(default_factory=dict)  # passed to gymnasium.make / the class ({"persona": ...})
    total_steps: int = 200_000  # env steps to collect, summed over envs (rounded up to whole rollouts)
    num_envs: int = 16  # parallel copies of the env (gymnasium SyncVectorEnv)
    num_steps: int = 128  # rollout length per env and update
    learning_rate: float = 2.5e-3  # Adam learning rate
    anneal_lr: bool = True  # decay the learning rate linearly to 0 over the run
    gamma: float = 0.99  # discount factor
    gae_lambda: float = 0.95  # lambda of generalised advantage estimation
    update_epochs: int = 4  # passes over each rollout
    num_minibatches: int = 4  # minibatches per pass; must divide num_envs * num_steps
    clip_coef: float = 0.2  # PPO surrogate clipping
    ent_coef: float = 0.01  # entropy bonus coefficient
    vf_coef: float = 0.5  # value loss coefficient
    max_grad_norm: float = 0.5  # global gradient-norm clip
    seed: int = 0  # seeds weights (when not init_from_current), sampling, minibatches; env i gets seed + i
    init_from_current: bool = True  # start from the archetype's current weights (else a fresh init under seed)

    def __post_init__(self) -> None:
        def need(cond: bool, name: str, what: str) -> None:
            if not cond:
                raise InvalidInputError(f"BaseTrainConfig.{name}: {what}, got {getattr(self, name)!r}")

        need(isinstance(self.env_id, str) and bool(self.env_id), "env_id", "needs a gymnasium id or 'module:Class'")
        need(
            isinstance(self.env_kwargs, dict) and all(isinstance(k, str) for k in self.env_kwargs),
            "env_kwargs",
            "must be a dict with str keys",
        )
        for name in ("total_steps", "num_envs", "num_steps", "update_epochs", "num_minibatches"):
            need(isinstance(getattr(self, name), int) and getattr(self, name) > 0, name, "must be a positive int")
        need(
            (self.num_envs * self.num_steps) % self.num_minibatches == 0,
            "num_minibatches",
            f"must divide num_envs * num_steps = {self.num_envs * self.num_steps}",
        )
        for name in ("learning_rate", "clip_coef", "max_grad_norm"):
            need(math.isfinite(getattr(self, name)) and getattr(self, name) > 0, name, "must be a positive number")
        for name in ("gamma", "gae_lambda"):
            need(0.0 <= getattr(self, name) <= 1.0, name, "must be in [0, 1]")
        for name in ("ent_coef", "vf_coef"):
            need(math.isfinite(getattr(self, name)) and getattr(self, name) >= 0, name, "must be a number >= 0")
        need(isinstance(self.seed, int) and self.seed >= 0, "seed", "must be an int >= 0")
        try:  # fail now, not after the run, if the config cannot be saved
            tomli_w.dumps(self.to_dict())
        except (TypeError, ValueError) as exc:
            raise InvalidInputError(
                f"BaseTrainConfig.env_kwargs: not storable as TOML ({exc}), got {self.env_kwargs!r}"
            ) from None

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "env_kwargs": dict(self.env_kwargs)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BaseTrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidInputError(f"BaseTrainConfig: unknown fields {unknown}; known are {sorted(known)}")
        return cls(**data)


@dataclass(frozen=True)
class BaseTrainResult:
    """What a training run produced."""

    archetype: Archetype  # the reloaded archetype with the new weights (spec.trained is True)
    final_return: float  # mean episodic return over the last 10% of finished episodes (nan if none finished)
    returns: list[float]  # per update: mean return of the episodes that finished in it (nan if none did)
    steps: int
    seconds: float


# -- envs -----------------------------------------------------------------------------


def make_env(env_id: str, env_kwargs: dict | None = None) -> gym.Env:
    """One env from a gymnasium id (:func:`npcadapt.envs.make`) or "module:Class"."""
    env_kwargs = dict(env_kwargs or {})
    if ":" in env_id:
        module_name, _, class_name = env_id.partition(":")
        try:
            env_cls = getattr(importlib.import_module(module_name), class_name)
        except (ImportError, AttributeError) as exc:
            raise ArchetypeError(
                f"env '{env_id}': cannot import class {class_name!r} from {module_name!r}: {exc}"
            ) from None
        try:
            return env_cls(**env_kwargs)
        except TypeError as exc:
            raise InvalidInputError(f"env '{env_id}' rejected env_kwargs {env_kwargs}: {exc}") from None
        except ValueError as exc:  # a value the env cannot take (a sim env: an unknown persona, ...)
            if isinstance(exc, InvalidInputError):
                raise
            raise InvalidInputError(str(exc)) from exc
    try:
        return make_gym_env(env_id, **env_kwargs)
    except gym.error.Error as exc:
        raise ArchetypeError(f"env '{env_id}': {exc}") from None
    except TypeError as exc:
        raise InvalidInputError(f"env '{env_id}' rejected env_kwargs {env_kwargs}: {exc}") from None


def _check_spaces(
    who: str, obs_dim: int, n_actions: int, env_id: str, obs_space: gym.Space, act_space: gym.Space
) -> None:
    """`who` (an archetype, a policy) needs Box((obs_dim,)) observations and Discrete(n_actions) actions."""
    want_obs, want_act = f"Box(shape=({obs_dim},))", f"Discrete({n_actions})"
    ok_obs = isinstance(obs_space, gym.spaces.Box) and obs_space.shape == (obs_dim,)
    ok_act = isinstance(act_space, gym.spaces.Discrete) and int(act_space.n) == n_actions
    if not (ok_obs and ok_act):
        raise ArchetypeError(
            f"{who} expects observation {want_obs} and actions {want_act}, "
            f"but env '{env_id}' has observation {obs_space} and actions {act_space}"
        )


def _action_mask(info: dict, n_envs: int, n_actions: int) -> torch.Tensor | None:
    """(n_envs, n_actions) bool from a vector info's "action_mask" (rows without one allow all)."""
    if "action_mask" not in info:
        return None
    mask = torch.as_tensor(np.asarray(info["action_mask"]).astype(bool)).reshape(n_envs, n_actions)
    present = torch.as_tensor(np.asarray(info.get("_action_mask", np.ones(n_envs, bool)), dtype=bool))
    mask[~present] = True
    empty = (~mask.any(dim=1)).nonzero().flatten().tolist()
    if empty:
        raise InvalidInputError(f"env copies {empty} sent an action_mask that allows no action")
    return mask


def _dist(logits: torch.Tensor, mask: torch.Tensor | None) -> torch.distributions.Categorical:
    return torch.distributions.Categorical(logits=masked_logits(logits, mask))


@contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    """Run with `n` intra-op threads (None: unchanged), restoring torch's setting after."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if n is not None:
            torch.set_num_threads(before)


def _obs(x: Any) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x), dtype=torch.float32)


def evaluate_policy(
    policy: ActorCritic,
    env_id: str,
    env_kwargs: dict | None = None,
    episodes: int = 10,
    seed: int = 0,
    greedy: bool = False,
    *,
    max_episode_steps: int | None = None,
) -> float:
    """Mean undiscounted return of `policy` over `episodes` episodes (episode i reset with seed + i).

    Sampling uses its own generator seeded with `seed`; `max_episode_steps` caps episodes
    of envs that have no time limit of their own.
    """
    env = make_env(env_id, env_kwargs)
    if max_episode_steps is not None:
        env = gym.wrappers.TimeLimit(env, max_episode_steps)
    first, last = cast(nn.Linear, policy.actor[0]), cast(nn.Linear, policy.actor[-1])  # a ModuleList of Linears
    n_actions = last.out_features
    try:
        _check_spaces("policy", first.in_features, n_actions, env_id, env.observation_space, env.action_space)
    except ArchetypeError:
        env.close()
        raise
    gen = torch.Generator().manual_seed(seed)
    total = 0.0
    try:
        with torch.no_grad():
            for episode in range(episodes):
                obs, info = env.reset(seed=seed + episode)
                done = False
                while not done:
                    mask = (
                        _action_mask({"action_mask": [info["action_mask"]]}, 1, n_actions)
                        if "action_mask" in info
                        else None
                    )
                    dist = _dist(policy.logits(_obs(obs)[None]), mask)
                    action = dist.probs.argmax(-1) if greedy else draw_categorical_torch(dist.probs, gen)
                    obs, reward, terminated, truncated, info = env.step(int(action))
                    total += float(reward)
                    done = terminated or truncated
    finally:
        env.close()
    return total / episodes


# -- PPO --------------------------------------------------------------------------------


@dataclass
class _Rollout:
    """One rollout's buffers, (T, N, ...) with T = num_steps and N = num_envs."""

    obs: torch.Tensor  # (T, N, obs_dim)
    masks: torch.Tensor  # (T, N, A) bool
    actions: torch.Tensor  # (T, N)
    logprobs: torch.Tensor  # (T, N)
    values: torch.Tensor  # (T, N)
    rewards: torch.Tensor  # (T, N), truncations already bootstrapped
    ends: torch.Tensor  # (T, N) 1.0 where the episode ended at this step

    @classmethod
    def empty(cls, T: int, N: int, obs_dim: int, A: int) -> _Rollout:
        return cls(
            torch.zeros(T, N, obs_dim),
            torch.ones(T, N, A, dtype=torch.bool),
            torch.zeros(T, N, dtype=torch.long),
            torch.zeros(T, N),
            torch.zeros(T, N),
            torch.zeros(T, N),
            torch.zeros(T, N),
        )


def _ppo_update(
    policy: ActorCritic,
    optimizer: torch.optim.Optimizer,
    ro: _Rollout,
    advantages: torch.Tensor,
    returns: torch.Tensor,
    cfg: BaseTrainConfig,
    gen: torch.Generator,
) -> dict[str, float]:
    """Clipped-surrogate epochs over one rollout; returns the `losses/*` metrics."""
    b_obs = ro.obs.flatten(0, 1)  # (B, obs_dim)
    b_masks, b_actions, b_logprobs = ro.masks.flatten(0, 1), ro.actions.flatten(0, 1), ro.logprobs.flatten(0, 1)
    b_adv, b_returns, b_values = advantages.flatten(), returns.flatten(), ro.values.flatten()  # (B,)
    batch = b_obs.shape[0]
    minibatch = batch // cfg.num_minibatches
    clipfracs, approx_kl = [], torch.tensor(0.0)
    for _ in range(cfg.update_epochs):
        order = torch.randperm(batch, generator=gen)
        for start in range(0, batch, minibatch):
            idx = order[start : start + minibatch]
            logits, value = policy(b_obs[idx])
            dist = _dist(logits, b_masks[idx])
            log_ratio = dist.log_prob(b_actions[idx]) - b_logprobs[idx]
            ratio = log_ratio.exp()
            with torch.no_grad():
                approx_kl = ((ratio - 1) - log_ratio).mean()
                clipfracs.append(((ratio - 1.0).abs() > cfg.clip_coef).float().mean().item())
            adv = b_adv[idx]
            adv = (adv - adv.mean()) / (adv.std() + 1e-8) if len(idx) > 1 else adv
            pg_loss = ppo_clip_loss(ratio, adv, cfg.clip_coef).mean()
            v_loss = 0.5 * ((value - b_returns[idx]) ** 2).mean()
            entropy = dist.entropy().mean()
            loss = pg_loss - cfg.ent_coef * entropy + cfg.vf_coef * v_loss
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
            optimizer.step()
    var_y = b_returns.var()
    explained = float("nan") if var_y == 0 else float(1 - (b_returns - b_values).var() / var_y)
    return {
        "losses/value_loss": v_loss.item(),
        "losses/policy_loss": pg_loss.item(),
        "losses/entropy": entropy.item(),
        "losses/approx_kl": approx_kl.item(),
        "losses/clipfrac": float(np.mean(clipfracs)),
        "losses/explained_variance": explained,
    }


def train_base(
    archetype_dir: str | Path,
    config: BaseTrainConfig,
    *,
    progress: bool = False,
    on_update: Callable[[int, dict], None] | None = None,
    threads: int | None = 1,
) -> BaseTrainResult:
    """Train the archetype in `archetype_dir` with PPO on `config.env_id` and save its new base.

    Nothing is written until training finishes; then the weights and archetype.toml
    (trained = true), train_config.toml and train_result.json, each replaced atomically.
    `on_update(update, metrics)` is called after every update (1-based) with
    `charts/*` and `losses/*` metrics. `threads` sets torch's intra-op threads for the
    run (restored after; None leaves them): these small networks gain nothing from more,
    and on a busy machine two spinning threads made a run up to 4x slower.
    """
    with _torch_threads(threads):
        return _train(Path(archetype_dir), config, progress, on_update)


def _train(
    directory: Path, cfg: BaseTrainConfig, progress: bool, on_update: Callable[[int, dict], None] | None
) -> BaseTrainResult:
    started = time.perf_counter()
    current = load_archetype(directory)
    spec = current.spec
    policy = _initial_policy(current, cfg)
    gen = torch.Generator().manual_seed(cfg.seed)
    optimizer = torch.optim.Adam(policy.parameters(), lr=cfg.learning_rate, eps=1e-5)
    batch = cfg.num_envs * cfg.num_steps
    num_updates = math.ceil(cfg.total_steps / batch)
    ro = _Rollout.empty(cfg.num_steps, cfg.num_envs, spec.obs_dim, spec.n_actions)
    episode_returns: list[float] = []
    returns_per_update: list[float] = []

    envs = RecordEpisodeStatistics(
        SyncVectorEnv(
            [lambda: make_env(cfg.env_id, cfg.env_kwargs) for _ in range(cfg.num_envs)],
            autoreset_mode=AutoresetMode.SAME_STEP,
        )
    )
    try:
        _check_spaces(
            f"archetype '{spec.name}'",
            spec.obs_dim,
            spec.n_actions,
            cfg.env_id,
            envs.single_observation_space,
            envs.single_action_space,
        )
        obs_np, info = envs.reset(seed=cfg.seed)
        state = _obs(obs_np), _action_mask(info, cfg.num_envs, spec.n_actions)
        with tqdm(total=num_updates * batch, unit="step", disable=not progress, desc=f"train {spec.name}") as bar:
            for update in range(1, num_updates + 1):
                lr = cfg.learning_rate * (1.0 - (update - 1) / num_updates if cfg.anneal_lr else 1.0)
                optimizer.param_groups[0]["lr"] = lr
                update_started = time.perf_counter()

                state, finished = _collect(policy, envs, ro, state, cfg.gamma, gen)
                with torch.no_grad():
                    last_value = policy(state[0])[1]  # (N,)
                advantages = gae_torch(ro.rewards, ro.values, ro.ends, last_value, cfg.gamma, cfg.gae_lambda)  # (T, N)
                returns = advantages + ro.values
                metrics = _ppo_update(policy, optimizer, ro, advantages, returns, cfg, gen)

                episode_returns.extend(finished)
                mean_return = float(np.mean(finished)) if finished else float("nan")
                returns_per_update.append(mean_return)
                metrics.update(
                    {
                        "charts/episodic_return": mean_return,
                        "charts/episodes": len(finished),
                        "charts/learning_rate": lr,
                        "charts/SPS": batch / max(time.perf_counter() - update_started, 1e-9),
                        "global_step": update * batch,
                    }
                )
                log.debug("update %d/%d: %s", update, num_updates, metrics)
                bar.update(batch)
                bar.set_postfix(ret=f"{mean_return:.2f}", kl=f"{metrics['losses/approx_kl']:.4f}")
                if on_update is not None:
                    on_update(update, metrics)
    finally:
        envs.close()

    tail = episode_returns[-max(1, math.ceil(0.1 * len(episode_returns))) :]
    final_return = float(np.mean(tail)) if tail else float("nan")
    steps, seconds = num_updates * batch, time.perf_counter() - started
    archetype = _save(directory, spec, policy, cfg, final_return, returns_per_update, steps, seconds)
    log.info(
        "trained '%s' on %s: %d steps in %.1f s, final return %.3f, base %s",
        spec.name,
        cfg.env_id,
        steps,
        seconds,
        final_return,
        archetype.base_hash,
    )
    return BaseTrainResult(archetype, final_return, returns_per_update, steps, seconds)


def _collect(
    policy: ActorCritic,
    envs: gym.vector.VectorEnv,
    ro: _Rollout,
    state: tuple[torch.Tensor, torch.Tensor | None],
    gamma: float,
    gen: torch.Generator,
) -> tuple[tuple[torch.Tensor, torch.Tensor | None], list[float]]:
    """Fill `ro` with one rollout from (next obs, next mask); return the new state and finished returns."""
    next_obs, next_mask = state  # (N, obs_dim), (N, A) or None
    n_envs, n_actions = ro.masks.shape[1:]
    finished: list[float] = []
    for t in range(ro.obs.shape[0]):
        ro.obs[t] = next_obs
        ro.masks[t] = True if next_mask is None else next_mask
        with torch.no_grad():
            logits, value = policy(next_obs)  # (N, A), (N,)
            dist = _dist(logits, next_mask)
            action = draw_categorical_torch(dist.probs, gen)  # (N,)
            ro.logprobs[t], ro.actions[t], ro.values[t] = dist.log_prob(action), action, value
        obs_np, reward, terminated, truncated, info = envs.step(action.numpy())
        reward = torch.as_tensor(reward, dtype=torch.float32)
        cut = np.flatnonzero(truncated & ~terminated)
        if len(cut):  # a time limit, not a real end: bootstrap from the final observation
            final = _obs(np.stack([info["final_obs"][i] for i in cut]))
            with torch.no_grad():
                reward[cut] += gamma * policy(final)[1]
        ro.rewards[t] = reward
        ro.ends[t] = torch.as_tensor(terminated | truncated, dtype=torch.float32)
        next_obs, next_mask = _obs(obs_np), _action_mask(info, n_envs, n_actions)
        if "episode" in info:
            finished.extend(float(r) for r in info["episode"]["r"][info["_episode"]])
    return (next_obs, next_mask), finished


def _initial_policy(current: Archetype, cfg: BaseTrainConfig) -> ActorCritic:
    """A trainable copy of the archetype's current weights, or a fresh init under cfg.seed."""
    if not cfg.init_from_current:
        return fresh_policy(current.spec, cfg.seed).train()
    policy = ActorCritic.from_spec(current.spec)
    policy.load_state_dict(current.policy.state_dict())
    return policy.train().requires_grad_(True)


def _save(
    directory: Path,
    spec: ArchetypeSpec,
    policy: ActorCritic,
    cfg: BaseTrainConfig,
    final_return: float,
    returns: list[float],
    steps: int,
    seconds: float,
) -> Archetype:
    """Weights + archetype.toml, then train_config.toml and train_result.json beside them."""
    archetype = save_base(directory, dataclasses.replace(spec, trained=True), policy.eval())
    finite = lambda x: x if math.isfinite(x) else None
    result = {
        "archetype": spec.name,
        "base_hash": archetype.base_hash,
        "env_id": cfg.env_id,
        "seed": cfg.seed,
        "steps": steps,
        "seconds": round(seconds, 3),
        "final_return": finite(final_return),
        "returns": [finite(r) for r in returns],
        "torch": torch.__version__,
        "gymnasium": gym.__version__,
    }
    write_atomic(directory / CONFIG_NAME, tomli_w.dumps(cfg.to_dict()))
    write_atomic(directory / RESULT_NAME, json.dumps(result, indent=1) + "\n")
    return archetype
