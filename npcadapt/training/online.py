"""Online per-player adapter updates: batched PPO-clip with a KL-to-base guardrail.

Many players' completed episodes are trained together: their adapters are rows of one
(K, P) parameter tensor, every step of every episode gathers its own player's row, and
each player's loss is a mean over their own steps. Because rows are disjoint and Adam is
elementwise, one player's data never moves another player's adapter.

Guardrails:
- a player whose loss or gradient is not finite is skipped (their adapter unchanged);
- after the update, an adapter whose mean KL(adapted || base) over that player's
  observations exceeds ``kl_bound`` is pulled back by scaling its B matrices (which
  scales the whole low-rank delta) with a bisection that only accepts feasible scales.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Callable, Protocol, Sequence

import numpy as np
import torch

from ..episodes import Episode
from ..policy import ActorCritic, LayerDelta, masked_log_probs

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OnlineConfig:
    """Settings of the online adapter trainer."""

    episodes_per_update: int = 4  # completed episodes of one player that trigger an update
    epochs: int = 4  # gradient steps over those episodes
    learning_rate: float = 1e-2  # Adam step size on adapter parameters
    clip_coef: float = 0.2  # PPO ratio clip
    ent_coef: float = 0.0  # entropy bonus
    kl_coef: float = 0.0  # soft KL-to-base penalty inside the loss
    kl_bound: float = 5.0  # hard bound on mean KL(adapted || base), nats; <= 0 disables
    gamma: float = 0.9  # discount (NPC decisions pay off within a few steps)
    gae_lambda: float = 0.5  # GAE lambda (low: the base critic does not know this player)
    max_grad_norm: float = 1.0  # per-player gradient clip
    normalize_advantages: bool = True  # per player and update
    persistent_optimizer: bool = True  # keep each player's Adam moments across updates
    lr_decay_episodes: float = 0.0  # > 0: lr / (1 + episodes seen / this) ** lr_decay_power
    lr_decay_power: float = 0.5
    adam_betas: tuple[float, float] = (0.9, 0.999)
    evidence_beta: float = 0.0  # > 0: gate each player's step by how consistent their gradients are across updates
    evidence_full: float = 0.3  # signal share of gradient energy at which a player takes the full step
    evidence_power: float = 1.0  # step scale = min(1, signal share / evidence_full) ** this

    def __post_init__(self) -> None:
        if self.episodes_per_update < 1 or self.epochs < 1:
            raise ValueError("episodes_per_update and epochs must be >= 1")
        if not (self.learning_rate > 0 and self.clip_coef > 0 and 0 <= self.gamma <= 1 and 0 <= self.gae_lambda <= 1):
            raise ValueError(f"invalid online training settings: {self}")

    def to_dict(self) -> dict:
        return asdict(self)


class ParamFamily(Protocol):
    """What the trainer needs from a per-player parameterisation (LoRA layout or dense)."""

    size: int

    def delta_fn(self, rows: torch.Tensor) -> LayerDelta: ...

    def scalable_mask(self) -> torch.Tensor: ...


@dataclass(frozen=True)
class OptimizerState:
    """One player's Adam moments and evidence count, carried from update to update."""

    exp_avg: torch.Tensor  # (P,)
    exp_avg_sq: torch.Tensor  # (P,)
    steps: int  # Adam steps taken
    episodes: int  # episodes trained on
    direction: torch.Tensor | None = None  # (P,) decayed sum of unit update gradients (evidence gate)
    weight: float = 0.0  # decayed sum of weights of those gradients
    weight_sq: float = 0.0  # decayed sum of squared weights

    @classmethod
    def fresh(cls, size: int) -> "OptimizerState":
        return cls(torch.zeros(size), torch.zeros(size), 0, 0, torch.zeros(size), 0.0, 0.0)


@dataclass(frozen=True)
class PlayerUpdate:
    """Input for one player: their current parameters and completed episodes."""

    player: str
    params: torch.Tensor  # (P,) fp32
    episodes: Sequence[Episode]
    state: OptimizerState | None = None


@dataclass(frozen=True)
class UpdateOutcome:
    """Result for one player. `params` is None when the update was skipped."""

    player: str
    params: torch.Tensor | None
    kl_to_base: float
    kl_scaled: float  # 1.0 when the bound did not bite; else the scale applied to B
    steps: int
    mean_return: float
    skipped: str | None = None
    state: OptimizerState | None = None


