"""Exports for in-engine inference without a server: ONNX (merged policy) and PEFT layout.

ONNX: the archetype's actor-critic with one player's adapter merged into the weights
(W + scale * B A), inputs ``obs`` (N, D) float32 and ``mask`` (N, A) bool, outputs
``logits`` (N, A) with masked actions at -inf, and ``value`` (N,). Runs in Unity
Sentis, Godot, Unreal NNE or onnxruntime.

PEFT: ``adapter_config.json`` + ``adapter_model.safetensors`` with PEFT's tensor names
(``base_model.model.<layer>.lora_A.weight``), loadable with ``PeftModel.from_pretrained``
onto the archetype's :class:`~npcadapt.policy.ActorCritic`.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from .engine import Engine
from .errors import InvalidInputError, NpcAdaptError
from .lora.functional import merge
from .policy import ActorCritic


class MergedPolicy(nn.Module):
    """obs, mask -> masked logits, value, with an adapter merged into the weights."""

    def __init__(self, policy: ActorCritic):
        super().__init__()
        self.policy = policy

    def forward(self, obs: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, value = self.policy(obs)
        return logits.masked_fill(~mask, float("-inf")), value


def merged_policy(engine: Engine, archetype: str, player: str | None) -> ActorCritic:
    """A copy of the archetype's base with `player`'s adapter merged (the base when None)."""
    rt = engine.runtime(archetype)
    policy = copy.deepcopy(rt.archetype.policy).cpu().float()
    if player is None:
        return policy
    adapter = engine.get_adapter(archetype, player)
    if adapter is None:
        raise InvalidInputError(f"player {player!r} has no {archetype} adapter to export")
    layers = policy.named_linears()
    with torch.no_grad():
        for layer in rt.layout.layers:
            lin = layers[layer.name]
            lin.weight.copy_(
                merge(lin.weight, adapter[f"{layer.name}.lora_A"], adapter[f"{layer.name}.lora_B"], rt.layout.scale)
            )
    return policy


def export_onnx(engine: Engine, archetype: str, player: str | None, path: str | Path, opset: int = 17) -> Path:
    """Write the merged policy as ONNX with a dynamic batch dimension."""
    spec = engine.runtime(archetype).archetype.spec
    model = MergedPolicy(merged_policy(engine, archetype, player)).eval()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    example = (torch.zeros(1, spec.obs_dim), torch.ones(1, spec.n_actions, dtype=torch.bool))
    try:
        torch.onnx.export(
            model,
            example,
            str(path),
            input_names=["obs", "mask"],
            output_names=["logits", "value"],
            dynamic_axes={"obs": {0: "batch"}, "mask": {0: "batch"}, "logits": {0: "batch"}, "value": {0: "batch"}},
            opset_version=opset,
            dynamo=False,
        )
    except ImportError as exc:
        raise NpcAdaptError(f"ONNX export needs the 'onnx' package (pip install 'npcadapt[export]'): {exc}") from None
    return path


def export_peft(engine: Engine, archetype: str, player: str, directory: str | Path) -> Path:
    """Write `player`'s adapter in PEFT's on-disk layout."""
    rt = engine.runtime(archetype)
    adapter = engine.get_adapter(archetype, player)
    if adapter is None:
        raise InvalidInputError(f"player {player!r} has no {archetype} adapter to export")
    lora = rt.archetype.spec.lora
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = {
        "peft_type": "LORA",
        "task_type": None,
        "base_model_name_or_path": None,
        "inference_mode": True,
        "r": lora.rank,
        "lora_alpha": lora.alpha,
        "use_rslora": lora.rslora,
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": False,
        "init_lora_weights": True,
        "target_modules": list(lora.targets),
    }
    (directory / "adapter_config.json").write_text(json.dumps(config, indent=2))
    tensors = {}
    for layer in rt.layout.layers:
        for part in ("lora_A", "lora_B"):
            tensors[f"base_model.model.{layer.name}.{part}.weight"] = adapter[f"{layer.name}.{part}"].contiguous()
    save_file(
        tensors,
        directory / "adapter_model.safetensors",
        metadata={"archetype": archetype, "player": player, "base_hash": rt.archetype.base_hash},
    )
    return directory
