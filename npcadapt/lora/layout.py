"""Where each adapted layer's A and B sit inside a packed adapter row: the one place that
slices rows.

All of a player's LoRA tensors are packed into one flat row of P numbers (layer by layer:
A (r, d_in), then B transposed, (r, d_out)), so a bank gathers every layer's A and B of a
batch with one ``index_select``. :meth:`AdapterLayout.layer_views` is the only code that
turns a row (or a block of rows, torch or numpy) into one layer's A and B^T; everything
else (packing, named tensors, the forwards' products, merged weights) goes through it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch

from ..config import ArchetypeSpec
from ..errors import AdapterMismatchError
from ..sampling import derived_seed
from .functional import gathered_delta, init_lora, lora_delta

Rows = TypeVar("Rows", torch.Tensor, np.ndarray)


@dataclass(frozen=True)
class LayerSlice:
    """Where one adapted layer's A (r, d_in) and B^T (r, d_out) sit inside a packed adapter row."""

    name: str
    d_in: int
    d_out: int
    rank: int
    a_start: int
    b_start: int

    @property
    def a_end(self) -> int:
        return self.a_start + self.rank * self.d_in

    @property
    def b_end(self) -> int:
        return self.b_start + self.d_out * self.rank


@dataclass(frozen=True)
class AdapterLayout:
    """Packing of one archetype's adapter tensors into a flat vector of `size` numbers."""

    layers: tuple[LayerSlice, ...]
    size: int
    rank: int
    scale: float

    @classmethod
    def from_spec(cls, spec: ArchetypeSpec) -> AdapterLayout:
        shapes = spec.layer_shapes()
        r, offset, layers = spec.lora.rank, 0, []
        for name in spec.lora.targets:
            d_in, d_out = shapes[name]
            layers.append(LayerSlice(name, d_in, d_out, r, offset, offset + r * d_in))
            offset += r * d_in + d_out * r
        return cls(tuple(layers), offset, r, spec.lora.scale)

    # -- slicing rows ---------------------------------------------------------------
    @staticmethod
    def layer_views(rows: Rows, layer: LayerSlice) -> tuple[Rows, Rows]:
        """Packed rows, torch or numpy, (P,) or (N, P) -> views A (r, d_in) or (N, r, d_in) and
        B^T (r, d_out) or (N, r, d_out) of one layer (a block of gathered rows is not copied)."""
        a, b, r = layer.a_start, layer.b_start, layer.rank  # written out: forwards call this per layer and batch
        if rows.ndim == 1:
            return rows[a : a + r * layer.d_in].reshape(r, layer.d_in), rows[b : b + r * layer.d_out].reshape(
                r, layer.d_out
            )
        n = rows.shape[0]
        return (
            rows[:, a : a + r * layer.d_in].reshape(n, r, layer.d_in),
            rows[:, b : b + r * layer.d_out].reshape(n, r, layer.d_out),
        )

    def views(self, rows: Rows) -> Iterator[tuple[LayerSlice, Rows, Rows]]:
        """(layer, A, B^T) for every adapted layer of packed rows (P,) or (N, P) (see :meth:`layer_views`)."""
        for layer in self.layers:
            a, bt = self.layer_views(rows, layer)
            yield layer, a, bt

    # -- named tensors ------------------------------------------------------------------
    def tensor_shapes(self) -> dict[str, tuple[int, int]]:
        """Tensor name -> shape, e.g. 'actor.0.lora_A' -> (r, d_in)."""
        out = {}
        for layer in self.layers:
            out[f"{layer.name}.lora_A"] = (layer.rank, layer.d_in)
            out[f"{layer.name}.lora_B"] = (layer.d_out, layer.rank)
        return out

    def unpack(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Flat (P,) -> named views {'<layer>.lora_A': (r, d_in), '<layer>.lora_B': (d_out, r)}.

        B is kept transposed inside the row (r, d_out), so its view here is strided.
        """
        out = {}
        for layer, a, bt in self.views(flat):
            out[f"{layer.name}.lora_A"], out[f"{layer.name}.lora_B"] = a, bt.t()
        return out

    def pack(self, tensors: Mapping[str, torch.Tensor], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Named tensors -> flat (P,); names and shapes must match exactly."""
        expected = self.tensor_shapes()
        if set(tensors) != set(expected):
            raise AdapterMismatchError(f"adapter tensors {sorted(tensors)} do not match the layout {sorted(expected)}")
        flat = torch.empty(self.size, dtype=dtype)
        for name, view in self.unpack(flat).items():
            src = tensors[name]
            if tuple(src.shape) != expected[name]:
                raise AdapterMismatchError(
                    f"adapter tensor {name} has shape {tuple(src.shape)}, expected {expected[name]}"
                )
            view.copy_(src)
        return flat

    def fresh(self, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """A new adapter (A random, B zero) packed as (P,)."""
        parts = {}
        for layer in self.layers:
            a, b = init_lora(layer.d_in, layer.d_out, layer.rank, generator=generator)
            parts[f"{layer.name}.lora_A"], parts[f"{layer.name}.lora_B"] = a, b
        return self.pack(parts, dtype)

    def scalable_mask(self) -> torch.Tensor:
        """(P,) bool: the B entries. Scaling them by c scales every layer's delta by c."""
        mask = torch.zeros(self.size, dtype=torch.bool)
        for _, _, bt in self.views(mask):
            bt.fill_(True)
        return mask

    # -- torch forward hooks ----------------------------------------------------------
    def single_delta_fn(self, flat: torch.Tensor) -> Callable[[str, torch.Tensor], torch.Tensor | None]:
        """A policy `layer_delta` hook applying one adapter flat (P,) to every row (no gather)."""
        views = self.unpack(flat)
        names = {layer.name for layer in self.layers}

        def delta(name: str, x: torch.Tensor) -> torch.Tensor | None:
            if name not in names:
                return None
            return lora_delta(x, views[f"{name}.lora_A"], views[f"{name}.lora_B"], self.scale)

        return delta

    def delta_fn(self, rows: torch.Tensor) -> Callable[[str, torch.Tensor], torch.Tensor | None]:
        """A policy `layer_delta` hook where row i of the batch uses adapter rows[i] (N, P)."""
        layers = {layer.name: layer for layer in self.layers}

        def delta(name: str, x: torch.Tensor) -> torch.Tensor | None:
            layer = layers.get(name)
            if layer is None:
                return None
            a, bt = self.layer_views(rows, layer)  # (N, r, d_in), (N, r, d_out)
            return gathered_delta(x, a, bt, self.scale)

        return delta


def fresh_row(layout: AdapterLayout, archetype: str, player: str, *, seed: int | None = None) -> torch.Tensor:
    """A new packed adapter (P,) with A random and B zero (it reproduces the base exactly),
    seeded by (archetype, player) unless a seed is given, so it is reproducible."""
    return layout.fresh(torch.Generator().manual_seed(derived_seed(archetype, player) if seed is None else seed))
