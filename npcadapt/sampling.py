"""The decision step: logits -> a drawn action, its log-probability and the entropy.

Every draw is the exponential race: row i takes ``argmax_a p_ia / q_ia`` with ``q ~ Exp(1)``,
which picks action a with probability p_ia (the method ``torch.multinomial`` uses for one
sample). The q come in order from one seeded stream (:class:`ExpNoise`), A numbers a row,
so a seed gives the same decisions whether rows are decided one at a time or in batches
of any size. :func:`decide` does a batch with numpy; :func:`decide_one` does one row with
Python floats, because a single request is the latency-critical case and a dozen numpy
calls on 8 numbers cost several times the arithmetic (more still with cold caches, which
is how a server that sleeps between requests meets each one).
"""

from __future__ import annotations

import hashlib
import math

import numpy as np

from .numerics import masked_log_probs_np

NOISE_BLOCK = 16_384  # numbers drawn from the generator at a time (~50 us, once per 2,048 rows of 8 actions)


class ExpNoise:
    """A seeded stream of Exp(1) float32 numbers, served in order from pre-drawn blocks.

    ``take(k)`` returns the next k numbers of the stream, however the stream is split into
    takes (numpy's generator continues one sequence across calls). Zeros are raised to the
    smallest positive float32, so ``p / q`` is never a division by zero.
    """

    def __init__(self, seed: int, block: int = NOISE_BLOCK):
        self._rng = np.random.default_rng(seed)
        self._block = block
        self._buf = np.empty(0, np.float32)
        self._pos = 0

    def _draw(self, k: int) -> np.ndarray:
        out = self._rng.standard_exponential(k, dtype=np.float32)
        return np.maximum(out, np.float32(np.finfo(np.float32).tiny), out=out)

    def take(self, k: int) -> np.ndarray:
        """The next k numbers (k,) float32 (a view: callers must not write to it)."""
        start, end = self._pos, self._pos + k
        if end <= len(self._buf):
            self._pos = end
            return self._buf[start:end]
        rest = self._buf[start:]
        more = k - len(rest)
        if more >= self._block:  # a large batch: draw exactly what it needs
            self._buf, self._pos = np.empty(0, np.float32), 0
            return np.concatenate([rest, self._draw(more)])
        self._buf, self._pos = self._draw(self._block), more
        return np.concatenate([rest, self._buf[:more]])


def decide(
    logits: np.ndarray, mask: np.ndarray | None, greedy: np.ndarray | None, noise: ExpNoise
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Masked categorical draw: logits (N, A) -> action (N,) int64, logp (N,), entropy (N,).

    Masked actions get probability exactly 0 and are never drawn; rows with greedy True
    take the argmax (they still use up their A noise numbers, so the stream stays aligned).
    One row goes to :func:`decide_one`.
    """
    n, a = logits.shape
    if n == 1:
        action, logp, entropy = decide_one(
            logits[0], None if mask is None else mask[0], greedy is not None and bool(greedy[0]), noise
        )
        return np.array([action]), np.array([logp], np.float32), np.array([entropy], np.float32)
    logp_all, probs = masked_log_probs_np(logits, mask)  # (A, N) each
    q = noise.take(n * a).reshape(n, a)  # (N, A)
    action = (probs / q.T).argmax(axis=0)  # (N,)
    if greedy is not None:
        action = np.where(greedy, logp_all.argmax(axis=0), action)
    logp = logp_all[action, np.arange(n)]
    terms = probs * (logp_all if mask is None else np.where(probs > 0, logp_all, np.float32(0.0)))
    return action.astype(np.int64, copy=False), logp, -terms.sum(axis=0)


def decide_one(logits: np.ndarray, mask: np.ndarray | None, greedy: bool, noise: ExpNoise) -> tuple[int, float, float]:
    """:func:`decide` for one row: logits (A,) finite -> action, logp, entropy as Python numbers.

    The same draw from the same noise: the same action unless two of the row's ratios
    p / q tie to within float32 rounding (this works in float64).
    """
    values = logits.tolist()
    if mask is not None:
        values = [v if allowed else -math.inf for v, allowed in zip(values, mask.tolist())]
    top = max(values)
    weights = [math.exp(v - top) for v in values]  # unnormalised probabilities; masked -> 0
    total = math.fsum(weights)
    log_total = math.log(total)
    q = noise.take(len(values)).tolist()
    if greedy:
        action = values.index(top)
    else:
        ratios = [w / x for w, x in zip(weights, q)]
        action = ratios.index(max(ratios))
    # entropy = log Z - E_p[v - top], over the actions with p > 0
    mean = sum(w * (v - top) for w, v in zip(weights, values) if w > 0.0) / total
    return action, values[action] - top - log_total, log_total - mean


def derived_seed(*parts: str) -> int:
    """A reproducible 56-bit seed from strings (SHA-256 of their NUL-joined UTF-8 bytes)."""
    key = "\0".join(parts).encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.sha256(key).digest()[:7], "little")
