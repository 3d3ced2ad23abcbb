"""The engine's CPU forward pass: numpy arithmetic, torch's BLAS for big products.

:class:`NumpyForward` (a :class:`~npcadapt.lora.forward.Forward`) computes what
:class:`~npcadapt.lora.forward.TorchForward` computes (float32, equal up to rounding) on
float32 copies of the frozen base weights, for two measured reasons:

* a handful of rows: torch's eager forward is dominated by per-op dispatch (tens of ops
  at several microseconds each); numpy needs a few calls at about one microsecond;
* many rows: torch's CPU ``tanh`` costs ~2 ns an element here, numpy's ~0.2 ns, and
  tanh was most of the forward. Products of more than ``NUMPY_MACS`` multiply-adds still
  go through torch (its thread setting), because numpy's BLAS starts threads of its own
  at that size, which fight the server's on a small machine.

Adapter rows are read from the bank's memory as numpy (float32 and float16 banks on the
CPU: no torch call). Turning logits into decisions is :mod:`npcadapt.sampling`'s job.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import cast

import numpy as np
import torch

from ..policy import ActorCritic
from .bank import AdapterBank
from .forward import batch_rows
from .functional import delta_weight
from .layout import AdapterLayout, LayerSlice

NUMPY_MACS = 2**18  # multiply-adds of the widest product up to which numpy's matmul is used
MERGED_BYTES = 16 * 2**20  # per archetype: base weights with one adapter merged in, for repeat callers

_ACTIVATIONS = {"tanh": lambda y: np.tanh(y, out=y), "relu": lambda y: np.maximum(y, 0.0, out=y)}

MatMul = Callable[[np.ndarray, np.ndarray], np.ndarray]


def torch_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``np.matmul`` computed by torch (no copies of writable inputs; result shares memory)."""
    ta = torch.from_numpy(a if a.flags.writeable else a.copy())
    tb = torch.from_numpy(b if b.flags.writeable else b.copy())
    return torch.matmul(ta, tb).numpy()


