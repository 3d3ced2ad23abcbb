"""The small actor-critic MLP every archetype uses. It knows nothing of LoRA or training.

Layers are plain ``nn.Linear`` modules named ``actor.<i>`` and ``critic.<i>``. The
forward pass accepts an optional ``layer_delta`` hook so that callers (the engine's
per-row adapters) can add to any layer's output without this module knowing how.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import cast

import torch
from torch import nn

from .config import ArchetypeSpec

# (layer name, layer input (N, d_in)) -> addition to the layer output (N, d_out), or None
LayerDelta = Callable[[str, torch.Tensor], torch.Tensor | None]

_ACTIVATIONS = {"tanh": torch.tanh, "relu": torch.relu}


class ActorCritic(nn.Module):
    """Separate actor (action logits) and critic (state value) MLPs over one observation."""

    def __init__(self, obs_dim: int, n_actions: int, hidden: tuple[int, ...] = (64, 64), activation: str = "tanh"):
        super().__init__()
        dims = (obs_dim, *hidden)
        self.actor = nn.ModuleList([nn.Linear(a, b) for a, b in zip(dims, (*hidden, n_actions))])
        self.critic = nn.ModuleList([nn.Linear(a, b) for a, b in zip(dims, (*hidden, 1))])
        self.activation = activation
        self._act = _ACTIVATIONS[activation]

    @classmethod
    def from_spec(cls, spec: ArchetypeSpec) -> ActorCritic:
        return cls(spec.obs_dim, spec.n_actions, spec.network.hidden, spec.network.activation)

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Orthogonal init (gain sqrt 2; 0.01 for the logits, 1 for the value), zero biases."""
        for head, last_gain in ((self.actor, 0.01), (self.critic, 1.0)):
            for i, layer in enumerate(head):
                linear = cast(nn.Linear, layer)  # the heads are ModuleLists of Linears
                gain = last_gain if i == len(head) - 1 else math.sqrt(2)
                nn.init.orthogonal_(linear.weight, gain=gain, generator=generator)
                nn.init.zeros_(linear.bias)

    def named_linears(self) -> dict[str, nn.Linear]:
        """Layer name ('actor.0', ...) -> module."""
        return {f"{head}.{i}": layer for head in ("actor", "critic") for i, layer in enumerate(getattr(self, head))}

    def _run(self, head: str, x: torch.Tensor, layer_delta: LayerDelta | None) -> torch.Tensor:
        layers = getattr(self, head)
        for i, layer in enumerate(layers):
            y = layer(x)  # (N, d_out)
            if layer_delta is not None:
                delta = layer_delta(f"{head}.{i}", x)
                if delta is not None:
                    y = y + delta
            x = y if i == len(layers) - 1 else self._act(y)
        return x

    def forward(self, obs: torch.Tensor, layer_delta: LayerDelta | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """obs (N, obs_dim) -> logits (N, n_actions), value (N,)."""
        logits = self._run("actor", obs, layer_delta)
        value = self._run("critic", obs, layer_delta).squeeze(-1)
        return logits, value

    def actor_features(self, obs: torch.Tensor) -> torch.Tensor:
        """The actor's last hidden activations: obs (N, obs_dim) -> (N, hidden[-1])."""
        x = obs
        for layer in self.actor[:-1]:
            x = self._act(layer(x))
        return x

    def logits(self, obs: torch.Tensor, layer_delta: LayerDelta | None = None) -> torch.Tensor:
        """Actor only: obs (N, obs_dim) -> logits (N, n_actions)."""
        return self._run("actor", obs, layer_delta)
