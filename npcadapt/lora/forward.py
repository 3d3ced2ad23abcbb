"""One inference interface: the :class:`Forward` protocol and its torch implementations.

A forward computes one archetype's batch over that archetype's adapter bank: row i of
the batch uses the adapter in bank slot ``slots[i]`` (slot 0, the zero adapter: the base
exactly). How the rows are read (numpy view of the bank, ``index_select``, a gather fused
by torch.compile) is each implementation's business; the engine picks one implementation
per archetype when it builds that archetype's runtime and only calls :meth:`Forward.logits`.

* :class:`~npcadapt.lora.numpy_forward.NumpyForward` (``"numpy"``): the CPU default;
* :class:`TorchForward` (``"torch"``): eager torch, what other devices run, and the
  reference the others are tested against;
* :class:`CompiledForward` (``"compiled"``): mixed batches through one torch.compile'd
  gather + forward; batches small enough for numpy go to a delegate (the numpy forward
  on CPU).

Every implementation shares the batch classification of :func:`batch_rows`: no adapter
read when every row is base, one row when all rows share one adapter, else one per row.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, TypeVar

import numpy as np
import torch

from ..policy import ActorCritic
from .bank import ZERO_SLOT, AdapterBank
from .layout import AdapterLayout

R = TypeVar("R")


class Forward(Protocol):
    """One archetype's batched forward with per-row adapters from its bank."""

    name: str  # which implementation: "numpy", "torch" or "compiled"

    def logits(self, obs: np.ndarray, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """obs (N, D) float32 C-contiguous and bank slots (N,) int64 -> logits (N, A) and
        values (N,), float32 numpy. The caller holds the bank's lock (the rows read are one
        snapshot)."""
        ...


def shared_slot(slots: np.ndarray) -> int | None:
    """The slot every row of a batch uses (ZERO_SLOT for no rows), or None when they differ."""
    if len(slots) == 0:
        return ZERO_SLOT
    first = int(slots[0])
    return first if len(slots) == 1 or (slots == first).all() else None


def batch_rows(slots: np.ndarray, read: Callable[[np.ndarray], R]) -> tuple[R | None, int | None]:
    """The adapters a batch needs, read by `read` (slots -> packed rows), and the shared slot:
    (None, ZERO_SLOT) when every row is base; (read(slots[:1]), slot) when all rows share one
    adapter (one row: the low-rank product needs no gather); (read(slots), None) otherwise."""
    shared = shared_slot(slots)
    if shared is None:
        return read(slots), None
    if shared == ZERO_SLOT:
        return None, ZERO_SLOT
    return read(slots[:1]), shared


class TorchForward:
    """The eager torch forward: gathered rows (``AdapterBank.gather``) through the policy's
    ``layer_delta`` hook. :meth:`forward` is the same computation on torch tensors."""

    name = "torch"

    def __init__(self, policy: ActorCritic, layout: AdapterLayout, bank: AdapterBank):
        self.policy = policy
        self.layout = layout
        self.bank = bank
        self.device = bank.storage.device

    def logits(self, obs: np.ndarray, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.inference_mode():
            obs_t = torch.from_numpy(obs if obs.flags.writeable else obs.copy()).to(self.device)
            logits, value = self.forward(obs_t, slots)
            return logits.float().cpu().numpy(), value.float().cpu().numpy()

    def forward(self, obs: torch.Tensor, slots: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """obs (N, D) on the bank's device -> logits (N, A), value (N,) as torch tensors."""
        rows, _ = batch_rows(slots, self.bank.gather)
        if rows is None:
            return self.policy(obs)
        if len(rows) == 1:
            return self.policy(obs, self.layout.single_delta_fn(rows[0].to(obs.dtype)))
        return self.policy(obs, self.layout.delta_fn(rows.to(obs.dtype)))


class CompiledForward(TorchForward):
    """Gather + convert + forward of mixed batches fused by torch.compile (compiled at the
    first mixed batch, ~20 s on CPU); batches of one adapter run eagerly, and batches of up
    to `small_rows` rows go to `small` when given (the numpy forward on CPU, faster there)."""

    name = "compiled"

    def __init__(
        self,
        policy: ActorCritic,
        layout: AdapterLayout,
        bank: AdapterBank,
        *,
        small: Forward | None = None,
        small_rows: int = 0,
    ):
        super().__init__(policy, layout, bank)
        self.small = small
        self.small_rows = small_rows
        self._compiled: Callable | None = None

    @property
    def compiled(self) -> bool:
        """Whether the fused forward has been compiled (it is at the first mixed batch)."""
        return self._compiled is not None

    def logits(self, obs: np.ndarray, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.small is not None and len(slots) <= self.small_rows:
            return self.small.logits(obs, slots)
        return super().logits(obs, slots)

    def forward(self, obs: torch.Tensor, slots: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        if shared_slot(slots) is not None:
            return super().forward(obs, slots)
        if self._compiled is None:
            policy, layout = self.policy, self.layout

            def gathered_forward(storage: torch.Tensor, index: torch.Tensor, x: torch.Tensor):
                rows = storage.index_select(0, index).to(x.dtype)  # (N, P)
                return policy(x, layout.delta_fn(rows))

            self._compiled = torch.compile(gathered_forward, dynamic=True)
        index = torch.as_tensor(slots, dtype=torch.int64, device=self.device)
        with self.bank.lock:
            return self._compiled(self.bank.storage, index, obs)
