"""The engine's CPU forward pass and decision step: numpy arithmetic, torch's BLAS for big products.

:class:`NumpyForward` computes what ``ActorCritic.forward`` with ``AdapterLayout.delta_fn``
computes (float32, equal up to rounding) on cached float32 copies of the frozen base
weights, for two measured reasons:

* a handful of rows: torch's eager forward is dominated by per-op dispatch (tens of ops
  at several microseconds each); numpy needs a few calls at about one microsecond;
* many rows: torch's CPU ``tanh`` costs ~2 ns an element here, numpy's ~0.2 ns, and
  tanh was most of the forward. Products of more than ``NUMPY_MACS`` multiply-adds still
  go through torch (its thread setting), because numpy's BLAS starts threads of its own
  at that size, which fight the server's on a small machine.

:func:`log_probs` and :func:`decide` turn logits into decisions (the numpy counterparts
of ``masked_log_probs`` and ``torch.multinomial``). This module knows nothing of players
or banks; the engine decides when it runs.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from ..policy import ActorCritic
from .bank import AdapterLayout, LayerSlice

NUMPY_MACS = 2**18  # multiply-adds of the widest product up to which numpy's matmul is used

_ACTIVATIONS = {"tanh": lambda y: np.tanh(y, out=y), "relu": lambda y: np.maximum(y, 0.0, out=y)}

MatMul = Callable[[np.ndarray, np.ndarray], np.ndarray]


def torch_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``np.matmul`` computed by torch (no copies of writable inputs; result shares memory)."""
    ta = torch.from_numpy(a if a.flags.writeable else a.copy())
    tb = torch.from_numpy(b if b.flags.writeable else b.copy())
    return torch.matmul(ta, tb).numpy()