def gae(rewards: np.ndarray, values: np.ndarray, gamma: float, lam: float) -> np.ndarray:
    """Advantages of one finished episode (value after the last step is 0)."""
    adv = np.zeros_like(rewards, dtype=np.float32)
    last = 0.0
    for t in range(len(rewards) - 1, -1, -1):
        next_value = values[t + 1] if t + 1 < len(rewards) else 0.0
        delta = rewards[t] + gamma * next_value - values[t]
        last = delta + gamma * lam * last
        adv[t] = last
    return adv


class OnlineTrainer:
    """Batched per-player updates on a frozen base policy."""

    def __init__(self, policy: ActorCritic, family: ParamFamily, config: OnlineConfig = OnlineConfig()):
        self.policy = policy
        self.family = family
        self.config = config
        self._scalable = family.scalable_mask()

    def _flatten(self, items: Sequence[PlayerUpdate], n_actions: int, device: torch.device):
        obs, masks, actions, old_logp, adv, owner = [], [], [], [], [], []
        cfg = self.config
        for k, item in enumerate(items):
            player_adv = []
            for ep in item.episodes:
                player_adv.append(gae(np.asarray(ep.reward, np.float32), np.asarray(ep.value, np.float32), cfg.gamma, cfg.gae_lambda))
                obs.extend(ep.obs)
                masks.extend(np.ones(n_actions, bool) if m is None else m for m in ep.mask)
                actions.extend(ep.action)
                old_logp.extend(ep.logp)
                owner.extend([k] * len(ep))
            a = np.concatenate(player_adv) if player_adv else np.zeros(0, np.float32)
            if cfg.normalize_advantages and a.size > 1:
                a = (a - a.mean()) / (a.std() + 1e-8)
            adv.append(a)
        as_t = lambda x, dt: torch.as_tensor(np.asarray(x), dtype=dt, device=device)
        return (
            as_t(np.stack(obs), torch.float32),  # (T, D)
            as_t(np.stack(masks), torch.bool),  # (T, A)
            as_t(actions, torch.int64),  # (T,)
            as_t(old_logp, torch.float32),  # (T,)
            as_t(np.concatenate(adv), torch.float32),  # (T,)
            as_t(owner, torch.int64),  # (T,)
        )

    def _log_probs(self, obs, masks, rows: torch.Tensor | None) -> torch.Tensor:
        """Masked log-probabilities (T, A); rows (T, P) or None for the base."""
        logits = self.policy.logits(obs, None if rows is None else self.family.delta_fn(rows))
        return masked_log_probs(logits, masks)

    @staticmethod
    def _kl_rows(logp: torch.Tensor, base_logp: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """KL(p || base) per row (T,), masked actions contribute 0."""
        terms = torch.where(masks, logp.exp() * (logp - base_logp), torch.zeros_like(logp))
        return terms.sum(-1)

    def _per_player_mean(self, values: torch.Tensor, owner: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        return torch.zeros(len(counts), dtype=values.dtype, device=values.device).index_add(0, owner, values) / counts

    def update(self, items: Sequence[PlayerUpdate]) -> list[UpdateOutcome]:
        """One PPO update for every player in `items`, computed together."""
        items = [it for it in items if sum(len(ep) for ep in it.episodes) > 0]
        if not items:
            return []
        cfg = self.config
        device = next(self.policy.parameters()).device
        n_actions = self.policy.actor[-1].out_features
        obs, masks, actions, old_logp, adv, owner = self._flatten(items, n_actions, device)
        counts = torch.bincount(owner, minlength=len(items)).to(torch.float32)  # (K,)
        start = torch.stack([it.params.to(device, torch.float32) for it in items])  # (K, P)
        params = start.clone().requires_grad_(True)
        size = start.shape[1]
        states = [self._start_state(it.state, size) for it in items]
        exp_avg = torch.stack([st.exp_avg for st in states]).to(device)  # (K, P)
        exp_avg_sq = torch.stack([st.exp_avg_sq for st in states]).to(device)  # (K, P)
        steps = torch.tensor([st.steps for st in states], dtype=torch.float32, device=device)  # (K,)
        seen = torch.tensor([st.episodes for st in states], dtype=torch.float32, device=device)  # (K,)
        lr = torch.full_like(steps, cfg.learning_rate)
        if cfg.lr_decay_episodes > 0:
            lr = lr / (1 + seen / cfg.lr_decay_episodes) ** cfg.lr_decay_power
        healthy = torch.ones(len(items), dtype=torch.bool, device=device)
        with torch.no_grad():
            base_logp = self._log_probs(obs, masks, None)  # (T, A)
        gate = torch.ones_like(steps)
        evidence = None
        for epoch in range(cfg.epochs):
            logp_all = self._log_probs(obs, masks, params.index_select(0, owner))
            logp = logp_all.gather(1, actions.unsqueeze(1)).squeeze(1)  # (T,)
            ratio = torch.exp(logp - old_logp)
            pg = -torch.min(ratio * adv, ratio.clamp(1 - cfg.clip_coef, 1 + cfg.clip_coef) * adv)
            row_loss = pg
            if cfg.ent_coef:
                entropy = -torch.where(masks, logp_all.exp() * logp_all, torch.zeros_like(logp_all)).sum(-1)
                row_loss = row_loss - cfg.ent_coef * entropy
            if cfg.kl_coef:
                row_loss = row_loss + cfg.kl_coef * self._kl_rows(logp_all, base_logp, masks)
            per_player = self._per_player_mean(row_loss, owner, counts)  # (K,)
            healthy &= torch.isfinite(per_player)
            params.grad = None
            per_player.where(healthy, torch.zeros_like(per_player)).sum().backward()
            grad = params.grad
            healthy &= torch.isfinite(grad).all(dim=1)
            grad.masked_fill_(~healthy.unsqueeze(1), 0.0)
            norms = grad.norm(dim=1, keepdim=True)
            if epoch == 0 and cfg.evidence_beta > 0:
                evidence = self._evidence(states, grad / (norms + 1e-12), healthy)
                gate = (evidence[3] / cfg.evidence_full).clamp(max=1.0) ** cfg.evidence_power
            grad.mul_(torch.clamp(cfg.max_grad_norm / (norms + 1e-12), max=1.0))
            with torch.no_grad():
                exp_avg, exp_avg_sq, steps = self._adam_step(params, grad, exp_avg, exp_avg_sq, steps, lr * gate, healthy)
        with torch.no_grad():
            new = params.detach().where(healthy.unsqueeze(1), start)
            healthy &= torch.isfinite(new).all(dim=1)
            new = new.where(healthy.unsqueeze(1), start)
            new, kl, scale = self._bound_kl(new, obs, masks, owner, counts, base_logp)
        returns = [float(np.mean([ep.total_reward for ep in it.episodes])) for it in items]
        out = []
        for k, item in enumerate(items):
            ok = bool(healthy[k])
            ev = dict(direction=evidence[0][k].cpu().clone(), weight=float(evidence[1][k]), weight_sq=float(evidence[2][k])) \
                if evidence is not None else {}
            state = OptimizerState(exp_avg[k].cpu().clone(), exp_avg_sq[k].cpu().clone(), int(steps[k]),
                                   states[k].episodes + len(item.episodes), **ev) if ok else item.state
            out.append(
                UpdateOutcome(
                    player=item.player,
                    params=new[k].cpu().clone() if ok else None,
                    kl_to_base=float(kl[k]),
                    kl_scaled=float(scale[k]),
                    steps=int(counts[k]),
                    mean_return=returns[k],
                    skipped=None if ok else "non-finite loss or gradient",
                    state=state,
                )
            )
            if not ok:
                log.warning("skipped adapter update of player %r: non-finite loss or gradient", item.player)
        return out

    def _evidence(self, states: list[OptimizerState], unit: torch.Tensor, healthy: torch.Tensor):
        """Fold this update's unit gradients (K, P) into each player's decayed history.

        Returns (direction (K, P), weight (K,), weight_sq (K,), gate (K,)). The gate is the
        share of gradient energy that is signal: with decayed weights w, unit gradients
        g = mu + noise, E|mean g|^2 = |mu|^2 + s2 * W2 / W1^2 and E|g|^2 = 1 = |mu|^2 + s2,
        so |mu|^2 is estimated without bias as (|mean g|^2 - W2/W1^2) / (1 - W2/W1^2).
        A player whose feedback disagrees with itself gets a gate near 0 and stays put.
        """
        beta = self.config.evidence_beta
        dev = unit.device
        size = unit.shape[1]
        direction = torch.stack([st.direction if st.direction is not None else torch.zeros(size) for st in states]).to(dev)
        w1 = torch.tensor([st.weight for st in states], dtype=torch.float32, device=dev)  # (K,)
        w2 = torch.tensor([st.weight_sq for st in states], dtype=torch.float32, device=dev)  # (K,)
        live = healthy.to(torch.float32)
        direction = torch.where(healthy.unsqueeze(1), beta * direction + unit, direction)  # (K, P)
        w1 = torch.where(healthy, beta * w1 + live, w1)
        w2 = torch.where(healthy, beta * beta * w2 + live, w2)
        ratio = w2 / w1.clamp(min=1e-12)**2  # 1 after one update, -> (1 - beta) / (1 + beta)
        mean_sq = (direction / w1.clamp(min=1e-12).unsqueeze(1)).pow(2).sum(1)
        signal = (mean_sq - ratio) / (1 - ratio).clamp(min=1e-6)
        gate = torch.where(ratio < 1 - 1e-6, signal.clamp(0.0, 1.0), torch.zeros_like(signal))
        return direction, w1, w2, gate

    def _start_state(self, state: OptimizerState | None, size: int) -> OptimizerState:
        if state is None:
            return OptimizerState.fresh(size)
        if self.config.persistent_optimizer:
            return state
        return OptimizerState(torch.zeros(size), torch.zeros(size), 0, state.episodes, state.direction, state.weight, state.weight_sq)

    def _adam_step(self, params, grad, exp_avg, exp_avg_sq, steps, lr, healthy):
        """One Adam step per row with per-row step counts and learning rates; unhealthy rows untouched."""
        cfg = self.config
        b1, b2 = cfg.adam_betas
        live = healthy.unsqueeze(1)
        new_avg = (b1 * exp_avg + (1 - b1) * grad).where(live, exp_avg)  # (K, P)
        new_sq = (b2 * exp_avg_sq + (1 - b2) * grad * grad).where(live, exp_avg_sq)  # (K, P)
        new_steps = steps + healthy.to(steps.dtype)  # (K,)
        t = new_steps.clamp(min=1).unsqueeze(1)
        step = (lr.unsqueeze(1) / (1 - b1**t)) * new_avg / ((new_sq / (1 - b2**t)).sqrt() + 1e-8)
        params.sub_(step.where(live, torch.zeros_like(step)))
        return new_avg, new_sq, new_steps

    def kl_to_base(self, params: torch.Tensor, obs, masks, owner, counts, base_logp) -> torch.Tensor:
        """Mean KL(adapted || base) per player (K,) over their observations."""
        logp = self._log_probs(obs, masks, params.index_select(0, owner))
        return self._per_player_mean(self._kl_rows(logp, base_logp, masks), owner, counts)

    def _bound_kl(self, params, obs, masks, owner, counts, base_logp, iters: int = 12):
        kl = self.kl_to_base(params, obs, masks, owner, counts, base_logp)
        scale = torch.ones(len(counts), device=params.device)
        bound = self.config.kl_bound
        over = kl > bound
        if bound <= 0 or not over.any():
            return params, kl, scale
        scalable = self._scalable.to(params.device)
        lo = torch.zeros_like(scale)
        hi = torch.ones_like(scale)

        def scaled(c: torch.Tensor) -> torch.Tensor:
            return params * torch.where(scalable, c.unsqueeze(1), torch.ones_like(c).unsqueeze(1))

        for _ in range(iters):
            mid = (lo + hi) / 2
            ok = self.kl_to_base(scaled(mid), obs, masks, owner, counts, base_logp) <= bound
            lo = torch.where(ok, mid, lo)
            hi = torch.where(ok, hi, mid)
        scale = torch.where(over, lo, scale)
        params = scaled(scale)
        return params, self.kl_to_base(params, obs, masks, owner, counts, base_logp), scale