class NumpyForward:
    """numpy copy of one frozen :class:`ActorCritic` over its adapter bank.

    Actor and critic run side by side: layer 0 as one product with both heads' weights
    concatenated, deeper layers as one stacked product over the two heads (the last
    layer's outputs padded to the wider head), so a forward is a handful of calls.

    The base weights are copied once: a loaded base is frozen (``requires_grad`` off, and
    nothing in the engine writes it). Whoever changes it in place calls :meth:`refresh`.
    """

    name = "numpy"

    def __init__(
        self,
        policy: ActorCritic,
        layout: AdapterLayout,
        bank: AdapterBank,
        *,
        numpy_rows: int | None = None,
        merged_capacity: int | None = None,
    ):
        """`numpy_rows`: batches up to this size use numpy's matmul, larger ones torch's
        (default: up to ``NUMPY_MACS`` multiply-adds in the widest product);
        `merged_capacity`: merged copies kept (default: ``MERGED_BYTES`` worth)."""
        self.policy = policy
        self.layout = layout
        self.bank = bank
        # the heads are ModuleLists of Linears
        self.n_actions = cast(torch.nn.Linear, policy.actor[-1]).out_features
        self._scale = np.float32(layout.scale)
        self._half = cast(torch.nn.Linear, policy.actor[0]).out_features  # where the critic's columns start in layer 0
        self._act = _ACTIVATIONS[policy.activation]
        widest = max(lin.in_features * lin.out_features for lin in policy.named_linears().values())
        self.numpy_rows = NUMPY_MACS // widest if numpy_rows is None else numpy_rows
        # the bank's memory seen by numpy (CPU float32/float16): rows are read without torch
        storage = bank.storage
        numpy_readable = storage.device.type == "cpu" and storage.dtype in (torch.float32, torch.float16)
        self._storage = storage.numpy() if numpy_readable else None
        # layer index -> [(head index, slice)] of the adapted layers
        self._targets: dict[int, list[tuple[int, LayerSlice]]] = {}
        for layer in layout.layers:
            head, index = layer.name.split(".")
            self._targets.setdefault(int(index), []).append((("actor", "critic").index(head), layer))
        self._weights: list[tuple[np.ndarray, np.ndarray]] = []
        self._merged: OrderedDict[int, list[tuple[np.ndarray, np.ndarray]]] = OrderedDict()  # adapter key -> weights
        self._seen: OrderedDict[int, None] = OrderedDict()  # adapter keys asked for once
        self.refresh()
        size = sum(self._weights[k][0].nbytes for k in self._targets)  # what a merged copy adds
        self.merged_capacity = max(1, MERGED_BYTES // max(size, 1)) if merged_capacity is None else merged_capacity

    @property
    def merged_keys(self) -> tuple[int, ...]:
        """The content ids (``AdapterBank.content_id``) of the adapters held merged, least
        recently used first."""
        return tuple(self._merged)

    def refresh(self) -> None:
        """Copy the weights as float32 numpy: layer 0 W^T (D, 2 h0), deeper (2, d_in, d_out);
        merged copies are dropped."""

        def arrays(linear: torch.nn.Linear) -> tuple[np.ndarray, np.ndarray]:
            w_t = linear.weight.detach().float().cpu().numpy().T  # (d_in, d_out)
            return w_t, linear.bias.detach().float().cpu().numpy()  # (d_out,)

        weights = []
        for k, (actor, critic) in enumerate(zip(self.policy.actor, self.policy.critic)):
            # the heads are ModuleLists of Linears
            (wa, ba), (wc, bc) = arrays(cast(torch.nn.Linear, actor)), arrays(cast(torch.nn.Linear, critic))
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
        self._merged.clear()
        self._seen.clear()

    def read_rows(self, slots: np.ndarray) -> np.ndarray:
        """A copy of the slots' packed adapter rows as float32 numpy (N, P)."""
        if self._storage is None:
            return self.bank.gather(slots).float().cpu().numpy()
        return self._storage[slots].astype(np.float32, copy=False)

    def logits(self, obs: np.ndarray, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rows, shared = batch_rows(slots, self.read_rows)
        return self.compute(obs, rows, self.bank.content_id(shared) if shared else None)

    def compute(
        self, obs: np.ndarray, rows: np.ndarray | None, key: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """obs (N, D) float32; rows None (base), (N, P) packed adapters, or (1, P) one adapter
        for every row -> logits (N, A), value (N,).

        `key` names the content of a (1, P) adapter (it must change whenever the row does):
        from the second call with the same key on, that adapter is merged into a copy of the
        base weights (kept for later calls, least recently used dropped past `merged_capacity`),
        so the forward costs what the base's does.
        """
        weights = self._weights
        if key is not None and rows is not None:  # a key names a (1, P) row: never given without one
            merged = self._merged_weights(key, rows)
            if merged is not None:
                weights, rows = merged, None
        n = obs.shape[0]
        mm: MatMul = np.matmul if n <= self.numpy_rows else torch_matmul
        last = len(weights) - 1
        w, b = weights[0]
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
            w, b = weights[k]
            y = mm(h, w)  # (2, N, d_out)
            y += b
            if rows is not None:
                for head, layer in self._targets.get(k, ()):
                    y[head, :, : layer.d_out] += self._delta(h[head], rows, layer, mm)
            h = y if k == last else self._act(y)
        return h[0, :, : self.n_actions], h[1, :, 0]

    def _merged_weights(self, key: int, rows: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]] | None:
        """The base weights with adapter `rows` (1, P) merged in (W + scale A^T B^T per adapted
        layer), cached by `key`; None the first time a key is seen (one call: the low-rank path is cheaper)."""
        merged = self._merged.get(key)
        if merged is not None:
            self._merged.move_to_end(key)
            return merged
        if key not in self._seen:
            self._seen[key] = None
            if len(self._seen) > 4 * self.merged_capacity:
                self._seen.popitem(last=False)
            return None
        del self._seen[key]
        merged = list(self._weights)
        half = self._half
        for k, targets in self._targets.items():
            w = merged[k][0].copy()
            for head, layer in targets:
                a, bt = self.layout.layer_views(rows[0], layer)  # (r, d_in), (r, d_out)
                delta = delta_weight(a, bt.T, float(self._scale)).T  # (d_in, d_out): our weights are stored W^T
                if k == 0:
                    w[:, head * half : head * half + layer.d_out] += delta
                else:
                    w[head, :, : layer.d_out] += delta
            merged[k] = (w, merged[k][1])
        self._merged[key] = merged
        if len(self._merged) > self.merged_capacity:
            self._merged.popitem(last=False)
        return merged

    def _delta(self, x: np.ndarray, rows: np.ndarray, layer: LayerSlice, mm: MatMul) -> np.ndarray:
        """scale * (x_i A_i^T) B_i^T for every row i: x (N, d_in) -> (N, d_out)."""
        m = rows.shape[0]
        if m == 1:  # one adapter for every row: two plain products (BLAS reads A^T as it lies)
            a, bt = self.layout.layer_views(rows[0], layer)  # (r, d_in), (r, d_out)
            xa = mm(x, a.T)  # (N, r)
            xa *= self._scale
            return mm(xa, bt)  # (N, d_out)
        a, bt = self.layout.layer_views(rows, layer)  # (M, r, d_in), (M, r, d_out)
        xa = mm(a, np.ascontiguousarray(x)[:, :, None])  # (N, r, 1)
        xa *= self._scale
        return mm(xa.transpose(0, 2, 1), bt)[:, 0, :]  # (N, d_out)