class NumpyForward:
    """numpy copy of one frozen :class:`ActorCritic`; rebuilt when its parameters change.

    Actor and critic run side by side: layer 0 as one product with both heads' weights
    concatenated, deeper layers as one stacked product over the two heads (the last
    layer's outputs padded to the wider head), so a forward is a handful of calls.
    """

    def __init__(self, policy: ActorCritic, layout: AdapterLayout):
        self.policy = policy
        self.layout = layout
        self.n_actions = policy.actor[-1].out_features
        self._half = policy.actor[0].out_features  # where the critic's columns start in layer 0
        self._act = _ACTIVATIONS[policy.activation]
        self._params = list(policy.parameters())
        widest = max(lin.in_features * lin.out_features for lin in policy.named_linears().values())
        self.numpy_rows = NUMPY_MACS // widest  # batches up to this size use numpy's matmul
        # layer index -> [(head index, slice)] of the adapted layers
        self._targets: dict[int, list[tuple[int, LayerSlice]]] = {}
        for layer in layout.layers:
            head, index = layer.name.split(".")
            self._targets.setdefault(int(index), []).append((("actor", "critic").index(head), layer))
        self._weights: list[tuple[np.ndarray, np.ndarray]] = []
        self._stamp: list[int] = []
        self.refresh()

    def refresh(self) -> None:
        """Copy the weights as float32 numpy: layer 0 W^T (D, 2 h0), deeper (2, d_in, d_out)."""
        def arrays(linear: torch.nn.Linear) -> tuple[np.ndarray, np.ndarray]:
            w_t = linear.weight.detach().float().cpu().numpy().T  # (d_in, d_out)
            return w_t, linear.bias.detach().float().cpu().numpy()  # (d_out,)

        weights = []
        for k, (actor, critic) in enumerate(zip(self.policy.actor, self.policy.critic)):
            (wa, ba), (wc, bc) = arrays(actor), arrays(critic)
            if k == 0:
                weights.append((np.concatenate([wa, wc], axis=1), np.concatenate([ba, bc])))  # (D, 2 h0), (2 h0,)
                continue
            width = max(wa.shape[1], wc.shape[1])
            w = np.zeros((2, wa.shape[0], width), np.float32)  # (2, d_in, d_out)
            b = np.zeros((2, 1, width), np.float32)  # (2, 1, d_out)
            w[0, :, : wa.shape[1]], w[1, :, : wc.shape[1]] = wa, wc
            b[0, 0, : ba.shape[0]], b[1, 0, : bc.shape[0]] = ba, bc
            weights.append((w, b))
        self._weights = weights
        self._stamp = [p._version for p in self._params]

    def __call__(self, obs: np.ndarray, rows: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """obs (N, D) float32; rows None (base), (N, P) packed adapters, or (1, P) one adapter
        for every row -> logits (N, A), value (N,)."""
        if [p._version for p in self._params] != self._stamp:  # in-place changes bump versions
            self.refresh()
        n = obs.shape[0]
        mm: MatMul = np.matmul if n <= self.numpy_rows else torch_matmul
        last = len(self._weights) - 1
        w, b = self._weights[0]
        y = mm(obs, w)  # (N, 2 h0)
        y += b
        half = self._half
        if rows is not None:
            for head, layer in self._targets.get(0, ()):
                y[:, head * half : head * half + layer.d_out] += self._delta(obs, rows, layer, mm)
        if not last:  # no hidden layers: y is (N, A + 1)
            return y[:, : self.n_actions], y[:, self.n_actions]
        h = self._act(y).reshape(n, 2, half).transpose(1, 0, 2)  # (2, N, h0)
        for k in range(1, last + 1):
            w, b = self._weights[k]
            y = mm(h, w)  # (2, N, d_out)
            y += b
            if rows is not None:
                for head, layer in self._targets.get(k, ()):
                    y[head, :, : layer.d_out] += self._delta(h[head], rows, layer, mm)
            h = y if k == last else self._act(y)
        return h[0, :, : self.n_actions], h[1, :, 0]

    def _delta(self, x: np.ndarray, rows: np.ndarray, layer: LayerSlice, mm: MatMul) -> np.ndarray:
        """scale * (x_i A_i^T) B_i^T for every row i: x (N, d_in) -> (N, d_out)."""
        m = rows.shape[0]
        a = rows[:, layer.a_start : layer.a_end].reshape(m, layer.rank, layer.d_in)  # (M, r, d_in)
        bt = rows[:, layer.b_start : layer.b_end].reshape(m, layer.rank, layer.d_out)  # (M, r, d_out)
        if m == 1:  # one adapter for every row: two plain products
            xa = mm(x, np.ascontiguousarray(a[0].T))  # (N, r)
            xa *= np.float32(self.layout.scale)
            return mm(xa, bt[0])  # (N, d_out)
        xa = mm(a, np.ascontiguousarray(x)[:, :, None])  # (N, r, 1)
        xa *= np.float32(self.layout.scale)
        return mm(xa.transpose(0, 2, 1), bt)[:, 0, :]  # (N, d_out)


EXACT_DRAW_ROWS = 256  # up to this many rows, draws are exactly torch.multinomial's


def log_probs(logits: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """numpy ``masked_log_probs``, actions first: logits (N, A) -> log-probabilities and
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


def decide(
    logits: np.ndarray, mask: np.ndarray | None, greedy: np.ndarray | None, generator: torch.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Masked categorical draw: logits (N, A) -> action (N,) int64, logp (N,), entropy (N,).

    Masked actions get probability exactly 0 and are never drawn; rows with greedy True
    take the argmax. Randomness comes from `generator` only: up to EXACT_DRAW_ROWS rows the
    draw is argmax(p / q) with q ~ Exp(1), which is what ``torch.multinomial(p, 1)`` does,
    so the same generator state picks the same actions as torch's sampler; above that one
    uniform number per row picks by inverse CDF (A exponentials a row cost ~15 ns each).
    """
    n = logits.shape[0]
    logp_all, probs = log_probs(logits, mask)  # (A, N) each
    if n <= EXACT_DRAW_ROWS:
        device = generator.device
        q = torch.empty(logits.shape, device=device).exponential_(1, generator=generator)  # (N, A)
        action = (probs / (q.numpy() if device.type == "cpu" else q.cpu().numpy()).T).argmax(axis=0)
    else:
        cdf = np.cumsum(probs, axis=0, dtype=np.float64)  # (A, N)
        u = torch.rand(n, dtype=torch.float64, device=generator.device, generator=generator).cpu().numpy()
        u *= cdf[-1]
        action = (cdf <= u).sum(axis=0)  # the first action whose cumulative probability exceeds u
        over = action >= cdf.shape[0]
        if over.any():  # u rounded up to the total: the last action of non-zero probability
            action[over] = cdf.shape[0] - 1 - np.argmax(probs[::-1, over] > 0, axis=0)
    if greedy is not None:
        action = np.where(greedy, logp_all.argmax(axis=0), action)
    rows = np.arange(n)
    logp = logp_all[action, rows]
    terms = probs * (logp_all if mask is None else np.where(probs > 0, logp_all, np.float32(0.0)))
    return action.astype(np.int64, copy=False), logp, -terms.sum(axis=0)
