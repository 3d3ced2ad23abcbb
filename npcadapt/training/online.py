"""Online per-player adapter updates: batched PPO-clip with a KL-to-base guardrail.

Many players' completed episodes are trained together: their adapters are rows of one
(K, P) parameter tensor, every step of every episode gathers its own player's row, and
each player's loss is a mean over their own steps. Because rows are disjoint and Adam is
elementwise, one player's data never moves another player's adapter.

Guardrails:
- a player whose loss or gradient is not finite is skipped (their adapter unchanged);
- after the update, an adapter whose mean KL(adapted || base) over that player's
  observations exceeds ``kl_bound`` is pulled back by scaling its B matrices (which
  scales the whole low-rank delta) with a bisection that only accepts feasible scales;
- validation gate (on by default): training continues from each player's own trained
  adapter (the *iterate*), but what is served is that iterate with its delta scaled by a
  share in [0, 1] set by held-out evidence that it beats the base. Every update first
  scores the current iterate on the new, not yet trained-on episodes (importance-sampled
  advantage over the base, one estimate per episode); the share follows the t-statistic
  of those estimates. Players whose feedback is consistent are served their adapter
  within a few updates; players whose feedback is noise or who keep changing (the
  population-average player) stay at the base instead of drifting away from it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import NamedTuple, Protocol

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
    ent_coef: float = 0.2  # entropy bonus: keeps trying alternatives while a player is new ...
    ent_decay_episodes: float = 35.0  # ... fading as ent_coef / (1 + the player's episodes / this); 0: constant
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
    validation_gate: bool = True  # serve the trained adapter scaled by held-out evidence that it beats the base
    gate_t_open: float = 1.0  # t-statistic of that evidence at which serving starts
    gate_t_full: float = 3.0  # t-statistic at which the trained adapter is served whole
    gate_weight_clip: float = 5.0  # bound on |pi - base| / behaviour weights in the evidence estimate
    gate_decay: float = 0.98  # weight of past evidence per update (1: all history counts)
    gate_min_episodes: int = 8  # held-out episodes before the served share may move
    gate_lock_t: float = 4.0  # t-statistic that settles the question: the adapter is served whole from then on
    gate_lock_episodes: int = 16  # ... counted only after this many held-out episodes
    gate_is_clip: float = 2.0  # truncation of trained / served importance weights in the loss

    def __post_init__(self) -> None:
        if self.episodes_per_update < 1 or self.epochs < 1:
            raise ValueError("episodes_per_update and epochs must be >= 1")
        if not (self.learning_rate > 0 and self.clip_coef > 0 and 0 <= self.gamma <= 1 and 0 <= self.gae_lambda <= 1):
            raise ValueError(f"invalid online training settings: {self}")
        if self.ent_coef < 0 or self.ent_decay_episodes < 0 or not 0 < self.gate_decay <= 1:
            raise ValueError("ent_coef and ent_decay_episodes must be >= 0 and gate_decay in (0, 1]")
        if self.gate_t_full <= self.gate_t_open:
            raise ValueError(f"gate_t_full ({self.gate_t_full}) must exceed gate_t_open ({self.gate_t_open})")

    def to_dict(self) -> dict:
        return asdict(self)

    def with_settings(self, items: Sequence[str]) -> "OnlineConfig":
        """A copy with ``key=value`` settings applied (values parsed by each field's type),
        e.g. ``["epochs=8", "validation_gate=false"]``."""
        known = {f.name: type(getattr(self, f.name)) for f in fields(self)}
        changes = {}
        for item in items:
            key, sep, text = item.partition("=")
            key = key.strip().replace("-", "_")
            if not sep or key not in known:
                raise ValueError(f"online setting {item!r}: expected KEY=VALUE with KEY one of {sorted(known)}")
            kind = known[key]
            try:
                if kind is bool:
                    if text.strip().lower() not in ("true", "false", "1", "0"):
                        raise ValueError("expected true or false")
                    changes[key] = text.strip().lower() in ("true", "1")
                elif kind is tuple:
                    changes[key] = tuple(float(v) for v in text.split(","))
                else:
                    changes[key] = kind(text.strip())
            except ValueError as exc:
                raise ValueError(f"online setting {item!r}: {exc}") from None
        return replace(self, **changes)


class ParamFamily(Protocol):
    """What the trainer needs from a per-player parameterisation (LoRA layout or dense)."""

    size: int

    def delta_fn(self, rows: torch.Tensor) -> LayerDelta: ...

    def scalable_mask(self) -> torch.Tensor: ...


@dataclass(frozen=True)
class OptimizerState:
    """One player's trainer state (Adam moments, trained adapter, held-out evidence), carried from update to update."""

    exp_avg: torch.Tensor  # (P,)
    exp_avg_sq: torch.Tensor  # (P,)
    steps: int  # Adam steps taken
    episodes: int  # episodes trained on
    iterate: torch.Tensor | None = None  # (P,) the trained adapter before the validation gate scales it
    gate_n: float = 0.0  # validation evidence: decayed count, sum and sum of squares of per-episode estimates
    gate_s1: float = 0.0
    gate_s2: float = 0.0
    gate: float = 0.0  # share of the trained adapter served (0: base)
    gate_locked: bool = False  # the evidence settled it: serve the adapter whole unless it turns to harm

    @classmethod
    def fresh(cls, size: int) -> OptimizerState:
        return cls(torch.zeros(size), torch.zeros(size), 0, 0)


@dataclass(frozen=True)
class PlayerUpdate:
    """Input for one player: their current parameters and completed episodes."""

    player: str
    params: torch.Tensor | None  # (P,) fp32; None: a new player (the trainer host makes a fresh adapter)
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


class Evidence(NamedTuple):
    """Per-player held-out evidence after one update, each (K,)."""

    n: torch.Tensor  # decayed count of held-out episodes
    s1: torch.Tensor  # decayed sum of their estimates
    s2: torch.Tensor  # decayed sum of squares
    gate: torch.Tensor  # share of the trained adapter to serve
    locked: torch.Tensor  # bool: served whole from now on


def _fading(value: float, episodes: torch.Tensor, scale: float, power: float = 1.0) -> torch.Tensor:
    """Per player (K,): value / (1 + episodes / scale) ** power; value itself when scale <= 0."""
    out = torch.full_like(episodes, value)
    return out / (1 + episodes / scale) ** power if scale > 0 else out


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
        obs, masks, actions, old_logp, adv, owner, episode = [], [], [], [], [], [], []
        cfg = self.config
        n_episodes = 0
        for k, item in enumerate(items):
            player_adv = []
            for ep in item.episodes:
                episode.extend([n_episodes] * len(ep))
                n_episodes += 1
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
            as_t(episode, torch.int64),  # (T,) index of the row's episode over all players
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
        items = [replace(it, episodes=[ep for ep in it.episodes if len(ep)]) for it in items]  # empty episodes say nothing
        items = [it for it in items if it.episodes]
        if not items:
            return []
        cfg = self.config
        device = next(self.policy.parameters()).device
        n_actions = self.policy.actor[-1].out_features
        served = torch.stack([it.params.to(device, torch.float32) for it in items])  # (K, P)
        size = served.shape[1]
        states = [self._start_state(it.state, size) for it in items]
        obs, masks, actions, old_logp, adv, owner, episode = self._flatten(items, n_actions, device)
        counts = torch.bincount(owner, minlength=len(items)).to(torch.float32)  # (K,)
        gated = cfg.validation_gate
        start = torch.stack([st.iterate.to(device) if gated and st.iterate is not None else served[k]
                             for k, st in enumerate(states)])  # (K, P) what training continues from
        params = start.clone().requires_grad_(True)
        exp_avg = torch.stack([st.exp_avg for st in states]).to(device)  # (K, P)
        exp_avg_sq = torch.stack([st.exp_avg_sq for st in states]).to(device)  # (K, P)
        steps = torch.tensor([st.steps for st in states], dtype=torch.float32, device=device)  # (K,)
        seen = torch.tensor([st.episodes for st in states], dtype=torch.float32, device=device)  # (K,)
        lr = _fading(cfg.learning_rate, seen, cfg.lr_decay_episodes, cfg.lr_decay_power)  # (K,)
        ent_coef = _fading(cfg.ent_coef, seen, cfg.ent_decay_episodes)  # (K,)
        healthy = torch.ones(len(items), dtype=torch.bool, device=device)
        with torch.no_grad():
            base_logp = self._log_probs(obs, masks, None)  # (T, A)
        weight = torch.ones_like(old_logp)  # (T,) importance weight trained / served policy
        ref_logp = old_logp
        if gated:  # PPO ratios against the trained adapter, importance weights for what actually played
            with torch.no_grad():
                start_logp = self._log_probs(obs, masks, start.index_select(0, owner)).gather(1, actions.unsqueeze(1)).squeeze(1)
                weight = torch.exp(start_logp - old_logp).clamp(max=cfg.gate_is_clip)
                ref_logp = start_logp
                evidence = self._validate(states, start, served, start_logp, base_logp, old_logp, actions, adv, owner, episode)
        for _ in range(cfg.epochs):
            logp_all = self._log_probs(obs, masks, params.index_select(0, owner))
            logp = logp_all.gather(1, actions.unsqueeze(1)).squeeze(1)  # (T,)
            ratio = torch.exp(logp - ref_logp)
            pg = -weight * torch.min(ratio * adv, ratio.clamp(1 - cfg.clip_coef, 1 + cfg.clip_coef) * adv)
            row_loss = pg
            if cfg.ent_coef:
                entropy = -torch.where(masks, logp_all.exp() * logp_all, torch.zeros_like(logp_all)).sum(-1)
                row_loss = row_loss - ent_coef.index_select(0, owner) * entropy
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
            grad.mul_(torch.clamp(cfg.max_grad_norm / (norms + 1e-12), max=1.0))
            with torch.no_grad():
                exp_avg, exp_avg_sq, steps = self._adam_step(params, grad, exp_avg, exp_avg_sq, steps, lr, healthy)
        with torch.no_grad():
            new = params.detach().where(healthy.unsqueeze(1), start)
            healthy &= torch.isfinite(new).all(dim=1)
            new = new.where(healthy.unsqueeze(1), start)
            new, kl, scale = self._bound_kl(new, obs, masks, owner, counts, base_logp)
            iterate = new
            if gated:  # serve the gated share, bounded again (KL need not shrink with the scale through tanh)
                healthy &= torch.isfinite(evidence.gate) & torch.isfinite(evidence.s1) & torch.isfinite(evidence.s2)
                new, kl, _ = self._bound_kl(self._scaled(new, evidence.gate.nan_to_num(0.0)), obs, masks, owner, counts, base_logp)
        returns = [float(np.mean([ep.total_reward for ep in it.episodes])) for it in items]
        out = []
        for k, item in enumerate(items):
            ok = bool(healthy[k])
            ev = {}
            if gated:
                ev = {"iterate": iterate[k].cpu().clone(), "gate_n": float(evidence.n[k]), "gate_s1": float(evidence.s1[k]),
                          "gate_s2": float(evidence.s2[k]), "gate": float(evidence.gate[k]), "gate_locked": bool(evidence.locked[k])}
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

    def _validate(self, states, start, served, start_logp, base_logp, old_logp, actions, adv, owner, episode) -> Evidence:
        """Held-out evidence that each player's trained adapter beats the base.

        The episodes of this update were not trained on yet, so the importance-sampled
        advantage of the trained policy over the base, (pi - base)(a_t) / behaviour(a_t) * A_t,
        averaged over one episode, is an unbiased (up to weight clipping) estimate of the
        adapter's first-order improvement. Episodes are the unit (a player's episodes are
        independent; decisions within one are not), so each adds one estimate to the
        player's decayed count, sum and sum of squares, and the served share of the adapter
        rises with their t-statistic.
        """
        cfg = self.config
        dev = start_logp.device
        k = len(states)
        base_taken = base_logp.gather(1, actions.unsqueeze(1)).squeeze(1)  # (T,)
        w = ((start_logp.exp() - base_taken.exp()) / old_logp.exp()).clamp(-cfg.gate_weight_clip, cfg.gate_weight_clip)
        n_ep = int(episode.max()) + 1
        ep_len = torch.bincount(episode, minlength=n_ep).to(torch.float32)  # (E,)
        ep_value = torch.zeros(n_ep, device=dev).index_add(0, episode, w * adv) / ep_len  # (E,)
        ep_owner = torch.zeros(n_ep, dtype=torch.int64, device=dev).index_copy(0, episode, owner)  # (E,)
        as_t = lambda f: torch.tensor([f(st) for st in states], dtype=torch.float32, device=dev)
        scalable = self._scalable.to(dev)
        has = (start[:, scalable] != 0).any(dim=1)  # an untrained adapter (zero B, zero delta) is no evidence
        per = lambda x: torch.zeros(k, device=dev).index_add(0, ep_owner, x)  # (E,) -> (K,) sums
        d = cfg.gate_decay
        old_n, old_s1, old_s2 = (as_t(lambda st, f=f: getattr(st, f)) for f in ("gate_n", "gate_s1", "gate_s2"))  # (K,) each
        n = torch.where(has, d * old_n + per(torch.ones_like(ep_value)), old_n)  # (K,)
        s1 = torch.where(has, d * old_s1 + per(ep_value), old_s1)
        s2 = torch.where(has, d * old_s2 + per(ep_value**2), old_s2)
        mean = s1 / n.clamp(min=1e-9)
        var = (s2 / n.clamp(min=1e-9) - mean**2).clamp(min=0) * n / (n - 1).clamp(min=1e-9)
        t = mean / (var / n.clamp(min=1e-9) + 1e-12).sqrt()
        share = ((t - cfg.gate_t_open) / (cfg.gate_t_full - cfg.gate_t_open)).clamp(0.0, 1.0)
        # until there is enough evidence: keep the served share (an adapter restored without its trainer state: whole)
        restored = torch.tensor([st.iterate is None for st in states], device=dev) & (served[:, scalable] != 0).any(dim=1)
        prev = torch.where(restored, torch.ones_like(n), as_t(lambda st: st.gate))
        gate = torch.where(n >= cfg.gate_min_episodes, share, prev)
        locked = as_t(lambda st: float(st.gate_locked)) > 0
        locked = (locked | ((t >= cfg.gate_lock_t) & (n >= cfg.gate_lock_episodes))) & (t >= -cfg.gate_t_open)
        gate = torch.where(locked, torch.ones_like(gate), gate)
        return Evidence(n, s1, s2, gate, locked)

    def _scaled(self, params: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Rows (K, P) with their B matrices, and so each whole low-rank delta, scaled by c (K,)."""
        scalable = self._scalable.to(params.device)
        return params * torch.where(scalable, c.unsqueeze(1), torch.ones_like(c).unsqueeze(1))

    def _start_state(self, state: OptimizerState | None, size: int) -> OptimizerState:
        if state is None:
            return OptimizerState.fresh(size)
        if self.config.persistent_optimizer:
            return state
        return replace(state, exp_avg=torch.zeros(size), exp_avg_sq=torch.zeros(size), steps=0)

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
        lo = torch.zeros_like(scale)
        hi = torch.ones_like(scale)
        for _ in range(iters):
            mid = (lo + hi) / 2
            ok = self.kl_to_base(self._scaled(params, mid), obs, masks, owner, counts, base_logp) <= bound
            lo = torch.where(ok, mid, lo)
            hi = torch.where(ok, hi, mid)
        scale = torch.where(over, lo, scale)
        params = self._scaled(params, scale)
        return params, self.kl_to_base(params, obs, masks, owner, counts, base_logp), scale
