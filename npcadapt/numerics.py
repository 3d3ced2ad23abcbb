"""The math over action distributions and returns, written once for every caller.

Inference, the online and base trainers, offline fitting, the population prior, the
simulation's evaluator, the benchmarks' hosts and the demo all use these; numpy and
torch twins sit side by side where both are needed:

- log-softmax over the allowed actions: :func:`masked_log_probs` (torch),
  :func:`masked_log_probs_np` (numpy, actions first, for the engine's decision step);
- KL and entropy of action distributions: :func:`kl_rows` (numpy, probabilities),
  :func:`masked_kl_rows` and :func:`masked_entropy_rows` (torch, log-probabilities);
- categorical draws from explicit generators: :func:`draw_categorical` (numpy) and
  :func:`draw_categorical_torch`. The engine's own draw, the exponential race over a
  seeded noise stream, is :mod:`npcadapt.sampling`;
- advantages: :func:`gae` (one finished episode, numpy; with no values and lambda 1 it is
  the discounted reward-to-go) and :func:`gae_torch` (a vectorised rollout);
- the PPO clipped surrogate loss per row: :func:`ppo_clip_loss`.

Every function keeps the arithmetic order its callers had, so results are bit-identical
to the copies it replaced.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

# -- log-probabilities ----------------------------------------------------------------------


def masked_logits(logits: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """logits (N, A) with the masked actions (mask False) at -inf; unchanged where mask is None."""
    return logits if mask is None else logits.masked_fill(~mask, float("-inf"))


def masked_log_probs(logits: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Log-softmax (N, A) where masked actions (mask False) get -inf: probability exactly 0."""
    return torch.log_softmax(masked_logits(logits, mask), dim=-1)


def masked_log_probs_np(logits: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """numpy :func:`masked_log_probs`, actions first: logits (N, A) -> log-probabilities and
    probabilities (A, N); masked actions get -inf and exactly 0.

    Working on (A, N) keeps every reduction an element-wise pass over rows of N numbers
    (reducing a short last axis is several times slower in numpy).
    """
    lt = np.ascontiguousarray(logits.T)  # (A, N)
    if mask is not None:
        lt = np.where(mask.T, lt, np.float32(-np.inf))
    lt -= lt.max(axis=0)
    exp = np.exp(lt)
    total = exp.sum(axis=0)  # (N,)
    lt -= np.log(total)
    exp /= total
    return lt, exp


# -- KL and entropy -------------------------------------------------------------------------


def kl_rows(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Row-wise KL(p || q) in nats for (..., A) probabilities; actions p never takes add 0."""
    logs = np.log(np.clip(p, 1e-30, None)) - np.log(np.clip(q, 1e-30, None))
    rows: np.ndarray = np.where(p > 0, p * logs, 0.0).sum(-1)
    return rows


def masked_kl_rows(logp: torch.Tensor, base_logp: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Row-wise KL(p || base) in nats (T,) from log-probabilities (T, A) as
    :func:`masked_log_probs` gives them; masked actions (masks False) add 0, and no NaN gradient.

    The torch, log-probability counterpart of :func:`kl_rows` (which takes probabilities in numpy)."""
    logp, base_logp = logp.masked_fill(~masks, 0.0), base_logp.masked_fill(~masks, 0.0)
    terms = torch.where(masks, logp.exp() * (logp - base_logp), torch.zeros_like(logp))
    return terms.sum(-1)


def masked_entropy_rows(logp: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Row-wise entropy in nats (T,) from log-probabilities (T, A); masked actions (masks
    False) add 0, and their -inf makes no NaN gradient."""
    finite = logp.masked_fill(~masks, 0.0)
    return -torch.where(masks, finite.exp() * finite, torch.zeros_like(finite)).sum(-1)


# -- categorical draws ----------------------------------------------------------------------


def draw_categorical(rng: np.random.Generator, probs: np.ndarray) -> int:
    """One index drawn with probability proportional to `probs` (A,) from `rng`."""
    return int(rng.choice(len(probs), p=probs / probs.sum()))


def draw_categorical_torch(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One index per row drawn with probability proportional to `probs` (..., A): shape (...)."""
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


# -- advantages and returns -----------------------------------------------------------------


def gae(
    rewards: Sequence[float] | np.ndarray, values: Sequence[float] | np.ndarray | None, gamma: float, lam: float
) -> np.ndarray:
    """Generalised advantage estimates (T,) of one finished episode (the value after its
    last step is 0), in the precision of the inputs (float32 rows give float32).

    With `values` None (0 at every step) and `lam` 1 this is the discounted reward still to
    come at each step (the rewards themselves when gamma is 0).
    """
    r = np.asarray(rewards)
    v = None if values is None else np.asarray(values)
    out = np.zeros(len(r), dtype=np.result_type(r, np.float32) if v is None else np.result_type(r, v, np.float32))
    last = 0.0
    for t in range(len(r) - 1, -1, -1):
        if v is None:
            delta = r[t]
        else:
            next_value = v[t + 1] if t + 1 < len(r) else 0.0
            delta = r[t] + gamma * next_value - v[t]
        last = delta + gamma * lam * last
        out[t] = last
    return out


def gae_torch(
    rewards: torch.Tensor, values: torch.Tensor, ends: torch.Tensor, last_value: torch.Tensor, gamma: float, lam: float
) -> torch.Tensor:
    """Generalised advantage estimates (T, N) of a vectorised rollout: rewards, values and
    ends (1.0 where an episode ended at that step) (T, N); last_value (N,) bootstraps the
    step after the rollout."""
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(last_value)  # (N,)
    for t in reversed(range(rewards.shape[0])):
        next_value = last_value if t == rewards.shape[0] - 1 else values[t + 1]
        alive = 1.0 - ends[t]
        delta = rewards[t] + gamma * next_value * alive - values[t]
        running = delta + gamma * lam * alive * running
        advantages[t] = running
    return advantages


# -- PPO ------------------------------------------------------------------------------------


def ppo_clip_loss(ratio: torch.Tensor, adv: torch.Tensor, clip_coef: float) -> torch.Tensor:
    """PPO's clipped surrogate as a loss per row: -min(ratio * adv, clip(ratio, 1 +- clip_coef) * adv)."""
    return -torch.min(ratio * adv, ratio.clamp(1 - clip_coef, 1 + clip_coef) * adv)
