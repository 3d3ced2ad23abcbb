"""A last-layer weight delta written as a LoRA adapter row, exactly where the rank allows.

A reward model Q(x, a) = h(x) . M_a on the base's last hidden features h serves as the
policy softmax(base logits + beta Q): a delta beta M (A, H) of the last Linear's weight,
which a LoRA on that layer with rank r >= min(A, H) represents exactly (PEFT convention:
delta = scale B A). Lower ranks get the best rank-r approximation (truncated SVD).
"""

from __future__ import annotations

import torch

from ..errors import InvalidInputError
from ..lora.bank import AdapterLayout


def weight_delta_row(layout: AdapterLayout, layer: str, delta: torch.Tensor) -> torch.Tensor:
    """A packed adapter row (P,) whose only change is `delta` (d_out, d_in) on `layer`.

    Every other targeted layer gets A = 0 and B = 0 (no change). B holds the left singular
    vectors times sqrt of the singular values, A the rest, so scale B A = delta when the
    layer's rank covers delta's rank.
    """
    shapes = layout.tensor_shapes()
    if f"{layer}.lora_A" not in shapes:
        raise InvalidInputError(
            f"layer {layer!r} has no LoRA in this layout (targets: {[s.name for s in layout.layers]})"
        )
    r, d_in = shapes[f"{layer}.lora_A"]
    d_out = shapes[f"{layer}.lora_B"][0]
    if tuple(delta.shape) != (d_out, d_in):
        raise InvalidInputError(f"delta for {layer} must have shape {(d_out, d_in)}, got {tuple(delta.shape)}")
    u, s, vh = torch.linalg.svd(delta.to(torch.float64), full_matrices=False)  # (d_out, k), (k,), (k, d_in)
    k = min(r, s.shape[0])
    root = s[:k].sqrt()
    tensors = {name: torch.zeros(shape) for name, shape in shapes.items()}
    tensors[f"{layer}.lora_B"][:, :k] = (u[:, :k] * root).float()  # (d_out, k)
    tensors[f"{layer}.lora_A"][:k] = ((root[:, None] * vh[:k]) / layout.scale).float()  # (k, d_in)
    return layout.pack(tensors)
