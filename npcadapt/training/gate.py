"""Validation gate of the online trainer: held-out evidence that a player's trained adapter beats the base.

Training continues from each player's own trained adapter (the *iterate*), but what is
served is that iterate with its low-rank delta scaled by a share in [0, 1]. Before an
update trains on its episodes, they are still held out: the importance-sampled advantage
of the iterate over the base on them is an estimate of the adapter's improvement. The
estimates accumulate per player (decayed count, sum, sum of squares) and the served share
follows their t-statistic. :meth:`OnlineTrainer.update` applies the share.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

import torch

if TYPE_CHECKING:
    from .online import Batch, OnlineConfig, OptimizerState


class Evidence(NamedTuple):
    """Per-player held-out evidence after one update, each (K,)."""

    n: torch.Tensor  # decayed count of held-out episodes
    s1: torch.Tensor  # decayed sum of their estimates
    s2: torch.Tensor  # decayed sum of squares
    gate: torch.Tensor  # share of the trained adapter to serve
    locked: torch.Tensor  # bool: served whole from now on


def held_out_evidence(
    cfg: OnlineConfig,
    scalable: torch.Tensor,
    states: Sequence[OptimizerState],
    start: torch.Tensor,
    served: torch.Tensor,
    start_logp: torch.Tensor,
    base_logp: torch.Tensor,
    batch: Batch,
) -> Evidence:
    """Held-out evidence that each player's trained adapter beats the base, and the share to serve.

    start (K, P): each player's iterate; served (K, P): what played the episodes;
    start_logp (T,): the iterate's log-prob of each taken action; base_logp (T, A).

    The episodes of this update were not trained on yet, so the importance-sampled
    advantage of the trained policy over the base, (pi - base)(a_t) / behaviour(a_t) * A_t,
    averaged over one episode, is an unbiased (up to weight clipping) estimate of the
    adapter's first-order improvement. Episodes are the unit (a player's episodes are
    independent; decisions within one are not), so each adds one estimate to the
    player's decayed count, sum and sum of squares, and the served share of the adapter
    rises with their t-statistic.
    """
    dev = start_logp.device
    k = len(states)
    actions, adv, owner, episode = batch.actions, batch.adv, batch.owner, batch.episode
    base_taken = base_logp.gather(1, actions.unsqueeze(1)).squeeze(1)  # (T,)
    w = ((start_logp.exp() - base_taken.exp()) / batch.old_logp.exp()).clamp(
        -cfg.gate_weight_clip, cfg.gate_weight_clip
    )
    n_ep = int(episode.max()) + 1
    ep_len = torch.bincount(episode, minlength=n_ep).to(torch.float32)  # (E,)
    ep_value = torch.zeros(n_ep, device=dev).index_add(0, episode, w * adv) / ep_len  # (E,)
    ep_owner = torch.zeros(n_ep, dtype=torch.int64, device=dev).index_copy(0, episode, owner)  # (E,)
    as_t = lambda f: torch.tensor([f(st) for st in states], dtype=torch.float32, device=dev)
    scalable = scalable.to(dev)
    has = (start[:, scalable] != 0).any(dim=1)  # an untrained adapter (zero B, zero delta) is no evidence
    per = lambda x: torch.zeros(k, device=dev).index_add(0, ep_owner, x)  # (E,) -> (K,) sums
    d = cfg.gate_decay
    old_n, old_s1, old_s2 = (
        as_t(lambda st, f=f: getattr(st, f)) for f in ("gate_n", "gate_s1", "gate_s2")
    )  # (K,) each
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
