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
- validation gate (on by default, see :mod:`.gate`): training continues from each
  player's own trained adapter (the *iterate*), but what is served is that iterate with
  its delta scaled by a share in [0, 1] set by held-out evidence that it beats the base.
  Players whose feedback is consistent are served their adapter within a few updates;
  players whose feedback is noise or who keep changing stay at the base.

:meth:`OnlineTrainer.update` reads top to bottom: assemble the :class:`Batch`, the
:class:`Start` (starting rows and optimizer state), the PPO :class:`Reference`, the
held-out evidence; then ``epochs`` of :meth:`~OnlineTrainer.loss` and
:meth:`~OnlineTrainer.step`; then the KL guard (:meth:`~OnlineTrainer.bound_kl`), the gated serve
share and the outcomes. These parts are public so that tests can check each one alone.

Over 450 lines: one update read top to bottom (batch assembly, loss, optimizer step, KL guard, gate) with its config and records, as the issue that split it asked."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Generic, NamedTuple, Protocol, TypeVar, cast, get_args, get_type_hints

import numpy as np
import torch
from torch import nn

from ..episodes import Episode
from ..errors import InvalidInputError
from ..numerics import gae, masked_entropy_rows, masked_kl_rows, masked_log_probs, ppo_clip_loss
from ..policy import ActorCritic, LayerDelta
from .gate import Evidence, held_out_evidence

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
    # archetypes with a population prior (npcadapt.prior) adapt by its posterior instead of PPO:
    prior: bool = True  # use the prior stored beside an archetype when there is one
    prior_decay: float = 0.95  # weight of a player's past evidence after an episode that fades it (below)
    # when it fades: "surprise" (only after an episode the player's history predicted worse
    # than the population did: a steady style keeps all its evidence) or "always" (every episode)
    prior_forget: str = "surprise"
    prior_surprise_nats: float = 1.0  # "surprise": how much worse than the population's prediction fades the past
    prior_explore: bool = True  # serve a cohort drawn from the posterior (Thompson), not the weighted mean
    # ... and, within that cohort, a model drawn around its posterior mean with the spread the
    # player's own decisions leave, times this (0: the mean; None: the library's explore_spread,
    # set per archetype; npcadapt.prior.bayes.draw_from_data_spread)
    prior_explore_spread: float | None = None
    prior_trust_open: float = (
        3.0  # log Bayes factor (player's history vs population) above which the tilt is served ...
    )
    prior_trust_nats: float = 8.0  # ... and at which it is served whole
    prior_evidence_cap: float = 10.0  # bound on that decayed evidence either way, so no verdict is permanent
    prior_new_cohort: float = 0.2  # prior weight of "unlike every cohort": a broad personal model
    prior_transfer_trust: float = 0.5  # share of the trust earned with another archetype a warm start carries
    prior_change_nats: float = 12.0  # the history predicts an episode this much worse than the population: new style?
    # True: a suspected change is acted on only if the next episode is predicted better by the
    # suspect episode than by the whole history and than by the population alone (an odd bout
    # of a steady player is not a change)
    prior_change_confirm: bool = True
    prior_episode_nats: float = 4.0  # most trust one episode adds or takes (one odd bout cannot undo a style)
    # the trust test: "t" (a t-statistic of the per-episode log Bayes factors) or "sum" (their decayed sum, above)
    prior_trust_test: str = "t"
    # t-statistic of the player's log Bayes factors above which the tilt is served, and at which
    # it is served whole (None: the library's trust_t_open / trust_t_full)
    prior_t_open: float | None = None
    prior_t_full: float | None = None
    prior_spread_nats: float = 1.0  # prior guess of the spread of one episode's log Bayes factor, nats ...
    prior_spread_episodes: float = 2.0  # ... worth this many episodes against the player's own spread
    # the cohorts the trust test's log Bayes factors go through: "measured" (as measured on
    # the recorded population: each cohort's pooled posterior plus the spread of its players
    # around it, not the copy the library widened for new players) or "widened" (as served;
    # sessions 8-13). Only the trust test: served models, forgetting and change points keep the widened ones
    prior_trust_null: str = "measured"

    def __post_init__(self) -> None:
        """InvalidInputError naming the first invalid field, e.g. "OnlineConfig.learning_rate must be > 0, got -1"."""

        def need(ok: bool, name: str, what: str) -> None:
            if not ok:
                raise InvalidInputError(f"OnlineConfig.{name} must be {what}, got {getattr(self, name)!r}")

        need(self.episodes_per_update >= 1, "episodes_per_update", ">= 1")
        need(self.epochs >= 1, "epochs", ">= 1")
        need(self.learning_rate > 0, "learning_rate", "> 0")
        need(self.clip_coef > 0, "clip_coef", "> 0")
        need(0 <= self.gamma <= 1, "gamma", "in [0, 1]")
        need(0 <= self.gae_lambda <= 1, "gae_lambda", "in [0, 1]")
        need(self.ent_coef >= 0, "ent_coef", ">= 0")
        need(self.ent_decay_episodes >= 0, "ent_decay_episodes", ">= 0")
        need(0 < self.gate_decay <= 1, "gate_decay", "in (0, 1]")
        need(0 < self.prior_decay <= 1, "prior_decay", "in (0, 1]")
        need(
            self.prior_trust_nats > self.prior_trust_open,
            "prior_trust_nats",
            f"> prior_trust_open ({self.prior_trust_open!r})",
        )
        need(self.prior_evidence_cap > 0, "prior_evidence_cap", "> 0")
        need(self.prior_change_nats > 0, "prior_change_nats", "> 0")
        need(self.prior_episode_nats > 0, "prior_episode_nats", "> 0")
        need(0 < self.prior_new_cohort < 1, "prior_new_cohort", "in (0, 1)")
        need(self.prior_trust_test in ("t", "sum"), "prior_trust_test", '"t" or "sum"')
        need(self.prior_trust_null in ("measured", "widened"), "prior_trust_null", '"measured" or "widened"')
        need(self.prior_forget in ("always", "surprise"), "prior_forget", '"always" or "surprise"')
        need(self.prior_surprise_nats >= 0, "prior_surprise_nats", ">= 0")
        t_open, t_full = self.prior_t_open, self.prior_t_full
        need(t_open is None or math.isfinite(t_open), "prior_t_open", "finite or None")
        need(t_full is None or math.isfinite(t_full), "prior_t_full", "finite or None")
        need(t_open is None or t_full is None or t_full > t_open, "prior_t_full", f"> prior_t_open ({t_open!r})")
        need(self.prior_spread_nats > 0, "prior_spread_nats", "> 0")
        need(self.prior_spread_episodes > 0, "prior_spread_episodes", "> 0")
        spread = self.prior_explore_spread
        need(spread is None or (math.isfinite(spread) and spread >= 0), "prior_explore_spread", "finite, >= 0 or None")
        need(self.gate_t_full > self.gate_t_open, "gate_t_full", f"> gate_t_open ({self.gate_t_open!r})")

    def to_dict(self) -> dict:
        return asdict(self)

    def with_settings(self, items: Sequence[str]) -> OnlineConfig:
        """A copy with ``key=value`` settings applied (values parsed by each field's type; "none"
        for a field that may be None), e.g. ``["epochs=8", "validation_gate=false"]``."""
        known = {f.name: type(getattr(self, f.name)) for f in fields(self)}
        hints = get_type_hints(type(self))
        optional = {  # fields that may be None ("none" sets it): parsed by their other type
            name: next(t for t in get_args(hint) if t is not type(None))
            for name, hint in hints.items()
            if type(None) in get_args(hint)
        }
        changes: dict[str, Any] = {}
        for item in items:
            key, sep, text = item.partition("=")
            key = key.strip().replace("-", "_")
            if not sep or key not in known:
                raise InvalidInputError(f"online setting {item!r}: expected KEY=VALUE with KEY one of {sorted(known)}")
            kind = known[key]
            try:
                if key in optional and text.strip().lower() == "none":
                    changes[key] = None
                elif key in optional:
                    changes[key] = optional[key](text.strip())
                elif kind is bool:
                    if text.strip().lower() not in ("true", "false", "1", "0"):
                        raise ValueError("expected true or false")
                    changes[key] = text.strip().lower() in ("true", "1")
                elif kind is tuple:
                    changes[key] = tuple(float(v) for v in text.split(","))
                else:
                    changes[key] = kind(text.strip())
            except ValueError as exc:
                raise InvalidInputError(f"online setting {item!r}: {exc}") from None
        return replace(self, **changes)


