"""Pure LoRA math: tensors in, tensors out. No modules, no state, no training.

Conventions (PEFT's): for a Linear with weight W (d_out, d_in), an adapter is
A (r, d_in) and B (d_out, r); the adapted layer computes
    y = x W^T + b + scale * (x A^T) B^T,   scale = alpha / r  (rsLoRA: alpha / sqrt(r)).
A is random and B zero at init, so a new adapter reproduces the base bit for bit.
"""

from __future__ import annotations

import math
from typing import TypeVar

import numpy as np
import torch

Array = TypeVar("Array", torch.Tensor, np.ndarray)  # torch tensors or numpy arrays, not mixed


def init_lora(
    d_in: int,
    d_out: int,
    rank: int,
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A ~ U(-1/sqrt(d_in), 1/sqrt(d_in)) (kaiming-uniform, a=sqrt 5) and B = 0.

    Returns A (r, d_in), B (d_out, r).
    """
    bound = 1.0 / math.sqrt(d_in)
    a = torch.rand(rank, d_in, generator=generator, dtype=torch.float32) * (2 * bound) - bound
    b = torch.zeros(d_out, rank, dtype=torch.float32)
    return a.to(dtype), b.to(dtype)


def lora_delta(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scale: float) -> torch.Tensor:
    """One adapter on every row: x (N, d_in), A (r, d_in), B (d_out, r) -> (N, d_out)."""
    return (x @ a.t()) @ (b.t() * scale)


def delta_weight(a: Array, b: Array, scale: float) -> Array:
    """The dense update scale * B A, shape (d_out, d_in) (torch tensors, or numpy arrays)."""
    delta: Array = (b @ a) * scale
    return delta


def merge(weight: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scale: float) -> torch.Tensor:
    """W + scale B A (a new tensor; W is untouched)."""
    return weight + delta_weight(a, b, scale)


def gathered_delta(x: torch.Tensor, a_rows: torch.Tensor, bt_rows: torch.Tensor, scale: float) -> torch.Tensor:
    """Each row its own adapter (BGMV): x (N, d_in), A (N, r, d_in), B^T (N, r, d_out) -> (N, d_out).

    B comes transposed so both products are (1 x k) @ (k x m) per row, the shape CPU
    batched GEMM handles fastest. A and B^T may be strided views of one gathered block.
    """
    xa = torch.bmm(x.unsqueeze(1), a_rows.transpose(1, 2))  # (N, 1, r)
    return torch.bmm(xa.mul_(scale), bt_rows).squeeze(1)  # (N, d_out)