class ParamFamily(Protocol):
    """What the trainer needs from a per-player parameterisation (LoRA layout or dense)."""

    @property
    def size(self) -> int: ...

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


# a trainer's carried per-player state: OptimizerState here, PosteriorState for the prior's trainer
StateT = TypeVar("StateT")


@dataclass(frozen=True)
class PlayerUpdate(Generic[StateT]):
    """Input for one player: their current parameters and completed episodes."""

    player: str
    params: torch.Tensor | None  # (P,) fp32; None: a new player (the trainer host makes a fresh adapter)
    episodes: Sequence[Episode]
    state: StateT | None = None


@dataclass(frozen=True)
class UpdateOutcome(Generic[StateT]):
    """Result for one player. `params` is None when the update was skipped."""

    player: str
    params: torch.Tensor | None
    kl_to_base: float
    kl_scaled: float  # 1.0 when the bound did not bite; else the scale applied to B
    steps: int
    mean_return: float
    skipped: str | None = None
    state: StateT | None = None
    prior: dict | None = None  # with a population prior: where the player stands on it (PosteriorState.describe)


def _fading(value: float, episodes: torch.Tensor, scale: float, power: float = 1.0) -> torch.Tensor:
    """Per player (K,): value / (1 + episodes / scale) ** power; value itself when scale <= 0."""
    out = torch.full_like(episodes, value)
    return out / (1 + episodes / scale) ** power if scale > 0 else out


@dataclass(frozen=True)
class Batch:
    """Every step of every player's episodes in one update, flattened (T steps, K players)."""

    obs: torch.Tensor  # (T, D) float32
    masks: torch.Tensor  # (T, A) bool, all True where the episode had no mask
    actions: torch.Tensor  # (T,) int64 taken actions
    old_logp: torch.Tensor  # (T,) behaviour log-prob of the taken action (what actually played)
    adv: torch.Tensor  # (T,) GAE advantages, normalised per player
    owner: torch.Tensor  # (T,) int64 player index in 0..K-1
    episode: torch.Tensor  # (T,) int64 index of the row's episode over all players
    counts: torch.Tensor  # (K,) float32 steps per player


def assemble_batch(items: Sequence[PlayerUpdate], cfg: OnlineConfig, n_actions: int, device: torch.device) -> Batch:
    """Flatten the players' non-empty episodes into one :class:`Batch`.

    Advantages are GAE per episode, normalised over each player's own steps (never across
    players, so one player's rewards cannot rescale another's update).
    """
    obs, actions, old_logp, adv, owner, episode = [], [], [], [], [], []
    masks: list[np.ndarray] = []
    n_episodes = 0
    for k, item in enumerate(items):
        player_adv = []
        for ep in item.episodes:
            episode.extend([n_episodes] * len(ep))
            n_episodes += 1
            player_adv.append(
                gae(np.asarray(ep.reward, np.float32), np.asarray(ep.value, np.float32), cfg.gamma, cfg.gae_lambda)
            )
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
    owner_t = as_t(owner, torch.int64)
    return Batch(
        obs=as_t(np.stack(obs), torch.float32),
        masks=as_t(np.stack(masks), torch.bool),
        actions=as_t(actions, torch.int64),
        old_logp=as_t(old_logp, torch.float32),
        adv=as_t(np.concatenate(adv), torch.float32),
        owner=owner_t,
        episode=as_t(episode, torch.int64),
        counts=torch.bincount(owner_t, minlength=len(items)).to(torch.float32),
    )


class Adam(NamedTuple):
    """Per-player Adam state during one update."""

    exp_avg: torch.Tensor  # (K, P)
    exp_avg_sq: torch.Tensor  # (K, P)
    steps: torch.Tensor  # (K,) float32 steps taken


@dataclass(frozen=True)
class Start:
    """What one update continues from, per player."""

    states: list[OptimizerState]  # carried states (fresh for new players; moments zeroed unless persistent)
    served: torch.Tensor  # (K, P) the adapters served now: what played the episodes
    params: torch.Tensor  # (K, P) where training continues: the gated iterate, else the served adapter
    adam: Adam
    lr: torch.Tensor  # (K,) learning rate, fading with the player's episodes
    ent_coef: torch.Tensor  # (K,) entropy bonus, fading likewise


class Reference(NamedTuple):
    """What the PPO ratios are taken against, each (T,)."""

    logp: torch.Tensor  # log-prob of the taken action under the policy the ratio is relative to
    weight: torch.Tensor  # importance weight of that policy over the behaviour one (1 without the gate)


class OnlineTrainer:
    """Batched per-player updates on a frozen base policy."""

    def __init__(self, policy: ActorCritic, family: ParamFamily, config: OnlineConfig = OnlineConfig()):
        self.policy = policy
        self.family = family
        self.config = config
        self._scalable = family.scalable_mask()

    def update(self, items: Sequence[PlayerUpdate[OptimizerState]]) -> list[UpdateOutcome[OptimizerState]]:
        """One PPO update for every player in `items`, computed together."""
        items = [
            replace(it, episodes=[ep for ep in it.episodes if len(ep)]) for it in items
        ]  # empty episodes say nothing
        items = [it for it in items if it.episodes]
        if not items:
            return []
        device = next(self.policy.parameters()).device
        n_actions = cast(nn.Linear, self.policy.actor[-1]).out_features  # the actor is a ModuleList of Linears
        batch = assemble_batch(items, self.config, n_actions, device)
        start = self.start(items, device)
        gated = self.config.validation_gate
        with torch.no_grad():
            base_logp = self.log_probs(batch.obs, batch.masks, None)  # (T, A)
            ref = self.reference(batch, start.params)
            # scored before training on these episodes, while they are still held out
            evidence = (
                held_out_evidence(
                    self.config, self._scalable, start.states, start.params, start.served, ref.logp, base_logp, batch
                )
                if gated
                else None
            )
        params, adam, healthy = self._train(batch, start, ref, base_logp)
        with torch.no_grad():
            iterate, healthy = self._finite_or_start(params, start.params, healthy)
            iterate, kl, scale = self.bound_kl(iterate, batch.obs, batch.masks, batch.owner, batch.counts, base_logp)
            served, kl, healthy = self._serve(iterate, kl, evidence, healthy, batch, base_logp)
        return self._outcomes(items, batch, start, adam, healthy, iterate, served, kl, scale, evidence)

    def start(self, items: Sequence[PlayerUpdate], device: torch.device) -> Start:
        """Each player's starting point and optimizer state (Adam moments, lr and entropy coefficients)."""
        cfg = self.config
        # (K, P); every player has params by now (the trainer host makes new players' fresh adapters)
        served = torch.stack([cast(torch.Tensor, it.params).to(device, torch.float32) for it in items])
        states = [self._start_state(it.state, served.shape[1]) for it in items]
        params = torch.stack(
            [
                st.iterate.to(device) if cfg.validation_gate and st.iterate is not None else served[k]
                for k, st in enumerate(states)
            ]
        )  # (K, P)
        adam = Adam(
            torch.stack([st.exp_avg for st in states]).to(device),  # (K, P)
            torch.stack([st.exp_avg_sq for st in states]).to(device),  # (K, P)
            torch.tensor([st.steps for st in states], dtype=torch.float32, device=device),
        )  # (K,)
        seen = torch.tensor([st.episodes for st in states], dtype=torch.float32, device=device)  # (K,)
        return Start(
            states,
            served,
            params,
            adam,
            lr=_fading(cfg.learning_rate, seen, cfg.lr_decay_episodes, cfg.lr_decay_power),
            ent_coef=_fading(cfg.ent_coef, seen, cfg.ent_decay_episodes),
        )

    def _start_state(self, state: OptimizerState | None, size: int) -> OptimizerState:
        """A player's carried state: fresh for a new player, Adam moments zeroed unless persistent."""
        if state is None:
            return OptimizerState.fresh(size)
        if self.config.persistent_optimizer:
            return state
        return replace(state, exp_avg=torch.zeros(size), exp_avg_sq=torch.zeros(size), steps=0)

    def reference(self, batch: Batch, start: torch.Tensor) -> Reference:
        """PPO ratios against the behaviour policy; with the gate, against the trained iterate
        start (K, P), with importance weights (truncated) for the served adapter that actually played."""
        if not self.config.validation_gate:
            return Reference(batch.old_logp, torch.ones_like(batch.old_logp))
        logp = self.log_probs(batch.obs, batch.masks, start.index_select(0, batch.owner))
        taken = logp.gather(1, batch.actions.unsqueeze(1)).squeeze(1)  # (T,)
        return Reference(taken, torch.exp(taken - batch.old_logp).clamp(max=self.config.gate_is_clip))

    def _train(self, batch: Batch, start: Start, ref: Reference, base_logp: torch.Tensor):
        """`epochs` full-batch steps from start.params: new params (K, P), Adam state, healthy (K,) bool."""
        params = start.params.clone().requires_grad_(True)
        adam = start.adam
        healthy = torch.ones(len(batch.counts), dtype=torch.bool, device=params.device)
        for _ in range(self.config.epochs):
            loss = self.loss(params, batch, ref, base_logp, start.ent_coef)  # (K,)
            adam, healthy = self.step(params, loss, adam, start.lr, healthy)
        return params.detach(), adam, healthy

    def loss(
        self, params: torch.Tensor, batch: Batch, ref: Reference, base_logp: torch.Tensor, ent_coef: torch.Tensor
    ) -> torch.Tensor:
        """Per-player loss (K,) of params (K, P): mean over the player's own steps of the
        importance-weighted PPO-clip objective, minus the entropy bonus, plus the optional
        KL-to-base penalty. Each step reads only its owner's row."""
        cfg = self.config
        logp_all = self.log_probs(batch.obs, batch.masks, params.index_select(0, batch.owner))  # (T, A)
        logp = logp_all.gather(1, batch.actions.unsqueeze(1)).squeeze(1)  # (T,)
        ratio = torch.exp(logp - ref.logp)
        row_loss = ref.weight * ppo_clip_loss(ratio, batch.adv, cfg.clip_coef)  # (T,)
        if cfg.ent_coef:
            entropy = masked_entropy_rows(logp_all, batch.masks)  # (T,)
            row_loss = row_loss - ent_coef.index_select(0, batch.owner) * entropy
        if cfg.kl_coef:
            row_loss = row_loss + cfg.kl_coef * masked_kl_rows(logp_all, base_logp, batch.masks)
        return self._per_player_mean(row_loss, batch.owner, batch.counts)

    def step(
        self, params: torch.Tensor, loss: torch.Tensor, adam: Adam, lr: torch.Tensor, healthy: torch.Tensor
    ) -> tuple[Adam, torch.Tensor]:
        """One optimizer step on params (K, P) in place from the per-player loss (K,).

        A player whose loss or gradient is not finite turns unhealthy (K,) and their row and
        moments stay as they are; the others' gradients are clipped to max_grad_norm per
        player, then Adam steps."""
        healthy = healthy & torch.isfinite(loss)
        params.grad = None
        loss.where(healthy, torch.zeros_like(loss)).sum().backward()
        grad = cast(torch.Tensor, params.grad)  # (K, P), set by backward()
        healthy = healthy & torch.isfinite(grad).all(dim=1)
        grad.masked_fill_(~healthy.unsqueeze(1), 0.0)
        norms = grad.norm(dim=1, keepdim=True)  # (K, 1)
        grad.mul_(torch.clamp(self.config.max_grad_norm / (norms + 1e-12), max=1.0))
        with torch.no_grad():
            return Adam(*self._adam_step(params, grad, *adam, lr, healthy)), healthy

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

    @staticmethod
    def _finite_or_start(params: torch.Tensor, start: torch.Tensor, healthy: torch.Tensor):
        """Unhealthy players fall back to their start row; a non-finite result (K, P) makes a player unhealthy."""
        new = params.where(healthy.unsqueeze(1), start)
        healthy = healthy & torch.isfinite(new).all(dim=1)
        return new.where(healthy.unsqueeze(1), start), healthy

    def _serve(self, iterate, kl, evidence: Evidence | None, healthy, batch: Batch, base_logp):
        """What to serve (K, P), its KL (K,) and health (K,): the iterate without the gate; with it,
        the iterate's delta scaled by the gated share and bounded again (KL need not shrink
        with the scale through tanh). Non-finite evidence makes a player unhealthy."""
        if evidence is None:
            return iterate, kl, healthy
        healthy = healthy & torch.isfinite(evidence.gate) & torch.isfinite(evidence.s1) & torch.isfinite(evidence.s2)
        served, kl, _ = self.bound_kl(
            self._scaled(iterate, evidence.gate.nan_to_num(0.0)),
            batch.obs,
            batch.masks,
            batch.owner,
            batch.counts,
            base_logp,
        )
        return served, kl, healthy

    def _outcomes(
        self,
        items,
        batch: Batch,
        start: Start,
        adam: Adam,
        healthy,
        iterate,
        served,
        kl,
        scale,
        evidence: Evidence | None,
    ) -> list[UpdateOutcome]:
        """One UpdateOutcome per player with the new state; an unhealthy player keeps their old state."""
        out = []
        for k, item in enumerate(items):
            ok = bool(healthy[k])
            ev = {}
            if evidence is not None:
                ev = {
                    "iterate": iterate[k].cpu().clone(),
                    "gate_n": float(evidence.n[k]),
                    "gate_s1": float(evidence.s1[k]),
                    "gate_s2": float(evidence.s2[k]),
                    "gate": float(evidence.gate[k]),
                    "gate_locked": bool(evidence.locked[k]),
                }
            state = (
                OptimizerState(
                    adam.exp_avg[k].cpu().clone(),
                    adam.exp_avg_sq[k].cpu().clone(),
                    int(adam.steps[k]),
                    start.states[k].episodes + len(item.episodes),
                    **ev,
                )
                if ok
                else item.state
            )
            out.append(
                UpdateOutcome(
                    item.player,
                    served[k].cpu().clone() if ok else None,
                    kl_to_base=float(kl[k]),
                    kl_scaled=float(scale[k]),
                    steps=int(batch.counts[k]),
                    mean_return=float(np.mean([ep.total_reward for ep in item.episodes])),
                    skipped=None if ok else "non-finite loss or gradient",
                    state=state,
                )
            )
            if not ok:
                log.warning("skipped adapter update of player %r: non-finite loss or gradient", item.player)
        return out

    def log_probs(self, obs: torch.Tensor, masks: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
        """Masked log-probabilities (T, A) of the policy on obs (T, D) under masks (T, A) bool:
        each row adapted by its own parameter row of rows (T, P), or the base where rows is None.
        Differentiable in rows; masked actions get -inf."""
        logits = self.policy.logits(obs, None if rows is None else self.family.delta_fn(rows))
        return masked_log_probs(logits, masks)

    def _per_player_mean(self, values: torch.Tensor, owner: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """Mean of row values (T,) per player (K,)."""
        return torch.zeros(len(counts), dtype=values.dtype, device=values.device).index_add(0, owner, values) / counts

    def _scaled(self, params: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Rows (K, P) with their B matrices, and so each whole low-rank delta, scaled by c (K,)."""
        scalable = self._scalable.to(params.device)
        return params * torch.where(scalable, c.unsqueeze(1), torch.ones_like(c).unsqueeze(1))

    def kl_to_base(self, params: torch.Tensor, obs, masks, owner, counts, base_logp) -> torch.Tensor:
        """Mean KL(adapted || base) per player (K,) over their observations."""
        logp = self.log_probs(obs, masks, params.index_select(0, owner))
        return self._per_player_mean(masked_kl_rows(logp, base_logp, masks), owner, counts)

    def bound_kl(self, params, obs, masks, owner, counts, base_logp, iters: int = 12):
        """KL guard: rows (K, P) whose mean KL to the base exceeds kl_bound get their delta scaled
        down by bisection (only feasible scales accepted). Returns params, KL (K,), scale (K,)."""
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
